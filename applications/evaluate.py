"""``--evaluation --resume CKPT [--split S] [--tta]``: exact metrics on one split, whatever the number of processes.

Writes report.json, confusion_matrix.csv/.png and reliability_diagram.png to ``--output`` (default
RUN/eval_SPLIT[_tta_...]). With several ``--resume`` models (checkpoints or exports, as ``--predict`` takes) it
evaluates their ensemble: class probabilities averaged with ``--ensemble_weights``, each member on the split as the
first checkpoint's run carved it (or ``--data``), at its own input size; the log gives each member's top-1 too.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from config import Config
from dataloader.tta import build_tta
from engine.components import loader_for, split_dataset_of
from engine.inference import ensemble_weights, evaluation_report, gather_probs, load_member, resume_paths
from engine.job import open_job, resolve_config
from utils.errors import UsageError
from utils.metrics import classification_report, percent_text, predicted_labels, write_report

MISSING = "--evaluation needs --resume CKPT (a best.pth or last.pth written by training)"


def check(cfg: Config) -> None:
    build_tta(cfg.tta, image_size=cfg.image_size)  # an unknown --tta group fails before any work
    ensemble_weights(cfg.ensemble_weights, len(resume_paths(cfg)) or 1)
    if cfg.ood_data and len(resume_paths(cfg)) > 1:
        raise UsageError("--ood_data evaluates one checkpoint; give one --resume")


def run(cfg: Config, explicit: set[str]) -> dict:
    """Evaluate the checkpoint (or the ensemble) on ``cfg.split``; rank 0 writes the report files."""
    if len(resume_paths(cfg)) > 1:
        return run_ensemble(cfg, explicit, resume_paths(cfg))
    with open_job(cfg, explicit, checkpoint="required", missing=MISSING, eval_amp=True) as job:
        cfg, log = job.cfg, job.log
        tta = build_tta(cfg.tta, image_size=cfg.image_size)
        if tta is not None:
            log.info("test-time augmentation: %s, probabilities averaged", tta.describe())
        report = evaluation_report(cfg, job.ckpt, job.info, cfg.split, tta)
        if job.info.is_main:
            suffix = f"_tta_{'_'.join(tta.groups)}" if tta else ""
            out_dir = Path(cfg.output) if cfg.output else Path(cfg.resume).parent / f"eval_{cfg.split}{suffix}"
            log_and_write(report, job.ckpt.class_names, out_dir, cfg, tta, log)
        return report


def run_ensemble(cfg: Config, explicit: set[str], paths: list[str]) -> dict:
    """Average the members' probabilities on the split and report on the average (rank 0 writes the files)."""
    with open_job(cfg, explicit, checkpoint="none", eval_amp=True) as job:
        info, log = job.info, job.log
        split_cfg = split_config(cfg, explicit, paths)
        weights = ensemble_weights(cfg.ensemble_weights, len(paths))
        probs, targets, class_names, members = None, None, None, []
        for path, weight in zip(paths, weights):
            member = load_member(path, cfg, explicit, info.device, class_names, paths[0])
            class_names = member.class_names
            member_cfg = dataclasses.replace(split_cfg, image_size=list(member.image_size), **member.fitting)
            dataset = split_dataset_of(member_cfg, cfg.split, class_names)
            tta = build_tta(cfg.tta, image_size=member.image_size)
            _, member_probs, targets = gather_probs(member.probs, loader_for(dataset, cfg, info), info.device, tta)
            probs = member_probs * weight if probs is None else probs + member_probs * weight
            hits = int((predicted_labels(member_probs.cpu()) == targets.cpu()).sum())
            members.append({"model": path, "weight": weight, "top1": 100.0 * hits / len(targets)})
            log.info("%s: top-1 %.2f%% on its own (weight %.3f)", path, members[-1]["top1"], weight)
        report = classification_report(probs.cpu().numpy(), targets.cpu().numpy(), class_names)
        report.update({"checkpoint": paths, "members": members, "split": cfg.split, "data": split_cfg.data,
                       "world_size": info.world_size, "tta": tta.describe() if tta else None})
        if info.is_main:
            out_dir = Path(cfg.output) if cfg.output else Path(paths[0]).parent / f"eval_{cfg.split}_ensemble"
            log_and_write(report, class_names, out_dir, dataclasses.replace(cfg, data=split_cfg.data), tta, log)
        return report


def split_config(cfg: Config, explicit: set[str], paths: list[str]) -> Config:
    """The recipe that says which images the split holds: the first checkpoint member's run (with the typed flags),
    else the typed --data."""
    for path in paths:
        if path.endswith(".pth"):
            return resolve_config(cfg, explicit, path)[0]
    if "data" not in explicit:
        raise UsageError("--evaluation of exported models only: give --data DIR (and --split) to say which images, "
                         "or put a checkpoint (.pth) among the --resume models")
    return cfg


def log_and_write(report: dict, class_names: list[str], out_dir: Path, cfg: Config, tta, log) -> None:
    paths = write_report(report, class_names, out_dir)
    log.info("%s split of %s%s: %d images, top-1 %.2f%%, top-5 %.2f%%, macro F1 %.4f, macro AUROC %s, "
             "macro AP %s, ECE %.2f%%", cfg.split, cfg.data, f" with TTA {tta.describe()}" if tta else "",
             report["samples"], report["top1"], report["top5"], report["macro_f1"],
             _four(report["macro_auroc"]), _four(report["macro_ap"]), 100 * report["ece"])
    if "calibration" in report:
        cal = report["calibration"]
        expected = cal.get("set_coverage_expected95")
        expected = f"; split conformal expects {100 * expected[0]:.2f}-{100 * expected[1]:.2f}%" if expected else ""
        log.info("calibrated answers: 'unknown' below %.4f accepts %.2f%% of %s with top-1 %s; conformal sets (alpha "
                 "%g) cover %.2f%% (95%% interval %.2f-%.2f%%, target %.0f%%%s) with %.2f classes on average",
                 cal["threshold"], 100 * cal["accepted"], cfg.split, percent_text(cal["accepted_top1"]), cal["alpha"],
                 100 * cal["set_coverage"], 100 * cal["set_coverage_ci95"][0], 100 * cal["set_coverage_ci95"][1],
                 100 * cal["set_target"], expected, cal["set_mean_size"])
    if "ood" in report:
        ood = report["ood"]
        unknown = (f"; answered unknown: {100 * ood['unknown_share']:.2f}% of them, "
                   f"{100 - 100 * ood['known_accepted_share']:.2f}% of {cfg.split}") if "unknown_share" in ood else ""
        log.info("out of distribution (%d images of %s): AUROC %.4f, false positives at 95%% true positives %.2f%%%s",
                 ood["images"], ood["data"], ood["auroc"], 100 * ood["fpr_at_95_tpr"], unknown)
    log.info("report written to %s", ", ".join(str(p) for p in paths))


def _four(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
