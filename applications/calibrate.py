"""``--calibrate [--resume CKPT]``: calibrated confidence and an "unknown" answer, fitted on the val split.

Temperature scaling, a reject threshold for ``--reject_coverage`` and split conformal prediction sets at
``--conformal_alpha`` (engine/calibration.py). The record goes into the checkpoint itself (rewritten atomically; the
weights stay as they are), so ``--evaluation``, ``--predict --answer unknown|set`` and every export made afterwards
carry it: exports bake the temperature into their graph and hold the threshold and quantile in their metadata, which
the demo and the server read. Without ``--resume`` it trains the run the flags describe first, then calibrates its
best.pth. Rank 0 writes RUN/calibration/ (or ``--output``): report.json and reliability diagrams before and after.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from config import Config, given
from dataloader.datasets import discover_split
from engine.calibration import describe_report, fit_calibration, write_calibration_report
from engine.job import Job, default_run_name, open_job, resolve_config, run_dir
from engine.training import check_recipe, train
from utils.checkpoint import save_checkpoint
from utils.distributed import barrier
from utils.errors import UsageError
from utils.hardware import choose_inference_amp

MISSING = "--calibrate --resume needs a checkpoint (CHECKPOINT_DIR/RUN/best.pth)"


def check(cfg: Config) -> None:
    if not cfg.resume:
        check_recipe(cfg)
        if cfg.val_ratio == 0 and not discover_split(str(Path(cfg.data).resolve()), "val"):
            raise UsageError(f"--calibrate fits on the val split, and {cfg.data} has none with --val_ratio 0; give a "
                             "val/ folder or val.csv, or a --val_ratio above 0")


def run(cfg: Config, explicit: set[str]) -> dict:
    """Calibrate --resume, or train and then calibrate the new run's best.pth; returns the report."""
    if not cfg.resume:
        return train_then_calibrate(cfg, explicit)
    with open_job(cfg, explicit, checkpoint="required", missing=MISSING, eval_amp=True) as job:
        return calibrate(job, Path(job.cfg.resume))


def train_then_calibrate(cfg: Config, explicit: set[str]) -> dict:
    with open_job(cfg, explicit, checkpoint="none") as job:  # one process group: train nests in it (as --repeat)
        run_cfg = dataclasses.replace(cfg, name=cfg.name or default_run_name(cfg))
        train(run_cfg, explicit | {"name"})
        barrier()  # rank 0 wrote best.pth, which every rank reads next
        best = run_dir(run_cfg) / "best.pth"
        calibrate_cfg, ckpt = resolve_config(dataclasses.replace(run_cfg, resume=str(best)), explicit)
        calibrate_cfg.amp = choose_inference_amp(given(cfg, explicit, "amp"), calibrate_cfg.amp, job.info.device)
        return calibrate(Job(calibrate_cfg, ckpt, job.info, job.log), best)


def calibrate(job: Job, path: Path) -> dict:
    """Fit on val (every rank, all-gathered logits), then rank 0 rewrites the checkpoint and writes the report."""
    cfg, info, log = job.cfg, job.info, job.log
    calibration, report = fit_calibration(cfg, job.ckpt, info, coverage=cfg.reject_coverage,
                                          alpha=cfg.conformal_alpha)
    log.info("calibrated %s: %s", path, describe_report(report))
    if info.is_main:
        save_checkpoint(job.ckpt.replace(calibration=calibration.to_dict()), path)
        out_dir = Path(cfg.output) if cfg.output else path.parent / "calibration"
        log.info("report written to %s", ", ".join(str(p) for p in write_calibration_report(report, out_dir)))
    barrier()  # the checkpoint is complete before any rank goes on to use it
    return report
