"""``--repeat N``: the same training with N seeds, each evaluated on test, summarised with a 95% confidence interval.

Runs go to CHECKPOINT_DIR/NAME/seedS (S = --seed, --seed + 1, ...); the report to CHECKPOINT_DIR/NAME/repeat.md and
repeat.json (best val top-1 and test top-1 per seed; mean, sample std and t interval, see utils/cv_report.py).
Differences between recipes smaller than these intervals are noise (seed 003).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from applications.evaluate import evaluate
from applications.train import train
from config import Config
from dataloader.datasets import discover_split
from utils.cv_report import run_scores, write_cv_report
from utils.distributed import barrier, broadcast_object, cleanup_distributed, init_distributed
from utils.logger import get_logger


def repeat_runs(cfg: Config, explicit: set[str]) -> dict:
    """Train ``cfg.repeat`` seeds and write the report; returns its summary."""
    if cfg.repeat < 2:
        raise ValueError(f"--repeat needs at least 2 runs for a spread, got {cfg.repeat}")
    if cfg.resume:
        raise ValueError("--repeat trains from scratch; resume one seed's run with --resume CKPT_DIR/NAME/seedS/"
                         "last.pth (without --repeat)")
    info = init_distributed(cfg.device)  # one process group for all runs (train and evaluate nest inside it)
    try:
        base = cfg.name or broadcast_object(f"{cfg.model}-repeat-{time.strftime('%Y%m%d-%H%M%S')}")
        test_split = discover_split(str(Path(cfg.data).resolve()), "test")
        has_test = bool(test_split and test_split[0])
        rows = []
        for seed in range(cfg.seed, cfg.seed + cfg.repeat):
            run = dataclasses.replace(cfg, seed=seed, name=f"{base}/seed{seed}", repeat=None)
            train(run, explicit | {"seed", "name"})
            barrier()  # rank 0 writes the checkpoints (and below the report) the others read next
            run_dir = Path(cfg.checkpoint_dir) / run.name
            if has_test:
                evaluate(Config(resume=str(run_dir / "best.pth"), split="test", device=cfg.device,
                                workers=cfg.workers, batch_size=cfg.batch_size), {"split", "device"})
                barrier()
            rows.append({**run_scores(run_dir), "seed": seed})
        summary = {}
        if info.is_main:
            out = Path(cfg.checkpoint_dir) / base / "repeat.md"
            summary = write_cv_report(rows, out)
            get_logger().info("%d seeds: %s; report %s", cfg.repeat, "; ".join(
                f"{metric} mean {s['mean']:.2f}, 95% CI [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"
                for metric, s in summary.items()), out)
        return summary
    finally:
        cleanup_distributed()
