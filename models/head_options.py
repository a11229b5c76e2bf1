"""The head options of `build_model`: a cosine classifier, dropout before the classifier, avg+max pooling.

The classifier replacements subclass nn.Linear and keep its parameter names, so the generic classifier lookup
(prior bias, CAM, freezing) still finds them and checkpoints and pretrained weights keep their keys. timm models
get dropout and pooling through their own `drop_rate` / `global_pool` arguments (see timm_models.py); the
functions here serve our own and torchvision models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import CLASSIFIER_PATHS, find_classifier_name

HEADS = ("linear", "cosine")
POOLINGS = ("avg", "avgmax")
# Top-level attributes where our own and torchvision models keep their global pooling module.
_POOL_ATTRIBUTES = ("avgpool", "pool")


class DropoutLinear(nn.Linear):
    """nn.Linear with dropout on its input: dropout before a classifier without renaming its parameters."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, drop_rate: float = 0.0) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout(x, self.drop_rate, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, drop_rate={self.drop_rate}"


class CosineLinear(DropoutLinear):
    """Cosine classifier: logits = scale * cos(feature, class weight), no bias.

    The scale-times-cosine output keeps softmax, evaluation and export unchanged; the margin losses divide by the
    same scale (--arc_scale) to recover the cosines.
    """

    def __init__(self, in_features: int, out_features: int, *, scale: float = 30.0, drop_rate: float = 0.0) -> None:
        super().__init__(in_features, out_features, bias=False, drop_rate=drop_rate)
        if scale <= 0:
            raise ValueError(f"cosine head scale must be > 0, got {scale}")
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, self.drop_rate, self.training)
        # Normalised in float32: under fp16 autocast a feature's squared norm can overflow; the product of the
        # unit vectors may then run in low precision like any Linear.
        return self.scale * F.linear(F.normalize(x.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


class AdaptiveAvgMaxPool2d(nn.Module):
    """Global average and global max pooling concatenated on channels: (N, C, H, W) → (N, 2C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], dim=1)


def check_head_options(head: str, dropout: float | None, pooling: str) -> None:
    """Fail early, with the choices, on a head option no model supports."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {list(HEADS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {dropout}")


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)


def use_cosine_classifier(model: nn.Module, name: str, *, scale: float) -> CosineLinear:
    """Replace the final Linear of `model` (called `name` in errors) by a freshly initialised CosineLinear."""
    layer_name = find_classifier_name(model)
    old = model.get_submodule(layer_name)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"--head cosine needs a Linear classifier, but {name}'s final layer {layer_name!r} is a "
                         f"{type(old).__name__}; use --head linear or another model")
    # A fresh init rather than the old weights: some families start their head at zero, which has no direction.
    new = CosineLinear(old.in_features, old.out_features, scale=scale).to(old.weight.device, old.weight.dtype)
    _set_child(model, layer_name, new)
    return new


def set_classifier_dropout(model: nn.Module, p: float) -> None:
    """Dropout with probability p right before the final classifier of an own or torchvision model.

    A model that already has an nn.Dropout just before its classifier (the previous module in the same parent:
    small_cnn, mobilenet, efficientnet, googlenet, vgg...) gets that dropout's p set; otherwise the classifier
    becomes a DropoutLinear with the same weights (resnet, regnet, swin...).
    """
    layer_name = find_classifier_name(model)
    layer = model.get_submodule(layer_name)
    parent_name, _, attr = layer_name.rpartition(".")
    siblings = list(model.get_submodule(parent_name)._modules.items())
    index = [key for key, _ in siblings].index(attr)
    if index > 0 and isinstance(siblings[index - 1][1], nn.Dropout):
        siblings[index - 1][1].p = p
    elif isinstance(layer, DropoutLinear):
        layer.drop_rate = p
    elif isinstance(layer, nn.Linear):
        new = DropoutLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, drop_rate=p)
        new.load_state_dict(layer.state_dict())
        _set_child(model, layer_name, new.to(layer.weight.device, layer.weight.dtype))
    else:
        raise ValueError(f"--dropout: no Dropout before the {type(layer).__name__} classifier {layer_name!r} of "
                         f"{type(model).__name__} and it is not a Linear; drop --dropout for this model")


def use_avgmax_pooling(model: nn.Module, name: str) -> None:
    """Replace the global average (or max, as in airbench) pooling of an own or torchvision model `name` by
    AdaptiveAvgMaxPool2d and double the input of the first Linear after it; fails, naming the model, where that
    cannot be done."""
    global_pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    pool_attr = next((a for a in _POOL_ATTRIBUTES if isinstance(getattr(model, a, None), global_pools)), None)
    hint = "use --pooling avg, or timm's version of the model (--model timm/NAME) where timm has one"
    if pool_attr is None:
        raise ValueError(f"--pooling avgmax: {name} has no global average pooling module (avgpool) in front of its "
                         f"classifier to replace; {hint}")
    if tuple(_pair(getattr(model, pool_attr).output_size)) != (1, 1):
        raise ValueError(f"--pooling avgmax: {name}'s {pool_attr} pools to "
                         f"{getattr(model, pool_attr).output_size}, not to 1x1; {hint}")
    first_name, first = _first_head_layer(model)
    if not isinstance(first, nn.Linear):
        raise ValueError(f"--pooling avgmax: {name}'s pooled features go into {first_name!r}, a "
                         f"{type(first).__name__}, not a Linear; {hint}")
    setattr(model, pool_attr, AdaptiveAvgMaxPool2d())
    _set_child(model, first_name, _doubled_input(first))


def _pair(size) -> tuple:
    return (size, size) if isinstance(size, int) else tuple(size)


def _first_head_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The first module with parameters in the model's head container (fc, classifier, head...)."""
    modules = dict(model.named_modules())
    for path in CLASSIFIER_PATHS:
        if path in modules:
            for name, module in modules[path].named_modules(prefix=path):
                if any(True for _ in module.parameters(recurse=False)):
                    return name, module
    raise ValueError(f"no classifier head found in {type(model).__name__}")


@torch.no_grad()
def _doubled_input(layer: nn.Linear) -> nn.Linear:
    """A Linear over [avg, max] features that starts as `layer` applied to (avg + max) / 2, keeping the family's
    own initialisation scale."""
    new = nn.Linear(2 * layer.in_features, layer.out_features, bias=layer.bias is not None)
    new = new.to(layer.weight.device, layer.weight.dtype)
    new.weight.copy_(torch.cat([layer.weight, layer.weight], dim=1) / 2)
    if layer.bias is not None:
        new.bias.copy_(layer.bias)
    return new
