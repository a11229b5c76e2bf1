"""The model table: size, compute and batch-1 CPU latency of each model as eager PyTorch, TorchScript and ONNX Runtime.

    python benchmarks/models.py                                     # the default list at 224x224, 2 threads
    python benchmarks/models.py --models small_cnn wrn10_4 --size 32 --iters 100 --markdown models.md

Every model is built by `models.build_model` with random weights (nothing is downloaded) and exported by the same
code as `main.py --jit` / `--onnx` (benchmarks/deploy.py builds the forms and times them, taking turns). Parameters
are counted exactly; compute comes from thop, which counts the multiply-accumulates (MACs) of the layers it hooks
(convolutions, linear, normalisation, pooling, activations it knows) and not functional ops such as additions in
residual blocks; the table gives GMACs and GFLOPs = 2 x GMACs. Latency is the median over `--iters` batch-1 calls of
uint8 input to probabilities (normalisation included).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table  # noqa: E402
from benchmarks.deploy import (EAGER, ORT_FP32, TORCHSCRIPT, build_variants, calibrate_batchnorm,  # noqa: E402
                               inference_environment, measure_latency, real_images)
from models import build_model, model_source  # noqa: E402
from models.complexity import count_macs  # noqa: E402

DEFAULT_MODELS = ("small_cnn", "wrn10_4", "resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
                  "ghostnet_100")
COLUMNS = {"eager": EAGER, "TorchScript": TORCHSCRIPT, "ONNX Runtime": ORT_FP32}  # table column → variant


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
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="names build_model accepts")
    p.add_argument("--size", type=int, default=224, help="network input (square)")
    p.add_argument("--threads", type=int, default=2, help="torch threads and ONNX Runtime intra-op threads")
    p.add_argument("--iters", type=int, default=50, help="timed batch-1 calls per form and model")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per form first")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--markdown", default=None, metavar="OUT", help="also write the table and environment line here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    images, _ = real_images(args.size, count=8)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            row, failed = model_row(name, args, images, Path(workdir))
            rows.append(row)
            notes += failed
            print(" | ".join(row), flush=True)  # progress: the slow models take a while
    title = (f"Models at {args.size}x{args.size}, batch 1, {args.threads} threads, random weights: median latency "
             f"in ms over {args.iters} calls (uint8 input to probabilities)")
    table = markdown_table(["model", "source", "params (M)", "GMACs (thop)", "GFLOPs (2 x MACs)", "eager ms",
                            "TorchScript ms", "ONNX Runtime ms", "best export speed-up vs eager"], rows)
    text = "\n".join([title, "", table, "", inference_environment(args.threads), *notes])
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
