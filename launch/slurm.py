"""Train with main.py's flags as a Slurm job through submitit: requeued before its time limit, continued from last.pth.

    python launch/slurm.py --nodes 2 --gpus_per_node 8 --partition gpu --time 240 --folder slurm_jobs/%j -- \\
        --data /shared/data/flowers --model resnet50 --name flowers-r50 --checkpoint_dir /shared/checkpoints
    python launch/slurm.py --executor local --time 30 --folder slurm_jobs/%j -- --data data/digits --name digits-local

Everything after ``--`` is a main.py training command; it must name its run (``--name``), and ``--resume auto`` is
added when absent, so every start of the job continues CHECKPOINT_DIR/NAME/last.pth (a folder every node sees) and a
finished run is not trained twice. Each Slurm task is one training process (one per GPU): ``TrainingJob`` sets
torchrun's variables from ``submitit.JobEnvironment()`` and calls ``main.run_command``.

Requeue: submitit asks Slurm for its signal (SIGUSR2, ``--signal=USR2@SIGNAL_DELAY_S``) before the time limit and
installs a handler that calls ``TrainingJob.checkpoint()`` and requeues the job (``scontrol requeue``; a local job is
restarted by submitit's controller). Called at once, that handler would stop the training mid-step and lose the work
since the last save. ``TrainingJob`` therefore turns the signal into the training's own stop request first (the
handler the training installs for SIGTERM/SIGINT/SIGUSR1, engine/preemption.py): every rank finishes its step,
last.pth is written, the training raises ``Preempted``, and only then does submitit's handler run. The requeued job
unpickles the ``TrainingJob`` that ``checkpoint()`` returned and continues last.pth. A stop by SIGTERM alone
(``scancel``) writes last.pth and ends the job without a requeue.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import zlib

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import submitit  # noqa: E402

from launch.common import LauncherError, restartable_training  # noqa: E402
from utils.errors import PREEMPTED_EXIT, USAGE_EXIT  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOP_SIGNAL = signal.SIGUSR1  # one of the signals the training stops on (engine/preemption.py)


def requeue_signal() -> signal.Signals:
    """The signal submitit asks Slurm for before the time limit (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    name = "SIG" + submitit.JobEnvironment.USR_SIG
    if not hasattr(signal, name):
        raise LauncherError(f"SUBMITIT_PREEMPT_SIGNAL={submitit.JobEnvironment.USR_SIG} is not a signal; unset it")
    return signal.Signals(getattr(signal, name))


def torch_distributed_env(job_env: submitit.JobEnvironment) -> dict[str, str]:
    """torchrun's variables for this task of a submitit job: one process per task, rank 0's node as the master.
    The port is derived from the job id, so two jobs sharing a node do not collide and a requeued job keeps it."""
    per_node = max(1, job_env.num_tasks // max(1, job_env.num_nodes))
    master = job_env.hostnames[0] if job_env.num_nodes > 1 else "127.0.0.1"
    return {"RANK": str(job_env.global_rank), "LOCAL_RANK": str(job_env.local_rank),
            "WORLD_SIZE": str(job_env.num_tasks), "LOCAL_WORLD_SIZE": str(per_node), "GROUP_RANK": str(job_env.node),
            "MASTER_ADDR": master, "MASTER_PORT": str(20000 + zlib.crc32(job_env.job_id.encode()) % 20000)}


class StopTrainingFirst:
    """While installed, submitit's requeue signal asks the training to stop (finish the step, write last.pth, raise
    ``Preempted``) instead of requeuing at once; ``requeue()`` then runs submitit's own handler. A signal that comes
    while no training loop is running (data loading, a finished run) goes to submitit's handler straight away."""

    def __init__(self, signum: signal.Signals) -> None:
        self.signum = signum
        self.received = False
        self._submitit_handler = signal.getsignal(signum)
        self._idle_stop_handler = signal.getsignal(STOP_SIGNAL)

    def __enter__(self) -> "StopTrainingFirst":
        signal.signal(self.signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(self.signum, self._submitit_handler)

    def _on_signal(self, signum: int, frame) -> None:
        if self.received:
            return  # the training is already stopping
        self.received = True
        stop = signal.getsignal(STOP_SIGNAL)
        if callable(stop) and stop is not self._idle_stop_handler:  # the training's step loop is running
            print(f"launch/slurm.py: {signal.Signals(signum).name}: the training stops after this step and writes "
                  "last.pth; then submitit requeues the job", file=sys.stderr, flush=True)
            stop(STOP_SIGNAL, frame)
        else:
            self.requeue(frame)

    def requeue(self, frame=None) -> None:
        """submitit's handler: on global rank 0 it calls ``checkpoint()``, requeues and exits; elsewhere it returns,
        and this task exits with PREEMPTED_EXIT (rank 0's requeue restarts the whole job)."""
        if callable(self._submitit_handler):
            self._submitit_handler(self.signum, frame)
        raise SystemExit(PREEMPTED_EXIT)


class TrainingJob(submitit.helpers.Checkpointable):
    """The callable submitit runs in every task: main.py's training as one rank, continued with ``--resume auto``."""

    def __init__(self, argv: list[str], *, workdir: str) -> None:
        self.argv = list(argv)
        self.workdir = workdir
        self.starts = 0  # counted in the pickle checkpoint() returns, so a requeued job knows its start

    def __call__(self) -> dict:
        self.starts += 1
        if REPO not in sys.path:
            sys.path.insert(0, REPO)
        os.chdir(self.workdir)  # relative paths (--data, --checkpoint_dir) mean what they meant to the user
        job_env = submitit.JobEnvironment()
        os.environ.update(torch_distributed_env(job_env))
        print(f"launch/slurm.py: start {self.starts} of job {job_env.job_id}, rank {job_env.global_rank} of "
              f"{job_env.num_tasks}: python main.py {shlex.join(self.argv)}", file=sys.stderr, flush=True)
        import main
        from utils.errors import Preempted

        with StopTrainingFirst(requeue_signal()) as stopper:
            try:
                return main.run_command(self.argv)
            except Preempted:
                if stopper.received:  # submitit's signal stopped it: requeue now that last.pth is written
                    stopper.requeue()
                raise  # SIGTERM / SIGINT (scancel, Slurm's preemption): last.pth is written; no requeue from here

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """What submitit resubmits on requeue: this job again; ``--resume auto`` finds last.pth."""
        return submitit.helpers.DelayedSubmission(self)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its usage too; a mistake is one line here as in main.py
        raise LauncherError(f"{message} (python launch/slurm.py --help lists the flags)")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's own flags (before ``--``) and main.py's flags (after it)."""
    if "--" not in argv:
        raise LauncherError("separate main.py's flags with --: python launch/slurm.py --time MIN --folder DIR -- "
                            "--data DIR --name NAME ...")
    split = argv.index("--")
    parser = _Parser(prog="launch/slurm.py", description=__doc__.split("\n")[0])
    parser.add_argument("--executor", choices=("auto", "local"), default="auto",
                        help="auto: Slurm (found through srun on PATH); local: submitit's LocalExecutor on this "
                             "machine (one node, no Slurm needed)")
    parser.add_argument("--folder", required=True,
                        help="submitit's folder for the job's pickles and logs (%%j: the job id)")
    parser.add_argument("--time", type=int, required=True, metavar="MIN", help="time limit in minutes")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus_per_node", type=int, default=0, help="GPUs per node; one task (process) per GPU")
    parser.add_argument("--tasks_per_node", type=int, default=None,
                        help="training processes per node (default: --gpus_per_node, at least 1)")
    parser.add_argument("--cpus_per_task", type=int, default=None)
    parser.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    parser.add_argument("--signal_delay_s", type=int, default=120,
                        help="seconds before the time limit that the requeue signal comes: long enough to finish a "
                             "step and write last.pth (default 120)")
    parser.add_argument("--max_timeouts", type=int, default=20,
                        help="requeues at the time limit before submitit gives up (default 20)")
    parser.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                        help="another sbatch option, e.g. --sbatch account=abc --sbatch qos=high (repeatable)")
    args = parser.parse_args(argv[:split])
    for flag in ("time", "nodes", "signal_delay_s", "max_timeouts"):
        if getattr(args, flag) < 1:
            raise LauncherError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.gpus_per_node < 0 or (args.tasks_per_node or 1) < 1:
        raise LauncherError("--gpus_per_node must be at least 0 and --tasks_per_node at least 1")
    if args.signal_delay_s >= args.time * 60:
        raise LauncherError(f"--signal_delay_s {args.signal_delay_s} leaves no time to train in --time {args.time} "
                            "minutes")
    if any("=" not in item for item in args.sbatch):
        raise LauncherError(f"--sbatch takes KEY=VALUE, got {' '.join(args.sbatch)}")
    if args.executor == "local" and args.nodes > 1:
        raise LauncherError("--executor local runs on this machine: --nodes 1")
    return args, argv[split + 1:]


def training_argv(argv: list[str]) -> tuple[list[str], str]:
    """main.py's flags as every task runs them (with ``--resume auto``), and the run's name; refuses a command a
    requeued job could not continue, before anything is submitted."""
    argv, cfg = restartable_training(argv, launcher="launch/slurm.py", restart="a requeued job")
    return argv, cfg.name


def build_executor(args: argparse.Namespace, name: str) -> submitit.Executor:
    """submitit's executor for ``args``: Slurm through ``AutoExecutor`` (refused where there is none), or
    ``LocalExecutor`` (its controller process sends the same signal ``signal_delay_s`` before ``timeout_min``)."""
    if requeue_signal() in (signal.SIGTERM, signal.SIGINT, STOP_SIGNAL):
        raise LauncherError(f"SUBMITIT_PREEMPT_SIGNAL={submitit.JobEnvironment.USR_SIG} is one of the training's "
                            "stop signals; unset it (submitit's default is USR2)")
    tasks_per_node = args.tasks_per_node or max(1, args.gpus_per_node)
    # every task must import the repo (a job's pickle may name launch.slurm.TrainingJob) wherever it starts
    python_path = REPO + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    if args.executor == "local":
        os.environ["PYTHONPATH"] = python_path  # the local controller and its tasks inherit this environment
        executor = submitit.LocalExecutor(folder=args.folder, max_num_timeout=args.max_timeouts)
        executor.update_parameters(timeout_min=args.time, signal_delay_s=args.signal_delay_s, nodes=1,
                                   tasks_per_node=tasks_per_node, gpus_per_node=args.gpus_per_node)
        return executor
    executor = submitit.AutoExecutor(folder=args.folder, slurm_max_num_timeout=args.max_timeouts)
    if executor.cluster != "slurm":
        raise LauncherError(f"no Slurm on this machine (srun is not on PATH; submitit found {executor.cluster}); "
                            "--executor local runs the job here")
    os.environ["PYTHONPATH"] = python_path  # sbatch passes the environment on; the setup line below makes sure
    executor.update_parameters(
        name=name, timeout_min=args.time, nodes=args.nodes, tasks_per_node=tasks_per_node,
        gpus_per_node=args.gpus_per_node or None, cpus_per_task=args.cpus_per_task,  # no GPU line for CPU jobs
        slurm_partition=args.partition, slurm_signal_delay_s=args.signal_delay_s,
        slurm_setup=[f"export PYTHONPATH={shlex.quote(python_path)}"],
        slurm_additional_parameters={"requeue": True, **dict(item.split("=", 1) for item in args.sbatch)})
    return executor


def main_cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, main_argv = parse_args(argv)
        task_argv, name = training_argv(main_argv)
        executor = build_executor(args, name=name)
        job = executor.submit(TrainingJob(task_argv, workdir=os.getcwd()))
    except Exception as error:  # noqa: BLE001 - a user's mistake becomes one line; a bug keeps its traceback
        import main

        if not isinstance(error, LauncherError) and main.exit_code(error) is None:
            raise
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(USAGE_EXIT if isinstance(error, LauncherError) else main.exit_code(error))
    print(f"submitted job {job.job_id} ({'Slurm' if args.executor == 'auto' else 'local'}); log {job.paths.stderr}",
          flush=True)
    if args.executor == "local":  # the job runs on this machine: wait for it and report, as main.py would
        try:
            print("metrics:", json.dumps(job.results()[0] or {}, sort_keys=True))  # rank 0's, as on every rank
        except Exception as error:  # noqa: BLE001 - the job's traceback is in its log; its last line says why
            parts = str(error).split("-" * 22)  # submitit: "failed with trace:", ----, the traceback, ----, paths
            lines = [line.strip() for line in (parts[1] if len(parts) > 2 else str(error)).splitlines() if line.strip()]
            print(f"error: the job failed: {lines[-1] if lines else type(error).__name__} (its log: "
                  f"{job.paths.stderr})", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    from launch.slurm import main_cli as module_main  # the job's pickle then names launch.slurm.TrainingJob, not a

    module_main()  # copy of __main__'s class
