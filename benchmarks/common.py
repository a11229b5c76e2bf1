"""What the benchmark scripts share: the cached image folder they read, the environment line, Markdown tables.

The image folder holds real photographs of objects (Fashion-MNIST, upscaled) encoded the way a user's data
usually is (JPEG quality 90, 3 channels), in the layout `main.py` reads:

    ROOT/<source>-<format>-<source_size>px-<images>/{train,val}/<class>/<n>.<ext>   (90% train / 10% val)

It is written once (to a temporary folder, then renamed, so an interrupted run never leaves half a folder) and
reused by every later run with the same parameters.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch

from dataloader.datasets import is_image_file

REPO = Path(__file__).resolve().parents[1]

DEFAULT_ROOT = "/tmp/bench_images"
DEFAULT_SOURCE = REPO / "data" / "fashion-mnist"
FORMATS = {"jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]), "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 6])}
VAL_FRACTION = 0.1
_MARKER = "bench_images.json"


def _source_classes(source: Path) -> dict[str, list[Path]]:
    """Sorted image files per class of an ImageFolder tree (`source/train/<class>/` or `source/<class>/`)."""
    folder = source / "train" if (source / "train").is_dir() else source
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no source images at '{source}'; prepare them with "
            f"`python -m dataloader.prepare fashion-mnist --out {DEFAULT_SOURCE.relative_to(REPO)}` "
            "(or pass --source DIR with one folder of images per class)")
    classes = {d.name: sorted(p for p in d.iterdir() if is_image_file(p.name))
               for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    classes = {name: files for name, files in classes.items() if files}
    if not classes:
        raise FileNotFoundError(f"'{folder}' has no class folders with images")
    return classes


def _pick(classes: dict[str, list[Path]], images: int) -> dict[str, list[Path]]:
    """`images` files spread round-robin over the classes (counts differ by at most one)."""
    names = list(classes)
    available = sum(len(files) for files in classes.values())
    if images > available:
        raise ValueError(f"--images {images} but the source has only {available} images")
    picked: dict[str, list[Path]] = {name: [] for name in names}
    taken = dict.fromkeys(names, 0)
    i = 0
    while sum(taken.values()) < images:
        name = names[i % len(names)]
        if taken[name] < len(classes[name]):
            picked[name].append(classes[name][taken[name]])
            taken[name] += 1
        i += 1
    return picked


def image_folder(*, root: str | os.PathLike = DEFAULT_ROOT, source: str | os.PathLike = DEFAULT_SOURCE,
                 images: int = 2000, source_size: int = 224, fmt: str = "jpeg") -> Path:
    """The cached benchmark data root (with `train/` and `val/`); written on first use.

    Each source image is upscaled (bicubic) to `source_size` x `source_size`, made 3-channel (so decoders do
    the full colour work they do on photographs) and encoded as `fmt`. About 10% of each class (at least one
    image when the class has two) goes to `val/`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of {sorted(FORMATS)}")
    source = Path(source)
    params = {"source": str(source.resolve()), "images": images, "source_size": source_size, "format": fmt,
              "val_fraction": VAL_FRACTION, "version": 1}
    out = Path(root) / f"{source.resolve().name}-{fmt}-{source_size}px-{images}"
    marker = out / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return out
    if out.exists():
        raise FileExistsError(f"'{out}' exists but was written with other parameters; delete it or use --root")

    extension, encode_flags = FORMATS[fmt]
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, files in _pick(_source_classes(source), images).items():
        n_val = max(1, round(len(files) * VAL_FRACTION)) if len(files) >= 2 else 0
        for i, path in enumerate(files):
            split = "val" if i >= len(files) - n_val else "train"
            image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)  # 3-channel BGR
            image = cv2.resize(image, (source_size, source_size), interpolation=cv2.INTER_CUBIC)
            ok, encoded = cv2.imencode(extension, image, encode_flags)
            if not ok:
                raise RuntimeError(f"OpenCV could not encode {path} as {fmt}")
            target = tmp / split / name / f"{i:05d}{extension}"
            target.parent.mkdir(parents=True, exist_ok=True)
            encoded.tofile(target)
    (tmp / _MARKER).write_text(json.dumps(params))
    try:
        tmp.rename(out)
    except OSError:  # another run finished the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def count_images(folder: str | os.PathLike) -> int:
    """Image files under ``folder`` (recursively; a link to a folder is followed at the top)."""
    return sum(1 for _, _, files in os.walk(folder) for f in files if is_image_file(f))


def count_classes(folder: str | os.PathLike) -> int:
    """Class folders directly under a split folder."""
    return sum(1 for p in Path(folder).iterdir() if p.is_dir())


def environment(*, processes: int, workers: int, torch_threads: int | None = None,
                opencv_threads: int | str | None = None) -> str:
    """One line that every printed figure needs: CPU capability, threads, processes and workers."""
    threads = torch.get_num_threads() if torch_threads is None else torch_threads
    cv_threads = cv2.getNumThreads() if opencv_threads is None else opencv_threads
    return (f"environment: torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{os.cpu_count()} cores, torch threads per process {threads}, OpenCV threads {cv_threads}, "
            f"processes {processes}, loader workers per process {workers}")


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub Markdown table; numbers are printed as given (format them before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """Rows of the first Markdown table in `text` as dicts keyed by the header (for tests and tools)."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("|"):
            lines.append(line.strip())
        elif lines:
            break
    if len(lines) < 2:
        raise ValueError(f"no Markdown table in:\n{text}")
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(split[0], cells)) for cells in split[2:]]
