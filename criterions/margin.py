"""Additive margin losses on a cosine classifier head: ArcFace and AM-Softmax (CosFace).

The cosine head outputs logits z = s * cos(theta) (so evaluation and export need nothing special); these losses
recover cos(theta) = z / s, push the target class's angle or cosine by the margin m, and apply softmax
cross-entropy. With soft targets (mixup) each class gets the margin m * y_c, so a one-hot soft target is exactly
the integer-label case and a 50/50 mix gives each of the two classes half the margin.
"""
from __future__ import annotations

import math

import torch

from .classification import SoftmaxCrossEntropy
from .registry import register_criterion

# acos has an infinite slope at +-1; cosines are kept just inside so the gradient stays finite.
_COS_LIMIT = 1.0 - 1e-6


class AdditiveMarginLoss(SoftmaxCrossEntropy):
    """Softmax cross-entropy on s * target_cosine(cos, m * y) for classes with a margin, s * cos for the rest."""

    needs_cosine_head = True

    def __init__(self, *, margin: float, scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if margin < 0:
            raise ValueError(f"--arc_margin must be >= 0, got {margin}")
        if scale <= 0:
            raise ValueError(f"--arc_scale must be > 0, got {scale}")
        self.margin = margin
        self.scale = scale

    def target_cosine(self, cos: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        """The cosine with the margin applied (only used where margins > 0)."""
        raise NotImplementedError

    def adjust_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cos = (logits / self.scale).clamp(-_COS_LIMIT, _COS_LIMIT)
        margins = self.margin * targets
        return torch.where(margins > 0, self.scale * self.target_cosine(cos, margins), logits)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, scale={self.scale}, {super().extra_repr()}"


@register_criterion("arcface")
class ArcFaceLoss(AdditiveMarginLoss):
    """ArcFace (Deng et al. 2019): target logit s * cos(theta + m)."""

    def target_cosine(self, cos: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(cos)
        # Past theta + m > pi, cos(theta + m) would grow again as theta grows; ArcFace's own fallback
        # cos(theta) - m sin(m) keeps the target logit decreasing in theta there.
        return torch.where(theta + margins <= math.pi, torch.cos(theta + margins), cos - margins * torch.sin(margins))


@register_criterion("amsoftmax")
class AMSoftmaxLoss(AdditiveMarginLoss):
    """AM-Softmax / CosFace (Wang et al. 2018): target logit s * (cos(theta) - m)."""

    def target_cosine(self, cos: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        return cos - margins
