"""``--pseudo_label DIR_OR_CSV``: train, label the unlabelled images with the model, retrain with the confident ones.

    python main.py --data DATA --pseudo_label UNLABELLED --pseudo_threshold 0.95 --pseudo_rounds 3 --name semi
    torchrun --nproc_per_node 2 main.py --data DATA --pseudo_label UNLABELLED.csv --pseudo_targets soft

Round 0 trains on the labelled images (CHECKPOINT_DIR/NAME/round0/). Each round r = 1..K labels every unlabelled
image with the model the previous round ended with (its EMA with --ema or --mean_teacher), keeps those whose top
probability is at least --pseudo_threshold and trains a new model from scratch (same seed) on the labelled images
plus those (NAME/roundR/), each pseudo-labelled image weighted --pseudo_weight, with its top class (hard) or all
the probabilities (soft) as the target. Under torchrun the predictions are all-gathered, so each image is labelled
once whatever the process count. NAME/pseudo_labels.csv lists every round's labels (path, label, confidence,
round), NAME/pseudo_label.log the rounds' log; the last round's best.pth is the result.
"""
from __future__ import annotations

import dataclasses

from config import Config
from dataloader.datasets import list_inputs
from dataloader.unlabelled import write_pseudo_labels
from engine.job import default_run_name, open_job, run_dir
from engine.semi import PseudoLabels, label_unlabelled
from engine.training import build_training_run, fit
from utils.errors import UsageError
from utils.logger import detach_log_files


def check(cfg: Config) -> None:
    """The threshold is a probability, the unlabelled images exist (before round 0 trains); resuming a round is not
    offered (each round is a fresh run)."""
    if not 0.0 <= cfg.pseudo_threshold <= 1.0:
        raise UsageError(f"--pseudo_threshold must be a probability in [0, 1], got {cfg.pseudo_threshold}")
    if cfg.pseudo_weight < 0:
        raise UsageError(f"--pseudo_weight must be >= 0, got {cfg.pseudo_weight}")
    if cfg.resume:
        raise UsageError("--pseudo_label trains every round from scratch and does not resume; drop --resume (or "
                         "fine-tune from weights with --pretrained)")
    list_inputs(cfg.pseudo_label, "--pseudo_label")


def run(cfg: Config, explicit: set[str]) -> dict:
    """The rounds; returns the last round's metrics plus ``pseudo_labelled`` (images kept per round)."""
    with open_job(cfg, explicit, checkpoint="none") as job:
        base, info, log = job.cfg, job.info, job.log
        base.name = base.name or default_run_name(base, "pseudo")
        labels_file = run_dir(base) / "pseudo_labels.csv"
        job.start_run_folder(run_dir(base), "pseudo_label.log")  # the rounds' story; each round has its train.log
        pseudo, rows, kept = None, [], []
        for round_ in range(base.pseudo_rounds + 1):
            job.cfg = dataclasses.replace(base, name=f"{base.name}/round{round_}")
            training = build_training_run(job, pseudo=pseudo)
            job.start_run_folder(training.out_dir, "train.log")
            added = len(pseudo.files) if pseudo is not None else 0
            log.info("pseudo-labelling round %d of %d: %d labelled + %d pseudo-labelled training images", round_,
                     base.pseudo_rounds, len(training.splits.train) - added, added)
            metrics = fit(training, log)
            if round_ < base.pseudo_rounds:
                pseudo = label_round(training, base, info, log, round_ + 1)
                kept.append(len(pseudo.files))
                rows += pseudo.rows(training.class_names)
                if info.is_main:
                    write_pseudo_labels(labels_file, rows)
            detach_log_files(training.out_dir)
        log.info("pseudo-labels of %d round(s) in %s (kept per round: %s); the last round's model: %s", len(kept),
                 labels_file, kept, training.out_dir / "best.pth")
        detach_log_files(run_dir(base))
        return {**metrics, "pseudo_labelled": kept}


def label_round(training, base: Config, info, log, round_: int) -> PseudoLabels:
    """The pseudo-labels of round ``round_`` by the model the previous round ended with (its EMA when kept)."""
    labeller = training.ema.module if training.ema is not None else training.model
    pseudo = label_unlabelled(labeller, base.pseudo_label, training.class_names, training.cfg,
                              training.preprocessing, info, threshold=base.pseudo_threshold, round_=round_)
    log.info("round %d: %d of %d unlabelled images with top probability >= %g kept (%s targets, weight %g)", round_,
             len(pseudo.files), pseudo.seen, base.pseudo_threshold, base.pseudo_targets, base.pseudo_weight)
    return pseudo
