"""Training tricks: gradient accumulation, clipping, L1/L2 penalties, SyncBatchNorm on CPU, EMA, SWA, early
stopping and torch.compile's fallback, each checked against a hand computation or a real run."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import main as entry
import models
from engine.components import init_from_data, split_dataset_of
from engine.training import maybe_compile, optimizer_step, train_one_epoch, weight_penalty
from config import Config
from criterions import build_criterion
from dataloader.preprocess import Preprocessing
from helpers import torchrun
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def tiny_batches(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    images = torch.randint(0, 256, (total, 3, 4, 4), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, 3, (total,), generator=g)
    out, start = [], 0
    for n in sizes:
        out.append((images[start:start + n], targets[start:start + n], torch.arange(start, start + n)))
        start += n
    return out


def run_epoch(batches, accum_steps: int, clip_grad: float | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))  # no BatchNorm: batch splits must not matter
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    cfg = Config(accum_steps=accum_steps, clip_grad=clip_grad, amp=False, channels_last=False, epochs=1,
                 log_interval=1000)
    train_one_epoch(model, batches, build_criterion("softmax", num_classes=3), optimizer, scheduler, scaler, cfg,
                    Preprocessing(image_size=(4, 4), mean=(0.5,) * 3, std=(0.25,) * 3), CPU, epoch=0)
    return model


@pytest.mark.parametrize("micro,large", [([4, 4, 4, 4], [8, 8]), ([4, 4, 4], [8, 4])])
def test_accumulation_equals_one_large_batch(micro, large):
    """Two micro-batches of 4 with --accum_steps 2 give the weights of one batch of 8; a short last group
    (one batch left over) is averaged over its own size."""
    accumulated = run_epoch(tiny_batches(micro), accum_steps=2)
    plain = run_epoch(tiny_batches(large), accum_steps=1)
    for a, b in zip(accumulated.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clip_grad_bounds_the_update():
    param = nn.Parameter(torch.zeros(4))
    model = nn.Module()
    model.p = param
    optimizer = torch.optim.SGD([param], lr=1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    param.grad = torch.tensor([30.0, 40.0, 0.0, 0.0])  # norm 50
    optimizer_step(model, optimizer, scaler, clip_grad=5.0)
    torch.testing.assert_close(param.detach(), torch.tensor([-3.0, -4.0, 0.0, 0.0]))
    assert param.grad is None  # cleared for the next accumulation group


def test_weight_penalty_matches_hand_computation():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    expected = 0.1 * (1 + 2 + 3 + 0.5) + 0.01 * (1 + 4 + 9 + 0.25)
    assert weight_penalty([w], l1=0.1, l2=0.01).item() == pytest.approx(expected)


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("no backend here")

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(torch, "compile", lambda m: Broken())
    cfg = Config(compile=True, batch_size=4, image_size=[8, 8], amp=False, channels_last=False)
    with caplog.at_level(logging.WARNING):
        result = maybe_compile(model, model, cfg, CPU, logging.getLogger("test"))
    assert result is model
    assert "--compile failed" in caplog.text and "no backend here" in caplog.text
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


SYNC_BN_SCRIPT = r"""
import json, sys, torch
from torch import nn
from utils.distributed import init_distributed, all_gather_tensor, cleanup_distributed
from utils.sync_batchnorm import convert_sync_batchnorm
info = init_distributed("cpu")
g = torch.Generator().manual_seed(0)
x = torch.randn(6, 3, 5, 5, generator=g) * 3 + 1
w_out = torch.randn(6, 3, 5, 5, generator=g)
ref = nn.BatchNorm2d(3)
with torch.no_grad():
    ref.weight.copy_(torch.tensor([0.5, 1.5, -1.0])); ref.bias.copy_(torch.tensor([0.1, 0.0, -0.2]))
synced = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), info.device)[0]
with torch.no_grad():
    synced.weight.copy_(ref.weight); synced.bias.copy_(ref.bias)
mine = slice(3 * info.rank, 3 * info.rank + 3)   # rank r holds 3 of the 6 samples
xr = x[mine].clone().requires_grad_(True)
(synced(xr) * w_out[mine]).sum().backward()
input_grads = all_gather_tensor(xr.grad)
weight_grads = all_gather_tensor(synced.weight.grad.unsqueeze(0)).sum(0)
if info.rank == 0:
    xf = x.clone().requires_grad_(True)
    (ref(xf) * w_out).sum().backward()
    result = {"input_grad": (input_grads - xf.grad).abs().max().item(),
              "weight_grad": (weight_grads - ref.weight.grad).abs().max().item(),
              "running_mean": (synced.running_mean - ref.running_mean).abs().max().item(),
              "running_var": (synced.running_var - ref.running_var).abs().max().item(),
              "type": type(synced).__name__}
    json.dump(result, open(sys.argv[1], "w"))
cleanup_distributed()
"""


def test_sync_batchnorm_on_cpu_equals_full_batch_two_processes(tmp_path):
    script = tmp_path / "sync_bn.py"
    script.write_text(SYNC_BN_SCRIPT)
    out = tmp_path / "result.json"
    torchrun(2, [str(out)], script=str(script))
    result = json.loads(out.read_text())
    assert result["type"] == "GlobalBatchNorm2d"
    for key in ("input_grad", "weight_grad", "running_mean", "running_var"):
        assert result[key] < 1e-4, (key, result)


def base_args(data: Path, out: Path, name: str) -> list[str]:
    return ["--data", str(data), "--image_size", "32", "32", "-b", "8", "-j", "0", "--warmup", "0",
            "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--name", name, "--device", "cpu",
            "--no-amp", "--no-channels_last", "--lr", "0.003", "--lr_schedule", "cosine"]


def test_swa_averages_the_last_epochs_and_survives_resume(tiny_digits, tmp_path):
    """SWA over the last 2 of 3 epochs, the run interrupted after epoch 2 and resumed: swa.pth's weights are
    the mean of the end-of-epoch weights of epochs 2 and 3; EMA is validated and checkpointed alongside."""
    args = base_args(tiny_digits, tmp_path, "swa") + ["--epochs", "3", "--swa", "--swa_epochs", "2", "--ema"]
    entry.run_command(args + ["--stop_epoch", "2"])
    epoch2 = load_checkpoint(tmp_path / "ck/swa/last.pth")
    assert epoch2.ema is not None and epoch2.swa is not None
    entry.run_command(["--resume", str(tmp_path / "ck/swa/last.pth"), "-j", "0"])
    epoch3 = load_checkpoint(tmp_path / "ck/swa/last.pth")
    swa = load_checkpoint(tmp_path / "ck/swa/swa.pth")
    assert swa.weights == "swa"
    params = [name for name, value in epoch3.model.items() if "running" not in name and "num_batches" not in name]
    for name in params:
        expected = (epoch2.model[name].float() + epoch3.model[name].float()) / 2
        torch.testing.assert_close(swa.model[name].float(), expected, rtol=1e-5, atol=1e-6)
    rows = list(csv.DictReader(open(tmp_path / "ck/swa/summary.csv")))
    assert len(rows) == 3 and all(row["ema_val_top1"] for row in rows)
    best = load_checkpoint(tmp_path / "ck/swa/best.pth")
    assert best.weights in {"model", "ema", "swa"}
    # the evaluation application reads best.pth's "model" whichever weights won
    entry.run_command(["--evaluation", "--resume", str(tmp_path / "ck/swa/best.pth"), "--split", "val", "-j", "0",
                "--output", str(tmp_path / "eval")])
    assert json.loads((tmp_path / "eval/report.json").read_text())["samples"] == 40


def test_patience_stops_when_val_top1_stalls(tiny_digits, tmp_path):
    entry.run_command(base_args(tiny_digits, tmp_path, "patience") + ["--epochs", "6", "--patience", "1", "--lr", "1e-9"])
    rows = list(csv.DictReader(open(tmp_path / "ck/patience/summary.csv")))
    top1 = [float(row["val_top1"]) for row in rows]
    best_epoch = max(range(len(top1)), key=lambda i: (top1[i], -i))  # first epoch with the best value
    assert len(rows) == min(6, best_epoch + 2), top1  # stops one epoch after the last improvement
    assert len(rows) < 6


def test_torchrun_sync_bn_training_keeps_ranks_identical(tiny_digits, tmp_path):
    args = base_args(tiny_digits, tmp_path, "syncbn") + ["--epochs", "1", "--sync_bn", "--model", "small_cnn"]
    torchrun(2, args)
    ckpt = load_checkpoint(tmp_path / "ck/syncbn/last.pth")
    assert ckpt.config["sync_bn"] is True
    # the checkpoint loads into the plain (unsynchronised) model for evaluation and export
    entry.run_command(["--evaluation", "--resume", str(tmp_path / "ck/syncbn/last.pth"), "--split", "val", "-j", "0",
                "--output", str(tmp_path / "eval")])


def test_whitening_stem_is_fitted_once_from_train_images_and_never_trained(tiny_digits, tmp_path):
    """airbench_m_whiten: a new run fits the stem to --seed's draw of unaugmented train images; training leaves it
    as it is; a resumed run keeps the fitted filters instead of fitting again; evaluation rebuilds the model by name."""
    args = base_args(tiny_digits, tmp_path, "white") + ["--model", "airbench_m_whiten", "--epochs", "2",
                                                        "--aug", "flipcrop,erasing", "--seed", "3"]
    entry.run_command(args + ["--stop_epoch", "1"])
    epoch1 = load_checkpoint(tmp_path / "ck/white/last.pth")
    cfg = Config.from_dict(epoch1.config)
    fresh = models.build_model("airbench_m_whiten", num_classes=10)
    assert init_from_data(fresh, cfg, epoch1.class_names) == len(split_dataset_of(cfg, "train", epoch1.class_names))
    fitted = fresh.features[0].conv.weight
    assert not torch.equal(fitted, models.build_model("airbench_m_whiten", num_classes=10).features[0].conv.weight)
    torch.testing.assert_close(epoch1.model["features.0.conv.weight"], fitted, rtol=0, atol=0)
    entry.run_command(["--resume", str(tmp_path / "ck/white/last.pth"), "-j", "0"])
    epoch2 = load_checkpoint(tmp_path / "ck/white/last.pth")
    assert epoch2.epoch == epoch1.epoch + 1
    torch.testing.assert_close(epoch2.model["features.0.conv.weight"], fitted, rtol=0, atol=0)
    log = (tmp_path / "ck/white/train.log").read_text()
    assert log.count("airbench_m_whiten initialised from") == 1
    entry.run_command(["--evaluation", "--resume", str(tmp_path / "ck/white/best.pth"), "--split", "val", "-j", "0",
                       "--output", str(tmp_path / "eval")])
    assert json.loads((tmp_path / "eval/report.json").read_text())["samples"] == 40


def test_pretrained_weights_keep_a_fitted_whitening_stem_and_a_missing_one_is_fitted(tiny_digits, tmp_path):
    """--pretrained into airbench_m_whiten: a file with a fitted stem keeps it (no refit from this run's images);
    a plain airbench_m file has no stem to give, so the run fits it as a new run does, and loads the rest."""
    donor = models.build_model("airbench_m_whiten", num_classes=10)
    donor.init_from_images(torch.randn(64, 3, 32, 32))
    torch.save(donor.state_dict(), tmp_path / "whitened.pth")
    plain = models.build_model("airbench_m", num_classes=10)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    for name, file in ("keep", "whitened.pth"), ("fit", "plain.pth"):
        entry.run_command(base_args(tiny_digits, tmp_path, name) + ["--model", "airbench_m_whiten", "--epochs", "1",
                                                                    "--pretrained", str(tmp_path / file)])
    kept = load_checkpoint(tmp_path / "ck/keep/last.pth")
    torch.testing.assert_close(kept.model["features.0.conv.weight"], donor.features[0].conv.weight, rtol=0, atol=0)
    assert "initialised from" not in (tmp_path / "ck/keep/train.log").read_text()
    fit = load_checkpoint(tmp_path / "ck/fit/last.pth")
    fresh = models.build_model("airbench_m_whiten", num_classes=10)
    init_from_data(fresh, Config.from_dict(fit.config), fit.class_names)
    torch.testing.assert_close(fit.model["features.0.conv.weight"], fresh.features[0].conv.weight, rtol=0, atol=0)
    assert "airbench_m_whiten initialised from" in (tmp_path / "ck/fit/train.log").read_text()
