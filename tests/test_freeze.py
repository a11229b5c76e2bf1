"""``--freeze N``: only the classifier trains for N epochs (backbone BatchNorm statistics included), then all of it;
resuming after N starts unfrozen; under DDP the unfrozen backbone stays identical on every rank."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import main as entry
from helpers import torchrun
from optim import BackboneFreezer
from utils.checkpoint import load_checkpoint


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def test_freezer_toggles_grads_and_holds_batchnorm():
    model = small_model()
    freezer = BackboneFreezer(model, head="4", epochs=2)
    assert freezer.set_epoch(0) is True  # changed: rebuild DDP
    assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * 2
    model.train()
    freezer.hold_norms()
    assert not model[1].training and model[4].training
    assert freezer.set_epoch(1) is False  # still frozen: nothing to rebuild
    assert freezer.set_epoch(2) is True
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    freezer.hold_norms()
    assert model[1].training


def test_freeze_zero_changes_nothing():
    model = small_model()
    freezer = BackboneFreezer(model, head="4", epochs=0)
    assert freezer.set_epoch(0) is False and all(p.requires_grad for p in model.parameters())


def common_args(data: Path, out: Path, name: str) -> list[str]:
    return ["--data", str(data), "--epochs", "3", "--freeze", "1", "--warmup", "0", "-b", "8", "-j", "0",
            "--image_size", "32", "32", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"),
            "--name", name, "--device", "cpu", "--no-amp", "--no-channels_last", "--optimizer", "sgd", "--lr", "0.05",
            "--seed", "3"]


def test_backbone_and_its_batchnorm_stats_stay_frozen_then_train(tiny_digits, tmp_path, recorded):
    entry.run_command(common_args(tiny_digits, tmp_path, "freeze") + ["--stop_epoch", "2"])
    start, (after_frozen, after_unfrozen) = recorded["wrapped"][0], recorded["epochs"][:2]
    assert start["trainable"] == {"fc.weight", "fc.bias"}
    backbone = [k for k in start if k != "trainable" and not k.startswith("fc.")]
    assert any("running_mean" in k for k in backbone)
    for key in backbone:  # weights, running_mean/var and num_batches_tracked: all untouched in epoch 0
        assert torch.equal(after_frozen[key], start[key]), f"{key} changed while frozen"
    assert not torch.equal(after_frozen["fc.weight"], start["fc.weight"])
    weights = {k for k in backbone if "running" not in k and "tracked" not in k}
    assert after_unfrozen["trainable"] == weights | {"fc.weight", "fc.bias"}
    assert not torch.equal(after_unfrozen["features.0.0.0.weight"], after_frozen["features.0.0.0.weight"])
    assert not torch.equal(after_unfrozen["features.0.0.1.running_mean"],
                           after_frozen["features.0.0.1.running_mean"])
    assert len(recorded["wrapped"]) == 1  # a single process has no DDP wrapper to rebuild


def test_resume_after_freeze_starts_unfrozen_and_matches_the_full_run(tiny_digits, tmp_path, recorded):
    entry.run_command(common_args(tiny_digits, tmp_path, "full"))
    entry.run_command(common_args(tiny_digits, tmp_path, "split") + ["--stop_epoch", "1"])
    recorded["wrapped"].clear()
    entry.run_command(["--resume", str(tmp_path / "ck/split/last.pth"), "-j", "0"])
    assert "features.0.0.0.weight" in recorded["wrapped"][0]["trainable"]  # epoch 1 >= --freeze 1
    full, split = (load_checkpoint(tmp_path / f"ck/{name}/last.pth") for name in ("full", "split"))
    assert full.epoch == split.epoch == 2
    for key, tensor in full.model.items():
        assert torch.equal(tensor, split.model[key]), f"{key} differs after resume"


def test_unfreezing_under_ddp_keeps_both_ranks_identical(tiny_digits, tmp_path):
    """2 processes (gloo): DDP must be rebuilt at the unfreeze, or the backbone trains on each rank's own
    gradients and the ranks drift apart. tests/freeze_ddp_worker.py records weight digests on every rank."""
    out = tmp_path / "digests"
    args = common_args(tiny_digits, tmp_path, "ddp") + ["--epochs", "2"]  # the last --epochs wins
    torchrun(2, [str(out), "--", *args], script="tests/freeze_ddp_worker.py")
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    (frozen_start, unfrozen_start), (after_frozen, after_unfrozen) = rank0["wrapped"], rank0["epochs"]
    assert not frozen_start["backbone_trainable"] and unfrozen_start["backbone_trainable"]
    assert after_frozen["backbone"] == frozen_start["backbone"] != after_unfrozen["backbone"]
    assert after_frozen["head"] != frozen_start["head"]
