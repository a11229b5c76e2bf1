"""DDP scaling on CPU when the data pipeline is the bottleneck: epoch time of 1 vs 2 torchrun processes.

    python benchmarks/ddp_scaling.py                  # 4,000 JPEGs at 640 px, small_cnn at 16x16, -b 128 -j 1
    python benchmarks/ddp_scaling.py --source_size 224 --image_size 32 32 --epochs 3

Runs the real application, `python -m torch.distributed.run --standalone --nproc_per_node N main.py ...`, three
times with the same per-process batch size and per-process loader workers:

    1 process,  -j 1    the baseline
    2 processes, -j 1   DDP: twice the workers and twice the model replicas
    1 process,  -j 2    what the second core buys without DDP

The defaults make the loader workers the bottleneck: on an AVX2 core, decoding + letterboxing a 640-px JPEG takes
about 2-3 ms, a small_cnn training step at 16x16 about 1 ms per image (at 32x32 it is about 4 ms per image, more
than decoding a 224-px JPEG, 0.3 ms, so 224 px / 32x32 would measure the model instead). With twice the workers
the 2-process epoch should take at most 0.65x the 1-process epoch. Each run's epoch time is the `seconds` column of
its summary.csv for the last epoch (the first one pays for start-up: worker processes, page cache, allocator
warm-up); it includes validation, which is sharded across the processes too. OMP_NUM_THREADS is set so that
processes x threads plus the loader workers do not exceed the cores (see `threads_per_process`).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (DEFAULT_ROOT, DEFAULT_SOURCE, REPO, count_images, environment,  # noqa: E402
                               image_folder, markdown_table)

TARGET_RATIO = 0.65


@dataclass(frozen=True)
class RunSpec:
    label: str
    processes: int
    workers: int


def threads_per_process(processes: int, workers: int, cores: int) -> int:
    """Cores left after the loader workers, split between the processes (at least 1).

    Counting the workers matters: on 2 cores, 1 process with 2 OpenMP threads next to 1 busy loader worker ran
    its epoch 4.7x slower than with 1 thread (43 s vs 9 s), because OpenMP threads wait on a descheduled peer.
    """
    return max(1, (cores - processes * workers) // processes)


def run_training(spec: RunSpec, args: argparse.Namespace, data: Path, work: Path, threads: int) -> float:
    """One torchrun of main.py; returns the last epoch's seconds from its summary.csv."""
    name = f"p{spec.processes}-j{spec.workers}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.processes}",
           "main.py", "--data", str(data), "--image_size", *map(str, args.image_size), "--model", args.model,
           "-b", str(args.batch_size), "-j", str(spec.workers), "--epochs", str(args.epochs), "--warmup", "0",
           "--device", "cpu", "--seed", str(args.seed), "--checkpoint_dir", str(work / "checkpoints"),
           "--log_dir", str(work / "logs"), "--name", name, "--log_interval", "1000000"]
    if args.aug:
        cmd.append("--aug")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"'{spec.label}' did not finish within --timeout {args.timeout} s: {' '.join(cmd)}")
    if proc.returncode != 0:
        sys.exit(f"'{spec.label}' failed with exit code {proc.returncode}: {' '.join(cmd)}\n"
                 f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with open(work / "checkpoints" / name / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != args.epochs:
        sys.exit(f"'{spec.label}': expected {args.epochs} rows in summary.csv, found {len(rows)}")
    return float(rows[-1]["seconds"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="cache folder for the generated images")
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="ImageFolder tree the images come from")
    parser.add_argument("--images", type=int, default=4000, help="images to generate (90%% train, 10%% val)")
    parser.add_argument("--source_size", type=int, default=640,
                        help="side of the generated (square) images; large enough that decoding, not small_cnn, "
                             "is the bottleneck")
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    parser.add_argument("--image_size", type=int, nargs=2, default=[16, 16], metavar=("H", "W"),
                        help="network input")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--batch_size", "-b", type=int, default=128, help="per process")
    parser.add_argument("--workers", "-j", type=int, default=1, help="loader workers per process")
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is timed")
    parser.add_argument("--aug", action="store_true", help="train with main.py --aug")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to share between processes")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS per process (default: (cores - processes x workers) // processes, "
                             "at least 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per training run")
    parser.add_argument("--work_dir", default=None, help="checkpoints and logs of the runs (default: a temporary "
                                                         "folder, deleted at the end)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = image_folder(root=args.root, source=args.source, images=args.images, source_size=args.source_size,
                        fmt=args.format)
    specs = [RunSpec(f"1 process, -j {args.workers}", 1, args.workers),
             RunSpec(f"2 processes (DDP), -j {args.workers} each", 2, args.workers),
             RunSpec(f"1 process, -j {2 * args.workers}", 1, 2 * args.workers)]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ddp_scaling_"))
    images = count_images(data / "train") + count_images(data / "val")
    print(f"data: {count_images(data / 'train')} train + {count_images(data / 'val')} val "
          f"{args.format.upper()} images of {args.source_size}x{args.source_size} px in {data}; {args.model} at "
          f"{args.image_size[0]}x{args.image_size[1]}, -b {args.batch_size} per process, {args.epochs} epochs "
          f"(last one timed, train + validation)")
    threads = [args.threads or threads_per_process(spec.processes, spec.workers, args.cores) for spec in specs]
    try:
        seconds = [run_training(spec, args, data, work, n) for spec, n in zip(specs, threads)]
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    rows = [[spec.label, spec.processes, spec.workers, n, f"{s:.2f}", f"{images / s:.0f}", f"{s / seconds[0]:.2f}"]
            for spec, n, s in zip(specs, threads, seconds)]
    print(markdown_table(["run", "processes", "workers per process", "OMP threads per process",
                          "epoch seconds (last epoch)", "images/s (train + val)", "ratio vs 1 process"], rows))
    ratio = seconds[1] / seconds[0]
    print(f"2-process epoch = {ratio:.2f}x the 1-process epoch (target <= {TARGET_RATIO}): "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    print(environment(processes=2, workers=args.workers, torch_threads=threads[1],
                      opencv_threads="1 per loader worker")
          + f" (the DDP run; every run's processes, workers and threads are in the table; {args.cores} cores)")


if __name__ == "__main__":
    main()
