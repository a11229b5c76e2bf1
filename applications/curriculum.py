"""Curriculum learning (main seed): score the training images with a trained model, then weight their losses.

    python main.py --make_curriculum --resume checkpoints/RUN/best.pth \\
                   --curriculum_thresholds 0.9 0.5 --curriculum_weights 1.0 0.7 0.4     # DATA/curriculum.txt
    python main.py --data DATA --curriculum_learning [--curriculum_pacing 3 6]

The file format is in dataloader/curriculum.py, the weighting in engine/objective.py. With ``--curriculum_pacing
E1 E2 ...`` stage s + 1 enters at epoch E(s+1) (0-based); until then its images have weight 0, so training starts
with the easy images only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from config import Config
from dataloader.curriculum import write_curriculum
from dataloader.knowledge import relative_path
from engine.inference import predict_split
from engine.job import open_job

MISSING = "--make_curriculum needs a trained model to score the images: --resume CKPT"


def check_stages(thresholds: list[float], weights: list[float]) -> None:
    """The stages' thresholds and weights agree and are in range (``--make_curriculum`` checks them first)."""
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


def check(cfg: Config) -> None:
    check_stages(cfg.curriculum_thresholds, cfg.curriculum_weights)


def run(cfg: Config, explicit: set[str]) -> Path:
    """Score the training split with ``--resume``; rank 0 writes ``--output`` (default DATA/curriculum.txt)."""
    with open_job(cfg, explicit, checkpoint="required", missing=MISSING, eval_amp=True) as job:
        cfg, ckpt, log = job.cfg, job.ckpt, job.log
        check_stages(cfg.curriculum_thresholds, cfg.curriculum_weights)  # values stored with the checkpoint
        dataset, indices, probs, targets = predict_split(cfg, ckpt, "train", job.info)
        out = Path(cfg.output) if cfg.output else Path(cfg.data) / "curriculum.txt"
        if job.info.is_main:
            scores = probs.gather(1, targets[:, None]).squeeze(1).cpu().numpy()
            stages = assign_stages(scores, cfg.curriculum_thresholds)
            paths = [relative_path(dataset.samples[i][0], cfg.data) for i in indices.tolist()]
            write_curriculum(out, [(path, int(stage), cfg.curriculum_weights[stage], float(score))
                                   for path, stage, score in zip(paths, stages, scores)])
            counts = np.bincount(stages, minlength=len(cfg.curriculum_weights))
            log.info("curriculum of %d training images written to %s: %s", len(paths), out,
                     ", ".join(f"stage {s} (weight {w:g}) {n}" for s, (w, n) in
                               enumerate(zip(cfg.curriculum_weights, counts))))
        return out
