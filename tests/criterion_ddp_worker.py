"""Every criterion switch that looks at the whole batch, on one rank's shard and on the whole batch, for
tests/test_criterions_ddp.py.

    torchrun --standalone --nproc_per_node 2 tests/criterion_ddp_worker.py OUT_DIR

Each rank first computes every case as one process would on the whole global batch (before the process group
exists, so the criterion sees a world of one), then on its own rows under the process group, and writes
OUT_DIR/rank{R}.pt: per case and step the loss and the gradient w.r.t. the logits, plus GHM's running counts.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from criterions import build_criterion
from utils.distributed import cleanup_distributed, get_rank, get_world_size, init_distributed

NUM_CLASSES = 5
STEPS = 2  # a second step checks that GHM's running counts moved the same way on every rank
# name → criterion, its switches, whether samples carry a per-sample weight (some 0), rows of each rank
CASES = {
    "plain_weighted": ("softmax", {}, True, (8, 8)),
    "ghm": ("softmax", {"ghm_bins": 10}, False, (8, 8)),
    "ghm_momentum": ("softmax", {"ghm_bins": 10, "ghm_momentum": 0.7}, False, (8, 8)),
    "ghm_bce_momentum": ("bce", {"ghm_bins": 10, "ghm_momentum": 0.5}, True, (8, 8)),
    "ohm_half": ("softmax", {"ohm_ratio": 0.5}, False, (8, 8)),
    "ohm_weighted": ("softmax", {"ohm_ratio": 0.7}, True, (8, 8)),
    "ohm_uneven_shards": ("focal", {"ohm_ratio": 0.7}, False, (5, 11)),
    "all": ("softmax", {"label_smoothing": 0.1, "loss_threshold": 0.6, "ghm_bins": 10, "ghm_momentum": 0.5,
                        "ohm_ratio": 0.7}, True, (8, 8)),
}


def global_batches(weighted: bool, rows: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """STEPS fixed random (logits, labels, weight) batches of `rows` samples, the same on every rank.

    Later rows are harder (their target logit lowered), so the shards differ as real ones do and per-shard statistics
    cannot match the global ones by chance (e.g. the hardest half split evenly between the ranks).
    """
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(STEPS):
        logits = torch.randn(rows, NUM_CLASSES, generator=generator) * 2.0
        labels = torch.randint(0, NUM_CLASSES, (rows,), generator=generator)
        logits[torch.arange(rows), labels] -= torch.linspace(0.0, 3.0, rows)
        weight = torch.rand(rows, generator=generator) * (torch.rand(rows, generator=generator) > 0.25)
        batches.append((logits, labels, weight if weighted else None))
    return batches


def run_steps(name: str, rows: slice) -> dict:
    """Loss and logit gradient of each step on `rows` of the global batches, then GHM's running counts."""
    loss_name, switches, weighted, shards = CASES[name]
    criterion = build_criterion(loss_name, num_classes=NUM_CLASSES, **switches)
    losses, grads = [], []
    for logits, labels, weight in global_batches(weighted, sum(shards)):
        logits = logits[rows].clone().requires_grad_()
        loss = criterion(logits, labels[rows], None if weight is None else weight[rows])
        loss.backward()
        losses.append(loss.detach())
        grads.append(logits.grad)
    counts = criterion.ghm.running_counts.clone() if criterion.ghm is not None else None
    return {"loss": losses, "grad": grads, "running_counts": counts}


def main() -> None:
    out = Path(sys.argv[1])
    reference = {name: run_steps(name, slice(None)) for name in CASES}  # no process group yet: a world of one
    init_distributed("cpu")
    rank, world = get_rank(), get_world_size()
    assert world == 2 == int(os.environ["WORLD_SIZE"]), f"run under torchrun with 2 processes, got world {world}"
    results = {}
    for name, (_, _, _, shards) in CASES.items():
        rows = slice(sum(shards[:rank]), sum(shards[: rank + 1]))
        results[name] = {"reference": reference[name], "shard": run_steps(name, rows), "rows": (rows.start, rows.stop)}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(results, out / f"rank{rank}.pt")
    cleanup_distributed()


if __name__ == "__main__":
    main()
