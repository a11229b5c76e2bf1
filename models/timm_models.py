"""Every timm model by name (e.g. resnest50d, ghostnet_100, mobilenetv3_small_100), built without weights.

timm is imported lazily: listing or building a torchvision or own model does not pay for importing it.
"""
from __future__ import annotations

from functools import lru_cache

from torch import nn

TIMM_PREFIX = "timm/"


@lru_cache(maxsize=1)
def list_timm_models() -> tuple[str, ...]:
    """Names of all timm architectures (without pretrained tags)."""
    import timm

    return tuple(timm.list_models())


def is_timm_model(name: str) -> bool:
    """True for a timm architecture name, also with a pretrained tag such as `resnet50.a1_in1k`."""
    import timm

    return timm.is_model(name)


def create_timm_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
    """Build timm model `name` (an optional `timm/` prefix is stripped) with pretrained=False.

    Extra kwargs (drop_rate, drop_path_rate, in_chans...) go to `timm.create_model` unchanged.
    """
    import timm

    name = name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        raise ValueError(f"{name!r} is not a timm model.")
    # pretrained=False is forced: this machine has no internet and weights only come from local files.
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
