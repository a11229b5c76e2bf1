"""``--evaluation --resume CKPT [--split S] [--tta]``: exact metrics on one split, whatever the number of processes.

Writes report.json, confusion_matrix.csv and confusion_matrix.png to ``--output`` (default RUN/eval_SPLIT[_tta_...]).
"""
from __future__ import annotations

from pathlib import Path

from config import Config
from dataloader.tta import build_tta
from engine.inference import evaluation_report
from engine.job import open_job
from utils.metrics import write_report

MISSING = "--evaluation needs --resume CKPT (a best.pth or last.pth written by training)"


def check(cfg: Config) -> None:
    build_tta(cfg.tta, image_size=cfg.image_size)  # an unknown --tta group fails before any work


def run(cfg: Config, explicit: set[str]) -> dict:
    """Evaluate the checkpoint on ``cfg.split``; rank 0 writes report.json and the confusion matrix."""
    with open_job(cfg, explicit, checkpoint="required", missing=MISSING, eval_amp=True) as job:
        cfg, log = job.cfg, job.log
        tta = build_tta(cfg.tta, image_size=cfg.image_size)
        if tta is not None:
            log.info("test-time augmentation: %s, probabilities averaged", tta.describe())
        report = evaluation_report(cfg, job.ckpt, job.info, cfg.split, tta)
        if job.info.is_main:
            suffix = f"_tta_{'_'.join(tta.groups)}" if tta else ""
            out_dir = Path(cfg.output) if cfg.output else Path(cfg.resume).parent / f"eval_{cfg.split}{suffix}"
            paths = write_report(report, job.ckpt.class_names, out_dir)
            log.info("%s split of %s%s: %d images, top-1 %.2f%%, top-5 %.2f%%, macro F1 %.4f, macro AUROC %s, "
                     "macro AP %s, ECE %.2f%%", cfg.split, cfg.data, f" with TTA {tta.describe()}" if tta else "",
                     report["samples"], report["top1"], report["top5"], report["macro_f1"],
                     _four(report["macro_auroc"]), _four(report["macro_ap"]), 100 * report["ece"])
            log.info("report written to %s", ", ".join(str(p) for p in paths))
        return report


def _four(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
