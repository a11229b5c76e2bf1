"""Softmax cross-entropy, the seed's sigmoid one-vs-all loss, and the softmax focal loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ClassificationLoss
from .registry import register_criterion


@register_criterion("softmax")
class SoftmaxCrossEntropy(ClassificationLoss):
    """Cross-entropy -sum_c y_c log softmax(z)_c, for labels or soft targets; --label_smoothing applies."""

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = F.log_softmax(logits, dim=1)
        return -targets * log_probs, log_probs.exp()


@register_criterion("bce")
class SigmoidBinaryCrossEntropy(ClassificationLoss):
    """The seed's sigmoid loss: C one-vs-all binary problems, summed over classes, -y log s(z) - (1-y) log(1-s(z))."""

    per_class = True

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none"), torch.sigmoid(logits)


@register_criterion("focal")
class SoftmaxFocalLoss(ClassificationLoss):
    """Softmax focal loss (Lin et al. 2017): -sum_c y_c (1 - p_c)^gamma log p_c; gamma 0 is cross-entropy."""

    def __init__(self, *, gamma: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if gamma < 0:
            raise ValueError(f"--focal_gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = F.log_softmax(logits, dim=1)
        # 1 - p via expm1 keeps precision for confident predictions; the floor keeps the gradient of
        # (1 - p)^gamma finite at p == 1 when gamma < 1.
        modulation = (-torch.expm1(log_probs)).clamp_min(1e-12).pow(self.gamma)
        return -targets * modulation * log_probs, log_probs.exp()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, {super().extra_repr()}"
