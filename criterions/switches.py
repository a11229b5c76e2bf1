"""The main seed's loss switches, written once for every loss: GHM-C, online hard example mining and the threshold.

Each works on the "gradient norm" g of a prediction: how far the predicted probabilities are from the targets.
For sigmoid (bce) losses it is per element, g = |p - y|, which is exactly |dL/dlogit|. For softmax losses it is
per sample, half the L1 distance 0.5 * sum_c |p_c - y_c|, which is 1 - p_target for an integer label.

GHM and OHM look at the whole batch. With `sharded=True` (a training step under torchrun, where each rank holds its
shard of the global batch) they take their statistics over every rank's shard, so 2 processes x batch B choose
the same weights and samples as 1 process x batch 2B.
"""
from __future__ import annotations

import torch
from torch import nn

from utils.distributed import all_gather_shards, all_reduce_sum


def gradient_norm(probs: torch.Tensor, targets: torch.Tensor, *, per_class: bool) -> torch.Tensor:
    """g in [0, 1]: |p - y| per element (N, C) when `per_class`, else 0.5 * ||p - y||_1 per sample (N,)."""
    distance = (probs - targets).abs()
    return distance if per_class else 0.5 * distance.sum(dim=1)


def unconfident_mask(grad_norm: torch.Tensor, threshold: float) -> torch.Tensor:
    """1.0 where the prediction is not yet beyond confidence `threshold`, 0.0 where it is (the seed's threshold loss).

    g < 1 - t means: a sample with p_target > t, a bce positive with p > t or a bce negative with p < 1 - t.
    """
    return (grad_norm >= 1.0 - threshold).float()


def hardest_mask(scores: torch.Tensor, valid: torch.Tensor, ratio: float, *, sharded: bool = False) -> torch.Tensor:
    """Online hard example mining: True for the round(ratio * valid count) (at least 1) highest `scores`.

    Ties go to the earlier sample. Ranks are computed on the device (no .item()), so the training loop does not wait
    for the GPU here. `sharded`: the batch is this rank's shard; the count and the ranks are taken over the shards
    of all ranks concatenated in rank order (an all-gather, which does sync), and this rank's part is returned.
    """
    assert scores.dim() == 1, f"scores must be per sample (N,), got shape {tuple(scores.shape)}"
    if sharded:
        gathered, own = all_gather_shards(torch.stack([scores, valid.to(scores.dtype)], dim=1))
        return hardest_mask(gathered[:, 0], gathered[:, 1] > 0, ratio)[own]
    keep = (valid.sum() * ratio).round().clamp_min(1)
    order = torch.argsort(scores, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank < keep


class GradientHarmonizer(nn.Module):
    """GHM-C weights (Li et al., "Gradient Harmonized Single-stage Detector", AAAI 2019).

    g in [0, 1] is split into `bins` equal bins; an element in a bin holding `count` of the `total` valid elements
    gets weight total / (count * nonempty_bins), so the weights of a batch average to 1 and the crowd of easy
    examples (and of outliers) is down-weighted. With `momentum` > 0 the bin counts are a moving average kept in
    the `running_counts` buffer (saved with the checkpoint); a bin seen for the first time starts from its count,
    so early batches are not inflated by 1 / (1 - momentum) as in the reference implementation.
    """

    def __init__(self, bins: int = 10, momentum: float = 0.0) -> None:
        super().__init__()
        if bins < 1:
            raise ValueError(f"--ghm_bins must be >= 1, got {bins}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"--ghm_momentum must be in [0, 1), got {momentum}")
        self.bins = bins
        self.momentum = momentum
        self.register_buffer("running_counts", torch.zeros(bins))

    @torch.no_grad()
    def forward(self, grad_norm: torch.Tensor, valid: torch.Tensor, *, update: bool = True,
                sharded: bool = False) -> torch.Tensor:
        """Detached weights shaped like `grad_norm`; `valid` (N,) marks samples that count (weight > 0).

        `update` moves the running counts (training steps only, so validation leaves them alone). `sharded`: the
        batch is this rank's shard; the bin counts and the valid total are summed over ranks first, so every rank
        weights by the global batch and keeps the same running counts.
        """
        valid = valid.float().view(-1, *[1] * (grad_norm.dim() - 1)).expand_as(grad_norm)
        index = (grad_norm * self.bins).long().clamp_(0, self.bins - 1)  # g == 1 belongs to the last bin
        counts = torch.zeros(self.bins, device=grad_norm.device).scatter_add_(0, index.flatten(), valid.flatten())
        total = valid.sum()
        if sharded:  # one collective for both
            summed = all_reduce_sum(torch.cat([counts, total.view(1)]))
            counts, total = summed[:-1], summed[-1]
        density = self._running(counts, update) if self.momentum > 0 else counts
        nonempty = (counts > 0).sum()
        weights = total / (density[index] * nonempty).clamp_min(1e-12)
        return weights * valid

    def _running(self, counts: torch.Tensor, update: bool) -> torch.Tensor:
        running = self.running_counts.to(counts.device)
        blended = torch.where(running > 0, self.momentum * running + (1 - self.momentum) * counts, counts)
        running = torch.where(counts > 0, blended, running)  # bins empty in this batch keep their history
        if update:
            self.running_counts.copy_(running)
        return running

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}"
