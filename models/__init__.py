"""Models: one registry and one factory over our own models, torchvision and timm.

    import models
    model = models.build_model("resnet18", num_classes=7, pretrained="pretrained/resnet18.pth")
    model = models.build_model("small_cnn", num_classes=7, head="cosine", dropout=0.2, pooling="avgmax")
    models.list_models("*mobilenet*")
"""
from . import airbench, resnet9, small_cnn, wide_resnet  # noqa: F401  (register our own models)
from .head_options import HEADS, POOLINGS, AdaptiveAvgMaxPool2d, CosineLinear, DropoutLinear
from .heads import get_classifier, prior_bias_value, replace_classifier, set_prior_bias
from .pretrained import load_pretrained
from .registry import build_model, create_model, list_models, model_source, register_model

__all__ = [
    "HEADS",
    "POOLINGS",
    "AdaptiveAvgMaxPool2d",
    "CosineLinear",
    "DropoutLinear",
    "build_model",
    "create_model",
    "get_classifier",
    "list_models",
    "load_pretrained",
    "model_source",
    "prior_bias_value",
    "register_model",
    "replace_classifier",
    "set_prior_bias",
]
