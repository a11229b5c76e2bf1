"""--monitor: the val metric that chooses best.pth and stops early (seed 000: choose by the competition's metric).

Each run trains small_cnn_tiny on the tiny digits for 4 epochs with an lr that makes val numbers move; best.pth must
hold the epoch that summary.csv shows best by the monitored metric, and a resumed run keeps comparing against it.
"""
from __future__ import annotations

import csv
import math

import pytest

import main as entry
from utils.checkpoint import load_checkpoint


def train(data, out, name: str, *extra: str) -> list[dict]:
    entry.run_command(["--data", str(data), "--model", "small_cnn_tiny", "--image_size", "16", "16", "--epochs", "4",
                       "--warmup", "0", "-b", "4", "-j", "0", "--lr", "0.01", "--lr_schedule", "cosine", "--device",
                       "cpu", "--no-channels_last", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"),
                       "--name", name, *extra])
    with open(out / "ck" / name / "summary.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("monitor,column,sign", [("loss", "val_loss", -1), ("macro_f1", "val_macro_f1", 1),
                                                 ("auroc", "val_auroc", 1), ("top1", "val_top1", 1)])
def test_best_pth_holds_the_best_epoch_by_the_monitored_metric(tiny_digits, tmp_path, monitor, column, sign):
    rows = train(tiny_digits, tmp_path, monitor, "--monitor", monitor)
    values = [sign * float(row[column]) for row in rows]
    best_epoch = max(range(len(values)), key=lambda e: (values[e], -e))  # the first of equal bests
    best = load_checkpoint(tmp_path / "ck" / monitor / "best.pth")
    assert best.epoch == best.best_epoch == best_epoch, (monitor, values)
    assert best.best_score == pytest.approx(values[best_epoch])
    assert best.best_top1 == pytest.approx(float(rows[best_epoch]["val_top1"]))
    if monitor in ("macro_f1", "auroc"):
        assert all(0.0 <= float(row[column]) <= 1.0 for row in rows)
        report = entry.run_command(["--evaluation", "--resume", str(tmp_path / "ck" / monitor / "best.pth"),
                                    "--split", "val", "-j", "0", "--output", str(tmp_path / "eval")])
        expected = report["macro_f1" if monitor == "macro_f1" else "macro_auroc"]
        assert float(rows[best_epoch][column]) == pytest.approx(expected, abs=1e-9)  # the same number as the report


def test_a_resumed_run_compares_with_the_checkpoints_best_score(tiny_digits, tmp_path):
    full = train(tiny_digits, tmp_path, "full", "--monitor", "loss")
    entry.run_command(["--data", str(tiny_digits), "--model", "small_cnn_tiny", "--image_size", "16", "16", "--epochs",
                       "4", "--stop_epoch", "2", "--warmup", "0", "-b", "4", "-j", "0", "--lr", "0.01",
                       "--lr_schedule", "cosine", "--device", "cpu", "--no-channels_last", "--checkpoint_dir",
                       str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"), "--name", "half", "--monitor",
                       "loss"])
    half = load_checkpoint(tmp_path / "ck" / "half" / "last.pth")
    assert math.isfinite(half.best_score) and half.best_score == -min(float(r["val_loss"]) for r in full[:2])
    entry.run_command(["--resume", str(tmp_path / "ck" / "half" / "last.pth"), "-j", "0"])
    a, b = (load_checkpoint(tmp_path / "ck" / name / "best.pth") for name in ("full", "half"))
    assert a.best_epoch == b.best_epoch and a.best_score == b.best_score

