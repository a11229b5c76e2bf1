"""Unlabelled images for semi-supervised training, and the pseudo-label file (this module writes and reads it).

- ``unlabelled_dataset(DIR_OR_CSV, ...)``: a folder of images (nested folders allowed) or a CSV list of paths
  (``list_inputs``), as a dataset whose items carry the label -1.
- ``TwoViews``: each item twice, augmented with two different draws of the same (seed, epoch, index): the student's
  and the teacher's views of mean teacher.
- ``with_extra_samples``: the training set with pseudo-labelled images appended (their indices follow the
  labelled ones, so a loss can tell them apart by index).
- The pseudo-label file, NAME/pseudo_labels.csv: ``path,label,confidence,round``, one row per image kept in each
  round (the path as the unlabelled input names it, the class name, the top probability).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dataloader.datasets import ImageClassificationDataset, list_inputs
from utils.checkpoint import atomic_write
from utils.errors import DataError

UNLABELLED = -1  # the label of an unlabelled image
PSEUDO_LABEL_COLUMNS = ("path", "label", "confidence", "round")


def unlabelled_dataset(source: str | os.PathLike, class_names: list[str], *, image_size, flag: str,
                       aug: str | None = None, seed: int = 0,
                       **fitting) -> tuple[ImageClassificationDataset, list[str]]:
    """The images of a folder (recursively) or CSV list, labelled -1, and their names as ``source`` gives them
    (relative to the folder, or as listed). ``flag`` names the option in errors; ``fitting`` (resize_mode,
    crop_pct, train_crop) goes to the dataset."""
    inputs = list_inputs(source, flag)
    dataset = ImageClassificationDataset([(str(path), UNLABELLED) for _, path in inputs], class_names,
                                         image_size=image_size, aug=aug, seed=seed, **fitting)
    return dataset, [name for name, _ in inputs]


class TwoViews(Dataset):
    """Items ``(view_a, view_b, index)``: one image augmented twice (draws 0 and 1 of its (seed, epoch, index))."""

    def __init__(self, dataset: ImageClassificationDataset) -> None:
        if dataset.augment is None:
            raise ValueError("two views of an image need an augmentation (aug=None gives two equal copies)")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        view_a, _, _ = self.dataset[(index, epoch, 0)]
        view_b, _, _ = self.dataset[(index, epoch, 1)]
        return view_a, view_b, index


def with_extra_samples(train: ImageClassificationDataset,
                       extra: list[tuple[str, int]]) -> ImageClassificationDataset:
    """``train`` with ``extra`` (path, class index) samples appended, augmented like ``train``."""
    return ImageClassificationDataset(list(train.samples) + list(extra), train.class_names,
                                      image_size=train.image_size, aug=train.aug, seed=train.seed,
                                      pad_value=train.pad_value)


def write_pseudo_labels(path: str | os.PathLike, rows: list[tuple[str, str, float, int]]) -> None:
    """Write (path, class name, confidence, round) rows, atomically (rank 0 rewrites it after every round)."""
    lines = [",".join(PSEUDO_LABEL_COLUMNS)]
    for name, label, confidence, round_ in rows:
        if "," in name or "\n" in name:
            name = '"' + name.replace('"', '""') + '"'
        lines.append(f"{name},{label},{confidence:.6f},{round_}")
    text = ("\n".join(lines) + "\n").encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: handle.write(text))


def read_pseudo_labels(path: str | os.PathLike) -> list[dict]:
    """The rows of a pseudo-label file as dicts: path (str), label (str), confidence (float), round (int)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != PSEUDO_LABEL_COLUMNS:
            raise DataError(f"{path}: expected the header {','.join(PSEUDO_LABEL_COLUMNS)}, got {reader.fieldnames}")
        return [{"path": row["path"], "label": row["label"], "confidence": float(row["confidence"]),
                 "round": int(row["round"])} for row in reader]
