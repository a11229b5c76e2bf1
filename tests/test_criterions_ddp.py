"""The batch-level switches (GHM, OHM, the weighted mean) under torchrun: 2 processes × their shard must train like
1 process × the whole batch. tests/criterion_ddp_worker.py computes both on every rank (CPU, gloo)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from criterion_ddp_worker import CASES, STEPS
from helpers import torchrun

WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("criterion_ddp")
    torchrun(WORLD, [str(out)], script="tests/criterion_ddp_worker.py")
    return [torch.load(Path(out) / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES)
def test_two_processes_give_the_single_process_loss_and_gradient(ranks, case):
    """DDP averages the ranks' parameter gradients, so each rank's logit gradient / WORLD must equal the
    single-process gradient of the same rows, and the ranks' mean loss the single-process loss."""
    reference = ranks[0][case]["reference"]
    for step in range(STEPS):
        shard_losses = torch.stack([r[case]["shard"]["loss"][step] for r in ranks])
        assert float(shard_losses.mean()) == pytest.approx(float(reference["loss"][step]), rel=1e-5), \
            f"step {step}: rank losses {shard_losses.tolist()} vs one process {float(reference['loss'][step])}"
        for rank, result in enumerate(ranks):
            start, stop = result[case]["rows"]
            torch.testing.assert_close(result[case]["shard"]["grad"][step] / WORLD,
                                       reference["grad"][step][start:stop], rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"step {step}, rank {rank}: {m}")
    if reference["running_counts"] is not None:
        for result in ranks:  # GHM's moving average saw the global counts on every rank
            torch.testing.assert_close(result[case]["shard"]["running_counts"], reference["running_counts"])
