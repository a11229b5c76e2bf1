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


def create_timm_model(name: str, *, num_classes: int, dropout: float | None = None, pooling: str = "avg",
                      **kwargs) -> nn.Module:
    """Build timm model `name` (an optional `timm/` prefix is stripped) with pretrained=False.

    dropout: timm's `drop_rate` (dropout before the classifier); None keeps the model's default.
    pooling: "avg" (the model's default) or "avgmax", timm's `global_pool="catavgmax"` (concatenated average and
    max pooling); a model whose head cannot take it fails with a message naming it.
    Extra kwargs (drop_path_rate, in_chans...) go to `timm.create_model` unchanged.
    """
    import timm

    name = name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        raise ValueError(f"{name!r} is not a timm model.")
    if dropout is not None:
        kwargs["drop_rate"] = dropout
    if pooling == "avgmax":
        kwargs["global_pool"] = "catavgmax"
    try:
        # pretrained=False is forced: this machine has no internet and weights only come from local files.
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except (AssertionError, TypeError, ValueError) as err:
        requested = (("--dropout", dropout is not None), ("--pooling avgmax", pooling == "avgmax"))
        options = [flag for flag, used in requested if used]
        if not options:
            raise
        raise ValueError(f"timm's {name} cannot be built with {' and '.join(options)} ({err}); drop the option "
                         "or pick another model") from err
    if pooling == "avgmax" and not _pools_catavgmax(model):
        raise ValueError(f"--pooling avgmax: timm's {name} ignored global_pool='catavgmax'; use --pooling avg")
    return model


def _pools_catavgmax(model: nn.Module) -> bool:
    return any(getattr(m, "pool_type", None) == "catavgmax" for m in model.modules())
