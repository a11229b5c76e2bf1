"""launch/ray_train.py: main.py's training under Ray Train's TorchTrainer is the same DDP run as under torchrun.

Two CPU workers (gloo) on the tiny digits set train in two launches, the first stopped after epoch 1
(--stop_epoch), the second continuing it through the --resume auto the launcher adds, as a restart by Ray's
FailureConfig does. The result must equal one uninterrupted 2-process torchrun run: the same metrics and
bit-identical weights in last.pth. Ray starts a local cluster for each launch (about half a minute each).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from helpers import REPO, TIMEOUT, run, torchrun
from utils.checkpoint import load_checkpoint

pytest.importorskip("ray.train.torch", reason="Ray Train is not installed (pip install -r requirements.txt)")

LAUNCHER = str(REPO / "launch" / "ray_train.py")
RECIPE = ["--model", "small_cnn_tiny", "--image_size", "16", "16", "--epochs", "2", "-b", "8", "-j", "0",
          "--no-channels_last", "--no-amp", "--device", "cpu"]
COMPARED = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5")


def ray_train(workers: int, storage, args: list[str]) -> tuple[dict, str]:
    """Run the launcher (a local Ray cluster); the metrics it prints (rank 0's last epoch) and its whole output,
    which carries the workers' logs."""
    proc = run([sys.executable, LAUNCHER, "--workers", str(workers), "--storage", str(storage), "--", *args])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("metrics: ")]
    assert lines, f"no metrics line in the launcher's output:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("metrics: ")), proc.stdout + proc.stderr


def test_ray_train_matches_torchrun(tiny_digits, tmp_path):
    args = ["--data", str(tiny_digits), *RECIPE, "--checkpoint_dir", str(tmp_path / "checkpoints")]
    start = time.perf_counter()
    torchrun(2, [*args, "--name", "torchrun"])
    torchrun_seconds = time.perf_counter() - start

    start = time.perf_counter()
    first, _ = ray_train(2, tmp_path / "ray", [*args, "--name", "ray", "--stop_epoch", "1"])
    stopped = load_checkpoint(tmp_path / "checkpoints" / "ray" / "last.pth")
    resumed, output = ray_train(2, tmp_path / "ray", [*args, "--name", "ray"])
    ray_seconds = time.perf_counter() - start
    print(f"torchrun: {torchrun_seconds:.1f} s; Ray Train, two launches: {ray_seconds:.1f} s")

    assert first["epoch"] == 0 and stopped.epoch == 0, (first, stopped.epoch)
    last = tmp_path / "checkpoints" / "ray" / "last.pth"
    assert f"resumed {last} at epoch" in output, f"the second launch did not continue {last}:\n{output[-3000:]}"
    reference = load_checkpoint(tmp_path / "checkpoints" / "torchrun" / "last.pth")
    ours = load_checkpoint(tmp_path / "checkpoints" / "ray" / "last.pth")
    assert ours.epoch == reference.epoch == 1, (ours.epoch, reference.epoch)
    assert resumed == ours.metrics, (resumed, ours.metrics)  # what Ray got from rank 0 is what the run saved
    assert {k: ours.metrics[k] for k in COMPARED} == {k: reference.metrics[k] for k in COMPARED}, \
        (ours.metrics, reference.metrics)
    differing = [k for k in reference.model if not torch.equal(ours.model[k], reference.model[k])]
    assert not differing, f"weights differ from torchrun's in {differing}"


def launcher_error(args: list[str], *, block_ray: bool = False) -> subprocess.CompletedProcess:
    """Run the launcher expecting a user's mistake (no Ray cluster is started); ``block_ray`` hides the package."""
    code = ("import runpy, sys\n"
            + ("sys.modules['ray'] = None  # import ray fails as when it is not installed\n" if block_ray else "")
            + f"sys.argv = [{LAUNCHER!r}, *{args!r}]\n"
            + f"runpy.run_path({LAUNCHER!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)


@pytest.mark.parametrize("args, block_ray, message", [
    (["--workers", "2", "--", *RECIPE], False, "error: name the run with --name NAME"),
    (["--workers", "2", "--", *RECIPE, "--name", "x", "--resume", "other.pth"], False, "error: --resume other.pth"),
    (["--workers", "2", *RECIPE, "--name", "x"], False, "error: separate main.py's flags with --"),
    (["--workers", "2", "--", *RECIPE, "--name", "x"], True, "error: Ray Train is not installed"),
])
def test_a_users_mistake_is_one_line(args, block_ray, message):
    proc = launcher_error(args, block_ray=block_ray)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
