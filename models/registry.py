"""Model registry and the one factory, `build_model`, that the applications call.

A name resolves in this order:
  1. our own models, registered here with `@register_model(name)` (e.g. `small_cnn`);
  2. torchvision classification models by their torchvision name (`resnet18`, `mobilenet_v3_small`...);
  3. timm models by their timm name (`resnest50d`, `ghostnet_100`...).
A bare name that exists in both torchvision and timm (resnet50, efficientnet_b0, densenet121...) builds the
torchvision model; prefix it with `timm/` (`timm/resnet50`) to get timm's.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from functools import partial

from torch import nn

from .head_options import check_head_options, set_classifier_dropout, use_avgmax_pooling, use_cosine_classifier
from .heads import set_prior_bias
from .pretrained import load_pretrained
from .timm_models import TIMM_PREFIX, create_timm_model, is_timm_model, list_timm_models
from .torchvision_models import create_torchvision_model, list_torchvision_models

ModelFn = Callable[..., nn.Module]
_model_entrypoints: dict[str, ModelFn] = {}
SOURCES = ("registry", "torchvision", "timm")
LIST_HINT = "List all names with: python -c \"import models; print(models.list_models())\" (or a pattern: '*net*')."


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator registering `fn(*, num_classes, **kwargs) -> nn.Module` under `name`; duplicates are refused."""

    def wrapper(fn: ModelFn) -> ModelFn:
        if name in _model_entrypoints:
            raise ValueError(f"Model {name!r} is already registered (by {_model_entrypoints[name].__module__}).")
        _model_entrypoints[name] = fn
        return fn

    return wrapper


def _names_by_source(source: str) -> list[str]:
    if source == "registry":
        return list(_model_entrypoints)
    if source == "torchvision":
        return list(list_torchvision_models())
    if source == "timm":
        names = list(list_timm_models())
        # Names torchvision shadows stay reachable through the prefix, so list them that way too.
        shadowed = set(names) & (set(_model_entrypoints) | set(list_torchvision_models()))
        return names + [TIMM_PREFIX + n for n in shadowed]
    raise ValueError(f"Unknown model source {source!r}; choose from {SOURCES}.")


def list_models(pattern: str | None = None, *, source: str | None = None) -> list[str]:
    """Sorted names accepted by `build_model`, optionally filtered by an fnmatch `pattern` and a `source`.

    `source` is one of "registry" (our own models), "torchvision" or "timm"; None lists all of them.
    """
    names = {n for s in ([source] if source else SOURCES) for n in _names_by_source(s)}
    if pattern is not None:
        names = {n for n in names if fnmatch.fnmatch(n, pattern)}
    return sorted(names)


def _unknown_model_error(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.6)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    return ValueError(f"Unknown model {name!r}.{hint} {LIST_HINT}")


def model_source(name: str) -> str:
    """Where `name` resolves: "registry" (our own), "torchvision" or "timm", in that order of precedence."""
    if name in _model_entrypoints:
        return "registry"
    if name in list_torchvision_models():
        return "torchvision"
    if is_timm_model(name.removeprefix(TIMM_PREFIX)):
        return "timm"
    raise _unknown_model_error(name)


def create_model(
    name: str,
    *,
    num_classes: int,
    head: str = "linear",
    dropout: float | None = None,
    pooling: str = "avg",
    cosine_scale: float = 30.0,
    **kwargs,
) -> nn.Module:
    """Build the bare model `name` with a `num_classes`-way head (no pretrained weights, no prior bias).

    head: "linear", or "cosine" for a CosineLinear classifier returning cosine_scale * cos(theta).
    dropout: dropout probability right before the classifier; None keeps the model's own default.
    pooling: "avg", or "avgmax" for concatenated global average and max pooling (classifier input doubled).
    Models that cannot take an option fail with a message naming the model and the option.
    """
    check_head_options(head, dropout, pooling)
    source = model_source(name)
    if source == "timm":
        model = create_timm_model(name, num_classes=num_classes, dropout=dropout, pooling=pooling, **kwargs)
    else:
        builder = _model_entrypoints[name] if source == "registry" else partial(create_torchvision_model, name)
        model = builder(num_classes=num_classes, **kwargs)
        if pooling == "avgmax":
            use_avgmax_pooling(model, name)
    if head == "cosine":
        use_cosine_classifier(model, name, scale=cosine_scale)
    if dropout is not None and source != "timm":  # timm applies its drop_rate itself
        set_classifier_dropout(model, dropout)
    return model


def build_model(
    name: str,
    *,
    num_classes: int,
    pretrained: str | None = None,
    prior_bias: float | list[float | None] | None = None,
    head: str = "linear",
    dropout: float | None = None,
    pooling: str = "avg",
    cosine_scale: float = 30.0,
    bn_momentum: float | None = None,
    **kwargs,
) -> nn.Module:
    """Build model `name` for `num_classes` classes, optionally from local weights and with a prior bias.

    pretrained: path of a local state dict or checkpoint (see models/pretrained.py); tensors whose shape does
        not fit (typically the head of a model trained on another class count) are skipped with a warning.
    prior_bias: probability p in (0, 1), or one per class (None: keep that class's bias); the final layer's bias
        is set to -log((1 - p) / p) so the class starts at sigmoid probability p ("sample-free" initialisation for
        sigmoid/BCE training). It is applied before loading weights, so a head that loads from `pretrained` keeps
        its trained bias.
    head, dropout, pooling, cosine_scale: the head options, see `create_model`.
    bn_momentum: the running-statistics momentum of every BatchNorm layer (None: the model's own).
    kwargs: passed to the model's builder (e.g. drop_path_rate for timm models).
    """
    assert num_classes >= 1, f"num_classes must be >= 1, got {num_classes}"
    if bn_momentum is not None and not 0 < bn_momentum <= 1:
        raise ValueError(f"--bn_momentum must be in (0, 1], got {bn_momentum}")
    if prior_bias is not None and head == "cosine":
        raise ValueError("--prior_bias sets the classifier's bias, and the cosine head has none; drop --prior_bias "
                         "or use --head linear")
    model = create_model(name, num_classes=num_classes, head=head, dropout=dropout, pooling=pooling,
                         cosine_scale=cosine_scale, **kwargs)
    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    if prior_bias is not None:
        set_prior_bias(model, prior_bias)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Set the running-statistics momentum of every BatchNorm layer; returns how many there are. torchvision's
    MobileNetV3 (0.01, TensorFlow's decay 0.99) averages over about 100 steps: in a short run from scratch the
    statistics trail the changing weights, and eval-mode accuracy can fall to chance while train accuracy rises."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = momentum
    return len(norms)


def batchnorm_lag_warning(model: nn.Module, name: str, steps: int) -> str | None:
    """A warning when ``model``'s slowest BatchNorm momentum is below PyTorch's 0.1 and too small for a run of
    ``steps`` optimizer steps (momentum x steps < 20, e.g. 0.01 and under 2,000 steps), else None."""
    momenta = [m.momentum for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None]
    if not momenta or min(momenta) >= 0.1 or min(momenta) * steps >= 20:
        return None
    slowest = min(momenta)
    return (f"{name}'s BatchNorm momentum is {slowest:g}: its running statistics average over about "
            f"{1 / slowest:.0f} steps and this run has {steps}, so in eval mode they can trail the weights (val "
            f"accuracy far below train accuracy); --bn_momentum 0.1 makes them follow")
