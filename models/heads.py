"""Find, replace and initialise the final classification layer of any model we build.

The final layer is needed in three places: building with a new class count, the "sample-free" prior bias,
and later by CAM and layer-freezing code. One generic lookup keeps those in agreement.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# Attribute paths where torchvision, timm and our own models keep their classifier, most specific first.
# A container (e.g. torchvision's `classifier = Sequential(Dropout, Linear)`) resolves to its last layer.
CLASSIFIER_PATHS = ("fc", "classifier", "heads.head", "head.fc", "head", "heads", "last_linear")
_FINAL_LAYER_TYPES = (nn.Linear, nn.Conv2d)


def _last_final_layer(module: nn.Module, prefix: str) -> str | None:
    """Dotted name of the last Linear/Conv2d inside `module` (registration order), or None."""
    found = None
    for name, child in module.named_modules(prefix=prefix):
        if isinstance(child, _FINAL_LAYER_TYPES):
            found = name
    return found


def find_classifier_name(model: nn.Module) -> str:
    """Dotted attribute name of the model's final classification layer (a Linear, or squeezenet's 1x1 Conv2d).

    timm models answer through their own `get_classifier()`; others are searched at the usual attribute
    paths, then the last Linear of the whole model is taken as a fallback.
    """
    if callable(getattr(model, "get_classifier", None)):
        layer = model.get_classifier()
        for name, child in model.named_modules():
            if child is layer and isinstance(child, _FINAL_LAYER_TYPES):
                return name
    modules = dict(model.named_modules())
    for path in CLASSIFIER_PATHS:
        if path in modules:
            name = _last_final_layer(modules[path], path)
            if name is not None:
                return name
    name = _last_final_layer(model, "")
    if name is None:
        raise ValueError(f"No Linear or Conv2d layer found in {type(model).__name__}; cannot locate its classifier.")
    return name


def get_classifier(model: nn.Module) -> nn.Module:
    """The final classification layer (nn.Linear or nn.Conv2d) of `model`."""
    return model.get_submodule(find_classifier_name(model))


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the final layer by a freshly initialised one with `num_classes` outputs; returns the new layer.

    Used for models that arrive with a head of the wrong size (e.g. a 1000-class ImageNet model).
    """
    assert num_classes >= 1, f"num_classes must be >= 1, got {num_classes}"
    name = find_classifier_name(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)
    return new


def prior_bias_value(prior: float) -> float:
    """Bias b with sigmoid(b) == prior, i.e. b = -log((1 - p) / p).

    From "Is Sampling Heuristics Necessary in Training Deep Object Detectors?" (sample-free): starting every
    class at a small prior probability keeps the many easy negatives from swamping BCE early in training.
    """
    assert 0.0 < prior < 1.0, f"prior_bias must be a probability in (0, 1), got {prior}"
    return -math.log((1.0 - prior) / prior)


@torch.no_grad()
def set_prior_bias(model: nn.Module, prior: float | list[float | None]) -> float | list[float | None]:
    """Fill the final layer's bias so every class starts at sigmoid probability `prior` (one value, or one per class
    where None leaves that class's bias as initialised); returns the bias value(s).

    Meant for sigmoid/BCE training. With softmax a constant bias shifts all logits equally and has no effect.
    """
    layer = get_classifier(model)
    if getattr(layer, "bias", None) is None:
        raise ValueError(
            f"prior_bias needs a bias, but the final layer {find_classifier_name(model)!r} of "
            f"{type(model).__name__} has none (e.g. torchvision's maxvit_t): drop prior_bias or pick another model."
        )
    if not isinstance(prior, (list, tuple)):
        value = prior_bias_value(prior)
        layer.bias.fill_(value)
        return value
    assert len(prior) == layer.bias.numel(), f"{len(prior)} priors for {layer.bias.numel()} classes"
    values = [None if p is None else prior_bias_value(p) for p in prior]
    for index, value in enumerate(values):
        if value is not None:
            layer.bias[index] = value
    return values
