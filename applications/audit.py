"""``--audit --data DATA``: duplicates and leakage between splits, likely label errors, class balance, image sizes and
modes, unreadable files; an HTML page, CSV files and a short summary in CHECKPOINT_DIR/NAME/audit (or ``--output``).

    python main.py --audit --data DATA                       # trains 5 folds of small_cnn (3 epochs) for the labels
    python main.py --audit --resume RUN/fold0/best.pth ... RUN/fold4/best.pth   # the folds of a --kfold 5 training
    python main.py --audit --data DATA --audit_skip_labels   # duplicates and statistics only, no model
    torchrun --standalone --nproc_per_node 2 main.py --audit --data DATA       # hashing and predictions shared

With ``--resume`` the audit writes beside the fold runs (RUN/audit). ``--audit_fix`` adds AUDIT/cleaned/, a data root
of CSV lists for ``--data``. See README "Dataset audit" for what each file holds and how items are chosen.
"""
from __future__ import annotations

import os
from pathlib import Path

from config import Config
from dataloader.image_audit import exact_groups, inventory
from engine.audit import (load_fold_models, out_of_fold_probs, rank_label_issues, shared_near_duplicates,
                          shared_scan, train_folds)
from engine.audit_report import AuditResult, summary, summary_lines, write_cleaned, write_csvs, write_page
from engine.inference import resume_paths
from engine.job import default_run_name, open_job
from engine.training import check_recipe
from utils.distributed import barrier, broadcast_object
from utils.errors import DataError, UsageError


def check(cfg: Config) -> None:
    if cfg.audit_phash_threshold > 64:
        raise UsageError(f"--audit_phash_threshold is a number of bits of a 64-bit hash, 0..64, got "
                         f"{cfg.audit_phash_threshold}")
    if cfg.audit_skip_labels and cfg.resume:
        raise UsageError("--audit_skip_labels uses no model; drop --resume (or --audit_skip_labels)")
    if cfg.kfold is not None and cfg.kfold < 2:
        raise UsageError(f"--kfold must be >= 2 for the audit's folds, got {cfg.kfold}")
    if cfg.resume == "auto":
        raise UsageError("--audit --resume takes the K fold checkpoints of a --kfold training, not 'auto'")
    if not cfg.resume and not cfg.audit_skip_labels:
        check_recipe(cfg)


def run(cfg: Config, explicit: set[str]) -> dict:
    """Audit the data set; returns the summary (on every rank)."""
    with open_job(cfg, explicit, checkpoint="none") as job:
        info, log = job.info, job.log
        folds = load_fold_models(resume_paths(cfg), cfg, explicit, info) if cfg.resume else None
        if folds:
            cfg.data = data_of_folds(cfg, explicit, folds[0].cfg.data)
        rows = checked_inventory(cfg.data)
        base = cfg.name or default_run_name(cfg, "audit")
        out = audit_folder(cfg, base)
        log.info("auditing %d images of %s into %s", len(rows), cfg.data, out)
        facts = shared_scan(rows, info, cfg.workers)
        result = AuditResult(os.path.abspath(cfg.data), facts, exact_groups(facts),
                             shared_near_duplicates(facts, cfg.audit_phash_threshold, cfg.audit_pixel_tolerance, info),
                             sorted({f.label for f in facts if f.split == "train"}),
                             settings={"phash_threshold": cfg.audit_phash_threshold,
                                       "pixel_tolerance": cfg.audit_pixel_tolerance})
        find_label_issues(result, cfg, explicit, folds, base, info, log)
        if info.is_main:
            write_outputs(out, result, cfg, log)
        barrier()
        return summary(result)


def data_of_folds(cfg: Config, explicit: set[str], trained_on: str) -> str:
    """The data root the fold checkpoints were trained on; a different --data is refused (their folds are defined
    on that data's train split)."""
    if "data" in explicit and os.path.abspath(cfg.data) != os.path.abspath(trained_on):
        raise UsageError(f"--data {cfg.data} is not the data the --resume folds were trained on ({trained_on}); "
                         "drop --data or pass that folder")
    return trained_on


def checked_inventory(data: str) -> list[tuple[str, str, str]]:
    """The images of every split; a missing train split, a split folder without images or a class outside train
    are data errors."""
    rows = inventory(data)
    present = {split for split, _, _ in rows}
    if "train" not in present:
        raise DataError(f"--data {data}: no train split with images (train/<class>/<image> or train.csv)")
    for split in ("val", "test"):
        if split not in present and (Path(data) / split).is_dir():
            raise DataError(f"--data {data}: the {split} split ({Path(data) / split}) holds no images; add images "
                            "or remove the folder")
    classes = {label for split, _, label in rows if split == "train"}
    unknown = sorted({label for _, _, label in rows} - classes)
    if unknown:
        raise DataError(f"--data {data}: val/test classes {unknown[:5]} are not classes of train")
    return rows


def audit_folder(cfg: Config, base: str) -> Path:
    """--output, else beside the --resume fold runs (RUN/audit for RUN/foldI/best.pth), else CHECKPOINT_DIR/NAME."""
    if cfg.output:
        return Path(cfg.output)
    if cfg.resume and not cfg.name:
        return Path(resume_paths(cfg)[0]).resolve().parent.parent / "audit"
    return Path(cfg.checkpoint_dir) / base / "audit"


def find_label_issues(result: AuditResult, cfg: Config, explicit: set[str], folds, base: str, info, log) -> None:
    """Fill ``result.issues`` from out-of-fold probabilities (given folds, or folds trained now)."""
    unreadable = sum(f.reason is not None for f in result.facts if f.split == "train")
    if cfg.audit_skip_labels:
        result.label_source = "label audit skipped (--audit_skip_labels)"
        return
    if folds is None and unreadable:
        result.label_source = (f"label audit skipped: {unreadable} unreadable train images stop training; fix or "
                               "quarantine them (python dataloader/check_images.py DATA --move DIR) and audit again")
        log.warning("%s", result.label_source)
        return
    if folds is None:
        folds = load_fold_models(train_folds(cfg, explicit, base), cfg, explicit, info)
    names = list(folds[0].ckpt.class_names)
    if names != result.class_names:
        raise UsageError(f"the --resume folds predict classes {names[:10]}, the data's train split has "
                         f"{result.class_names[:10]}")
    probs = out_of_fold_probs(result.facts, folds, info)
    issues = rank_label_issues(result.facts, probs, names) if info.is_main else None
    result.issues = broadcast_object(issues)
    first = folds[0].cfg
    result.label_source = (f"out-of-fold probabilities of {len(folds)} fold models ({first.model}, "
                           f"{first.epochs} epochs, seed {first.seed}; {os.path.dirname(folds[0].path)} ...), "
                           "ranked by confident learning (cleanlab)")


def write_outputs(out: Path, result: AuditResult, cfg: Config, log) -> None:
    """The CSV files, the page, the cleaned root (--audit_fix) and the printed summary (rank 0)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csvs(out, result)
    write_page(out, result, cfg.audit_top)
    for line in summary_lines(summary(result)):
        log.info("%s", line)
    if cfg.audit_fix:
        sizes = write_cleaned(out / "cleaned", result)
        log.info("cleaned data root %s (train.csv, val.csv, test.csv: %s; held_out.csv): train with --data %s",
                 out / "cleaned", ", ".join(f"{s} {n}" for s, n in sizes.items()), out / "cleaned")
    log.info("audit written to %s (index.html, CSV files, summary.json)", out)
