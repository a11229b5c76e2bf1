"""Train with main.py's flags under Ray Train: N workers as one DDP job, restarted by Ray after a failure.

    python launch/ray_train.py --workers 2 -- --data data/digits --name digits-ray --device cpu
    python launch/ray_train.py --workers 8 --use_gpu --max_failures 3 --storage /shared/ray -- \\
        --data /shared/data/flowers --model resnet50 --name flowers-r50 --checkpoint_dir /shared/checkpoints

Everything after ``--`` is a main.py training command; it must name its run (``--name``), and ``--resume auto`` is
added when absent, so a run restarted by ``FailureConfig(max_failures=K)`` continues CHECKPOINT_DIR/NAME/last.pth
(which therefore must be a folder every node sees) and a finished run is not trained twice.

Ray's TorchTrainer creates the process group (gloo for CPU workers, nccl for GPU workers) before the training
function starts. Each worker sets torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) from Ray's
context, so ``utils.distributed.init_distributed`` joins that group instead of creating one, and calls
``main.run_command``: the same training as ``torchrun --nproc_per_node N main.py ...``. A local cluster is started
unless RAY_ADDRESS names one; the repository must sit at the same path on every node.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.common import LauncherError, restartable_training  # noqa: E402
from main import exit_code  # noqa: E402
from utils.errors import USAGE_EXIT  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY_REQUIREMENT = "ray[train]==2.60.0"  # the pin of requirements.txt


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its usage too; a mistake is one line here as in main.py
        raise LauncherError(f"{message} (python launch/ray_train.py --help lists the flags)")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's own flags (before ``--``) and main.py's flags (after it)."""
    if "--" not in argv:
        raise LauncherError("separate main.py's flags with --: python launch/ray_train.py --workers N -- "
                            "--data DIR --name NAME ...")
    split = argv.index("--")
    parser = _Parser(prog="launch/ray_train.py", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, required=True, help="training processes (Ray workers)")
    parser.add_argument("--use_gpu", action="store_true", help="one GPU per worker (nccl); without: CPU (gloo)")
    parser.add_argument("--cpus_per_worker", type=int, default=1,
                        help="CPU cores Ray reserves per worker; it sets OMP_NUM_THREADS to this (default 1)")
    parser.add_argument("--max_failures", type=int, default=0,
                        help="restarts after a worker or node failure, each continuing last.pth (-1: no limit; "
                             "default 0, Ray's: the first failure ends the run)")
    parser.add_argument("--storage", default=None,
                        help="Ray's storage_path: where it keeps its run state (default ~/ray_results); a URI or a "
                             "folder every node sees for multi-node runs")
    args = parser.parse_args(argv[:split])
    if args.workers < 1 or args.cpus_per_worker < 1:
        raise LauncherError(f"--workers and --cpus_per_worker must be at least 1, got {args.workers} and "
                            f"{args.cpus_per_worker}")
    return args, argv[split + 1:]


def training_argv(argv: list[str], *, use_gpu: bool) -> tuple[list[str], str]:
    """main.py's flags as every worker runs them (with ``--resume auto``), and the run's name; refuses a command
    a restart could not continue, before any worker starts."""
    argv, cfg = restartable_training(argv, launcher="launch/ray_train.py", restart="Ray's restarts")
    if use_gpu and cfg.device == "cpu":
        raise LauncherError("--use_gpu gives each worker a GPU and Ray an nccl process group; drop --device cpu")
    if not use_gpu and cfg.device == "cuda":
        raise LauncherError("--device cuda needs --use_gpu: without it Ray's workers have no GPU and a gloo group")
    return argv, cfg.name


def train_worker(config: dict) -> dict:
    """Ray's training function, on every worker: main.py's training as one rank of Ray's process group."""
    import ray.train

    context = ray.train.get_context()
    os.environ.update(RANK=str(context.get_world_rank()), WORLD_SIZE=str(context.get_world_size()),
                      LOCAL_RANK=str(context.get_local_rank()), LOCAL_WORLD_SIZE=str(context.get_local_world_size()))
    if config["repo"] not in sys.path:
        sys.path.insert(0, config["repo"])
    if os.path.isdir(config["cwd"]):  # relative paths (--data, --checkpoint_dir) mean what they meant to the user
        os.chdir(config["cwd"])
    from main import run_command
    from utils.errors import Preempted

    try:
        metrics = run_command(list(config["argv"]))
    except Preempted as stop:  # a SystemExit would end the worker quietly; as an error Ray restarts the run
        raise RuntimeError(f"{stop.message}; Ray restarts it with --resume auto") from stop
    metrics = dict(metrics or {})  # a run found finished has no new metrics to give
    ray.train.report(metrics)  # every rank calls it (a barrier); the metrics are the same on all, Ray keeps rank 0's
    return metrics  # Ray 2.60's Result keeps reported metrics only with a Ray checkpoint, and rank 0's return value


def fit(args: argparse.Namespace, argv: list[str], name: str) -> dict:
    """Run ``train_worker`` on ``args.workers`` Ray workers; returns the metrics rank 0 reported."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(include_dashboard=False)  # RAY_ADDRESS (when set) names an existing cluster to join
    storage = args.storage if args.storage is None or "://" in args.storage else os.path.abspath(args.storage)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"argv": argv, "repo": REPO, "cwd": os.getcwd()},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.use_gpu,
                                     resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=args.max_failures)),
    )
    result = trainer.fit()
    return result.metrics or getattr(result, "return_value", None) or {}


def user_error(error: BaseException) -> BaseException | None:
    """The user's mistake behind a failed Ray run (a worker's bad --data path, say), or None for a real failure."""
    failures = getattr(error, "worker_failures", None) or {}  # ray.train.WorkerGroupError: rank -> exception
    for failure in failures.values():
        cause = getattr(failure, "cause", None) or failure  # a RayTaskError wraps the worker's own exception
        if exit_code(cause) is not None:
            return cause
    return None


def fail(error: BaseException, code: int) -> None:
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """The command line: ``fit`` once the flags are checked; a user's mistake is one ``error:`` line (exit 2, or 1
    for a data error a worker met), as in main.py."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, main_argv = parse_args(argv)
        try:
            import ray.train.torch  # noqa: F401
        except ImportError as error:
            raise LauncherError(f"Ray Train is not installed ({error}): pip install \"{RAY_REQUIREMENT}\"") from error
        worker_argv, name = training_argv(main_argv, use_gpu=args.use_gpu)
    except Exception as error:  # noqa: BLE001 - a user's mistake becomes one line; a bug keeps its traceback
        code = USAGE_EXIT if isinstance(error, LauncherError) else exit_code(error)
        if code is None:
            raise
        fail(error, code)
    try:
        metrics = fit(args, worker_argv, name)
    except Exception as error:  # noqa: BLE001 - a worker's failure, once Ray's restarts are used up
        cause = user_error(error)
        if cause is None:
            raise
        fail(cause, exit_code(cause))
    print("metrics:", json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main()
