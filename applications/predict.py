"""``--predict DIR_OR_CSV --resume A [B ...]``: a submission CSV ``filename,label`` for unlabelled images.

Inputs are every image under a folder (recursively, sorted, names relative to the folder), or the rows of a CSV
whose ``filename`` column (else its first column) lists paths relative to the CSV's folder; the submission keeps
that order. Each ``--resume`` entry is a checkpoint of ours or an exported model (TorchScript ``.pt`` from
``--jit``, ``.onnx`` from ``--onnx``); their class probabilities are averaged, weighted by ``--ensemble_weights``,
after test-time augmentation (``--tta``) within each model. Under torchrun every process predicts its shard and
the probabilities are all-gathered, so each image is predicted once and the file is the same for any process count.

An image that cannot be read does not stop the job: every readable image is classified and written, the unreadable
ones are listed on stderr and in ``<submission>.unreadable.txt`` beside the CSV, and the job exits with code 1.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import torch

from config import Config
from dataloader import ImageClassificationDataset
from dataloader.datasets import UNREADABLE, list_inputs
from dataloader.tta import build_tta
from engine.components import loader_for
from engine.inference import Predictor, ensemble_weights, gather_probs, load_member, resume_paths
from engine.job import open_job
from utils.calibration import answer_text, require_answer
from utils.checkpoint import atomic_write
from utils.distributed import DistInfo
from utils.errors import DataError, UsageError

MISSING = "--predict needs --resume CKPT [CKPT ...] (checkpoints or exported .pt / .onnx files)"


def check(cfg: Config) -> None:
    ensemble_weights(cfg.ensemble_weights, len(resume_paths(cfg)) or 1)
    build_tta(cfg.tta, image_size=cfg.image_size)
    if cfg.answer != "top" and (len(resume_paths(cfg)) > 1 or cfg.tta):
        raise UsageError(f"--answer {cfg.answer} uses the threshold and quantile --calibrate fitted for one model "
                         "without test-time augmentation; drop --tta and give one --resume model")


def run(cfg: Config, explicit: set[str]) -> Path:
    """Predict, average the ensemble, and write the submission CSV (rank 0); returns its path."""
    with open_job(cfg, explicit, checkpoint="none") as job:
        info, log = job.info, job.log
        paths = resume_paths(cfg)
        if not paths:
            raise UsageError(MISSING)
        weights = ensemble_weights(cfg.ensemble_weights, len(paths))
        inputs = list_inputs(cfg.predict)
        names, probs, class_names, readable = [name for name, _ in inputs], None, None, None
        for path, weight in zip(paths, weights):
            member = load_member(path, cfg, explicit, info.device, class_names, paths[0])
            class_names = member.class_names
            require_answer(member.calibration, cfg.answer)  # before predicting: the model can give this answer
            member_probs, readable = predict_member(member, inputs, cfg, info)
            probs = member_probs * weight if probs is None else probs + member_probs * weight
            log.info("%s: %d images predicted (weight %.3f)", path, int(readable.sum()), weight)
        out_path = Path(cfg.output) if cfg.output else Path(paths[0]).parent / "submission.csv"
        keep = readable.tolist()
        if info.is_main:
            labels = answer_text(probs[readable].cpu(), class_names, member.calibration, cfg.answer)
            write_submission(out_path, [n for n, k in zip(names, keep) if k], labels, probs[readable].cpu(),
                             class_names, with_probabilities=cfg.probabilities)
            log.info("submission for %d images from %d model(s)%s written to %s", sum(keep), len(paths),
                     f", TTA {cfg.tta}" if cfg.tta else "", out_path)
        if not all(keep):
            raise DataError(report_unreadable(out_path, [str(p) for (_, p), k in zip(inputs, keep) if not k],
                                              info.is_main))
        return out_path


def predict_member(member: Predictor, inputs: list[tuple[str, Path]], cfg: Config,
                   info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """The member's probabilities for every input (rows of unreadable files are zero) and which inputs were read."""
    tta = build_tta(cfg.tta, image_size=member.image_size)
    if tta is not None and member.fixed_size and "scale" in tta.groups:
        raise UsageError(f"--tta scale: {member.path} is an ONNX graph for one input size; drop 'scale' or use the "
                         "checkpoint instead")
    samples = [(str(path), -1) for _, path in inputs]  # no labels: -1
    dataset = ImageClassificationDataset(samples, member.class_names, image_size=member.image_size, seed=cfg.seed,
                                         skip_unreadable=True, **member.fitting)
    indices, probs, targets = gather_probs(member.probs, loader_for(dataset, cfg, info), info.device, tta)
    assert torch.equal(indices.cpu(), torch.arange(len(inputs))), "gathered predictions are not one per input"
    readable = (targets != UNREADABLE).cpu()
    return probs * readable[:, None].to(probs.device), readable


def report_unreadable(submission: Path, files: list[str], is_main: bool) -> str:
    """List the unreadable files in ``<submission>.unreadable.txt`` (rank 0); returns the error line."""
    listing = submission.with_name(submission.stem + ".unreadable.txt")
    if is_main:
        text = "".join(f"{path}\n" for path in files).encode("utf-8")
        atomic_write(listing, lambda handle: handle.write(text))
        for path in files:
            print(f"unreadable: {path}", file=sys.stderr)
    return (f"{len(files)} image(s) could not be read and are missing from {submission} (e.g. {files[0]}); they are "
            f"listed in {listing}. Fix or remove them (python dataloader/check_images.py DIR tells why) and predict "
            "again")


def write_submission(path: Path, names: list[str], labels: list[str], probs: torch.Tensor, class_names: list[str], *,
                     with_probabilities: bool) -> None:
    """``filename,label[,<class>...]`` rows in input order, written atomically; ``labels`` are the answers (a class,
    "unknown" or a '|'-joined set, see utils/calibration.answer_text)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", "label"] + (list(class_names) if with_probabilities else []))
    for name, label, row in zip(names, labels, probs.tolist()):
        writer.writerow([name, label] + ([f"{p:.6f}" for p in row] if with_probabilities else []))
    atomic_write(path, lambda handle: handle.write(buffer.getvalue().encode("utf-8")))
