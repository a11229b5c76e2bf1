"""Loss registry and the one factory, `build_criterion`.

Every loss takes ``(logits, targets, weight=None)`` and returns the mean loss in float32. ``targets`` are int64
labels (N,) or float class probabilities (N, C) (mixup/cutmix), for every loss; ``weight`` is an optional
per-sample weight (N,) (curriculum learning and distillation rely on it). The main seed's switches (class weights,
GHM, OHM, threshold) work with every loss and compose; see criterions/base.py for the order they apply in.

    criterion = build_criterion("focal", num_classes=10, focal_gamma=2.0, ghm_bins=10)
    loss = criterion(logits, targets)
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

from . import classification, margin  # noqa: F401  (register the losses)
from .base import ClassificationLoss, smooth_labels, target_probabilities
from .class_weights import AUTO, class_weights_from_targets, read_class_weights, resolve_class_weights
from .registry import CRITERIONS, register_criterion
from .switches import GradientHarmonizer, gradient_norm, hardest_mask, unconfident_mask

__all__ = [
    "AUTO", "CRITERIONS", "ClassificationLoss", "GradientHarmonizer", "build_criterion",
    "class_weights_from_targets", "gradient_norm", "hardest_mask", "read_class_weights", "register_criterion",
    "resolve_class_weights", "resolve_head", "smooth_labels", "target_probabilities", "unconfident_mask",
]


def build_criterion(
    name: str,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | None = None,
    focal_gamma: float = 2.0,
    arc_margin: float = 0.5,
    arc_scale: float = 30.0,
    loss_threshold: float | None = None,
    ghm_bins: int | None = None,
    ghm_momentum: float = 0.0,
    ohm_ratio: float | None = None,
) -> ClassificationLoss:
    """Build loss `name` (an unknown name fails with the choices and the closest match).

    class_weights: one weight per class (see class_weights.py for where they come from), or None.
    focal_gamma: focal's gamma. arc_margin / arc_scale: margin m and scale s of arcface and amsoftmax.
    loss_threshold: enables the threshold switch with confidence t. ghm_bins: enables GHM-C with that many bins
    (ghm_momentum: moving average of the bin counts). ohm_ratio: enables hard example mining keeping that share.
    A loss receives only the loss-specific arguments it declares (gamma for focal, margin/scale for the margins).
    """
    cls = CRITERIONS.get(name)
    specific = {"gamma": focal_gamma, "margin": arc_margin, "scale": arc_scale}
    accepted = inspect.signature(cls).parameters
    return cls(num_classes=num_classes, label_smoothing=label_smoothing, class_weights=class_weights,
               loss_threshold=loss_threshold, ghm_bins=ghm_bins, ghm_momentum=ghm_momentum, ohm_ratio=ohm_ratio,
               **{k: v for k, v in specific.items() if k in accepted})


def resolve_head(criterion: str, head: str | None) -> str:
    """The classifier head a run uses: margin losses need `cosine` (chosen when `head` is None), others `linear`."""
    needs_cosine = CRITERIONS.get(criterion).needs_cosine_head
    if head is None:
        return "cosine" if needs_cosine else "linear"
    if needs_cosine and head != "cosine":
        raise ValueError(f"--criterion {criterion} applies its margin to cosine logits and needs --head cosine; "
                         f"drop --head {head} (cosine is then chosen) or pick another --criterion")
    return head
