"""Runs that survive pre-emption and repeat bit for bit (engine/preemption.py, --resume auto, elastic restarts).

Every run here is a real ``python main.py`` or ``torchrun`` process on the tiny digits set (20 steps per epoch at
batch 2); a signal or kill -9 lands wherever the run is, and the resumed run must end with the weights of a run
that was never stopped.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO
from utils.checkpoint import load_checkpoint
from utils.errors import PREEMPTED_EXIT

TIMEOUT = 240


def recipe(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", "small_cnn_tiny", "--image_size", "16", "16", "--epochs", "4",
            "--warmup", "1", "-b", "2", "-j", "0", "--ema", "--aug", "basic", "--mixup", "0.5", "--device", "cpu",
            "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--name", name, *extra]


def command(nproc: int, args: list[str], restarts: int = 0) -> list[str]:
    if nproc == 1:
        return [sys.executable, "main.py", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            f"--max-restarts={restarts}", "main.py", *args]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(cmd: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == expect, f"{proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


STARTED: list[subprocess.Popen] = []


def start(cmd: list[str]) -> subprocess.Popen:
    """A background run in a session of its own, killed with all its children after the test if still alive."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def no_leftover_runs():
    """A failed test must not leave launchers and workers running into the rest of the suite."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def start_and_wait_for_checkpoint(cmd: list[str], last: Path, mid_epoch: bool = False) -> subprocess.Popen:
    """Start ``cmd`` and return once its first periodic checkpoint exists (the run is inside an epoch). With
    ``mid_epoch``, once one written inside an epoch exists: a time-based save can first fire at an epoch's end, and a
    signal right after that save stops the run at the epoch boundary (correctly, but with nothing mid-epoch to test)."""
    proc = start(cmd)
    deadline = time.monotonic() + TIMEOUT
    while not last.exists() or (mid_epoch and not _inside_an_epoch(last)):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    return proc


def _inside_an_epoch(path: Path) -> bool:
    try:
        return load_checkpoint(path).batches_done > 0
    except Exception:  # noqa: BLE001  replaced while we read it: look again
        return False


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first.epoch == second.epoch and first.batches_done == second.batches_done == 0
    for part in ("model", "ema"):
        x, y = getattr(first, part), getattr(second, part)
        differ = [k for k in x if not torch.equal(x[k], y[k])]
        assert not differ, f"{part}: {len(differ)} of {len(x)} tensors differ, e.g. {differ[:3]}"
    assert first.metrics["train_loss"] == pytest.approx(second.metrics["train_loss"], rel=1e-12)


@pytest.fixture(scope="module")
def reference(tiny_digits, tmp_path_factory) -> dict:
    """Uninterrupted runs with 1 and 2 processes: the weights every interrupted run must end with."""
    out = tmp_path_factory.mktemp("reference")
    paths = {}
    for nproc in (1, 2):
        run(command(nproc, recipe(tiny_digits, out, f"full{nproc}", "--no-channels_last")))
        paths[nproc] = out / f"ck/full{nproc}/last.pth"
    return paths


@pytest.mark.parametrize("nproc, every", [(1, ["--save_every_steps", "3"]), (2, ["--save_every_steps", "3"]),
                                          (1, ["--save_every_minutes", "0.002"])])
def test_sigterm_mid_epoch_then_resume_auto_is_bit_identical(nproc, every, reference, tiny_digits, tmp_path):
    args = recipe(tiny_digits, tmp_path, "cut", "--no-channels_last", "--resume", "auto")
    last = tmp_path / "ck/cut/last.pth"
    proc = start_and_wait_for_checkpoint(command(nproc, [*args, *every]), last, mid_epoch=nproc == 1)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to its workers
    output = proc.communicate(timeout=TIMEOUT)[0]
    assert proc.returncode == (PREEMPTED_EXIT if nproc == 1 else 1), output[-3000:]  # torchrun itself exits 1
    assert "stopped by SIGTERM" in output and "--resume auto" in output
    stopped = load_checkpoint(last)
    assert stopped.world_size == nproc and len(stopped.rng_per_rank) == nproc
    if nproc == 1 and every[0] == "--save_every_steps":  # signalled after step 3 of 20: it stops mid-epoch
        assert stopped.batches_done > 0 and stopped.partial["seen"] == 2 * stopped.batches_done
    elif nproc == 1:  # a mid-epoch save was seen; the signal may still land in an epoch's last step (no poll there)
        assert stopped.batches_done == 0 or stopped.partial["seen"] == 2 * stopped.batches_done
    resumed = run(command(nproc, args)).stdout
    assert "resumed" in resumed
    assert_same_weights(reference[nproc], last)
    again = run(command(nproc, args)).stdout  # the same command once more: the run is finished, a no-op
    assert "already finished" in again


def test_torchrun_restarts_after_kill_9_and_ends_bit_identical(reference, tiny_digits, tmp_path):
    args = recipe(tiny_digits, tmp_path, "elastic", "--no-channels_last", "--resume", "auto", "--save_every_steps",
                  "4")
    last = tmp_path / "ck/elastic/last.pth"
    proc = start_and_wait_for_checkpoint(command(2, args, restarts=1), last)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGKILL)
    output = proc.communicate(timeout=TIMEOUT)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "resumed" in output  # the restarted workers continued from the periodic checkpoint
    assert_same_weights(reference[2], last)


def test_a_changed_world_size_is_refused(tiny_digits, tmp_path):
    args = recipe(tiny_digits, tmp_path, "grow", "--no-channels_last", "--resume", "auto")
    last = tmp_path / "ck/grow/last.pth"
    proc = start_and_wait_for_checkpoint(command(2, [*args, "--save_every_steps", "2"]), last)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=TIMEOUT)
    result = run(command(1, args), expect=2)
    assert "trained by 2 process(es) and this run has 1" in result.stderr and "Traceback" not in result.stderr


def test_resume_auto_starts_fresh_and_needs_a_name(tiny_digits, tmp_path):
    args = recipe(tiny_digits, tmp_path, "new", "--no-channels_last", "--resume", "auto", "--epochs", "1")
    assert "resumed" not in run(command(1, args)).stdout
    assert (tmp_path / "ck/new/last.pth").is_file()
    nameless = [a for a in args if a not in ("--name", "new")]
    result = run(command(1, nameless), expect=2)
    assert "--resume auto needs --name" in result.stderr


def test_same_command_same_weights_while_the_machine_is_busy(tiny_digits, tmp_path):
    """The automatic memory-format choice is measured once and cached, so load cannot flip it between runs."""
    cache = tmp_path / "cache"
    runs = []
    for name, busy in (("idle", False), ("busy", True)):
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            args = recipe(tiny_digits, tmp_path, name, "--epochs", "2")  # no --channels_last: chosen automatically
            proc = subprocess.run(command(1, args), cwd=REPO, env={**env(), "CLASSIFIER_CACHE_DIR": str(cache)},
                                  capture_output=True, text=True, timeout=TIMEOUT)
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs.append(proc.stdout)
        finally:
            if burner is not None:
                burner.kill()
    assert "probe:" in runs[0] and "cached verdict" in runs[1]
    a, b = (load_checkpoint(tmp_path / f"ck/{name}/last.pth") for name in ("idle", "busy"))
    assert a.config["channels_last"] == b.config["channels_last"]
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)


def test_two_launchers_on_loopback_recover_from_a_killed_worker(reference, tiny_digits, tmp_path):
    """Two torchrun launchers ("nodes", 1 process each, c10d rendezvous on loopback): the second node's training
    process is killed; both launchers restart their workers, which continue from the periodic checkpoint and end
    with the weights of the uninterrupted 2-process run (the two agents count the restart differently:
    pytorch#135712, handled in utils.distributed._restart_store). The second node keeps its own log."""
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = recipe(tiny_digits, tmp_path, "nodes", "--no-channels_last", "--resume", "auto", "--save_every_steps", "4")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=nodes{port}",
                "--max-restarts=2", "main.py", *args]
    first = start(launcher)
    time.sleep(1)  # the first launcher hosts the rendezvous store
    second = start_and_wait_for_checkpoint(launcher, tmp_path / "ck/nodes/last.pth")
    worker = subprocess.run(["pgrep", "-P", str(second.pid)], capture_output=True, text=True).stdout.split()
    assert len(worker) == 1, worker
    os.kill(int(worker[0]), signal.SIGKILL)
    outputs = [proc.communicate(timeout=TIMEOUT)[0] for proc in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs[1][-3000:]
    assert all("resumed" in output for output in outputs)
    assert_same_weights(reference[2], tmp_path / "ck/nodes/last.pth")
    node_log = (tmp_path / "ck/nodes/train.node1.log").read_text()
    assert "resumed" in node_log and "epoch 4/4" in node_log
