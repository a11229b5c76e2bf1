"""Knowledge files: per-image class probabilities from a teacher (``distill*.txt``) or one-hot labels (``label.txt``).

Format (CSV, UTF-8): a header ``path,<class 0>,<class 1>,...`` with the class names in the data set's order, then
one line per image: its path relative to the data root, then one probability per class (``%.6g``; each row sums
to 1). For example::

    path,T-shirt_top,Trouser,...,Ankle_boot
    train/Trouser/00016.png,0.000412,0.998,...,1.2e-05

``--distill`` reads every ``distill*.txt`` directly under ``--data`` and averages them image by image; each must
cover every training image. Merging out-of-fold files (K-fold self-distillation) is

    python -m dataloader.knowledge merge OUT.txt fold0.txt fold1.txt ...
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

from utils.checkpoint import atomic_write

HEADER_FIRST = "path"
SUM_TOLERANCE = 1e-3  # %.6g rounding of C probabilities


class KnowledgeFileError(ValueError):
    pass


def format_knowledge(paths: Sequence[str], probs: np.ndarray, class_names: Sequence[str]) -> str:
    """The file's text for ``probs`` (N, C) of the images at ``paths`` (relative to the data root)."""
    assert probs.shape == (len(paths), len(class_names)), f"{probs.shape} vs {len(paths)} paths, {len(class_names)}"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([HEADER_FIRST, *class_names])
    for path, row in zip(paths, probs):
        writer.writerow([path.replace(os.sep, "/"), *(f"{p:.6g}" for p in row)])
    return out.getvalue()


def write_knowledge(file: str | os.PathLike, paths: Sequence[str], probs: np.ndarray,
                    class_names: Sequence[str]) -> None:
    """Write a knowledge file atomically."""
    text = format_knowledge(paths, probs, class_names).encode("utf-8")
    atomic_write(file, lambda handle: handle.write(text))


def read_knowledge(file: str | os.PathLike, class_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{relative path: probabilities (C,) float32}; checks the header against ``class_names`` when given, the
    column count, the numbers and each row's sum, and names the file and line of the first problem."""
    return _read_with_lines(file, class_names)[0]


def _read_with_lines(file: str | os.PathLike,
                     class_names: Sequence[str] | None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    file = os.fspath(file)
    try:
        handle = open(file, encoding="utf-8", newline="")
    except OSError as error:
        raise KnowledgeFileError(f"cannot read knowledge file {file}: {error.strerror}") from error
    with handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if not header or header[0] != HEADER_FIRST or len(header) < 3:
            raise KnowledgeFileError(f"{file}:1: expected the header 'path,<class names...>', got {header!r}; "
                                     "write knowledge files with --knowledge")
        names = header[1:]
        if class_names is not None and list(names) != list(class_names):
            raise KnowledgeFileError(
                f"{file}:1: classes {names[:5]}... ({len(names)}) do not match the data set's {list(class_names)[:5]}"
                f"... ({len(class_names)}); the file was made for other data. Rewrite it with --knowledge")
        table: dict[str, np.ndarray] = {}
        lines: dict[str, int] = {}
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(names) + 1:
                raise KnowledgeFileError(f"{file}:{line}: {len(row) - 1} probabilities for {len(names)} classes")
            try:
                probs = np.array([float(v) for v in row[1:]], dtype=np.float64)
            except ValueError as error:
                raise KnowledgeFileError(f"{file}:{line}: {error}") from error
            if not (np.isfinite(probs).all() and (probs >= 0).all() and math.isclose(probs.sum(), 1.0,
                                                                                     abs_tol=SUM_TOLERANCE)):
                raise KnowledgeFileError(f"{file}:{line}: probabilities must be >= 0 and sum to 1 "
                                         f"(sum {probs.sum():.6g})")
            if row[0] in table:
                raise KnowledgeFileError(f"{file}:{line}: {row[0]} appears twice")
            table[row[0]] = (probs / probs.sum()).astype(np.float32)
            lines[row[0]] = line
    if not table:
        raise KnowledgeFileError(f"{file}: no images listed")
    return table, lines


def knowledge_files(data_root: str | os.PathLike) -> list[str]:
    """The ``distill*.txt`` files directly under the data root, sorted."""
    return sorted(glob.glob(os.path.join(glob.escape(os.fspath(data_root)), "distill*.txt")))


def teacher_probabilities(files: Sequence[str], data_root: str | os.PathLike, sample_paths: Sequence[str],
                          class_names: Sequence[str], known_paths: Sequence[str] | None = None) -> np.ndarray:
    """(N, C) float32: the mean over ``files`` of each sample's probabilities, in the order of ``sample_paths``
    (absolute or relative to the data root). Every file must list every sample; a file may list more images (the
    whole train split when a run trains on a part of it, e.g. one K-fold split), but with ``known_paths`` (every
    image under the root) a path that is not an image of the data set is an error naming its line."""
    if not files:
        raise KnowledgeFileError(f"--distill found no distill*.txt under {data_root}; write one with "
                                 "--knowledge train --resume TEACHER.pth, or use --teacher/--teacher_ckpt")
    relative = [relative_path(p, data_root) for p in sample_paths]
    total = np.zeros((len(relative), len(class_names)), dtype=np.float64)
    known = {relative_path(p, data_root) for p in known_paths} if known_paths is not None else None
    for file in files:
        table, lines = _read_with_lines(file, class_names)
        if known is not None:
            stale = [p for p in table if p not in known]
            if stale:
                raise KnowledgeFileError(
                    f"{file}:{lines[stale[0]]}: {stale[0]} is not an image under {data_root} ({len(stale)} such "
                    "lines); the file is stale or made for other data. Rewrite it with --knowledge")
        missing = [p for p in relative if p not in table]
        if missing:
            raise KnowledgeFileError(
                f"{file} has no probabilities for {len(missing)} of the {len(relative)} training images "
                f"(e.g. {missing[0]}); it was made for other data or another split. Rewrite it with "
                "--knowledge train, or move it out of the data root")
        total += np.stack([table[p] for p in relative])
    return (total / len(files)).astype(np.float32)


def relative_path(path: str, data_root: str | os.PathLike) -> str:
    """``path`` relative to the data root, with forward slashes (the key used in knowledge files)."""
    return os.path.relpath(path, os.fspath(data_root)).replace(os.sep, "/")


def merge_knowledge(out: str, files: Sequence[str]) -> int:
    """Concatenate knowledge files over disjoint image sets (out-of-fold predictions); returns the image count."""
    merged: dict[str, np.ndarray] = {}
    class_names: list[str] | None = None
    for file in files:
        with open(file, encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
        class_names = class_names or header[1:]
        for path, probs in read_knowledge(file, class_names).items():
            if path in merged:
                raise KnowledgeFileError(f"{file}: {path} is already in an earlier file; out-of-fold files must "
                                         "cover disjoint images")
            merged[path] = probs
    paths = sorted(merged)
    write_knowledge(out, paths, np.stack([merged[p] for p in paths]), class_names or [])
    return len(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Knowledge file tools", prog="python -m dataloader.knowledge")
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="concatenate out-of-fold knowledge files (disjoint images) into one")
    merge.add_argument("out")
    merge.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    try:
        count = merge_knowledge(args.out, args.files)
    except (OSError, KnowledgeFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {count} images from {len(args.files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
