"""Every torchvision classification model, by its torchvision name, built without weights.

Models are built with `num_classes` passed to the torchvision builder, exactly as the torchvision references
do: that keeps each family's own head initialisation (zeros for ViT, N(0, 0.01) for squeezenet and
MobileNet...) instead of a generic Linear init. Weights only come from local files (see models/pretrained.py).
"""
from __future__ import annotations

from functools import lru_cache

import torchvision
from torch import nn

from .heads import get_classifier

# Families whose constructors need extra arguments when built from scratch.
_AUX_LOGIT_MODELS = ("googlenet", "inception_v3")


@lru_cache(maxsize=1)
def list_torchvision_models() -> tuple[str, ...]:
    """Names of torchvision's classification models (detection, segmentation, video... excluded)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def _drop_squeezenet_logit_relu(model: nn.Module) -> None:
    # torchvision's squeezenet applies ReLU to its logits, so they can never be negative: sigmoid/BCE
    # probabilities would start at >= 0.5 and a prior bias below 0 would be clamped away. Without it the head
    # is an ordinary linear classifier; pretrained weights still load (ReLU has no parameters).
    classifier = model.classifier
    for i, layer in enumerate(classifier):
        if isinstance(layer, nn.ReLU):
            classifier[i] = nn.Identity()


def create_torchvision_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
    """Build torchvision model `name` with `weights=None` and a `num_classes`-way head.

    googlenet / inception_v3 are built with aux_logits=False so that forward returns plain logits in training
    too, and with init_weights=True (their documented default, set explicitly to silence a FutureWarning).
    """
    if name not in list_torchvision_models():
        raise ValueError(f"{name!r} is not a torchvision classification model.")
    if name in _AUX_LOGIT_MODELS:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if name.startswith("squeezenet"):
        _drop_squeezenet_logit_relu(model)
    out_features = _out_features(get_classifier(model))
    # Guards the generic classifier lookup that prior_bias, CAM and freezing rely on.
    assert out_features == num_classes, f"{name}: classifier found has {out_features} outputs, expected {num_classes}"
    return model


def _out_features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
