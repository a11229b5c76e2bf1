"""Teacher knowledge: ``--knowledge SPLIT --resume TEACHER.pth`` writes it, ``--distill`` / ``--teacher`` use it.

    python main.py --knowledge train --resume checkpoints/teacher/best.pth      # DATA/distill.txt + label.txt
    python main.py --data DATA --distill --distill_alpha 0.7 --distill_T 4      # student from every distill*.txt
    python main.py --data DATA --teacher resnet18 --teacher_ckpt teacher.pth   # online: a live teacher

The file format is in dataloader/knowledge.py. Under torchrun every process predicts its shard and the
probabilities are all-gathered, so each image is written once whatever the process count.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from applications.common import (autocast, checkpoint_job, model_from_checkpoint, model_options, predict_split,
                                 preprocessing_of, scores_to_probs)
from config import Config
from dataloader.datasets import ImageClassificationDataset, discover_split
from dataloader.knowledge import knowledge_files, relative_path, teacher_probabilities, write_knowledge
from dataloader.preprocess import Preprocessing
from models import build_model
from models.pretrained import read_state_dict
from utils.checkpoint import load_checkpoint
from utils.logger import get_logger


def dump_knowledge(cfg: Config, explicit: set[str]) -> Path:
    """Predict ``cfg.knowledge`` with the teacher ``--resume``; rank 0 writes the probabilities (``--output``,
    default DATA/distill.txt) and the one-hot labels (label.txt in the same folder). Returns the knowledge file."""
    missing = "--knowledge needs the teacher: --resume TEACHER.pth (a checkpoint written by training)"
    with checkpoint_job(cfg, explicit, missing) as (cfg, ckpt, info, log):
        class_names = ckpt["class_names"]
        dataset, indices, probs, targets = predict_split(cfg, ckpt, cfg.knowledge, info)
        out = Path(cfg.output) if cfg.output else Path(cfg.data) / "distill.txt"
        if info.is_main:
            paths = [relative_path(dataset.samples[i][0], cfg.data) for i in indices.tolist()]
            probs_np, labels = probs.cpu().numpy(), targets.cpu().numpy()
            write_knowledge(out, paths, probs_np, class_names)
            write_knowledge(out.parent / "label.txt", paths, np.eye(len(class_names), dtype=np.float32)[labels],
                            class_names)
            top1 = 100.0 * float((probs_np.argmax(1) == labels).mean())
            log.info("knowledge of %s on the %s split (%d images, teacher top-1 %.2f%%) written to %s; labels to %s",
                     cfg.resume, cfg.knowledge, len(paths), top1, out, out.parent / "label.txt")
        return out


class KnowledgeTeacher:
    """Offline teacher: the averaged probabilities of the knowledge files, looked up by training-sample index."""

    def __init__(self, probs: np.ndarray, device: torch.device) -> None:
        self.table = torch.from_numpy(probs).to(device)

    def __call__(self, inputs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.table[indices.to(self.table.device)]


class ModelTeacher:
    """Online teacher: a trained network in eval mode, without gradients and outside DDP, run on the student's
    (already augmented) batch."""

    def __init__(self, model: torch.nn.Module, cfg: Config, criterion: str, device: torch.device) -> None:
        self.model, self.cfg, self.criterion, self.device = model.eval(), cfg, criterion, device
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        self.model.eval()  # never switched to train mode with the student
        with autocast(self.cfg, self.device):
            logits = self.model(inputs)
        return scores_to_probs(logits.float(), self.criterion)


def build_teacher(cfg: Config, train_set: ImageClassificationDataset, device: torch.device, *,
                  known_paths: list[str] | None = None):
    """The teacher of a distillation run (KnowledgeTeacher or ModelTeacher), or None without --distill/--teacher.
    ``known_paths`` (every image under the data root; scanned here when not given) tells stale knowledge lines."""
    if cfg.distill and (cfg.teacher or cfg.teacher_ckpt):
        raise ValueError("--distill reads knowledge files and --teacher/--teacher_ckpt runs a live teacher; "
                         "choose one")
    if bool(cfg.teacher) != bool(cfg.teacher_ckpt):
        raise ValueError("online distillation needs both --teacher MODEL and --teacher_ckpt PATH")
    if not (cfg.distill or cfg.teacher):
        return None
    mixes = [flag for flag, value in (("--mixup", cfg.mixup), ("--cutmix", cfg.cutmix), ("--ricap", cfg.ricap))
             if value]
    if cfg.distill and mixes:
        raise ValueError(f"--distill looks up each image's teacher probabilities, but {', '.join(mixes)} mixes "
                         "images within a batch; use a live teacher (--teacher/--teacher_ckpt), which sees the mixed "
                         "images, or drop the mix")
    log = get_logger()
    if cfg.distill:
        files = knowledge_files(cfg.data)
        probs = teacher_probabilities(files, cfg.data, [path for path, _ in train_set.samples], train_set.class_names,
                                      known_paths=known_paths if known_paths is not None else all_image_paths(cfg))
        agree = 100.0 * float((probs.argmax(1) == np.asarray(train_set.targets)).mean())
        log.info("distilling from %d knowledge file(s) (%s): teacher top-1 on the training images %.2f%%, alpha %g, "
                 "T %g", len(files), ", ".join(os.path.basename(f) for f in files), agree, cfg.distill_alpha,
                 cfg.distill_T)
        return KnowledgeTeacher(probs, device)
    model, criterion = load_teacher_model(cfg.teacher, cfg.teacher_ckpt, train_set.class_names, device,
                                          student=preprocessing_of(cfg))
    log.info("online distillation from %s (%s), alpha %g, T %g", cfg.teacher, cfg.teacher_ckpt, cfg.distill_alpha,
             cfg.distill_T)
    return ModelTeacher(model, cfg, criterion, device)


def load_teacher_model(name: str, path: str, class_names: list[str], device: torch.device, *,
                       student: Preprocessing | None = None) -> tuple[torch.nn.Module, str]:
    """The teacher network and its criterion (how its scores become probabilities) from one of our checkpoints or a
    plain state dict of the architecture ``name``. A live teacher sees the student's normalised batch, so one of
    our checkpoints trained with other preprocessing than ``student`` (size, mean, std) is refused."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--teacher_ckpt {path}: no such file")
    try:
        ckpt = load_checkpoint(path)
    except RuntimeError:  # not one of our checkpoints: a plain state dict (read_state_dict explains failures)
        ckpt = None
    if ckpt is not None:
        teacher_cfg = Config.from_dict(ckpt["config"])
        if teacher_cfg.model != name:
            raise ValueError(f"--teacher {name} but {path} holds a {teacher_cfg.model}; pass --teacher "
                             f"{teacher_cfg.model}")
        if list(ckpt["class_names"]) != list(class_names):
            raise ValueError(f"the teacher {path} was trained on classes {ckpt['class_names'][:5]}... "
                             f"({len(ckpt['class_names'])}), the data has {class_names[:5]}... ({len(class_names)})")
        theirs = preprocessing_of(teacher_cfg)
        if student is not None and theirs != student:
            raise ValueError(f"the teacher {path} was trained on {describe(theirs)}, but this run feeds "
                             f"{describe(student)}: a live teacher sees the student's batch. Train the teacher "
                             f"with the same --image_size/--mean/--std, or write its knowledge offline (--knowledge "
                             f"train --resume {path}, then --distill), which predicts with the teacher's own "
                             f"preprocessing")
        teacher_cfg.channels_last = False  # its memory format follows the student's input
        return model_from_checkpoint(ckpt, teacher_cfg, device), teacher_cfg.criterion
    model = build_model(name, num_classes=len(class_names), **model_options(Config()))
    state = read_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"--teacher_ckpt {path} does not fit --teacher {name} with {len(class_names)} classes: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(device).eval(), "softmax"


def describe(preprocessing: Preprocessing) -> str:
    height, width = preprocessing.image_size
    return f"{height}x{width} inputs with mean {list(preprocessing.mean)} and std {list(preprocessing.std)}"


def all_image_paths(cfg: Config) -> list[str]:
    """Every image of every split under the data root (a knowledge file naming anything else is stale)."""
    paths = []
    for split in ("train", "val", "test"):
        found = discover_split(os.path.abspath(cfg.data), split)
        if found:
            paths += [path for path, _ in found[0]]
    return paths
