"""A user's mistake gives one line ``error: ...`` naming the flag or file, no traceback, exit code 2 (usage) or 1
(data); ``--debug`` shows the traceback; a run that fails before training leaves no run folder behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

TIMEOUT = 180


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT, env=env)


def assert_one_error_line(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture
def run_args(tmp_path):
    return ["--checkpoint_dir", tmp_path / "ck", "--log_dir", tmp_path / "logs", "--name", "run", "-j", "0",
            "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tiny_digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("errors")
    result = cli("--data", tiny_digits, "--model", "small_cnn_tiny", "--image_size", "16", "16", "--epochs", "1",
                 "-b", "16", "-j", "0", "--checkpoint_dir", out / "ck", "--log_dir", out / "logs", "--name", "ok")
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "ck/ok/best.pth"


def test_missing_data(tmp_path, run_args):
    assert_one_error_line(cli("--data", tmp_path / "nowhere", *run_args), 2, "--data", "nowhere")
    assert not (tmp_path / "ck").exists()  # failed before training: no run folder


@pytest.mark.parametrize("what", ["missing", "folder", "text"])
def test_resume_missing_folder_or_text(tmp_path, run_args, tiny_digits, what):
    target = {"missing": tmp_path / "none.pth", "folder": tmp_path, "text": tmp_path / "notes.pth"}[what]
    if what == "text":
        target.write_text("not a checkpoint\n")
    result = cli("--evaluation", "--resume", target, "--data", tiny_digits, "-j", "0")
    line = assert_one_error_line(result, 1 if what == "text" else 2, "--resume", str(target))
    assert {"missing": "does not exist", "folder": "is a folder", "text": "cannot be read"}[what] in line


def test_unknown_model_names_the_closest(tiny_digits, run_args, tmp_path):
    assert_one_error_line(cli("--data", tiny_digits, "--model", "resnet1B", *run_args), 2, "resnet1B")
    assert not (tmp_path / "ck" / "run").exists()


@pytest.mark.parametrize("flags, needle", [(["--image_size", "0", "0"], "--image_size"), (["-b", "0"], "-b"),
                                           (["--epochs", "-1"], "--epochs"), (["--epochs", "0"], "--epochs")])
def test_bad_numbers_are_usage_errors(tiny_digits, run_args, tmp_path, flags, needle):
    assert_one_error_line(cli("--data", tiny_digits, *flags, *run_args), 2, needle, ">= 1")
    assert not (tmp_path / "ck").exists()


def test_csv_listing_a_missing_image_is_a_data_error(tiny_digits, tmp_path, run_args):
    root = tmp_path / "data"
    shutil.copytree(tiny_digits / "train", root / "images")
    rows = [f"images/{p.parent.name}/{p.name},{p.parent.name}" for p in sorted((root / "images").rglob("*.png"))]
    (root / "train.csv").write_text("filename,label\n" + "\n".join(rows + ["images/0/gone.png,0"]) + "\n")
    assert_one_error_line(cli("--data", root, *run_args), 1, "train.csv", "gone.png")


def test_empty_class_folder_is_a_data_error(tiny_digits, tmp_path, run_args):
    root = tmp_path / "data"
    shutil.copytree(tiny_digits, root)
    (root / "train" / "empty_class").mkdir()
    assert_one_error_line(cli("--data", root, *run_args), 1, "empty_class", "has no images")
    assert not (tmp_path / "ck").exists()


def test_debug_shows_the_traceback(tmp_path, run_args):
    result = cli("--data", tmp_path / "nowhere", "--debug", *run_args)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_flags_of_another_job_are_refused(tiny_digits):
    assert_one_error_line(cli("--data", tiny_digits, "--int8"), 2, "--int8", "--onnx")


def test_predict_folder_with_one_bad_image(checkpoint, tiny_digits, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(tiny_digits / "test", folder)
    (folder / "0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "submission.csv"
    result = cli("--predict", folder, "--resume", checkpoint, "--output", out, "-j", "0")
    assert_one_error_line(result, 1, "1 image(s) could not be read", "broken.png")
    rows = out.read_text().splitlines()
    good = len(list(folder.rglob("*.png"))) - 1
    assert rows[0] == "filename,label" and len(rows) == good + 1 and not any("broken" in r for r in rows)
    assert (tmp_path / "submission.unreadable.txt").read_text().strip().endswith("broken.png")
    assert "unreadable:" in result.stderr


def test_the_run_log_records_a_failure_during_training(tiny_digits, tmp_path, run_args):
    """A run that fails after its folder exists keeps the traceback in train.log; the console shows one line."""
    result = cli("--data", tiny_digits, "--model", "small_cnn_tiny", "--image_size", "16", "16", "--epochs", "1",
                 "--lr", "1e30", "-b", "16", *run_args)
    assert_one_error_line(result, 2, "loss became")
    log = (tmp_path / "ck" / "run" / "train.log").read_text()
    assert "Traceback" in log and "NonFiniteLossError" in log and "config.yaml" not in log
    assert (tmp_path / "ck" / "run" / "config.yaml").is_file()
