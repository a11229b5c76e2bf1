"""The model table: size, compute and batch-1 CPU latency of each model as eager PyTorch, TorchScript and ONNX Runtime,
and optionally the accuracy each reaches on a fixed short training budget.

    python benchmarks/models.py                                     # the default list at 224x224, 2 threads
    python benchmarks/models.py --models small_cnn wrn10_4 --size 32 --iters 100 --markdown models.md
    python benchmarks/models.py --seed_table --accuracy_data data/fmnist6 --results docs/results/model_table \
        --markdown docs/results/model_table/models.md      # the main seed's table (z_task_shell/model_table.sh)

Every model is built by `models.build_model` with random weights (nothing is downloaded) and exported by the same
code as `main.py --jit` / `--onnx` (benchmarks/deploy.py builds the forms and times them, taking turns). Parameters
are counted exactly; compute comes from thop, which counts the multiply-accumulates (MACs) of the layers it hooks
(convolutions, linear, normalisation, pooling, activations it knows) and not functional ops such as additions in
residual blocks; the table gives GMACs and GFLOPs = 2 x GMACs. Latency is the median over `--iters` batch-1 calls of
uint8 input to probabilities (normalisation included).

With ``--accuracy_data ROOT`` each model is also trained from scratch by ``main.py`` with one fixed recipe
(``ACCURACY_RECIPE``, ``--accuracy_epochs`` at ``--accuracy_size``), the epoch is chosen on val (best.pth) and
that checkpoint is evaluated once on test. Each run's report.json, summary.csv and train.log are copied to
``--results DIR/<model>/``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, count_classes, count_images, markdown_table  # noqa: E402
from benchmarks.deploy import (EAGER, ORT_FP32, TORCHSCRIPT, build_variants, calibrate_batchnorm,  # noqa: E402
                               inference_environment, measure_latency, real_images)
from models import build_model, model_source  # noqa: E402
from models.complexity import count_macs  # noqa: E402

DEFAULT_MODELS = ("small_cnn", "wrn10_4", "resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
                  "ghostnet_100")
# the main seed's model comparison (its README): resnet18 and its nine others, in its order and spelling's meaning
SEED_MODELS = ("resnet18", "resnet50", "shufflenet_v2_x1_0", "shufflenet_v2_x2_0", "mobilenet_v2", "mobilenet_v3_small",
               "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b4", "ghostnet_100")
COLUMNS = {"eager": EAGER, "TorchScript": TORCHSCRIPT, "ONNX Runtime": ORT_FP32}  # table column → variant
# one recipe for every model, from scratch: what a user would try first on a new architecture. BatchNorm momentum
# 0.1 is every model's own except torchvision's MobileNetV3 (0.01), which at 460 steps stays at chance without it
ACCURACY_RECIPE = ("--optimizer", "adamw", "--lr", "0.002", "--weight_decay", "0.05", "--lr_schedule", "cosine",
                   "--warmup", "1", "-b", "64", "--aug", "basic", "--bn_momentum", "0.1", "--seed", "0", "-j", "1")


def split_counts(root: str) -> str:
    """'train N / val N / test N images, C classes' of a data root of class folders."""
    counts = {split: count_images(Path(root) / split) for split in ("train", "val", "test")}
    classes = count_classes(Path(root) / "train")
    return " / ".join(f"{k} {v}" for k, v in counts.items()) + f" images, {classes} classes"


def quiet(command: list[str]) -> None:
    """Run a main.py job without its progress bars; its error output if it fails."""
    proc = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def train_and_test(name: str, args, workdir: Path) -> list[str]:
    """Train ``name`` on ``--accuracy_data`` with ``ACCURACY_RECIPE``, evaluate best.pth once on test; the cells
    best val top-1, test top-1, training minutes. Raw files go to ``--results/<name>/``."""
    run = name.replace("/", "_")
    size = str(args.accuracy_size)
    train = [sys.executable, "main.py", "--data", args.accuracy_data, "--model", name, "--image_size", size, size,
             "--epochs", str(args.accuracy_epochs), *ACCURACY_RECIPE, "--name", run,
             "--checkpoint_dir", str(workdir / "checkpoints"), "--log_dir", str(workdir / "logs")]
    started = time.perf_counter()
    quiet(train)
    minutes = (time.perf_counter() - started) / 60
    folder = workdir / "checkpoints" / run
    quiet([sys.executable, "main.py", "--evaluation", "--resume", str(folder / "best.pth"), "--split", "test",
           "--output", str(folder / "eval_test")])
    with open(folder / "summary.csv") as handle:
        best_val = max(float(row["val_top1"]) for row in csv.DictReader(handle))
    report = folder / "eval_test" / "report.json"
    test_top1 = json.loads(report.read_text())["top1"]
    if args.results:
        keep = Path(args.results) / run
        keep.mkdir(parents=True, exist_ok=True)
        for path in (report, folder / "summary.csv", folder / "train.log", folder / "config.yaml"):
            shutil.copy2(path, keep / path.name)
    return [f"{best_val:.2f}", f"{test_top1:.2f}", f"{minutes:.1f}"]


def model_row(name: str, args, images: torch.Tensor, workdir: Path) -> tuple[list[str], list[str]]:
    """One table row for ``name`` and the notes about forms that failed."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=args.classes).eval()
    calibrate_batchnorm(model, images)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gmacs = count_macs(model, (args.size, args.size)) / 1e9
    variants = build_variants(model, name.replace("/", "_"), images, workdir, args.threads, int8=False)
    times = measure_latency(variants.runs, images[0], iters=args.iters, warmup=args.warmup)
    medians = {column: float(np.median(times[form])) * 1000 for column, form in COLUMNS.items() if form in times}
    cells = [f"{medians[c]:.2f}" if c in medians else "failed" for c in COLUMNS]
    exported = [medians[c] for c in COLUMNS if c != "eager" and c in medians]
    speedup = f"{medians['eager'] / min(exported):.2f}" if exported else "-"
    row = [name, model_source(name), f"{params:.2f}", f"{gmacs:.3f}", f"{2 * gmacs:.3f}", *cells, speedup]
    return row, [f"{name}: {form} failed: {error}" for form, error in variants.errors.items()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=None, help="names build_model accepts (default: a mixed list)")
    p.add_argument("--seed_table", action="store_true", help="the main seed's ten models (SEED_MODELS), 6 classes")
    p.add_argument("--size", type=int, default=224, help="network input (square)")
    p.add_argument("--threads", type=int, default=2, help="torch threads and ONNX Runtime intra-op threads")
    p.add_argument("--iters", type=int, default=50, help="timed batch-1 calls per form and model")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per form first")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--markdown", default=None, metavar="OUT", help="also write the table and environment line here")
    p.add_argument("--accuracy_data", default=None, metavar="ROOT",
                   help="also train each model on this data root (train/val/test) and report val and test top-1")
    p.add_argument("--accuracy_size", type=int, default=32, help="--accuracy_data: training input side")
    p.add_argument("--accuracy_epochs", type=int, default=10, help="--accuracy_data: epochs per model")
    p.add_argument("--results", default=None, metavar="DIR", help="--accuracy_data: keep each run's raw files here")
    args = p.parse_args(argv)
    if args.models is None:
        args.models = list(SEED_MODELS if args.seed_table else DEFAULT_MODELS)
    if args.seed_table:
        args.classes = 6
    if args.accuracy_data and not (Path(args.accuracy_data) / "test").is_dir():
        p.error(f"--accuracy_data {args.accuracy_data}: no test/ split there; make one with "
                "`python -m dataloader.prepare fashion-mnist --out ROOT --classes 0 1 2 3 4 5 --train_per_class 500`")
    torch.set_num_threads(args.threads)
    images, _ = real_images(args.size, count=8)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            row, failed = model_row(name, args, images, Path(workdir))
            rows.append(row)
            notes += failed
            print(" | ".join(row), flush=True)  # progress: the slow models take a while
        for name, row in zip(args.models, rows if args.accuracy_data else []):  # after all timings: a quiet CPU
            row += train_and_test(name, args, Path(workdir))
            print(" | ".join(row), flush=True)
    title = (f"Models at {args.size}x{args.size}, batch 1, {args.threads} threads, random weights: median latency "
             f"in ms over {args.iters} calls (uint8 input to probabilities)")
    header = ["model", "source", "params (M)", "GMACs (thop)", "GFLOPs (2 x MACs)", "eager ms", "TorchScript ms",
              "ONNX Runtime ms", "best export speed-up vs eager"]
    lines = []
    if args.accuracy_data:
        side = args.accuracy_size
        header += [f"val top-1 % ({side} px)", f"test top-1 % ({side} px)", "train min"]
        lines = [f"Accuracy: trained from scratch on {args.accuracy_data} ({split_counts(args.accuracy_data)}) at "
                 f"{side}x{side} for {args.accuracy_epochs} epochs with `main.py {' '.join(ACCURACY_RECIPE)}`; the "
                 "epoch with the best val top-1 (best.pth) evaluated once on test; train min is the wall time of "
                 f"training and per-epoch validation ({os.cpu_count()} cores)."]
    table = markdown_table(header, rows)
    text = "\n".join([title, "", table, "", inference_environment(args.threads), *lines, *notes])
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
