"""benchmarks/time_to_accuracy.py end to end on tiny digits: our recipe and timm's own train.py (the copy in
benchmarks/peers/) each train two epochs on the same folders; the curves, targets, report and raw files are checked
against the runs' own summaries. No timing is asserted."""
from __future__ import annotations

import csv
import json
import sys

import pytest

from benchmarks.time_to_accuracy import Curve, complete_rows, summarise
from helpers import run


def test_curve_targets_and_budgets():
    curve = Curve("ours", [], minutes=[1.0, 2.5, 4.0], top1=[80.0, 91.0, 93.5], wall_minutes=4.2)
    assert curve.minutes_to(90) == 2.5 and curve.minutes_to(93) == 4.0 and curve.minutes_to(99) is None
    assert curve.top1_at(0.5) is None and curve.top1_at(3.9) == 91.0 and curve.top1_at(4.0) == 93.5
    peer = Curve("timm", [], minutes=[3.0, 6.0], top1=[85.0, 90.5], wall_minutes=6.5)
    lines, numbers = summarise([curve, peer], [90.0, 93.0], [3.0], {"bf16": 1e11, "fp32": 5e10}, images=100)
    assert numbers["targets"]["90.0"] == {"ours_minutes": 2.5, "timm_minutes": 6.0, "ratio": 2.5 / 6.0}
    assert numbers["ratio"] is None  # timm never reached 93%
    assert numbers["budgets"]["3.0"] == {"ours_top1": 91.0, "timm_top1": 85.0}
    text = "\n".join(lines)
    assert "< 0.62 (timm never reached it)" in text and "+6.00 points" in text


def test_complete_rows_ignores_a_half_written_line(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("epoch,eval_top1\n0,50.0\n1,6")
    assert complete_rows(path) == [{"epoch": "0", "eval_top1": "50.0"}]
    assert complete_rows(tmp_path / "absent.csv") == []


def test_race_on_tiny_digits_runs_both_tools_and_keeps_their_files(tiny_digits, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: small_cnn\nimage_size: [16, 16]\nepochs: 2\nwarmup: 0\nlr: 0.003\nbatch_size: 32\n"
                      "workers: 0\nseed: 0\n")
    results = tmp_path / "results"
    out = run([sys.executable, "benchmarks/time_to_accuracy.py", "--data", str(tiny_digits), "--eval_split", "test",
               "--ours", str(recipe), "--timm_args", "--epochs 2 --img-size 16 -b 32 --workers 0 --warmup-epochs 0",
               "--targets", "10", "20", "--budgets", "0.5", "--results", str(results)]).stdout
    report = json.loads((results / "report.json").read_text())
    assert report["eval_split"] == "test" and [c["tool"] for c in report["curves"]] == ["ours", "timm"]
    ours, timm = report["curves"]
    assert len(ours["top1"]) == 2 and len(timm["top1"]) == 2
    # each curve's top-1 is its own run's summary, evaluated on the test split (tiny_digits: 50 test images)
    assert ours["top1"] == [float(r["val_top1"]) for r in csv.DictReader(open(results / "ours" / "summary.csv"))]
    assert timm["top1"] == [float(r["eval_top1"]) for r in csv.DictReader(open(results / "timm" / "summary.csv"))]
    assert all(0 < m1 <= m2 for m1, m2 in [ours["minutes"], timm["minutes"]])
    assert "--num-classes" in timm["command"] and "resnet18" in timm["command"]
    for name in ("stdout.log", "summary.csv", "train.log", "config.yaml"):
        assert (results / "ours" / name).is_file(), name
    assert (results / "timm" / "args.yaml").is_file() and (results / "curves.png").stat().st_size > 5000
    assert report["ours_effective_flops"] > 0 and report["timm_effective_flops"] > 0
    assert "time to 20% (min)" in out and "top-1 at 0.5 min (%)" in out and "matmul peak" in out
    assert "effective training GFLOP/s" in out


def test_a_missing_timm_script_is_one_error_line(tiny_digits, tmp_path):
    import subprocess

    from helpers import REPO
    proc = subprocess.run([sys.executable, "benchmarks/time_to_accuracy.py", "--data", str(tiny_digits),
                           "--timm_train", str(tmp_path / "nope.py")], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--timm_train" in proc.stderr and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("split", ["val", "test"])
def test_the_race_folder_links_the_evaluated_split_as_val(tiny_digits, tmp_path, split):
    from benchmarks.time_to_accuracy import race_folder

    race = race_folder(tiny_digits, split, tmp_path / "race")
    assert (race / "val").resolve() == (tiny_digits / split).resolve()
    assert (race / "train").resolve() == (tiny_digits / "train").resolve()


def test_train_profile_accounts_for_the_whole_step(tiny_digits):
    from benchmarks.common import parse_markdown_table

    out = run([sys.executable, "benchmarks/train_profile.py", "--data", str(tiny_digits), "--model", "resnet9_half",
               "--image_size", "16", "16", "-b", "8", "-j", "0", "--steps", "3", "--warmup", "1"]).stdout
    rows = {r["group (self CPU time)"]: float(r["% of wall"]) for r in parse_markdown_table(out)}
    assert rows["convolutions: dense 3x3"] > 10, rows
    assert {"batch norm", "optimizer", "data: loader wait"} <= set(rows), rows
    assert sum(rows.values()) == pytest.approx(100, abs=1.0)  # the groups and the remainder make up the wall time
    assert "3 profiled steps after 1" in out and "CPU" in out


def test_only_ours_runs_one_tool_and_still_reports_it(tiny_digits, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: small_cnn\nimage_size: [16, 16]\nepochs: 1\nwarmup: 0\nbatch_size: 32\nworkers: 0\n")
    out = run([sys.executable, "benchmarks/time_to_accuracy.py", "--data", str(tiny_digits), "--only", "ours",
               "--ours", str(recipe), "--targets", "5", "--results", str(tmp_path / "r")]).stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [c["tool"] for c in report["curves"]] == ["ours"] and not (tmp_path / "r" / "timm").exists()
    assert "ratio" not in report and report["ours_effective_flops"] > 0
    assert "ours / timm" not in out and "time to 5% (min)" in out
