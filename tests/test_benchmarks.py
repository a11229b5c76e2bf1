"""Smoke tests of the benchmark scripts: they run end to end on tiny real data and print complete tables.

No timing is asserted; only that every expected row is there and every ratio is a positive number.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import image_folder, parse_markdown_table
from benchmarks.ddp_scaling import threads_per_process

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # every subprocess is bounded


def run_script(script: str, args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, f"benchmarks/{script}", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def positive_number(text: str) -> float:
    value = float(text)
    assert math.isfinite(value) and value > 0, text
    return value


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Real images to build the benchmark folder from: Fashion-MNIST when prepared, else the bundled digits."""
    prepared = REPO / "data" / "fashion-mnist" / "train"
    if prepared.is_dir():
        return prepared.parent
    out = tmp_path_factory.mktemp("source") / "digits"
    subprocess.run([sys.executable, "-m", "dataloader.prepare", "digits", "--out", str(out), "--limit", "40"],
                   cwd=REPO, check=True, capture_output=True, timeout=TIMEOUT)
    return out


def test_image_folder_layout_and_cache(source, tmp_path):
    folder = image_folder(root=tmp_path, source=source, images=30, source_size=48, fmt="png")
    train = sorted(folder.glob("train/*/*.png"))
    val = sorted(folder.glob("val/*/*.png"))
    assert len(train) + len(val) == 30 and len(val) == 10  # 3 per class: 2 train + 1 val
    assert {p.parent.name for p in train} == {p.parent.name for p in val} and len({p.parent.name for p in val}) == 10
    mtime = train[0].stat().st_mtime_ns
    assert image_folder(root=tmp_path, source=source, images=30, source_size=48, fmt="png") == folder
    assert train[0].stat().st_mtime_ns == mtime  # reused, not rewritten


def test_data_pipeline_prints_both_tables(source, tmp_path):
    common = ["--root", str(tmp_path), "--source", str(source), "--images", "40", "--source_size", "64",
              "--size", "32", "--repeat", "1", "-b", "8"]
    for extra, rate_column in (([], "images/s/worker"), (["--loader", "-j", "1"], "images/s total (1 workers)")):
        out = run_script("data_pipeline.py", common + extra)
        rows = parse_markdown_table(out)
        assert [(r["pipeline"].split()[0], r["transform"].split(":")[0]) for r in rows] == [
            ("torchvision", "train"), ("ours", "train --aug"), ("ours", "train"),
            ("torchvision", "eval"), ("ours", "eval"), ("ours", "device normalisation only")], out
        for row in rows[:-1]:
            positive_number(row[rate_column])
            ratios = [positive_number(row[f"ratio vs reference ({k})"])
                      for k in ("worker only", "worker + device normalisation")]
            if row["pipeline"].startswith("torchvision"):
                assert ratios == [1.0, 1.0], row
        positive_number(rows[-1][rate_column])
        assert "CPU capability" in out and "torch threads per process 1" in out and "processes 1" in out, out


def test_ddp_scaling_prints_three_runs(source, tmp_path):
    out = run_script("ddp_scaling.py", ["--root", str(tmp_path), "--source", str(source), "--images", "40",
                                        "--source_size", "32", "--image_size", "16", "16", "-b", "8",
                                        "--epochs", "1", "--timeout", "100"])
    rows = parse_markdown_table(out)
    expected = [(p, j, threads_per_process(p, j, os.cpu_count())) for p, j in ((1, 1), (2, 1), (1, 2))]
    assert [(int(r["processes"]), int(r["workers per process"]), int(r["OMP threads per process"]))
            for r in rows] == expected, out
    for row in rows:
        positive_number(row["epoch seconds (last epoch)"])
        positive_number(row["ratio vs 1 process"])
    assert rows[0]["ratio vs 1 process"] == "1.00"
    assert "2-process epoch =" in out and "CPU capability" in out, out


def test_checkpoint_overhead_prints_tables_and_results(source, tmp_path):
    """Tiny settings: a small_cnn_tiny write row, the recipe on 40 images at batch 4 (saves every step), one
    interleaved epoch; the recipe's flags must still be z_task_shell/fashion_mnist.sh's."""
    import json

    from benchmarks.checkpoint_overhead import RECIPE

    script = (REPO / "z_task_shell" / "fashion_mnist.sh").read_text().replace("\\\n", " ")
    assert " ".join(RECIPE.split()) in " ".join(script.split()), "RECIPE no longer matches fashion_mnist.sh"
    data = image_folder(root=tmp_path, source=source, images=40, source_size=28, fmt="png")
    out = run_script("checkpoint_overhead.py", [
        "--models", "small_cnn_tiny", "--writes", "2", "--pairs", "1", "--save_every_steps", "1", "-b", "4",
        "--interleaved_epochs", "1", "--block", "2", "--poll_calls", "1000", "--data", str(data), "--root",
        str(tmp_path), "--source", str(source), "--dir", str(tmp_path), "--out", str(tmp_path / "results")])
    writes = parse_markdown_table(out)
    assert [r["model"] for r in writes] == ["small_cnn_tiny", "small_cnn (Fashion-MNIST recipe, 28 px)"], out
    for row in writes:
        positive_number(row["file MB"]), positive_number(row["write ms"])
    recipe = out.split("## Fashion-MNIST recipe", 1)[1]
    steps = int(recipe.split(" steps per epoch", 1)[0].rsplit(" ", 1)[1])
    epochs = parse_markdown_table(recipe)
    assert [r["variant"].split()[0] for r in epochs] == ["without", "--save_every_steps", "interleaved:"], out
    # a save after every step but the last; interleaved: after the steps of every second block of 2
    interleaved = sum((k - 1) // 2 % 2 for k in range(1, steps))
    assert [float(r["mid-epoch saves per epoch"]) for r in epochs] == [0, steps - 1, interleaved], out
    overhead = parse_markdown_table(out.split("## Overhead", 1)[1])
    assert len(overhead) == 5 and overhead[-1]["overhead"].startswith("**"), out
    assert "verdict: PASS" in out and "CPU capability" in out, out
    report = json.loads((tmp_path / "results" / "report.json").read_text())
    assert report["summary"]["saves_in_with_epochs"] == steps - 1 and report["summary"]["meets_target"] is True
    assert [e["variant"] for e in report["epochs"]] == ["warm-up", "without", "with", "interleaved"]
    assert (tmp_path / "results" / "summary.csv").read_text().startswith("part,item,metric,value")
    assert not list(tmp_path.glob("checkpoint_overhead-*")), "the checkpoint folder was not removed"


def test_train_step_prints_every_model_with_its_ratio(tmp_path):
    out = run_script("train_step.py", ["--models", "airbench_m", "airbench_m_whiten", "small_cnn", "--size", "16",
                                       "--batch", "4", "--rounds", "2", "--steps", "2", "--warmup", "1", "--no-amp",
                                       "--no-channels_last", "--json", str(tmp_path / "steps.json")])
    rows = parse_markdown_table(out)
    assert [row["model"] for row in rows] == ["airbench_m", "airbench_m_whiten", "small_cnn"], out
    assert float(rows[0]["speed vs airbench_m"]) == 1.0
    for row in rows:
        for column in ("M multiply-adds / image", "ms / step", "images/s", "GFLOP/s", "speed vs airbench_m"):
            positive_number(row[column])
    assert "CPU capability" in out and "torch threads per process 1" in out, out
    figures = json.loads((tmp_path / "steps.json").read_text())["models"]
    assert [f["model"] for f in figures] == ["airbench_m", "airbench_m_whiten", "small_cnn"]


def test_train_step_runs_every_model_with_every_optimizer(tmp_path):
    out = run_script("train_step.py", ["--models", "small_cnn", "airbench_m", "--optimizers", "sgd", "muon", "--size",
                                       "16", "--batch", "4", "--rounds", "1", "--steps", "2", "--warmup", "1",
                                       "--no-amp", "--no-channels_last", "--json", str(tmp_path / "steps.json")])
    rows = parse_markdown_table(out)
    assert [row["model"] for row in rows] == ["small_cnn + sgd", "small_cnn + muon", "airbench_m + sgd",
                                              "airbench_m + muon"], out
    assert float(rows[0]["speed vs small_cnn + sgd"]) == 1.0
    figures = json.loads((tmp_path / "steps.json").read_text())["models"]
    assert [(f["model"], f["optimizer"]) for f in figures] == [("small_cnn", "sgd"), ("small_cnn", "muon"),
                                                                ("airbench_m", "sgd"), ("airbench_m", "muon")]


def test_train_step_refuses_an_unknown_model_or_optimizer_in_one_line():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for flags, name in ((["--models", "airbench_mm"], "airbench_mm"),
                        (["--models", "small_cnn", "--optimizers", "moun"], "moun")):
        proc = subprocess.run([sys.executable, "benchmarks/train_step.py", *flags], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "error:" in proc.stderr and name in proc.stderr, proc.stderr
