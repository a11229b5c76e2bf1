"""The dataset audit's work below the job: the image facts and duplicates (shared out between processes), the K fold
models (the checkpoints of a ``--kfold K`` training, or trained here in-process), their out-of-fold class
probabilities for every image, and the confident-learning ranking of likely label errors.

Out of fold means that no image is scored by a model that trained on it: a train image by the fold model that held
its fold out, a val or test image by the mean of all K fold models (none of them saw val or test). The held-out folds
are recomputed with ``kfold_split`` from each checkpoint's own K and seed over the train split, exactly as its
training carved them.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from config import Config, given
from dataloader.datasets import kfold_split
from dataloader.image_audit import ImageFacts, near_duplicates, scan_images
from engine.inference import predict_files
from engine.job import resolve_config
from engine.training import train
from utils.checkpoint import Checkpoint
from utils.distributed import DistInfo, barrier, gather_objects
from utils.errors import UsageError
from utils.hardware import choose_inference_amp

DEFAULT_FOLDS = 5  # --kfold when the audit trains its own folds and none is given
DEFAULT_EPOCHS = 3  # --epochs of those folds when not given: enough for a ranking, cheap enough to run first


@dataclass
class FoldModel:
    """One fold's checkpoint with the config it predicts with."""

    path: str
    cfg: Config
    ckpt: Checkpoint


@dataclass
class LabelIssue:
    """A likely label error: the image's position in the inventory, its given and suggested class indices."""

    position: int
    given: int
    suggested: int
    self_confidence: float  # the out-of-fold probability of the given label
    suggested_probability: float
    flagged: bool = True  # confident learning flags it (else only the out-of-fold prediction disagrees)


def shared_scan(rows: list[tuple[str, str, str]], info: DistInfo, workers: int = 0) -> list[ImageFacts]:
    """``scan_images`` of every row, each process taking every world-size-th row; the same list on every rank."""
    mine = scan_images(rows[info.rank::info.world_size], workers)
    parts = gather_objects(mine)
    return [parts[i % info.world_size][i // info.world_size] for i in range(len(rows))]


def shared_near_duplicates(facts: list[ImageFacts], phash_threshold: int, pixel_tolerance: float,
                           info: DistInfo) -> list[tuple[int, int, int, float]]:
    """``near_duplicates`` with the pair search shared out by row blocks; sorted, the same on every rank."""
    mine = near_duplicates(facts, phash_threshold, pixel_tolerance, (info.rank, info.world_size))
    return sorted(pair for part in gather_objects(mine) for pair in part)


def train_folds(cfg: Config, explicit: set[str], base: str) -> list[str]:
    """Train the K fold runs CHECKPOINT_DIR/BASE/foldI (the recipe the flags give, K = --kfold or DEFAULT_FOLDS,
    --epochs or DEFAULT_EPOCHS) in this process group; returns their best.pth paths."""
    folds = cfg.kfold or DEFAULT_FOLDS
    epochs = given(cfg, explicit, "epochs", DEFAULT_EPOCHS)
    paths = []
    for fold in range(folds):
        run_cfg = dataclasses.replace(cfg, kfold=folds, fold=fold, epochs=epochs, name=f"{base}/fold{fold}",
                                      resume=None, output=None, audit=False, audit_fix=False)
        train(run_cfg, explicit | {"kfold", "fold", "epochs", "name"})
        barrier()  # rank 0 wrote best.pth, which every rank reads next
        paths.append(str(Path(cfg.checkpoint_dir) / run_cfg.name / "best.pth"))
    return paths


def load_fold_models(paths: list[str], cfg: Config, explicit: set[str], info: DistInfo) -> list[FoldModel]:
    """The checkpoints of one ``--kfold K`` training, one per fold, in fold order; refused with the reason when they
    are not (a plain run, folds missing or repeated, another seed, data or classes)."""
    models = []
    for path in paths:
        runtime = Config(resume=path, device=cfg.device, workers=cfg.workers, decode="loader")
        fold_cfg, ckpt = resolve_config(runtime, {"device"})
        fold_cfg.batch_size = cfg.batch_size
        fold_cfg.amp = choose_inference_amp(given(cfg, explicit, "amp"), fold_cfg.amp, info.device)
        if not fold_cfg.kfold:
            raise UsageError(f"--resume {path} is not a fold of a --kfold training (its config has no kfold); pass "
                             "the K checkpoints of `main.py --kfold K --fold I` runs (RUN/fold0/best.pth ...), or no "
                             "--resume and the audit trains its own folds")
        models.append(FoldModel(path, fold_cfg, ckpt))
    check_folds(models)
    return sorted(models, key=lambda m: m.cfg.fold)


def check_folds(models: list[FoldModel]) -> None:
    """Every fold of one K-fold partition once: same K, seed, data root and classes."""
    first = models[0]
    for model in models[1:]:
        for what, mine, theirs in (("--kfold", model.cfg.kfold, first.cfg.kfold),
                                   ("--seed", model.cfg.seed, first.cfg.seed),
                                   ("--data", os.path.abspath(model.cfg.data), os.path.abspath(first.cfg.data)),
                                   ("classes", model.ckpt.class_names, first.ckpt.class_names)):
            if mine != theirs:
                raise UsageError(f"--resume {model.path} has {what} {mine} but {first.path} has {theirs}; the "
                                 "checkpoints must be the folds of one --kfold training")
    folds = sorted(m.cfg.fold for m in models)
    count = first.cfg.kfold
    if folds != list(range(count)):
        raise UsageError(f"--resume gives folds {folds} of a --kfold {count} training; the audit needs each of the "
                         f"{count} folds once (RUN/fold0/best.pth ... RUN/fold{count - 1}/best.pth)")


def out_of_fold_probs(facts: list[ImageFacts], models: list[FoldModel], info: DistInfo) -> np.ndarray:
    """(images, classes) out-of-fold probabilities (see the module docstring); NaN rows for unreadable images.
    The same on every rank (the predictions are all-gathered)."""
    class_names = list(models[0].ckpt.class_names)
    train = [i for i, f in enumerate(facts) if f.split == "train"]
    others = [i for i, f in enumerate(facts) if f.split != "train" and f.reason is None]
    probs = np.full((len(facts), len(class_names)), np.nan)
    summed = np.zeros((len(others), len(class_names)))
    for model in models:
        _, held = kfold_split([facts[i].label for i in train], model.cfg.kfold, model.cfg.fold, model.cfg.seed)
        held = [train[h] for h in held if facts[train[h]].reason is None]
        predicted = predict_images(model, [facts[i] for i in held + others], class_names, info)
        probs[held] = predicted[:len(held)]
        summed += predicted[len(held):]
    probs[others] = summed / len(models)
    return probs


def predict_images(model: FoldModel, images: list[ImageFacts], class_names: list[str], info: DistInfo) -> np.ndarray:
    """Class probabilities of one fold model for these images, fitted as its training fitted them; all-gathered."""
    to_index = {name: i for i, name in enumerate(class_names)}
    samples = [(f.path, to_index[f.label]) for f in images]
    return predict_files(model.cfg, model.ckpt, samples, info).double().cpu().numpy()


def rank_label_issues(facts: list[ImageFacts], probs: np.ndarray, class_names: list[str]) -> list[LabelIssue]:
    """Likely label errors, a review queue: the images confident learning flags (cleanlab's ``find_label_issues``,
    pruned by the noise rate it estimates per pair of classes; ``flagged``) and the other images whose out-of-fold
    prediction is not the given label (cleanlab's ``predicted_neq_given``), together ranked by self-confidence (the
    out-of-fold probability of the given label), lowest first.

    One ranking rather than the flags first: the flags are a set, not an order, and their size follows a noise-rate
    estimate that can be off either way. With 5% of the train labels flipped at random, the flags held 56 of 63 flips
    in 58 images on digits (too few), and 2,508 of 2,700 flips in 4,662 images on Fashion-MNIST (too many: the first
    2,700 of flags-then-the-rest held 88.6% of the flips); the single ranking held 62 of 63 and 91.4%."""
    from cleanlab.filter import find_label_issues  # imported only here: the audit is its only user

    to_index = {name: i for i, name in enumerate(class_names)}
    scored = [i for i, f in enumerate(facts) if f.reason is None]
    labels = np.array([to_index[facts[i].label] for i in scored])
    flagged = set(find_label_issues(labels, probs[scored], n_jobs=1).nonzero()[0].tolist())
    disagree = find_label_issues(labels, probs[scored], filter_by="predicted_neq_given", n_jobs=1).nonzero()[0]
    candidates = sorted(flagged | set(disagree.tolist()), key=lambda k: (float(probs[scored[k]][labels[k]]), k))
    issues = []
    for k in candidates:
        row = probs[scored[k]]
        suggested = int(np.argmax(row))  # the lowest index on a tie, as every prediction here
        issues.append(LabelIssue(scored[k], int(labels[k]), suggested, float(row[labels[k]]), float(row[suggested]),
                                 flagged=k in flagged))
    return issues
