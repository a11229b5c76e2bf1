"""Batch-1 CPU inference of one model in each form this project deploys, against eager PyTorch in the same run.

    python benchmarks/deploy.py                                   # mobilenet_v3_small, 224x224, 2 threads
    python benchmarks/deploy.py --model small_cnn --size 32 --iters 1000 --markdown deploy.md

Variants: eager PyTorch fp32 (the reference); TorchScript as `main.py --jit` writes it and the demo loads it
(conv-BN fused, frozen, optimize_for_inference where the export found it exact and faster); ONNX Runtime fp32 and
ONNX Runtime int8 (dynamic quantisation) as `main.py --onnx [--int8]` writes them; with --threads > 1, also the
fp32 file with one intra-op thread (at batch 1 a small network can lose more to the hand-over between threads than
it gains; on a shared 2-core VM the 2-thread latency also swings with the neighbours' load, see the README). Each is
the export pipeline's own output (applications/export.py, applications/export_onnx.py), saved and loaded back.
Every variant takes a uint8 image and returns probabilities, so the normalisation is timed too. After a warm-up
the variants take turns in rounds, so load from a neighbour that comes and goes falls on all of them alike.

By default the model has random weights (nothing is downloaded), with BatchNorm statistics set from the images, and
the agreement columns compare each variant's probabilities with eager's on real images (Fashion-MNIST test images
when `data/fashion-mnist` is prepared, else random uint8 images, as the output says). A random network's classes
are close to tied, so top-1 agreement is a harsher test than it would be for a trained model. `--resume CKPT` times
a trained checkpoint instead and scores every form on a split of its data set (`--split`, default val), so the
accuracy cost of each form is measured too:

    python benchmarks/deploy.py --resume checkpoints/RUN/best.pth --split val
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table  # noqa: E402
from config import Config  # noqa: E402
from dataloader.datasets import is_image_file  # noqa: E402
from dataloader.preprocess import (IMAGENET_MEAN, IMAGENET_STD, Preprocessing, load_image_tensor,  # noqa: E402
                                   normalize_on_device)
from engine.components import model_from_checkpoint, preprocessing_of  # noqa: E402
from engine.export import (InferenceModel, compare_outputs, fuse_conv_bn, load_torchscript,  # noqa: E402
                           sample_images, save_torchscript)
from engine.job import resolve_config  # noqa: E402
from engine.onnx import (INT8_OP_TYPES, ort_session, quantize_int8, require_onnx, run_session,  # noqa: E402
                         split_top1, write_onnx)
from models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO / "data" / "fashion-mnist"
ROUNDS = 5
EAGER, TORCHSCRIPT, ORT_FP32, ORT_INT8 = "eager PyTorch fp32", "TorchScript", "ONNX Runtime fp32", "ONNX Runtime int8"
ORT_FP32_ONE_THREAD = "ONNX Runtime fp32, 1 thread"
FP32_EXPORTS = (TORCHSCRIPT, ORT_FP32, ORT_FP32_ONE_THREAD)
TARGET_FPS, TARGET_RATIO, TARGET_TOP1_POINTS = 500.0, 4.0, 0.1


def inference_environment(threads: int) -> str:
    """The line every printed latency needs: versions, CPU capability, cores and threads."""
    _, ort = require_onnx()
    return (f"environment: torch {torch.__version__}, onnxruntime {ort.__version__}, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, ONNX Runtime intra-op threads {threads}, batch 1, processes 1")


def real_images(size: int, *, root: Path = DEFAULT_IMAGES, count: int = 32) -> tuple[torch.Tensor, str]:
    """``count`` letterboxed uint8 images (N, 3, size, size) from ``root``'s test (or any) split, spread over the
    classes; random uint8 images when there are none. Returns the batch and where it came from."""
    preprocessing = Preprocessing(image_size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    for split in ("test", "val", "train"):
        folder = root / split
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if is_image_file(p.name))
            if files:
                picked = files[::max(1, len(files) // count)][:count]
                images = torch.stack([load_image_tensor(p, preprocessing) for p in picked])
                return images, f"{len(picked)} images of {folder}"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, f"{count} random uint8 images ({root} not prepared)"


@dataclass
class Variants:
    """The deployable forms of one model: callables uint8 batch → probabilities, eager first."""

    runs: dict[str, Callable] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # how a form was built, for the table
    sizes: dict[str, float] = field(default_factory=dict)  # file size in MiB
    errors: dict[str, str] = field(default_factory=dict)  # forms that failed to build, and why

    def label(self, name: str) -> str:
        return f"{name} ({self.details[name]})" if self.details.get(name) else name


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Set the BatchNorm statistics from ``images`` in one train-mode pass. A freshly initialised network (running
    mean 0, variance 1) outputs nearly uniform probabilities, which is neither what a trained network computes nor
    a test of agreement between the forms."""
    norms = [m for m in model.modules() if getattr(m, "track_running_stats", False)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the pass
    model.train()
    model(normalize_on_device(images, IMAGENET_MEAN, IMAGENET_STD))
    model.eval()


def build_variants(model: torch.nn.Module, name: str, images: torch.Tensor, workdir: Path, threads: int, *,
                   int8: bool = True, one_thread: bool = False, preprocessing: Preprocessing | None = None,
                   output: str = "softmax") -> Variants:
    """Eager, TorchScript, ONNX Runtime fp32 (and int8) forms of ``model``, written to ``workdir`` and loaded back
    as main.py --jit / --onnx write them; ``one_thread`` adds the fp32 file in a session with one intra-op thread
    when ``threads`` > 1. ``preprocessing`` (default: ImageNet mean/std) and ``output`` ("softmax", or "bce" for
    normalised sigmoids) are what InferenceModel bakes in. A form that fails is recorded in ``errors``; the others
    go on."""
    if preprocessing is None:
        preprocessing = Preprocessing(image_size=tuple(images.shape[-2:]), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    eager = InferenceModel(model.eval(), preprocessing, output).eval()
    fused_model, folded = fuse_conv_bn(model, name)
    fused = InferenceModel(fused_model, preprocessing, output).eval()
    out = Variants(runs={EAGER: eager})
    try:
        path = workdir / f"{name}.pt"
        _, _, optimized = save_torchscript(fused, eager, images, path, {})
        out.runs[TORCHSCRIPT] = load_torchscript(path)  # as the demo loads it: optimised when the file says so
        out.details[TORCHSCRIPT] = f"{folded} BN fused, frozen" + (", optimize_for_inference" if optimized else "")
        out.sizes[TORCHSCRIPT] = path.stat().st_size / 2**20
    except Exception as exc:  # noqa: BLE001  report it and go on with the other forms
        out.errors[TORCHSCRIPT] = _first_line(exc)
    onnx_path = workdir / f"{name}.onnx"
    forms = [(ORT_FP32, "", lambda: write_onnx(fused, images, onnx_path, model_name=name))]
    if int8:
        forms.append((ORT_INT8, f"dynamic, {'/'.join(INT8_OP_TYPES)}",
                      lambda: quantize_int8(onnx_path, workdir / f"{name}.int8.onnx")))
    for form, detail, write in forms:
        try:
            path = write()
            session = ort_session(path, threads)
            out.runs[form] = lambda batch, session=session: run_session(session, batch)
            out.details[form], out.sizes[form] = detail, path.stat().st_size / 2**20
            if form == ORT_FP32 and one_thread and threads > 1:
                single = ort_session(path, 1)
                out.runs[ORT_FP32_ONE_THREAD] = lambda batch, session=single: run_session(session, batch)
                out.sizes[ORT_FP32_ONE_THREAD] = out.sizes[form]
        except Exception as exc:  # noqa: BLE001
            out.errors[form] = _first_line(exc)
            break  # int8 is quantised from the fp32 file
    return out


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@torch.inference_mode()
def measure_latency(variants: dict[str, Callable], image: torch.Tensor, *, iters: int, warmup: int = 10,
                    rounds: int = ROUNDS) -> dict[str, np.ndarray]:
    """Seconds per batch-1 call of each variant: ``warmup`` untimed calls each, then ``rounds`` turns of about
    iters / rounds timed calls each."""
    batch = image.unsqueeze(0) if image.ndim == 3 else image[:1]
    for run in variants.values():
        for _ in range(warmup):
            run(batch)
    times: dict[str, list[float]] = {name: [] for name in variants}
    per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    for count in per_round:
        for name, run in variants.items():
            for _ in range(count):
                started = time.perf_counter()
                run(batch)
                times[name].append(time.perf_counter() - started)
    return {name: np.asarray(t) for name, t in times.items()}


@torch.inference_mode()
def agreement(variants: dict[str, Callable], images: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per variant: (top-1 agreement % with the first variant, max |probability difference|) on ``images``."""
    outputs = {name: run(images) for name, run in variants.items()}
    reference = next(iter(outputs.values()))
    return {name: compare_outputs(reference, out)[::-1] for name, out in outputs.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilenet_v3_small", help="any name build_model accepts (random weights)")
    p.add_argument("--size", type=int, default=224, help="network input (square)")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="time a trained checkpoint instead (its model, input size and preprocessing; --model, --size "
                        "and --classes are ignored) and score every form on --split of its data set")
    p.add_argument("--split", default="val", help="with --resume: the split every form is scored on")
    p.add_argument("--threads", type=int, default=2, help="torch threads and ONNX Runtime intra-op threads")
    p.add_argument("--iters", type=int, default=300, help="timed batch-1 calls per variant")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per variant first")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="data root for the agreement check")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 variant")
    p.add_argument("--markdown", default=None, metavar="OUT", help="also write the table and environment line here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    subject = checkpoint_subject(args.resume) if args.resume else random_subject(args)
    with tempfile.TemporaryDirectory() as workdir:
        variants = build_variants(subject.model, subject.name.replace("/", "_"), subject.images, Path(workdir),
                                  args.threads, int8=args.int8, one_thread=True, preprocessing=subject.preprocessing,
                                  output=subject.output)
        agree = agreement(variants.runs, subject.images)
        top1, scored = {}, 0
        if subject.cfg is not None:
            print(f"scoring every form on the {args.split} split of {subject.cfg.data} ...", flush=True)
            top1, scored = split_top1(variants.runs, subject.cfg, subject.class_names, args.split)
        times = measure_latency(variants.runs, subject.images[0], iters=args.iters, warmup=args.warmup)
    fps = {name: len(t) / t.sum() for name, t in times.items()}
    headers = ["variant", "ms p50", "ms p90", "FPS", "ratio vs eager", "top-1 agreement vs eager",
               "max abs prob diff vs eager", "file MiB"]
    if top1:
        headers += [f"top-1 % on {args.split}", "top-1 change (points)"]
    rows = []
    for name, t in times.items():
        rows.append([variants.label(name), f"{np.percentile(t, 50) * 1000:.3f}", f"{np.percentile(t, 90) * 1000:.3f}",
                     f"{fps[name]:.1f}", f"{fps[name] / fps[EAGER]:.2f}", f"{agree[name][0]:.1f}%",
                     f"{agree[name][1]:.2e}", f"{variants.sizes[name]:.2f}" if name in variants.sizes else "-"])
        if top1:
            rows[-1] += [f"{top1[name]:.2f}", f"{top1[name] - top1[EAGER]:+.2f}"]
    rows += [[name, "failed"] + ["-"] * (len(headers) - 2) for name in variants.errors]
    scored_on = f"; top-1 on {scored} images of the {args.split} split" if top1 else ""
    title = (f"Deployment speed, {subject.description}, batch 1, {args.threads} threads, {args.iters} calls per "
             f"variant after {args.warmup} warm-up; agreement with eager on {subject.source}{scored_on}")
    text = "\n".join([title, "", markdown_table(headers, rows), "", target_verdict(fps, top1),
                      inference_environment(args.threads)])
    text += "".join(f"\n{name} failed: {error}" for name, error in variants.errors.items())
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


@dataclass
class Subject:
    """The model a run times, with what its forms and the agreement check need."""

    model: torch.nn.Module
    name: str
    description: str
    images: torch.Tensor  # real uint8 images at the model's input size
    source: str
    preprocessing: Preprocessing
    output: str = "softmax"
    cfg: Config | None = None  # a checkpoint's config: its data set and splits
    class_names: list[str] = field(default_factory=list)


def random_subject(args) -> Subject:
    model = build_model(args.model, num_classes=args.classes).eval()
    images, source = real_images(args.size, root=Path(args.images))
    calibrate_batchnorm(model, images)
    preprocessing = Preprocessing(image_size=(args.size, args.size), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Subject(model, args.model, f"{args.model} (random weights) at {args.size}x{args.size}", images, source,
                   preprocessing)


def checkpoint_subject(path: str) -> Subject:
    """A trained checkpoint as main.py --jit / --onnx load it, with 32 real images of its data set."""
    cfg, ckpt = resolve_config(Config(resume=path), set())
    model = model_from_checkpoint(ckpt, cfg, torch.device("cpu")).eval()
    images = sample_images(cfg, ckpt.class_names, count=32)
    height, width = cfg.image_size
    return Subject(model, cfg.model, f"{cfg.model} ({path}) at {height}x{width}", images,
                   f"{images.shape[0]} images of {cfg.data}", preprocessing_of(cfg), cfg.criterion, cfg,
                   list(ckpt.class_names))


def target_verdict(fps: dict[str, float], top1: dict[str, float] | None = None) -> str:
    """Whether the fastest export reaches TARGET_FPS and TARGET_RATIO x eager and, when the forms were scored on a
    split, whether every fp32 export's top-1 is within TARGET_TOP1_POINTS of eager's."""
    exported = {name: f for name, f in fps.items() if name != EAGER}
    line = (f"target (an export >= {TARGET_FPS:.0f} FPS and >= {TARGET_RATIO:.0f}x eager, fp32 top-1 within "
            f"{TARGET_TOP1_POINTS} points of eager): ")
    if not exported:
        return line + "no export ran"
    best = max(exported, key=exported.get)
    ratio = exported[best] / fps[EAGER]
    met = exported[best] >= TARGET_FPS and ratio >= TARGET_RATIO
    accuracy = "top-1 not scored (random weights; --resume CKPT scores a trained model)"
    if top1:
        worst = max(abs(top1[name] - top1[EAGER]) for name in top1 if name in FP32_EXPORTS)
        met = met and worst <= TARGET_TOP1_POINTS
        accuracy = f"largest fp32 top-1 change {worst:.2f} points"
    return line + (f"{'met' if met else 'not met'}; fastest export {best}, {exported[best]:.1f} FPS, {ratio:.2f}x "
                   f"eager; {accuracy}")


if __name__ == "__main__":
    main()
