"""Loss registry. Every loss takes ``(logits, targets, weight=None)`` and returns the mean loss, where
``weight`` is an optional per-sample weight (curriculum learning and distillation rely on it)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.registry import Registry

CRITERIONS = Registry("--criterion")
register_criterion = CRITERIONS.register


def _weighted_mean(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_sample.mean()
    return (per_sample * weight).sum() / weight.sum().clamp_min(1e-12)


@register_criterion("softmax")
class SoftmaxCrossEntropy(torch.nn.Module):
    """Softmax cross-entropy with optional label smoothing."""

    def __init__(self, *, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None):
        loss = F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=self.label_smoothing)
        return _weighted_mean(loss, weight)


@register_criterion("bce")
class SigmoidBinaryCrossEntropy(torch.nn.Module):
    """The seed's sigmoid loss: multi-class as one-vs-all binary problems."""

    def __init__(self, *, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None):
        onehot = F.one_hot(targets, self.num_classes).float()
        if self.label_smoothing:
            onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        loss = F.binary_cross_entropy_with_logits(logits.float(), onehot, reduction="none").sum(dim=1)
        return _weighted_mean(loss, weight)


def build_criterion(name: str, *, num_classes: int, label_smoothing: float = 0.0) -> torch.nn.Module:
    return CRITERIONS.get(name)(num_classes=num_classes, label_smoothing=label_smoothing)
