"""``--knowledge SPLIT --resume TEACHER.pth``: the teacher's class probabilities for ``--distill``.

    python main.py --knowledge train --resume checkpoints/teacher/best.pth      # DATA/distill.txt + label.txt
    python main.py --data DATA --distill --distill_alpha 0.7 --distill_T 4      # student from every distill*.txt
    python main.py --data DATA --teacher resnet18 --teacher_ckpt teacher.pth   # online: a live teacher

The file format is in dataloader/knowledge.py, the distillation loss in engine/objective.py. Under torchrun every
process predicts its shard and the probabilities are all-gathered, so each image is written once whatever the
process count.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from config import Config
from dataloader.knowledge import relative_path, write_knowledge
from engine.inference import predict_split
from engine.job import open_job

MISSING = "--knowledge needs the teacher: --resume TEACHER.pth (a checkpoint written by training)"


def check(cfg: Config) -> None:
    """Nothing beyond the flags' own checks."""


def run(cfg: Config, explicit: set[str]) -> Path:
    """Predict ``cfg.knowledge`` with the teacher ``--resume``; rank 0 writes the probabilities (``--output``,
    default DATA/distill.txt) and the one-hot labels (label.txt in the same folder). Returns the knowledge file."""
    with open_job(cfg, explicit, checkpoint="required", missing=MISSING, eval_amp=True) as job:
        cfg, ckpt, log = job.cfg, job.ckpt, job.log
        class_names = ckpt.class_names
        dataset, indices, probs, targets = predict_split(cfg, ckpt, cfg.knowledge, job.info)
        out = Path(cfg.output) if cfg.output else Path(cfg.data) / "distill.txt"
        if job.info.is_main:
            paths = [relative_path(dataset.samples[i][0], cfg.data) for i in indices.tolist()]
            probs_np, labels = probs.cpu().numpy(), targets.cpu().numpy()
            write_knowledge(out, paths, probs_np, class_names)
            write_knowledge(out.parent / "label.txt", paths, np.eye(len(class_names), dtype=np.float32)[labels],
                            class_names)
            top1 = 100.0 * float((probs_np.argmax(1) == labels).mean())
            log.info("knowledge of %s on the %s split (%d images, teacher top-1 %.2f%%) written to %s; labels to %s",
                     cfg.resume, cfg.knowledge, len(paths), top1, out, out.parent / "label.txt")
        return out
