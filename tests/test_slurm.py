"""launch/slurm.py: a training submitted through submitit, stopped by submitit's time-limit signal, requeued and
finished with the weights of a run that never stopped; the Slurm script it would submit; the cluster recipes.

There is no Slurm here: the requeue runs under submitit's LocalExecutor, whose controller process restarts the job
when a task exits with submitit's requeue code, the part Slurm's ``scontrol requeue`` plays on a cluster. The test
sends SIGUSR2 (what Slurm sends for ``--signal=USR2@T``) to the task once the run has written a checkpoint.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import REPO, TIMEOUT, run, torchrun
from utils.checkpoint import load_checkpoint

submitit = pytest.importorskip("submitit", reason="submitit is not installed (pip install -r requirements.txt)")
from launch import slurm  # noqa: E402

RECIPE = ["--model", "small_cnn_tiny", "--image_size", "16", "16", "-b", "8", "-j", "0", "--device", "cpu",
          "--no-channels_last", "--no-amp", "--epochs", "6", "--save_every_steps", "2"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def task_pids(launcher: int) -> list[int]:
    """The submitit tasks (training processes) started below the launcher."""
    pids = []
    for pid in descendants(launcher):
        try:
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def wait_for(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def same_weights(a: Path, b: Path) -> list[str]:
    """Names of the tensors that differ between the weights of two checkpoints (empty: identical)."""
    first, second = load_checkpoint(a).model, load_checkpoint(b).model
    assert first.keys() == second.keys()
    return [name for name in first if not torch.equal(first[name], second[name])]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the task processes through /proc")
@pytest.mark.parametrize("tasks", [1, 2], ids=["1 task", "2 tasks (DDP, gloo)"])
def test_time_limit_signal_requeues_and_the_job_finishes_with_an_uninterrupted_runs_weights(tiny_digits, tmp_path,
                                                                                            tasks):
    checkpoints = tmp_path / "checkpoints"
    common = ["--data", str(tiny_digits), *RECIPE, "--checkpoint_dir", str(checkpoints),
              "--log_dir", str(tmp_path / "logs")]
    reference = [*common, "--name", "reference"]
    torchrun(tasks, reference) if tasks > 1 else run([sys.executable, "main.py", *reference])

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # as helpers.run gives the reference
    launcher = subprocess.Popen(
        [sys.executable, "launch/slurm.py", "--executor", "local", "--time", "30", "--tasks_per_node", str(tasks),
         "--folder", str(tmp_path / "jobs" / "%j"), "--", *common, "--name", "submitted"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (checkpoints / "submitted" / "last.pth").exists(), "the first mid-epoch last.pth")
        first = task_pids(launcher.pid)
        assert len(first) == tasks, first
        for pid in first:  # Slurm signals every task of the job
            os.kill(pid, signal.SIGUSR2)
        out, err = launcher.communicate(timeout=TIMEOUT)
    finally:
        if launcher.poll() is None:
            for pid in [*descendants(launcher.pid), launcher.pid]:
                with_suppressed_lookup(os.kill, pid, signal.SIGKILL)
    assert launcher.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    assert out.startswith("submitted job ") and "metrics: {" in out, out

    log = "".join(path.read_text() for path in sorted((tmp_path / "jobs").glob("*/*_0_log.*")))  # rank 0's
    assert "the training stops after this step and writes last.pth" in log, log[-3000:]
    assert "stopped by SIGUSR1 after" in log, log[-3000:]  # the training's own stop: last.pth written first
    assert "Requeued job" in log, log[-3000:]  # submitit's handler, run after the training stopped
    assert "start 2 of job" in log, log[-3000:]  # the TrainingJob that checkpoint() returned, started again
    assert log.count("start 3 of job") == 0

    final, ref = load_checkpoint(checkpoints / "submitted" / "last.pth"), load_checkpoint(
        checkpoints / "reference" / "last.pth")
    assert (final.epoch, final.batches_done) == (ref.epoch, 0) == (5, 0)
    assert same_weights(checkpoints / "submitted" / "last.pth", checkpoints / "reference" / "last.pth") == []
    timeless = lambda metrics: {k: v for k, v in metrics.items() if k != "seconds"}  # noqa: E731
    assert timeless(final.metrics) == timeless(ref.metrics)  # the last epoch's loss and accuracies too


def with_suppressed_lookup(kill, pid: int, sig: int) -> None:
    try:
        kill(pid, sig)
    except ProcessLookupError:
        pass


def test_task_environment_from_slurm_variables(monkeypatch):
    """What submitit's SlurmJobEnvironment reads becomes torchrun's variables; rank 0's node is the master."""
    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8",
                        "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
                        "SLURM_JOB_NODELIST": "gpu[07-08]"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    env = slurm.torch_distributed_env(submitit.JobEnvironment())
    port = env.pop("MASTER_PORT")
    assert env == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
                   "MASTER_ADDR": "gpu07"}
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert slurm.torch_distributed_env(submitit.JobEnvironment())["MASTER_PORT"] == port  # the same on every task
    assert 20000 <= int(port) < 40000


def test_requeue_signal_asks_the_training_to_stop_first():
    """In process, with recording stand-ins for submitit's requeue handler and the training's stop handler: while
    the training's handler is installed, submitit's signal goes to it and submitit's handler runs only when
    ``requeue()`` is called (after last.pth); without a training loop it runs at once. Where submitit's handler
    returns (a task other than rank 0), the task exits with 75."""
    calls = []
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(("submitit", signum)))
        with slurm.StopTrainingFirst(signal.SIGUSR2) as stopper:
            signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(("training", signum)))
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGUSR2)  # a second one while the training stops changes nothing
            assert calls == [("training", signal.SIGUSR1)] and stopper.received
            with pytest.raises(SystemExit) as stop:
                stopper.requeue()
            assert calls[-1] == ("submitit", signal.SIGUSR2) and stop.value.code == 75
        assert signal.getsignal(signal.SIGUSR2) is not stopper._on_signal  # submitit's handler is back

        calls.clear()
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # no training loop
        with slurm.StopTrainingFirst(signal.SIGUSR2), pytest.raises(SystemExit) as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(1)
        assert calls == [("submitit", signal.SIGUSR2)] and stop.value.code == 75
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_slurm_submission(tmp_path):
    """With srun and sbatch on PATH (stand-ins that only record), the launcher writes the sbatch script submitit
    would submit: requeueable, submitit's signal 120 s before the limit, one task per GPU; the pickled job is a
    TrainingJob that continues its run with --resume auto, and checkpoint() resubmits it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho \"Submitted batch job 4242\"\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "launch/slurm.py", "--nodes", "2", "--gpus_per_node", "4", "--partition", "gpu",
         "--time", "90", "--sbatch", "account=vision", "--folder", str(tmp_path / "jobs" / "%j"), "--",
         "--data", "data/digits", "--name", "on-slurm"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("submitted job 4242 (Slurm)"), proc.stdout
    script = (tmp_path / "jobs" / "4242" / "4242_submission.sh")
    if not script.exists():  # submitit names the script before it knows the id
        script = next((tmp_path / "jobs").rglob("*submission.sh"))
    text = script.read_text()
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=90",
                 "--signal=USR2@120", "--requeue", "--account=vision", "--job-name=on-slurm", "--open-mode=append"):
        assert f"#SBATCH {line}\n" in text, f"{line} missing:\n{text}"
    assert f"export PYTHONPATH={REPO}" in text and "srun" in text and "submitit.core._submit" in text

    with open(next((tmp_path / "jobs").rglob("*_submitted.pkl")), "rb") as handle:
        delayed = pickle.load(handle)
    job = delayed.function
    assert isinstance(job, slurm.TrainingJob)
    assert job.argv == ["--data", "data/digits", "--name", "on-slurm", "--resume", "auto"]
    assert job.workdir == str(REPO)
    assert job.checkpoint().function is job


@pytest.mark.parametrize("argv, message", [
    (["--time", "10", "--folder", "f"], "separate main.py's flags with --"),
    (["--time", "10", "--folder", "f", "--", "--data", "d"], "name the run with --name NAME"),
    (["--time", "10", "--folder", "f", "--", "--name", "n", "--resume", "x.pth"], "--resume x.pth"),
    (["--time", "10", "--folder", "f", "--", "--name", "n", "--evaluation"], "runs training; drop --evaluation"),
    (["--time", "10", "--folder", "f", "--", "--name", "n", "--epochs", "zero"], "--epochs"),
    (["--executor", "local", "--nodes", "2", "--time", "10", "--folder", "f", "--", "--name", "n"], "--nodes 1"),
    (["--time", "1", "--folder", "f", "--", "--name", "n"], "leaves no time to train"),
    (["--folder", "f", "--", "--name", "n"], "--time"),
    (["--time", "10", "--folder", "f", "--", "--name", "n"], "no Slurm on this machine"),
])
def test_a_users_mistake_is_one_error_line(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun: submitit finds no Slurm
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        slurm.main_cli(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_sbatch_script_parses_and_fails_fast():
    """z_task_shell/slurm.sbatch: what tests/test_scripts.py asks of *.sh, and the requeue recipe's pieces."""
    script = REPO / "z_task_shell" / "slurm.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "set -euo pipefail" in text and "| head" not in code
    for needle in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "#SBATCH --ntasks-per-node=1",
                   "trap 'scontrol requeue", "torchrun", "--rdzv_id", "--max-restarts 2", "--resume auto"):
        assert needle in text, needle


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the torchrun process through /proc")
def test_sbatch_script_requeue_continues_to_an_uninterrupted_runs_weights(tiny_digits, tmp_path):
    """The sbatch script with stand-ins for srun (runs its command) and scontrol (records a requeue); the test plays
    slurmctld: SIGUSR1 to the batch shell, SIGTERM to the step once the trap asked for the requeue, then the script
    again as the requeued job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\ncase "$1" in\n  show) echo 127.0.0.1 ;;\n'
                                      '  requeue) echo "requeue $2" >> "$SLURM_STAND_IN_LOG" ;;\nesac\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    requeues = tmp_path / "requeues.log"
    checkpoints = tmp_path / "checkpoints"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4321",
           "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node1", "SLURM_GPUS_ON_NODE": "1", "OMP_NUM_THREADS": "1",
           "DATA": str(tiny_digits), "CHECKPOINTS": str(checkpoints), "SLURM_STAND_IN_LOG": str(requeues)}
    command = ["bash", "z_task_shell/slurm.sbatch", *RECIPE, "--log_dir", str(tmp_path / "logs")]
    reference = subprocess.run(command, cwd=REPO, env={**env, "NAME": "reference"}, capture_output=True, text=True,
                               timeout=TIMEOUT)
    assert reference.returncode == 0, reference.stderr[-3000:]

    job = subprocess.Popen(command, cwd=REPO, env={**env, "NAME": "job"}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    agents = []
    try:
        wait_for(lambda: (checkpoints / "job" / "last.pth").exists(), "the first mid-epoch last.pth")
        agents = [pid for pid in descendants(job.pid) if b"torchrun" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert agents, "no torchrun below the batch shell"
        os.kill(job.pid, signal.SIGUSR1)  # --signal=B:USR1@120
        wait_for(lambda: requeues.exists() and requeues.read_text() == "requeue 4321\n", "the trap's requeue")
        for pid in agents:  # the requeue stops the step
            os.kill(pid, signal.SIGTERM)
        out, _ = job.communicate(timeout=TIMEOUT)  # returns once torchrun and its worker closed the output
        wait_for(lambda: all(process_state(pid) in (None, "Z") for pid in agents), "torchrun to exit", 60)
    finally:
        for pid in [*agents, *descendants(job.pid), job.pid]:
            if process_state(pid) not in (None, "Z"):
                with_suppressed_lookup(os.kill, pid, signal.SIGKILL)
    assert job.returncode == 128 + signal.SIGUSR1, out[-3000:]  # the trap ended the batch shell's wait
    assert "stopped by SIGTERM after" in out, out[-3000:]

    requeued = subprocess.run(command, cwd=REPO, env={**env, "NAME": "job"}, capture_output=True, text=True,
                              timeout=TIMEOUT)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "resumed" in requeued.stdout + requeued.stderr
    final, ref = (load_checkpoint(checkpoints / name / "last.pth") for name in ("job", "reference"))
    assert (final.epoch, final.batches_done) == (ref.epoch, 0) == (5, 0)
    assert same_weights(checkpoints / "job" / "last.pth", checkpoints / "reference" / "last.pth") == []


def test_kubernetes_manifest_runs_the_resumable_command():
    """docs/kubernetes/pytorchjob.yaml (not applied here: no cluster) is a PyTorchJob whose pods restart on failure,
    keep checkpoints on a volume claim and continue with --resume auto."""
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "docs" / "kubernetes" / "pytorchjob.yaml")
                                                                 .read_text())}
    assert set(documents) == {"PersistentVolumeClaim", "PyTorchJob"}
    manifest = documents["PyTorchJob"]
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    for role in specs.values():
        assert role["restartPolicy"] == "OnFailure"
        pod = role["template"]["spec"]
        container = pod["containers"][0]
        command = " ".join(container["command"] + container.get("args", []))
        assert "--resume auto" in command and "--name" in command and "--checkpoint_dir /checkpoints" in command
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert any(mounts.get(name) == "/checkpoints" and claim == documents["PersistentVolumeClaim"]["metadata"]
                   ["name"] for name, claim in claims.items()), (claims, mounts)
        assert "torchrun" in container["command"][0] and "--max-restarts" in container["command"]
