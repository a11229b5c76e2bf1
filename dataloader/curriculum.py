"""The curriculum file: written by ``--make_curriculum``, read by ``--curriculum_learning``. Its only reader and writer.

``curriculum.txt`` (CSV, a header, one line per training image): ``path,stage,weight,score`` with the path relative
to the data root, the stage (0 = easiest), the loss weight of that stage and the score it came from (the model's
probability of the image's true class).
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from dataloader.knowledge import relative_path
from utils.checkpoint import atomic_write

HEADER = ["path", "stage", "weight", "score"]


def write_curriculum(path: str | os.PathLike, rows: list[tuple[str, int, float, float]]) -> None:
    """``(relative path, stage, weight, score)`` rows, written atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    for rel, stage, weight, score in rows:
        writer.writerow([rel, int(stage), f"{weight:g}", f"{score:.6g}"])
    data = text.getvalue().encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


def read_curriculum(file: str | os.PathLike, data_root: str, sample_paths: list[str],
                    known_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(stage, weight) arrays in the order of ``sample_paths``; a path that is no image under the root, or a
    training image the file lacks, is an error naming the file (and line)."""
    file = os.fspath(file)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"--curriculum_learning reads {file}, which does not exist; write it with "
                                "--make_curriculum --resume CKPT")
    known = {relative_path(p, data_root) for p in known_paths}
    entries: dict[str, tuple[int, float]] = {}
    with open(file, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        if next(rows, None) != HEADER:
            raise ValueError(f"{file}:1: expected the header {','.join(HEADER)}; write it with --make_curriculum")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                path, stage, weight = row[0], int(row[1]), float(row[2])
            except (IndexError, ValueError) as error:
                raise ValueError(f"{file}:{line}: expected path,stage,weight,score ({error})") from None
            if path not in known:
                raise ValueError(f"{file}:{line}: {path} is not an image under {data_root}; the curriculum is stale. "
                                 "Remake it with --make_curriculum")
            if stage < 0 or weight < 0:
                raise ValueError(f"{file}:{line}: stage and weight must be >= 0")
            entries[path] = (stage, weight)
    relative = [relative_path(p, data_root) for p in sample_paths]
    missing = [p for p in relative if p not in entries]
    if missing:
        raise ValueError(f"{file} has no entry for {len(missing)} of the {len(relative)} training images (e.g. "
                         f"{missing[0]}); it was made for other data or another split. Remake it with "
                         "--make_curriculum")
    stages = np.array([entries[p][0] for p in relative], dtype=np.int64)
    weights = np.array([entries[p][1] for p in relative], dtype=np.float32)
    return stages, weights
