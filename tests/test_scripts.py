"""The shell scripts (z_task_shell/*.sh, .ci/run) parse, stop at the first failing command, and never pipe into an
early-exiting reader: under pipefail, `sort | head -n 1` can fail at random when head exits before sort has
written everything (SIGPIPE, exit 141), which once stopped the quickstart after training."""
from __future__ import annotations

import csv
import os
import re
import socket
import subprocess

import pytest

import main as entry
from helpers import REPO, TIMEOUT
from utils.checkpoint import load_checkpoint

SCRIPTS = sorted((REPO / "z_task_shell").glob("*.sh")) + [REPO / ".ci" / "run"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_parses_fails_fast_and_does_not_pipe_into_head(script):
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    assert "set -euo pipefail" in text, f"{script.name}: add `set -euo pipefail` so a failing step stops the script"
    code = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments may mention the pattern
    assert not re.search(r"\|\s*head\b", code), f"{script.name}: piping into head can SIGPIPE the writer"


# --- the recipe scripts of a trained run, as a user runs them (setup_env.sh finds the installed .venv) ------------


def script(name: str, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", f"z_task_shell/{name}"], cwd=REPO, capture_output=True, text=True,
                          timeout=2 * TIMEOUT, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert proc.returncode == 0, f"{name}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tiny_digits, tmp_path_factory):
    """A 3-epoch small_cnn_tiny run that kept its last 2 epoch checkpoints (for average.sh)."""
    out = tmp_path_factory.mktemp("scripts")
    entry.run_command(["--data", str(tiny_digits), "--model", "small_cnn_tiny", "--image_size", "16", "16",
                       "--epochs", "3", "--warmup", "0", "-b", "8", "-j", "0", "--keep_epochs", "2", "--device", "cpu",
                       "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--name", "run"])
    return out / "ck" / "run"


def test_predict_sh_writes_an_ensemble_submission_with_tta(trained, tiny_digits, tmp_path):
    models = f"{trained / 'best.pth'} {trained / 'last.pth'}"
    script("predict.sh", MODELS=models, WEIGHTS="2 1", IMAGES=str(tiny_digits / "test"), OUT=str(tmp_path / "s.csv"))
    rows = list(csv.reader(open(tmp_path / "s.csv")))
    assert rows[0][:2] == ["filename", "label"] and len(rows[0]) == 12  # + one probability per class
    assert len(rows) - 1 == len(list((tiny_digits / "test").rglob("*.png")))


def test_visualize_sh_writes_the_contact_sheet(trained, tmp_path):
    script("visualize.sh", CKPT=str(trained / "best.pth"), SPLIT="test", LIMIT="4", OUT=str(tmp_path / "cam"))
    assert (tmp_path / "cam" / "index.html").is_file() and len(list((tmp_path / "cam").glob("*_cam.png"))) == 4


def test_average_sh_averages_the_kept_epochs_and_evaluates(trained):
    script("average.sh", RUN_DIR=str(trained), K="2")
    assert (trained / "average_last2.pth").is_file()
    assert (trained / "eval_test_average_last2" / "report.json").is_file()


def test_onnx_sh_exports_checks_and_classifies(trained, tiny_digits):
    image = sorted((tiny_digits / "test").rglob("*.png"))[0]
    proc = script("onnx.sh", CKPT=str(trained / "last.pth"), IMAGE=str(image))
    assert (trained / "last.onnx").is_file() and (trained / "last.int8.onnx").is_file()
    assert f"{image}: " in proc.stdout and "FPS" in proc.stdout


def test_ddp_multinode_sh_trains_with_two_processes_on_one_node(tiny_digits, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.run(["bash", "z_task_shell/ddp_multinode.sh", "--data", str(tiny_digits), "--model",
                           "small_cnn_tiny", "--image_size", "16", "16", "--epochs", "1", "--warmup", "0", "-b", "4",
                           "-j", "0", "--device", "cpu", "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir",
                           str(tmp_path / "logs")], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "NNODES": "1", "NPROC": "2",
                               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RUN": "mn"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(tmp_path / "ck" / "mn" / "last.pth").world_size == 2
    missing = subprocess.run(["bash", "z_task_shell/ddp_multinode.sh"], cwd=REPO, capture_output=True, text=True,
                             timeout=60, env={k: v for k, v in os.environ.items() if k != "MASTER_ADDR"})
    assert missing.returncode != 0 and "set MASTER_ADDR" in missing.stderr
