"""Classify images with an exported model only: no training code, no size or normalisation flags.

    python demos/classifier.py checkpoints/RUN/best.torchscript.pt path/to/image.png
    python demos/classifier.py checkpoints/RUN/best.onnx path/to/folder --topk 3 --json
    python demos/classifier.py MODEL path/to/image.png --benchmark 500 --threads 2   # batch-1 latency and FPS
    python demos/classifier.py MODEL path/to/folder --unreadable unreadable.txt   # also list bad images in a file
    python demos/classifier.py MODEL path/to/folder --answer unknown   # class or "unknown" (main.py --calibrate)
    python demos/classifier.py checkpoints/RUN/deploy.json path/to/image.png   # the runtime benchmarks/deploy.py chose
    cd demos; python classifier.py      # the main seed's usage: the newest export under checkpoints/ on demos/images/

MODEL is a TorchScript file (`main.py --jit`), an ONNX file (`main.py --onnx`, run with ONNX Runtime), an AOTInductor
package (`main.py --export pt2`), an OpenVINO IR .xml (`main.py --export openvino`), or a deploy.json written by
`benchmarks/deploy.py --deploy` (the file, runtime and threads it chose); the format is recognised from the file's
content (serving/runtime.py). Each carries its class names and preprocessing; images go through the same
letterbox code as training (dataloader/preprocess.py, loaded on its own so that none of the training data pipeline
is imported).

Images that cannot be read are skipped: the others are classified, each bad one gets an `error: PATH: REASON` line on
stderr, and the exit status is 1. Every other problem is one `error: ...` line, no traceback: exit status 2 for a
usage error (a flag, or a model or image path that does not exist), 1 for a data error (a file that exists but is not
a model or an image, a folder without images).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: serving/ is beside demos/
from serving.runtime import (  # noqa: E402  (serving.runtime imports no training code)
    ANSWERS,
    DATA_ERROR,
    USAGE_ERROR,
    ExportedModel,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    ModelFileError as DemoError,
    answer_text,
    load_exported,
    load_image_tensor,
    require_answer,
)


Unreadable = tuple[Path, str]  # an image that could not be read, and why
REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = Path(__file__).resolve().parent / "images"  # a few digits from the quickstart's test split
EXPORT_PATTERNS = ("*.torchscript.pt", "*.onnx", "*.pt2", "*.openvino.xml", "deploy.json")


def newest_export(root: Path) -> Path:
    """The most recently written exported model (or deploy.json) under ``root``, for a run without MODEL."""
    found = [p for pattern in EXPORT_PATTERNS for p in root.rglob(pattern) if p.is_file()] if root.is_dir() else []
    if not found:
        raise DemoError(f"no MODEL given and no exported model under {root}; export one with `python main.py --jit "
                        f"--resume checkpoints/RUN/best.pth` (bash z_task_shell/quickstart.sh trains and exports one), "
                        f"or name a model: classifier.py MODEL IMAGES", USAGE_ERROR)
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))


def list_images(target: str | Path) -> list[Path]:
    """``target`` itself if it is a file (whatever its suffix), else the image files under the folder, sorted."""
    target = Path(target)
    if target.is_file():
        return [target]
    if target.is_dir():
        # Not is_file(): a broken link named like an image is reported as unreadable instead of silently skipped.
        files = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())
        if files:
            return files
        raise DemoError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {target}; "
                        "give an image file or a folder of images")
    if not target.exists():
        raise DemoError(f"{target} not found; give an image file or a folder of images", USAGE_ERROR)
    raise DemoError(f"{target} is neither an image file nor a folder", USAGE_ERROR)


def why_unreadable(error: Exception) -> str:
    """The short reason an image could not be read: the decoder's own words, or the operating system's."""
    if isinstance(error, ImageDecodeError) and error.reason:
        return error.reason
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


@torch.inference_mode()
def classify(model: ExportedModel, images: list[Path], topk: int, batch_size: int = 32,
             answer: str = "top") -> tuple[list[dict], list[Unreadable]]:
    """Top-k predictions for every image that can be read, and the (path, reason) of each one that cannot. With
    ``answer`` unknown or set, each result also holds the calibrated answer: its class or "unknown", or its conformal
    set of classes (utils/calibration.py; the thresholds come from the exported file)."""
    results, unreadable = [], []
    k = min(topk, len(model.class_names))
    for start in range(0, len(images), batch_size):
        paths, tensors = [], []
        for path in images[start:start + batch_size]:
            try:
                tensors.append(load_image_tensor(path, model.preprocessing))
                paths.append(path)
            except (ImageDecodeError, OSError) as exc:
                unreadable.append((path, why_unreadable(exc)))
        if not tensors:
            continue
        full = model(torch.stack(tensors))
        answers = answer_text(full, model.class_names, model.calibration, answer) if answer != "top" else None
        probs, labels = full.topk(k, dim=1)
        for n, (path, p, idx) in enumerate(zip(paths, probs.tolist(), labels.tolist())):
            results.append({"image": str(path),
                            "predictions": [{"class": model.class_names[i], "probability": round(q, 6)}
                                            for i, q in zip(idx, p)]})
            if answers is not None:
                results[-1]["answer"] = answers[n]
    return results, unreadable


def report_unreadable(unreadable: list[Unreadable], list_file: Path | None) -> None:
    """One ``error: PATH: REASON`` line per image on stderr and, given ``list_file``, ``PATH<TAB>REASON`` lines in it
    (written even when there are none, so that a list left by an earlier run is not mistaken for this one's)."""
    for path, reason in unreadable:
        print(f"error: {path}: {reason}", file=sys.stderr)
    if list_file is None:
        return
    try:
        list_file.parent.mkdir(parents=True, exist_ok=True)
        list_file.write_text("".join(f"{path}\t{reason}\n" for path, reason in unreadable), encoding="utf-8",
                             errors="surrogateescape")
    except OSError as exc:
        raise DemoError(f"cannot write --unreadable {list_file}: {exc.strerror or exc}; give a writable file path",
                        USAGE_ERROR) from None


@torch.inference_mode()
def benchmark(model: ExportedModel, image: Path, runs: int, warmup: int = 20) -> dict:
    """Latency of ``runs`` batch-1 inferences on one image after ``warmup`` untimed ones (allocator, kernel choice,
    ONNX Runtime's first-run work); decoding and letterboxing are not timed."""
    if runs < 1:
        raise ValueError(f"benchmark needs at least 1 run, got {runs}")
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


def positive_int(text: str) -> int:
    value = int(text)  # a ValueError becomes argparse's "invalid positive_int value: 'x'"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``error:`` line (exit status 2) instead of its usage block."""

    def error(self, message: str) -> NoReturn:
        raise DemoError(f"{message}; see {self.prog} --help", USAGE_ERROR)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _ArgumentParser(description="Classify images with a model exported by main.py --jit, --onnx or --export")
    parser.add_argument("model", metavar="MODEL_OR_DEPLOY_JSON", nargs="?",
                        help="TorchScript (.pt), ONNX (.onnx), AOTInductor (.pt2) or OpenVINO (.xml) file written by "
                             "main.py --jit / --onnx / --export, or a deploy.json written by benchmarks/deploy.py "
                             "(default: the newest one under checkpoints/)")
    parser.add_argument("images", nargs="?", default=str(DEMO_IMAGES),
                        help="an image file or a folder (searched recursively; default: demos/images)")
    parser.add_argument("--topk", type=positive_int, default=1, help="classes to print per image")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    parser.add_argument("--answer", choices=ANSWERS, default="top",
                        help="top: the top-k classes; unknown: also the class, or 'unknown' where the model is less "
                             "sure than the threshold main.py --calibrate fitted; set: also the conformal set of "
                             "classes (covers the true class with the probability chosen at --calibrate)")
    parser.add_argument("--unreadable", type=Path, default=None, metavar="FILE",
                        help="also write the images that cannot be read to FILE, one 'PATH<TAB>REASON' line each "
                             "(they are always listed on stderr, and make the exit status 1)")
    parser.add_argument("--benchmark", type=positive_int, nargs="?", const=200, default=None, metavar="N",
                        help="instead of classifying, time N (default 200) batch-1 inferences on the first image after "
                             "a warm-up, and print latency p50/p90/p99 and FPS")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="T",
                        help="CPU threads: torch.set_num_threads for TorchScript and AOTInductor, intra-op threads "
                             "for ONNX Runtime and OpenVINO (default: a deploy.json's, else the runtime's)")
    args = parser.parse_args(argv)
    if args.unreadable is not None and args.unreadable.is_dir():
        parser.error(f"--unreadable {args.unreadable} is a folder; give a file path such as "
                     f"{args.unreadable / 'unreadable.txt'}")
    return args


def run_benchmark(model: ExportedModel, image: Path, args: argparse.Namespace) -> int:
    """Time the model on ``image`` and print the statistics; the exit status."""
    try:
        stats = benchmark(model, image, args.benchmark)
    except (ImageDecodeError, OSError) as exc:
        report_unreadable([(image, why_unreadable(exc))], args.unreadable)
        return DATA_ERROR
    report_unreadable([], args.unreadable)
    stats["threads"] = args.threads or model.threads or "default"
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{args.model} ({stats['model']}, {model.format}, {stats['threads']} threads): {stats['runs']} batch-1 "
          f"runs after {stats['warmup']} warm-up: p50 {stats['p50_ms']:.3f} ms, p90 {stats['p90_ms']:.3f} ms, "
          f"p99 {stats['p99_ms']:.3f} ms, {stats['fps']:.1f} FPS")
    return 0


def run_classifier(args: argparse.Namespace) -> int:
    """Classify (or benchmark) as the flags say and print the results; the exit status."""
    if args.model is None:
        args.model = str(newest_export(REPO / "checkpoints"))
        print(f"no MODEL given: using the newest export under {REPO / 'checkpoints'}: {args.model}", file=sys.stderr)
    model = load_exported(args.model, args.threads)
    try:
        require_answer(model.calibration, args.answer)
    except ValueError as exc:
        raise DemoError(f"--answer {args.answer}: {args.model}: {exc}", USAGE_ERROR) from None
    images = list_images(args.images)
    if args.benchmark is not None:
        return run_benchmark(model, images[0], args)
    results, unreadable = classify(model, images, args.topk, answer=args.answer)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            preds = ", ".join(f"{p['class']} {p['probability']:.4f}" for p in item["predictions"])
            answer = f"{item['answer']} (top: {preds})" if "answer" in item else preds
            print(f"{item['image']}: {answer}")
    report_unreadable(unreadable, args.unreadable)
    return DATA_ERROR if unreadable else 0


def main(argv: list[str] | None = None) -> None:
    """The command line; a user error ends it with one ``error:`` line and exit status 2 (usage) or 1 (data)."""
    try:
        status = run_classifier(parse_args(argv))
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = exc.exit_code
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
