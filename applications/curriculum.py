"""Curriculum learning (main seed): score the training images with a trained model, then weight their losses.

    python main.py --make_curriculum --resume checkpoints/RUN/best.pth \\
                   --curriculum_thresholds 0.9 0.5 --curriculum_weights 1.0 0.7 0.4     # DATA/curriculum.txt
    python main.py --data DATA --curriculum_learning [--curriculum_pacing 3 6]

``curriculum.txt`` (CSV, a header, one line per training image): ``path,stage,weight,score`` with the path
relative to the data root, the stage (0 = easiest), the loss weight of that stage and the score it came from (the
model's probability of the image's true class). With ``--curriculum_pacing E1 E2 ...`` stage s + 1 enters at epoch
E(s+1) (0-based); until then its images have weight 0, so training starts with the easy images only.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch

from applications.common import checkpoint_job, predict_split
from config import Config
from dataloader.knowledge import relative_path
from utils.checkpoint import atomic_write

HEADER = ["path", "stage", "weight", "score"]


def check_stages(thresholds: list[float], weights: list[float]) -> None:
    if len(weights) != len(thresholds) + 1:
        raise ValueError(f"--curriculum_weights needs one weight per stage: {len(thresholds)} thresholds make "
                         f"{len(thresholds) + 1} stages, got {len(weights)} weights")
    if any(b >= a for a, b in zip(thresholds, thresholds[1:])) or not all(0 <= t <= 1 for t in thresholds):
        raise ValueError(f"--curriculum_thresholds must be probabilities in descending order, got {thresholds}")
    if any(w < 0 for w in weights):
        raise ValueError(f"--curriculum_weights must be >= 0, got {weights}")


def assign_stages(scores: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """Stage of each score: 0 where score >= thresholds[0], 1 where >= thresholds[1], ..., len(thresholds) below."""
    stages = np.full(len(scores), len(thresholds), dtype=np.int64)
    for stage, threshold in reversed(list(enumerate(thresholds))):
        stages[scores >= threshold] = stage
    return stages


def make_curriculum(cfg: Config, explicit: set[str]) -> Path:
    """Score the training split with ``--resume``; rank 0 writes ``--output`` (default DATA/curriculum.txt)."""
    check_stages(cfg.curriculum_thresholds, cfg.curriculum_weights)
    missing = "--make_curriculum needs a trained model to score the images: --resume CKPT"
    with checkpoint_job(cfg, explicit, missing) as (cfg, ckpt, info, log):
        check_stages(cfg.curriculum_thresholds, cfg.curriculum_weights)  # values stored with the checkpoint
        dataset, indices, probs, targets = predict_split(cfg, ckpt, "train", info)
        out = Path(cfg.output) if cfg.output else Path(cfg.data) / "curriculum.txt"
        if info.is_main:
            scores = probs.gather(1, targets[:, None]).squeeze(1).cpu().numpy()
            stages = assign_stages(scores, cfg.curriculum_thresholds)
            paths = [relative_path(dataset.samples[i][0], cfg.data) for i in indices.tolist()]
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(HEADER)
            for path, stage, score in zip(paths, stages, scores):
                writer.writerow([path, int(stage), f"{cfg.curriculum_weights[stage]:g}", f"{score:.6g}"])
            data = text.getvalue().encode("utf-8")
            atomic_write(out, lambda handle: handle.write(data))
            counts = np.bincount(stages, minlength=len(cfg.curriculum_weights))
            log.info("curriculum of %d training images written to %s: %s", len(paths), out,
                     ", ".join(f"stage {s} (weight {w:g}) {n}" for s, (w, n) in
                               enumerate(zip(cfg.curriculum_weights, counts))))
        return out


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


class CurriculumWeights:
    """Per-sample loss weights by training-sample index; with pacing, stages that have not entered yet weigh 0."""

    def __init__(self, stages: np.ndarray, weights: np.ndarray, pacing: list[int] | None,
                 device: torch.device) -> None:
        last_stage = int(stages.max())
        if pacing is not None and len(pacing) < last_stage:
            raise ValueError(f"--curriculum_pacing needs the start epoch of each stage after the first: the "
                             f"curriculum has stages 0..{last_stage}, so {last_stage} values; got {len(pacing)}")
        if pacing is not None and any(b < a for a, b in zip(pacing, pacing[1:])):
            raise ValueError(f"--curriculum_pacing epochs must not decrease, got {pacing}")
        self.stages = torch.from_numpy(stages).to(device)
        self.weights = torch.from_numpy(weights).to(device)
        self.starts = torch.tensor([0, *(pacing or [0] * last_stage)], device=device)

    def __call__(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        indices = indices.to(self.weights.device)
        entered = self.starts[self.stages[indices]] <= epoch
        return self.weights[indices] * entered
