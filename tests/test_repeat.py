"""--repeat N: N seeds in one process group (nested train/evaluate), each evaluated on test, and the CV report."""
from __future__ import annotations

import json

from helpers import torchrun


def test_repeat_two_seeds_under_torchrun_writes_the_report(tiny_digits, tmp_path):
    torchrun(2, ["--data", str(tiny_digits), "--model", "small_cnn", "--image_size", "32", "32", "-b", "8",
                 "--epochs", "1", "--warmup", "0", "-j", "0", "--checkpoint_dir", str(tmp_path / "ck"),
                 "--log_dir", str(tmp_path / "logs"), "--name", "rep", "--seed", "11", "--repeat", "2",
                 "--no-channels_last", "--no-amp"])
    report = json.loads((tmp_path / "ck/rep/repeat.json").read_text())
    assert [r["seed"] for r in report["runs"]] == [11, 12]
    tests = [r["test_top1"] for r in report["runs"]]
    assert all(0 <= t <= 100 for t in tests)
    summary = report["summary"]["test_top1"]
    assert summary["n"] == 2 and abs(summary["mean"] - sum(tests) / 2) < 1e-9
    low, high = summary["ci95"]
    assert low <= summary["mean"] <= high
    assert (tmp_path / "ck/rep/seed12/eval_test/report.json").is_file()
    assert "95% CI" in (tmp_path / "ck/rep/repeat.md").read_text()
