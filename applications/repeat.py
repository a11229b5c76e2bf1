"""``--repeat N``: the same training with N seeds, each evaluated on test, summarised with a 95% confidence interval.

Runs go to CHECKPOINT_DIR/NAME/seedS (S = --seed, --seed + 1, ...); the report to CHECKPOINT_DIR/NAME/repeat.md and
repeat.json (best val top-1 and test top-1 per seed; mean, sample std and t interval, see utils/cv_report.py).
Differences between recipes smaller than these intervals are noise (seed 003).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from config import Config
from dataloader.datasets import discover_split
from engine.inference import evaluation_report
from engine.job import default_run_name, open_job, resolve_config
from engine.training import check_recipe, train
from utils.cv_report import run_scores, write_cv_report
from utils.distributed import barrier
from utils.errors import UsageError
from utils.hardware import choose_inference_amp
from utils.metrics import write_report


def check(cfg: Config) -> None:
    check_recipe(cfg)
    if cfg.repeat < 2:
        raise UsageError(f"--repeat needs at least 2 runs for a spread, got {cfg.repeat}")
    if cfg.resume:
        raise UsageError("--repeat trains from scratch; resume one seed's run with --resume CKPT_DIR/NAME/seedS/"
                         "last.pth (without --repeat)")


def run(cfg: Config, explicit: set[str]) -> dict:
    """Train ``cfg.repeat`` seeds and write the report; returns its summary."""
    with open_job(cfg, explicit, checkpoint="none") as job:  # one process group for all runs (train nests in it)
        base = cfg.name or default_run_name(cfg, "repeat")
        test_split = discover_split(str(Path(cfg.data).resolve()), "test")
        has_test = bool(test_split and test_split[0])
        rows = []
        for seed in range(cfg.seed, cfg.seed + cfg.repeat):
            run_cfg = dataclasses.replace(cfg, seed=seed, name=f"{base}/seed{seed}", repeat=None)
            train(run_cfg, explicit | {"seed", "name"})
            barrier()  # rank 0 writes the checkpoints (and below the report) the others read next
            run_dir = Path(cfg.checkpoint_dir) / run_cfg.name
            if has_test:
                evaluate_test(run_dir, cfg, job)
                barrier()
            rows.append({**run_scores(run_dir), "seed": seed})
        summary = {}
        if job.info.is_main:
            out = Path(cfg.checkpoint_dir) / base / "repeat.md"
            summary = write_cv_report(rows, out)
            job.log.info("%d seeds: %s; report %s", cfg.repeat, "; ".join(
                f"{metric} mean {s['mean']:.2f}, 95% CI [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"
                for metric, s in summary.items()), out)
        return summary


def evaluate_test(run_dir: Path, cfg: Config, job) -> None:
    """The run's best.pth on the test split; rank 0 writes RUN/eval_test/ (as --evaluation does)."""
    runtime = Config(resume=str(run_dir / "best.pth"), split="test", device=cfg.device, workers=cfg.workers,
                     decode=cfg.decode)
    eval_cfg, ckpt = resolve_config(runtime, {"split", "device"})
    eval_cfg.batch_size = cfg.batch_size
    eval_cfg.amp = choose_inference_amp(None, eval_cfg.amp, job.info.device)
    report = evaluation_report(eval_cfg, ckpt, job.info, "test")
    if job.info.is_main:
        write_report(report, ckpt.class_names, run_dir / "eval_test")
        job.log.info("%s: test top-1 %.2f%%", run_dir, report["top1"])
