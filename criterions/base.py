"""What every loss shares: targets as class probabilities, the class weights, the seed's switches, the mean.

A loss subclasses `ClassificationLoss` and implements `loss_terms`: the per-class loss terms (N, C) whose sum
over classes is its loss, and the probabilities it predicts. Everything else is done once, here:

    targets (int (N,) or probabilities (N, C)) → probabilities y → label smoothing → [margin on the logits]
    → terms (N, C) × class weights → per sample (softmax family) or per element (bce)
    → threshold mask × GHM weights → per sample → [keep the hardest] → mean weighted by the per-sample weight

Under torchrun a training step's batch is one rank's shard of the global batch, and DDP averages the ranks'
gradients. There GHM's bin counts, OHM's hardest share and the weight sum of the mean are taken over all shards,
and the rank's loss is world_size * (its weighted loss sum) / (global weight sum): the ranks' mean loss, and the
gradient DDP's averaging produces, are then those of one process on the global batch, whatever the world size.
Batches without gradients (validation, whose predictions every rank has already all-gathered) are not sharded.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.distributed import all_reduce_sum, get_world_size

from .switches import GradientHarmonizer, gradient_norm, hardest_mask, unconfident_mask


def target_probabilities(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 (N, C) class probabilities from int64 labels (N,) or from soft targets (N, C) (mixup, cutmix)."""
    if targets.dtype.is_floating_point:
        if targets.dim() != 2 or targets.shape[1] != num_classes:
            raise ValueError(f"soft targets must have shape (N, {num_classes}), got {tuple(targets.shape)}")
        return targets.float()
    if targets.dim() != 1:
        raise ValueError(f"integer targets must have shape (N,), got {tuple(targets.shape)}")
    return F.one_hot(targets, num_classes).float()


def smooth_labels(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """y (1 - eps) + eps / C: the same rule F.cross_entropy's label_smoothing uses."""
    if not smoothing:
        return targets
    return targets * (1.0 - smoothing) + smoothing / targets.shape[1]


class ClassificationLoss(nn.Module):
    """Base of every registered loss: ``loss(logits, targets, weight=None)`` → mean loss (a float32 scalar).

    targets: int64 labels (N,) or float class probabilities (N, C). weight: optional per-sample weight (N,); a
    sample with weight 0 contributes nothing, and the mean is taken over the weights.
    class_weights: one factor per class multiplying its loss terms (softmax: -w_c y_c log p_c; bce: column c).
    loss_threshold: t; predictions already beyond confidence t contribute zero loss (see switches.py).
    ghm_bins / ghm_momentum: GHM-C gradient-harmonising weights when ghm_bins is set.
    ohm_ratio: keep only this fraction of the batch, the samples with the highest (weighted) loss.
    Under torchrun, with gradients, the batch is the global one (see the module docstring): the loss a rank returns
    is world_size * sum(w_i l_i over its samples) / sum(w_i over all ranks' samples), so DDP's gradient average
    equals the single-process gradient of the weighted mean, also when OHM keeps different counts on each rank.
    """

    per_class = False  # True (bce): the switches see each (sample, class) element instead of each sample
    needs_cosine_head = False  # True (margin losses): logits must be scale * cos(theta)

    def __init__(
        self,
        *,
        num_classes: int,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        loss_threshold: float | None = None,
        ghm_bins: int | None = None,
        ghm_momentum: float = 0.0,
        ohm_ratio: float | None = None,
    ) -> None:
        super().__init__()
        assert num_classes >= 1, f"num_classes must be >= 1, got {num_classes}"
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"--label_smoothing must be in [0, 1), got {label_smoothing}")
        if loss_threshold is not None and not 0.0 < loss_threshold < 1.0:
            raise ValueError(f"--loss_threshold must be in (0, 1), got {loss_threshold}")
        if ohm_ratio is not None and not 0.0 < ohm_ratio <= 1.0:
            raise ValueError(f"--ohm_ratio must be in (0, 1], got {ohm_ratio}")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.loss_threshold = loss_threshold
        self.ohm_ratio = ohm_ratio
        self.ghm = GradientHarmonizer(ghm_bins, ghm_momentum) if ghm_bins is not None else None
        # Not persistent: weights are re-resolved from the flags on resume, so a changed --weighted_loss applies.
        self.register_buffer("class_weights", _class_weight_tensor(class_weights, num_classes), persistent=False)

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(terms, probs), both (N, C) float32: per-class loss terms summing to the loss, predicted probabilities."""
        raise NotImplementedError

    def adjust_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Hook for margin losses; `targets` are the unsmoothed class probabilities."""
        return logits

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        hard = target_probabilities(targets, self.num_classes)
        soft = smooth_labels(hard, self.label_smoothing)
        logits = self.adjust_logits(logits.float(), hard)  # float32 even when autocast produced bf16/fp16
        terms, probs = self.loss_terms(logits, soft)
        if self.class_weights is not None:
            terms = terms * self.class_weights.to(terms.device)
        loss = terms if self.per_class else terms.sum(dim=1)
        valid = torch.ones(loss.shape[0], dtype=torch.bool, device=loss.device) if weight is None else weight > 0
        training = logits.requires_grad
        sharded = training and get_world_size() > 1  # a training batch under torchrun is this rank's shard
        loss = loss * self._switch_weights(probs.detach(), hard, soft, valid, update=training, sharded=sharded)
        if self.per_class:
            loss = loss.sum(dim=1)
        return self._reduce(loss, weight, valid, sharded=sharded)

    def _switch_weights(self, probs: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor, valid: torch.Tensor,
                        *, update: bool, sharded: bool) -> torch.Tensor | float:
        factor: torch.Tensor | float = 1.0
        if self.loss_threshold is not None:
            # Confidence is judged against the labels as given, not the smoothed ones.
            factor = unconfident_mask(gradient_norm(probs, hard, per_class=self.per_class), self.loss_threshold)
        if self.ghm is not None:
            # GHM looks at the gradient the loss actually produces, i.e. against the smoothed targets.
            factor = factor * self.ghm(gradient_norm(probs, soft, per_class=self.per_class), valid, update=update,
                                       sharded=sharded)
        return factor

    def _reduce(self, per_sample: torch.Tensor, weight: torch.Tensor | None, valid: torch.Tensor, *,
                sharded: bool) -> torch.Tensor:
        if weight is None:
            weight = torch.ones_like(per_sample)
        elif weight.shape != per_sample.shape:
            raise ValueError(f"weight must have shape {tuple(per_sample.shape)}, got {tuple(weight.shape)}")
        weight = weight.float()
        if self.ohm_ratio is not None:
            weight = weight * hardest_mask(per_sample.detach() * weight, valid, self.ohm_ratio, sharded=sharded)
        if sharded:  # DDP divides the summed gradients by world_size; the weight sum is the global batch's
            return (per_sample * weight).sum() * get_world_size() / all_reduce_sum(weight.sum()).clamp_min(1e-12)
        return (per_sample * weight).sum() / weight.sum().clamp_min(1e-12)

    def extra_repr(self) -> str:
        options = {"num_classes": self.num_classes, "label_smoothing": self.label_smoothing,
                   "class_weights": self.class_weights is not None, "loss_threshold": self.loss_threshold,
                   "ohm_ratio": self.ohm_ratio}
        return ", ".join(f"{k}={v}" for k, v in options.items() if v not in (None, False, 0.0))


def _class_weight_tensor(class_weights: Sequence[float] | None, num_classes: int) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor(list(class_weights), dtype=torch.float32)
    if weights.shape != (num_classes,):
        raise ValueError(f"class_weights needs one weight per class ({num_classes}), got {weights.numel()}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"class_weights must be finite and >= 0, got {weights.tolist()}")
    return weights
