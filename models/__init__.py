"""Models: one registry and one factory over our own models, torchvision and timm.

    import models
    model = models.build_model("resnet18", num_classes=7, pretrained="pretrained/resnet18.pth")
    models.list_models("*mobilenet*")
"""
from . import small_cnn  # noqa: F401  (registers our own models)
from .heads import get_classifier, prior_bias_value, replace_classifier, set_prior_bias
from .pretrained import load_pretrained
from .registry import build_model, create_model, list_models, register_model

__all__ = [
    "build_model",
    "create_model",
    "get_classifier",
    "list_models",
    "load_pretrained",
    "prior_bias_value",
    "register_model",
    "replace_classifier",
    "set_prior_bias",
]
