"""The loss of one training step: the criterion, optionally distilled toward a teacher and weighted per image by a
curriculum. Plain training is ``criterion(logits, targets)``; everything else builds on the per-sample ``weight``
every criterion takes and on the sample indices the loader delivers with each batch."""
from __future__ import annotations

import torch

from applications.curriculum import CurriculumWeights, read_curriculum
from applications.knowledge import all_image_paths, build_teacher
from config import Config
from criterions.distill import distillation_loss
from dataloader.datasets import ImageClassificationDataset
from utils.logger import get_logger


class TrainingLoss:
    """``loss(logits, targets, inputs, indices, epoch)``; see the module docstring."""

    def __init__(self, criterion: torch.nn.Module, *, teacher=None, alpha: float = 0.5, temperature: float = 4.0,
                 curriculum: CurriculumWeights | None = None) -> None:
        self.criterion, self.teacher, self.curriculum = criterion, teacher, curriculum
        self.alpha, self.temperature = alpha, temperature

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, indices: torch.Tensor,
                 epoch: int) -> torch.Tensor:
        weight = self.curriculum(indices, epoch) if self.curriculum is not None else None
        if self.teacher is None:
            return self.criterion(logits, targets, weight)
        return distillation_loss(logits, targets, self.teacher(inputs, indices), self.criterion, alpha=self.alpha,
                                 temperature=self.temperature, weight=weight)


def training_loss_from_config(cfg: Config, criterion: torch.nn.Module, train_set: ImageClassificationDataset,
                              device: torch.device) -> TrainingLoss:
    """The step loss for the flags: --distill / --teacher and --curriculum_learning on top of the criterion."""
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
    return TrainingLoss(criterion, teacher=teacher, alpha=cfg.distill_alpha, temperature=cfg.distill_T,
                        curriculum=curriculum)
