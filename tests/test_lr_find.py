"""``--lr_find``: the exponential sweep, its smoothing and suggestions, and the real application on tiny data,
in one process and under torchrun."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

import main as entry
from applications.lr_find import smooth_losses, suggest_lr, sweep_lrs
from helpers import torchrun


def test_sweep_is_geometric_from_start_to_end():
    lrs = sweep_lrs(1e-6, 1.0, 61)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([10 ** 0.1] * 60)
    with pytest.raises(ValueError, match="--lr_find_start"):
        sweep_lrs(1.0, 1e-3, 10)


def test_smoothing_is_bias_corrected():
    assert smooth_losses([2.0] * 5) == pytest.approx([2.0] * 5)  # no pull towards 0 at the start
    smoothed = smooth_losses([1.0, 3.0], beta=0.5)
    assert smoothed == pytest.approx([1.0, (0.5 * 0.5 * 1.0 + 0.5 * 3.0) / 0.75])


def test_suggestions_on_a_known_curve():
    """Falls fastest at lr 1e-3 (x = -3), bottoms out at lr 1e-1, then blows up (ends non-finite)."""
    lrs = sweep_lrs(1e-6, 1.0, 61)
    curve = [-math.tanh(2 * (x + 3)) + 5 * max(0.0, x + 1) ** 2 for x in (math.log10(lr) for lr in lrs)]
    result = suggest_lr(lrs, curve[:-1] + [math.inf])
    assert result["steepest"] == pytest.approx(1e-3, rel=1e-6)
    assert result["min_div10"] == pytest.approx(1e-2, rel=1e-6)


def lr_find_args(data: Path, out: Path, steps: int) -> list[str]:
    return ["--lr_find", "--data", str(data), "-b", "8", "-j", "0", "--device", "cpu", "--no-amp",
            "--no-channels_last", "--optimizer", "sgd", "--lr_find_start", "1e-4", "--lr_find_end", "1e4",
            "--lr_find_steps", str(steps), "--output", str(out), "--checkpoint_dir", str(out / "ck")]


def read_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_lr_find_writes_plot_and_csv_and_suggests_a_finite_lr(tiny_digits, tmp_path, capsys):
    out = tmp_path / "lrf"
    entry.run_command(lr_find_args(tiny_digits, out, 30))
    png = (out / "lr_find.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    rows = read_rows(out / "lr_find.csv")
    # SGD at lr up to 1e4 diverges: the sweep stops once the smoothed loss passes 4x its minimum
    assert 3 <= len(rows) < 30
    last = rows[-1]["smoothed_loss"]
    assert not math.isfinite(last) or last > 4 * min(r["smoothed_loss"] for r in rows)
    assert [r["lr"] for r in rows] == pytest.approx(sweep_lrs(1e-4, 1e4, 30)[:len(rows)])
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "suggested lr" in line)
    suggested = float(line.split("suggested lr ")[1].split()[0])
    assert math.isfinite(suggested) and 1e-4 <= suggested <= 1e4
    assert not list(out.rglob("*.pth"))  # the lr finder saves no model


def test_lr_find_under_torchrun_averages_over_two_processes(tiny_digits, tmp_path):
    out = tmp_path / "lrf2"
    proc = torchrun(2, lr_find_args(tiny_digits, out, 8))
    assert "world size 2" in proc.stdout and proc.stdout.count("suggested lr") == 1  # rank 0 reports once
    rows = read_rows(out / "lr_find.csv")
    assert 2 <= len(rows) <= 8 and all(math.isfinite(r["lr"]) for r in rows)
    assert (out / "lr_find.png").stat().st_size > 5000
