"""Classify images with an exported model only: no training code, no size or normalisation flags.

    python demos/classifier.py checkpoints/RUN/best.torchscript.pt path/to/image.png
    python demos/classifier.py checkpoints/RUN/best.onnx path/to/folder --topk 3 --json
    python demos/classifier.py MODEL path/to/image.png --benchmark 500 --threads 2   # batch-1 latency and FPS

MODEL is a TorchScript file (`main.py --jit`) or an ONNX file (`main.py --onnx`, run with ONNX Runtime); the format
is recognised from the file's content. Either carries its class names and preprocessing; images go through the same
letterbox code as training (dataloader/preprocess.py, loaded on its own so that none of the training data pipeline
is imported).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def _load_preprocess_module():
    """dataloader/preprocess.py by its path: `import dataloader.preprocess` would first run the package's
    __init__, which imports the training data pipeline (datasets, augmentation, samplers)."""
    path = Path(__file__).resolve().parents[1] / "dataloader" / "preprocess.py"
    spec = importlib.util.spec_from_file_location("classifier_preprocess", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building Preprocessing
    spec.loader.exec_module(module)
    return module


_preprocess = _load_preprocess_module()
IMAGE_EXTENSIONS = _preprocess.IMAGE_EXTENSIONS
Preprocessing = _preprocess.Preprocessing
load_image_tensor = _preprocess.load_image_tensor

EXPORT_HINT = "export one with: python main.py --jit --resume CKPT  (or --onnx)"


@dataclass
class ExportedModel:
    """An exported classifier: ``model(uint8 NCHW batch)`` returns class probabilities."""

    run: Callable[[torch.Tensor], torch.Tensor]
    class_names: list[str]
    preprocessing: Preprocessing
    format: str  # "TorchScript" or "ONNX"
    name: str  # the architecture, as exported

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)


def load_exported(path: str | Path, threads: int | None = None) -> ExportedModel:
    """A TorchScript (zip archive) or ONNX file written by main.py, with its class names and preprocessing."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"model file {path} not found; {EXPORT_HINT}")
    if threads:
        torch.set_num_threads(threads)
    # torch.jit.save writes a zip archive; an ONNX model is a bare protobuf message.
    return _load_torchscript(path) if zipfile.is_zipfile(path) else _load_onnx(path, threads)


def _load_torchscript(path: Path) -> ExportedModel:
    extra = {"class_names.json": "", "preprocessing.json": "", "meta.json": ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated, still supported
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra["class_names.json"]:
        raise SystemExit(f"{path} has no embedded class names; was it exported with `main.py --jit`?")
    meta = json.loads(extra["meta.json"] or "{}")
    if meta.get("optimize_for_inference"):  # checked against eager at export; it cannot be saved optimised
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            module = torch.jit.optimize_for_inference(module)
    return ExportedModel(module.eval(), json.loads(extra["class_names.json"]),
                         Preprocessing.from_dict(json.loads(extra["preprocessing.json"])), "TorchScript",
                         meta.get("model", "?"))


def _load_onnx(path: Path, threads: int | None) -> ExportedModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit(f"{path} is not a TorchScript archive, so it is read as ONNX, which needs ONNX Runtime: "
                         "pip install onnxruntime==1.32.0") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  ORT raises its own exception types for unreadable files
        raise SystemExit(f"{path} is neither a TorchScript archive nor an ONNX model ONNX Runtime can load "
                         f"({type(exc).__name__}); {EXPORT_HINT}") from None
    meta = session.get_modelmeta().custom_metadata_map
    if "class_names" not in meta or "preprocessing" not in meta:
        raise SystemExit(f"{path} has no class_names/preprocessing metadata; was it exported with `main.py --onnx`?")
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: batch.numpy()})[0])

    return ExportedModel(run, json.loads(meta["class_names"]),
                         Preprocessing.from_dict(json.loads(meta["preprocessing"])), "ONNX", meta.get("model", "?"))


def list_images(target: str | Path) -> list[Path]:
    target = Path(target)
    if target.is_file():
        return [target]
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            return files
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {target}")
    raise SystemExit(f"{target} is neither an image file nor a folder")


@torch.inference_mode()
def classify(model: ExportedModel, images: list[Path], topk: int, batch_size: int = 32) -> list[dict]:
    results = []
    k = min(topk, len(model.class_names))
    for start in range(0, len(images), batch_size):
        paths = images[start:start + batch_size]
        batch = torch.stack([load_image_tensor(p, model.preprocessing) for p in paths])
        probs, labels = model(batch).topk(k, dim=1)
        for path, p, idx in zip(paths, probs.tolist(), labels.tolist()):
            results.append({"image": str(path),
                            "predictions": [{"class": model.class_names[i], "probability": round(q, 6)}
                                            for i, q in zip(idx, p)]})
    return results


@torch.inference_mode()
def benchmark(model: ExportedModel, image: Path, runs: int, warmup: int = 20) -> dict:
    """Latency of ``runs`` batch-1 inferences on one image after ``warmup`` untimed ones (allocator, kernel choice,
    ONNX Runtime's first-run work); decoding and letterboxing are not timed."""
    if runs < 1:
        raise SystemExit(f"--benchmark needs at least 1 run, got {runs}")
    batch = load_image_tensor(image, model.preprocessing).unsqueeze(0)
    for _ in range(warmup):
        model(batch)
    times = np.empty(runs)
    for i in range(runs):
        started = time.perf_counter()
        model(batch)
        times[i] = time.perf_counter() - started
    p50, p90, p99 = np.percentile(times * 1000, [50, 90, 99])
    return {"model": model.name, "format": model.format, "batch": 1,
            "runs": runs, "warmup": warmup, "p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4),
            "p99_ms": round(float(p99), 4), "fps": round(runs / float(times.sum()), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Classify images with a model exported by main.py --jit or --onnx")
    parser.add_argument("model", help="TorchScript (.pt) or ONNX (.onnx) file written by main.py --jit / --onnx")
    parser.add_argument("images", help="an image file or a folder (searched recursively)")
    parser.add_argument("--topk", type=int, default=1, help="classes to print per image")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    parser.add_argument("--benchmark", type=int, nargs="?", const=200, default=None, metavar="N",
                        help="instead of classifying, time N (default 200) batch-1 inferences on the first image after "
                             "a warm-up, and print latency p50/p90/p99 and FPS")
    parser.add_argument("--threads", type=int, default=None, metavar="T",
                        help="CPU threads: torch.set_num_threads for TorchScript, intra-op threads for ONNX Runtime")
    args = parser.parse_args(argv)
    model = load_exported(args.model, args.threads)
    images = list_images(args.images)
    if args.benchmark is not None:
        stats = benchmark(model, images[0], args.benchmark)
        stats["threads"] = args.threads or (torch.get_num_threads() if model.format == "TorchScript" else "default")
        if args.json:
            print(json.dumps(stats, indent=2))
            return
        print(f"{args.model} ({stats['model']}, {model.format}, {stats['threads']} threads): {stats['runs']} batch-1 "
              f"runs after {stats['warmup']} warm-up: p50 {stats['p50_ms']:.3f} ms, p90 {stats['p90_ms']:.3f} ms, "
              f"p99 {stats['p99_ms']:.3f} ms, {stats['fps']:.1f} FPS")
        return
    results = classify(model, images, args.topk)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for item in results:
        preds = ", ".join(f"{p['class']} {p['probability']:.4f}" for p in item["predictions"])
        print(f"{item['image']}: {preds}")


if __name__ == "__main__":
    main()
