"""The loss of one training step: the criterion, optionally distilled toward a teacher and weighted per image by a
curriculum. Plain training is ``criterion(logits, targets)``; everything else builds on the per-sample ``weight``
every criterion takes and on the sample indices the loader delivers with each batch.

Teachers: offline (``--distill``: the averaged probabilities of DATA/distill*.txt, written by ``--knowledge``) or
online (``--teacher MODEL --teacher_ckpt PATH``: a live network on the student's batch). Curriculum weights come
from DATA/curriculum.txt (``--make_curriculum``), optionally paced by epoch.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from config import Config
from criterions.distill import distillation_loss
from dataloader.curriculum import read_curriculum
from dataloader.datasets import ImageClassificationDataset, discover_split
from dataloader.knowledge import knowledge_files, teacher_probabilities
from dataloader.preprocess import Preprocessing
from engine.components import model_from_checkpoint, model_options, preprocessing_of
from engine.device import autocast
from models import build_model
from models.pretrained import read_state_dict
from utils.calibration import scores_to_probs
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.logger import get_logger


class TrainingLoss:
    """``loss(logits, targets, inputs, indices, epoch)``; see the module docstring. ``sample_weights`` (one per
    training index, e.g. ``--extra_weight`` for the ``--extra_train`` images) multiply the per-sample weight."""

    def __init__(self, criterion: torch.nn.Module, *, teacher=None, alpha: float = 0.5, temperature: float = 4.0,
                 curriculum: CurriculumWeights | None = None, pseudo: PseudoTargets | None = None,
                 sample_weights: torch.Tensor | None = None) -> None:
        self.criterion, self.teacher, self.curriculum, self.pseudo = criterion, teacher, curriculum, pseudo
        self.alpha, self.temperature = alpha, temperature
        self.sample_weights = sample_weights

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, indices: torch.Tensor,
                 epoch: int) -> torch.Tensor:
        weight = self.curriculum(indices, epoch) if self.curriculum is not None else None
        if self.pseudo is not None:
            targets, weight = self.pseudo(targets, indices)
        if self.sample_weights is not None:
            extra = self.sample_weights[indices.to(self.sample_weights.device)]
            weight = extra if weight is None else weight * extra
        if self.teacher is None:
            return self.criterion(logits, targets, weight)
        return distillation_loss(logits, targets, self.teacher(inputs, indices), self.criterion, alpha=self.alpha,
                                 temperature=self.temperature, weight=weight)


def training_loss_from_config(cfg: Config, criterion: torch.nn.Module, train_set: ImageClassificationDataset,
                              device: torch.device, pseudo: PseudoTargets | None = None, *,
                              sample_weights: np.ndarray | None = None) -> TrainingLoss:
    """The step loss for the flags: --distill / --teacher and --curriculum_learning on top of the criterion;
    ``pseudo``: the targets and weights of pseudo-labelled images appended to ``train_set`` (--pseudo_label);
    per-image ``sample_weights`` (--extra_weight)."""
    if pseudo is not None and (cfg.curriculum_learning or cfg.distill):
        raise ValueError("--pseudo_label adds images that --curriculum_learning / --distill files do not list; "
                         "use a live teacher (--teacher/--teacher_ckpt) or drop the pseudo-labels")
    if pseudo is not None and sample_weights is not None:
        raise ValueError("--pseudo_label and --extra_train both append images to the train split; pseudo-label "
                         "with the extra images already in the data (a train.csv listing both), or drop one")
    if sample_weights is not None and (cfg.curriculum_learning or cfg.distill):
        raise ValueError("--extra_train adds images that DATA/curriculum.txt and the knowledge files do not list; "
                         "drop --curriculum_learning/--distill, or use a live teacher (--teacher/--teacher_ckpt)")
    curriculum = None
    # every image under the data root, to tell stale curriculum / knowledge lines from images of another split
    known_paths = all_image_paths(cfg) if cfg.curriculum_learning or cfg.distill else None
    if cfg.curriculum_learning:
        file = f"{cfg.data}/curriculum.txt"
        stages, weights = read_curriculum(file, cfg.data, [p for p, _ in train_set.samples], known_paths)
        curriculum = CurriculumWeights(stages, weights, cfg.curriculum_pacing, device)
        get_logger().info("curriculum learning from %s: mean weight %.3f over %d images%s", file,
                          float(weights.mean()), len(weights),
                          f", stages entering at epochs {cfg.curriculum_pacing}" if cfg.curriculum_pacing else "")
    elif cfg.curriculum_pacing:
        raise ValueError("--curriculum_pacing paces --curriculum_learning; add --curriculum_learning")
    teacher = build_teacher(cfg, train_set, device, known_paths=known_paths)
    weights = torch.from_numpy(sample_weights).to(device) if sample_weights is not None else None
    return TrainingLoss(criterion, teacher=teacher, alpha=cfg.distill_alpha, temperature=cfg.distill_T,
                        curriculum=curriculum, pseudo=pseudo, sample_weights=weights)


class CurriculumWeights:
    """Per-sample loss weights by training-sample index; with pacing, stages that have not entered yet weigh 0."""

    def __init__(self, stages: np.ndarray, weights: np.ndarray, pacing: list[int] | None,
                 device: torch.device) -> None:
        last_stage = int(stages.max())
        if pacing is not None and len(pacing) < last_stage:
            raise ValueError(f"--curriculum_pacing needs the start epoch of each stage after the first: the "
                             f"curriculum has stages 0..{last_stage}, so {last_stage} values; got {len(pacing)}")
        if pacing is not None and any(b < a for a, b in zip(pacing, pacing[1:])):
            raise ValueError(f"--curriculum_pacing epochs must not decrease, got {pacing}")
        self.stages = torch.from_numpy(stages).to(device)
        self.weights = torch.from_numpy(weights).to(device)
        self.starts = torch.tensor([0, *(pacing or [0] * last_stage)], device=device)

    def __call__(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        indices = indices.to(self.weights.device)
        entered = self.starts[self.stages[indices]] <= epoch
        return self.weights[indices] * entered


class PseudoTargets:
    """Targets and loss weights of a training set whose samples from ``labelled`` on are pseudo-labelled: those
    weigh ``weight`` and, with ``soft_targets`` (one row of class probabilities per pseudo-labelled sample), learn
    the labelling model's probabilities instead of its top class."""

    def __init__(self, labelled: int, weight: float, soft_targets: np.ndarray | None, device: torch.device) -> None:
        if weight < 0:
            raise ValueError(f"--pseudo_weight must be >= 0, got {weight}")
        self.labelled, self.weight = labelled, weight
        self.soft = torch.from_numpy(soft_targets).float().to(device) if soft_targets is not None else None

    def __call__(self, targets: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        indices = indices.to(targets.device)
        pseudo = indices >= self.labelled
        weight = torch.where(pseudo, self.weight, 1.0).float()
        if self.soft is None or not bool(pseudo.any()):
            return targets, weight
        if targets.ndim != 1:
            raise ValueError("soft pseudo-labels replace the class labels of their images; batch mixes "
                             "(--mixup/--cutmix/--ricap) already changed them: use --pseudo_targets hard")
        soft = torch.nn.functional.one_hot(targets.clamp_min(0), self.soft.shape[1]).float()
        soft[pseudo] = self.soft[indices[pseudo] - self.labelled]
        return soft, weight


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
        ckpt = load_checkpoint(path, flag="--teacher_ckpt")
    except CheckpointError:  # not one of our checkpoints: a plain state dict (read_state_dict explains failures)
        ckpt = None
    if ckpt is not None:
        teacher_cfg = Config.from_dict(ckpt.config)
        if teacher_cfg.model != name:
            raise ValueError(f"--teacher {name} but {path} holds a {teacher_cfg.model}; pass --teacher "
                             f"{teacher_cfg.model}")
        if list(ckpt.class_names) != list(class_names):
            raise ValueError(f"the teacher {path} was trained on classes {ckpt.class_names[:5]}... "
                             f"({len(ckpt.class_names)}), the data has {class_names[:5]}... ({len(class_names)})")
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
