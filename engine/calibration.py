"""Fitting ``--calibrate`` on a checkpoint's val split: temperature scaling, the reject threshold for a target
coverage and split conformal's quantile (the maths and the record: utils/calibration.py).

The val split is the one the run carved (a val folder, the stratified share of train, or a k-fold's fold), and its
logits are all-gathered, so the fit is the same for any number of processes. The temperature is fitted on the even
positions and the threshold and quantile on the odd ones (``utils.calibration.halves``); the expected calibration
error before and after is reported on the odd half, which the temperature never saw.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from config import Config
from engine.inference import split_logits
from utils.calibration import (Calibration, coverage_threshold, conformal_quantile, fit_temperature, halves, nll,
                               scores_to_probs, selective_metrics)
from utils.checkpoint import Checkpoint
from utils.distributed import DistInfo
from utils.errors import UsageError
from utils.metrics import calibration as reliability
from utils.metrics import percent_text, plot_reliability

MIN_IMAGES = 20  # below this a quantile and a temperature are noise


def fit_calibration(cfg: Config, ckpt: Checkpoint, info: DistInfo, *, coverage: float,
                    alpha: float) -> tuple[Calibration, dict]:
    """The calibration of ``ckpt`` on its val split and a report of what it changed (identical on every rank)."""
    logits, targets = split_logits(cfg, ckpt, "val", info)
    logits, targets = logits.cpu().double(), targets.cpu().long()
    if len(targets) < MIN_IMAGES:
        raise UsageError(f"--calibrate: the val split has {len(targets)} images, fewer than {MIN_IMAGES}; give a "
                         "larger --val_ratio or a val/ folder")
    fit_part, held_out = halves(len(targets))
    temperature = fit_temperature(logits[fit_part], targets[fit_part], cfg.criterion)
    probs = scores_to_probs(logits, cfg.criterion, temperature).float()
    calibration = Calibration(temperature=temperature, threshold=coverage_threshold(probs[held_out], coverage),
                              coverage=coverage, qhat=conformal_quantile(probs[held_out], targets[held_out], alpha),
                              alpha=alpha, images=len(targets))
    return calibration, calibration_report(logits, targets, probs, held_out, calibration, cfg.criterion)


def calibration_report(logits: torch.Tensor, targets: torch.Tensor, probs: torch.Tensor, held_out: torch.Tensor,
                       calibration: Calibration, criterion: str) -> dict:
    """ECE and NLL before and after on the held-out half, its reliability bins, and the answers' val behaviour."""
    raw = scores_to_probs(logits, criterion).float()
    t = held_out
    ece_before, bins_before = reliability(raw[t].numpy(), targets[t].numpy())
    ece_after, bins_after = reliability(probs[t].numpy(), targets[t].numpy())
    return {"calibration": calibration.to_dict(), "val_images": len(targets), "held_out_images": len(t),
            "ece_before": ece_before, "ece_after": ece_after,
            "nll_before": nll(logits[t], targets[t], criterion), "nll_after": nll(logits[t], targets[t], criterion,
                                                                                calibration.temperature),
            "held_out": selective_metrics(probs[t], targets[t], calibration),
            "reliability_before": bins_before, "reliability_after": bins_after}


def write_calibration_report(report: dict, out_dir: str | Path) -> list[Path]:
    """report.json and the reliability diagrams before and after (held-out half of val); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "reliability_before.png", out / "reliability_after.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    plot_reliability(report["reliability_before"], report["ece_before"], paths[1])
    plot_reliability(report["reliability_after"], report["ece_after"], paths[2])
    return paths


def describe_report(report: dict) -> str:
    """One log line: what the calibration changed and how its answers behave on the held-out half of val."""
    cal, held = Calibration.from_dict(report["calibration"]), report["held_out"]
    return (f"temperature {cal.temperature:.4f} (fitted on {report['val_images'] - report['held_out_images']} val "
            f"images); on the other {report['held_out_images']}: ECE {100 * report['ece_before']:.2f}% -> "
            f"{100 * report['ece_after']:.2f}%, NLL {report['nll_before']:.4f} -> {report['nll_after']:.4f}; "
            f"'unknown' below {cal.threshold:.4f} accepts {100 * held['accepted']:.1f}% with top-1 "
            f"{percent_text(held['accepted_top1'])}; conformal sets (alpha {cal.alpha:g}, classes with p >= "
            f"{1 - cal.qhat:.4f}) cover {100 * held['set_coverage']:.1f}% with {held['set_mean_size']:.2f} classes "
            "on average")
