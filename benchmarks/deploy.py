"""Batch-1 CPU inference of one model in each form this project deploys, against eager PyTorch in the same run.

    python benchmarks/deploy.py                                   # mobilenet_v3_small, 224x224, 2 threads
    python benchmarks/deploy.py --model small_cnn --size 32 --iters 1000 --markdown deploy.md
    python benchmarks/deploy.py --aoti --openvino                 # also AOTInductor and OpenVINO
    python benchmarks/deploy.py --resume checkpoints/RUN/best.pth --deploy   # every form; writes RUN/deploy.json

Variants: eager PyTorch fp32 (the reference); TorchScript as `main.py --jit` writes it and the demo loads it
(conv-BN fused, frozen, optimize_for_inference where the export found it exact and faster); ONNX Runtime fp32 and
ONNX Runtime int8 (dynamic quantisation) as `main.py --onnx [--int8]` writes them; with --threads > 1, also the
fp32 file with one intra-op thread (at batch 1 a small network can lose more to the hand-over between threads than
it gains; on a shared 2-core VM the 2-thread latency also swings with the neighbours' load, see the README). With
`--aoti`, the AOTInductor package of `main.py --export pt2`; with `--openvino`, the OpenVINO IR of `main.py --export
openvino` (and, with --threads > 1, with one inference thread). Each is the export pipeline's own output
(engine/export.py, engine/onnx.py, engine/aoti.py, engine/openvino_ir.py), saved and loaded back as the demo loads
it. Every variant takes a uint8 image and returns probabilities, so the normalisation is timed too. After a warm-up
the variants take turns in rounds, so load from a neighbour that comes and goes falls on all of them alike.

By default the model has random weights (nothing is downloaded), with BatchNorm statistics set from the images, and
the agreement columns compare each variant's probabilities with eager's on real images (Fashion-MNIST test images
when `data/fashion-mnist` is prepared, else random uint8 images, as the output says). A random network's classes
are close to tied, so top-1 agreement is a harsher test than it would be for a trained model. `--resume CKPT` times
a trained checkpoint instead and scores every form on a split of its data set (`--split`, default val), so the
accuracy cost of each form is measured too:

    python benchmarks/deploy.py --resume checkpoints/RUN/best.pth --split val

`--deploy` (with --resume; implies --aoti --openvino) writes every form beside the checkpoint (`best.torchscript.pt`,
`best.onnx`, `best.int8.onnx`, `best.pt2`, `best.openvino.xml`/`.bin`, as main.py names them) and chooses one: of
the forms that pass the accuracy gate (top-1 on the split within TARGET_TOP1_POINTS of eager's; where nothing is
scored, the export parity rule: max |diff| <= 1e-4 and every top-1 equal), the one with the most calls per second
(lowest mean latency) on this machine; TorchScript, AOTInductor, ONNX Runtime and OpenVINO are each timed with
--threads and with one thread. It writes `deploy.json` beside them (serving/runtime.py owns the format): the file,
runtime, threads, batch size, p50/p99, FPS, top-1, CPU capability and date; the demo and the server load the model
through it.
"""
from __future__ import annotations

import argparse
import datetime
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
from engine.aoti import write_aoti_package  # noqa: E402
from engine.export import (InferenceModel, compare_outputs, export_metadata, fuse_conv_bn,  # noqa: E402
                           load_torchscript, parity_ok, plain_metadata, sample_images, save_torchscript)
from engine.job import resolve_config  # noqa: E402
from engine.onnx import (INT8_OP_TYPES, onnx_exporter_of, ort_session, quantize_int8, require_onnx,  # noqa: E402
                         run_session, split_top1, write_onnx)
from engine.openvino_ir import write_openvino_ir  # noqa: E402
from models import build_model  # noqa: E402
from serving.runtime import DEPLOY_MANIFEST, load_exported, write_deploy_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO / "data" / "fashion-mnist"
ROUNDS = 5
EAGER, TORCHSCRIPT, ORT_FP32, ORT_INT8 = "eager PyTorch fp32", "TorchScript", "ONNX Runtime fp32", "ONNX Runtime int8"
ORT_FP32_ONE_THREAD = "ONNX Runtime fp32, 1 thread"
ORT_FP32_OTHER = "ONNX Runtime fp32, other exporter"  # --compare_onnx_exporters
AOTI, OPENVINO, OPENVINO_ONE_THREAD = "AOTInductor", "OpenVINO", "OpenVINO, 1 thread"
ONE_THREAD = ", 1 thread"  # the suffix of a form's single-threaded twin
FP32_EXPORTS = (TORCHSCRIPT, ORT_FP32, ORT_FP32_ONE_THREAD, ORT_FP32_OTHER, AOTI, OPENVINO, OPENVINO_ONE_THREAD,
                TORCHSCRIPT + ONE_THREAD, AOTI + ONE_THREAD)
TARGET_FPS, TARGET_RATIO, TARGET_TOP1_POINTS = 500.0, 4.0, 0.1


def inference_environment(threads: int, *, openvino: bool = False) -> str:
    """The line every printed latency needs: versions, CPU capability, cores and threads."""
    _, ort = require_onnx()
    versions = f"torch {torch.__version__}, onnxruntime {ort.__version__}"
    if openvino:
        import openvino as ov

        versions += f", openvino {ov.get_version().split('-')[0]}"
    load = f", load average {os.getloadavg()[0]:.2f} (1 min, all processes)" if hasattr(os, "getloadavg") else ""
    return (f"environment: {versions}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} "
            f"cores, torch threads {torch.get_num_threads()}, ONNX Runtime intra-op threads {threads}, batch 1, "
            f"processes 1{load}")


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
class Forms:
    """Which forms to build besides eager, TorchScript and ONNX Runtime fp32."""

    int8: bool = True
    one_thread: bool = False  # the ONNX (and OpenVINO) file also with one intra-op thread, when threads > 1
    torch_one_thread: bool = False  # TorchScript and AOTInductor too, torch's threads switched around each call
    aoti: bool = False
    openvino: bool = False
    onnx_exporter: str = "auto"  # engine.onnx.write_onnx's exporter
    compare_onnx_exporters: bool = False  # also the ONNX file of the other exporter


@dataclass
class Variants:
    """The deployable forms of one model: callables uint8 batch → probabilities, eager first."""

    runs: dict[str, Callable] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # how a form was built, for the table
    sizes: dict[str, float] = field(default_factory=dict)  # file size in MiB
    errors: dict[str, str] = field(default_factory=dict)  # forms that failed to build, and why
    deployable: dict[str, tuple[Path, str, int]] = field(default_factory=dict)  # file, deploy.json runtime, threads
    twins: dict[str, str] = field(default_factory=dict)  # a form -> the form it computes the same outputs as

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
                   output: str = "softmax", forms: Forms | None = None, cfg: Config | None = None,
                   class_names: list[str] | None = None) -> Variants:
    """Eager, TorchScript, ONNX Runtime fp32 (and int8, AOTInductor, OpenVINO: ``forms``) forms of ``model``,
    written to ``workdir`` as ``name.torchscript.pt``, ``name.onnx``, ... and loaded back as main.py writes them and
    the demo loads them; ``one_thread`` adds the fp32 file in a session with one intra-op thread when ``threads`` >
    1. ``preprocessing`` (default: ImageNet mean/std) and ``output`` ("softmax", or "bce" for normalised sigmoids)
    are what InferenceModel bakes in; ``cfg`` and ``class_names`` the metadata the files carry (needed by the forms
    serving/runtime.py loads: AOTInductor, OpenVINO). A form that fails is recorded in ``errors``; the others go
    on."""
    forms = forms or Forms(int8=int8, one_thread=one_thread)
    if preprocessing is None:
        preprocessing = Preprocessing(image_size=tuple(images.shape[-2:]), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    eager = InferenceModel(model.eval(), preprocessing, output).eval()
    fused_model, folded = fuse_conv_bn(model, name)
    fused = InferenceModel(fused_model, preprocessing, output).eval()
    extra = export_metadata(cfg, class_names, folded=folded) if cfg is not None else {}
    metadata = plain_metadata(extra) if extra else None
    out = Variants(runs={EAGER: eager})
    try:
        path = workdir / f"{name}.torchscript.pt"
        _, _, optimized = save_torchscript(fused, eager, images, path, extra)
        out.runs[TORCHSCRIPT] = load_torchscript(path)  # as the demo loads it: optimised when the file says so
        out.details[TORCHSCRIPT] = f"{folded} BN fused, frozen" + (", optimize_for_inference" if optimized else "")
        out.sizes[TORCHSCRIPT] = path.stat().st_size / 2**20
        out.deployable[TORCHSCRIPT] = (path, "torchscript", threads)
    except Exception as exc:  # noqa: BLE001  report it and go on with the other forms
        out.errors[TORCHSCRIPT] = _first_line(exc)
    onnx_path = workdir / f"{name}.onnx"
    built = [(ORT_FP32, lambda: write_onnx(fused, images, onnx_path, model_name=name, metadata=metadata,
                                           exporter=forms.onnx_exporter))]
    if forms.int8:
        built.append((ORT_INT8, lambda: quantize_int8(onnx_path, workdir / f"{name}.int8.onnx")))
    for form, write in built:
        try:
            path = write()
            session = ort_session(path, threads)
            out.runs[form] = lambda batch, session=session: run_session(session, batch)
            out.details[form] = (f"{onnx_exporter_of(path)} exporter" if form == ORT_FP32 else
                                 f"dynamic, {'/'.join(INT8_OP_TYPES)}")
            out.sizes[form], out.deployable[form] = path.stat().st_size / 2**20, (path, "onnxruntime", threads)
            if form == ORT_FP32 and forms.one_thread and threads > 1:
                single = ort_session(path, 1)
                out.runs[ORT_FP32_ONE_THREAD] = lambda batch, session=single: run_session(session, batch)
                out.sizes[ORT_FP32_ONE_THREAD] = out.sizes[form]
                out.deployable[ORT_FP32_ONE_THREAD] = (path, "onnxruntime", 1)
                out.twins[ORT_FP32_ONE_THREAD] = form
        except Exception as exc:  # noqa: BLE001
            out.errors[form] = _first_line(exc)
            break  # int8 is quantised from the fp32 file
    if forms.compare_onnx_exporters and ORT_FP32 in out.runs:
        _build(out, ORT_FP32_OTHER, lambda: _other_exporter(out, fused, images, workdir / f"{name}.other.onnx", name,
                                                           metadata, threads))
    if forms.aoti:
        _build(out, AOTI, lambda: _aoti(fused, images, workdir / f"{name}.pt2", name, metadata, threads))
    if forms.openvino and ORT_FP32 in out.runs:
        xml = workdir / f"{name}.openvino.xml"
        _build(out, OPENVINO, lambda: _openvino(onnx_path, xml, metadata, threads))
        if forms.one_thread and threads > 1 and OPENVINO in out.runs:
            _build(out, OPENVINO_ONE_THREAD, lambda: _openvino(None, xml, metadata, 1))
            out.twins[OPENVINO_ONE_THREAD] = OPENVINO
    if forms.torch_one_thread and threads > 1:
        for form in (TORCHSCRIPT, AOTI):
            if form in out.runs:
                twin = form + ONE_THREAD
                out.runs[twin], out.details[twin] = _with_torch_threads(out.runs[form], 1), out.details.get(form, "")
                out.sizes[twin], out.twins[twin] = out.sizes[form], form
                path, runtime, _ = out.deployable[form]
                out.deployable[twin] = (path, runtime, 1)
    out.runs = {name: out.runs[name] for name in _twins_last(out)}
    return out


def _twins_last(out: Variants) -> list[str]:
    """The forms in build order, each single-threaded twin right after its form."""
    order = []
    for name in out.runs:
        if name not in out.twins:
            order += [name] + [twin for twin, base in out.twins.items() if base == name and twin in out.runs]
    return order


def _with_torch_threads(run: Callable, threads: int) -> Callable:
    """``run`` with torch's (process-wide) thread count set to ``threads`` for each call; switching costs ~0.4 us."""
    def call(batch: torch.Tensor) -> torch.Tensor:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run(batch)
        finally:
            torch.set_num_threads(previous)

    return call


def _build(out: Variants, form: str, build: Callable) -> None:
    """Add the form ``build`` returns (run, detail, file, runtime, threads), or record why it failed."""
    try:
        run, detail, path, runtime, threads = build()
    except Exception as exc:  # noqa: BLE001  report it and go on with the other forms
        out.errors[form] = _first_line(exc)
        return
    out.runs[form], out.details[form] = run, detail
    out.sizes[form] = sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file()) / 2**20
    out.deployable[form] = (path, runtime, threads)


def _aoti(fused, images, path: Path, name: str, metadata, threads: int):
    write_aoti_package(fused, images, path, model_name=name, metadata=metadata)
    return load_exported(path).run, "torch.export, dynamic batch", path, "aotinductor", threads


def _openvino(onnx_path: Path | None, xml: Path, metadata, threads: int):
    if onnx_path is not None:
        write_openvino_ir(onnx_path, xml, metadata=metadata)
    return load_exported(xml, threads).run, "IR from the ONNX file, f32", xml, "openvino", threads


def _other_exporter(out: Variants, fused, images, path: Path, name: str, metadata, threads: int):
    """The ONNX file of the exporter the fp32 row did not use, for a like-for-like comparison of their graphs."""
    used = out.details[ORT_FP32].split()[0]
    other = "torchscript" if used == "dynamo" else "dynamo"
    write_onnx(fused, images, path, model_name=name, metadata=metadata, exporter=other)
    session = ort_session(path, threads)
    return lambda batch: run_session(session, batch), f"{other} exporter", path, "onnxruntime", threads


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
    p.add_argument("--aoti", action="store_true", help="also the AOTInductor package (compiles C++: a minute or more)")
    p.add_argument("--openvino", action="store_true", help="also the OpenVINO IR, read from the ONNX file")
    p.add_argument("--onnx_exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="the ONNX exporter of the ONNX Runtime (and OpenVINO) rows: auto is dynamo, falling back to "
                        "the TorchScript-based one")
    p.add_argument("--compare_onnx_exporters", action="store_true",
                   help="also time the ONNX file the other exporter writes")
    p.add_argument("--deploy", nargs="?", const="", default=None, metavar="DIR",
                   help="with --resume: every form (implies --aoti --openvino), written to DIR (default: the "
                        "checkpoint's folder) with deploy.json naming the fastest that passes the accuracy gate")
    p.add_argument("--markdown", default=None, metavar="OUT", help="also write the table and environment line here")
    args = p.parse_args(argv)
    if args.deploy is not None and not args.resume:
        p.error("--deploy needs --resume CKPT: deploy.json names a trained model's export")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    subject = checkpoint_subject(args.resume) if args.resume else random_subject(args)
    forms = Forms(int8=args.int8, one_thread=True, torch_one_thread=args.deploy is not None,
                  aoti=args.aoti or args.deploy is not None,
                  openvino=args.openvino or args.deploy is not None, onnx_exporter=args.onnx_exporter,
                  compare_onnx_exporters=args.compare_onnx_exporters)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(temporary)
        stem = subject.name.replace("/", "_")
        if args.deploy is not None:
            workdir = Path(args.deploy or Path(args.resume).parent)
            workdir.mkdir(parents=True, exist_ok=True)
            stem = Path(args.resume).stem
        variants = build_variants(subject.model, stem, subject.images, workdir, args.threads, forms=forms,
                                  preprocessing=subject.preprocessing, output=subject.output,
                                  cfg=subject.metadata_cfg(), class_names=subject.class_names)
        agree = agreement(variants.runs, subject.images)
        top1, scored = {}, 0
        if subject.cfg is not None:
            print(f"scoring every form on the {args.split} split of {subject.cfg.data} ...", flush=True)
            scoring = {name: run for name, run in variants.runs.items() if name not in variants.twins}
            top1, scored = split_top1(scoring, subject.cfg, subject.class_names, args.split)
            top1.update({twin: top1[base] for twin, base in variants.twins.items() if base in top1})
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
                      inference_environment(args.threads, openvino=forms.openvino)])
    text += "".join(f"\n{name} failed: {error}" for name, error in variants.errors.items())
    if args.deploy is not None:
        text += "\n" + deploy(variants, times, agree, top1, workdir / DEPLOY_MANIFEST, args.split)
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


def choose_runtime(variants: Variants, times: dict[str, np.ndarray], agree: dict[str, tuple[float, float]],
                   top1: dict[str, float]) -> tuple[str | None, dict[str, bool]]:
    """The deployable form with the most calls per second (the lowest mean latency: unlike the median it counts the
    slow calls, such as those of two threads on two busy cores) among those that pass the accuracy gate: top-1
    within TARGET_TOP1_POINTS of eager's where the split was scored, else the export parity rule against eager (max
    |diff| <= 1e-4, every top-1 equal). Returns it (None when no form passes) and each form's verdict."""
    passed = {}
    for name in variants.deployable:
        if name not in times:
            continue
        if top1:
            passed[name] = abs(top1[name] - top1[EAGER]) <= TARGET_TOP1_POINTS
        else:
            passed[name] = parity_ok(agree[name][1], agree[name][0])
    candidates = [name for name, ok in passed.items() if ok]
    return (min(candidates, key=lambda name: float(np.mean(times[name]))) if candidates else None), passed


def deploy(variants: Variants, times: dict[str, np.ndarray], agree: dict[str, tuple[float, float]],
           top1: dict[str, float], manifest_path: Path, split: str) -> str:
    """Choose the runtime, write deploy.json beside the files and return the line that says what was chosen."""
    chosen, passed = choose_runtime(variants, times, agree, top1)
    if chosen is None:
        return f"deploy: no form passed the accuracy gate; {manifest_path} not written"
    path, runtime, threads = variants.deployable[chosen]
    t = times[chosen] * 1000
    gate = (f"top-1 on {split} within {TARGET_TOP1_POINTS} points of eager" if top1 else
            "parity with eager (max |diff| <= 1e-4, every top-1 equal)")
    manifest = {"model": os.path.relpath(path, manifest_path.parent), "runtime": runtime, "threads": threads,
                "batch_size": 1, "p50_ms": round(float(np.percentile(t, 50)), 4),
                "p99_ms": round(float(np.percentile(t, 99)), 4), "fps": round(len(t) / (float(t.sum()) / 1000), 1),
                "top1": round(top1[chosen], 4) if top1 else None, "cpu": torch.backends.cpu.get_cpu_capability(),
                "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "variant": variants.label(chosen), "cores": os.cpu_count(), "gate": gate,
                "split": split if top1 else None,
                "candidates": {variants.label(name): {"fps": round(len(times[name]) / float(times[name].sum()), 1),
                                                      "p50_ms": round(float(np.median(times[name])) * 1000, 4),
                                                      "passed_gate": ok} for name, ok in passed.items()}}
    write_deploy_manifest(manifest_path, manifest)
    return (f"deploy: {variants.label(chosen)} ({path.name}, {runtime}, {threads} threads, {manifest['fps']:.1f} "
            f"FPS, p50 {manifest['p50_ms']:.3f} ms) is the fastest of {sum(passed.values())} forms passing the gate "
            f"({gate}); wrote {manifest_path}")


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

    def metadata_cfg(self) -> Config:
        """The config the exports' metadata is written from: the checkpoint's, or one describing the random model."""
        if self.cfg is not None:
            return self.cfg
        return Config(model=self.name, image_size=list(self.preprocessing.image_size),
                      mean=list(self.preprocessing.mean), std=list(self.preprocessing.std))


def random_subject(args) -> Subject:
    model = build_model(args.model, num_classes=args.classes).eval()
    images, source = real_images(args.size, root=Path(args.images))
    calibrate_batchnorm(model, images)
    preprocessing = Preprocessing(image_size=(args.size, args.size), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Subject(model, args.model, f"{args.model} (random weights) at {args.size}x{args.size}", images, source,
                   preprocessing, class_names=[str(i) for i in range(args.classes)])


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
