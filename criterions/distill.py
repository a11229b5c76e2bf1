"""Knowledge distillation (Hinton et al. 2015): match the student's softened distribution to a teacher's.

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * criterion(logits, labels)

``teacher_T`` is the teacher's distribution at temperature T. The teacher is given as probabilities (a knowledge
file or a live teacher's softmax), and softmax(z / T) is proportional to softmax(z)^(1/T), so tempering the
probabilities equals tempering the teacher's logits. T^2 keeps the soft term's gradients on the scale of the hard
term's as T changes. With T = 1, alpha * KL(teacher || student) differs from alpha * cross-entropy(teacher) only by
the teacher's entropy, a constant: the gradient is that of training on labels mixed ``alpha : 1 - alpha`` from
teacher and ground truth (seed 004 mixes its K-fold knowledge 2:8 with the labels this way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PROB_FLOOR = 1e-12  # knowledge files round to 6 digits; a 0 would make log(0)


def temper(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Rows of ``probs`` at temperature T: p^(1/T), renormalised."""
    logp = probs.float().clamp_min(PROB_FLOOR).log() / temperature
    return torch.softmax(logp, dim=1)


def distillation_term(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(teacher_T || softmax(logits / T)) per sample, averaged with the per-sample ``weight``."""
    if teacher_probs.shape != logits.shape:
        raise ValueError(f"teacher probabilities {tuple(teacher_probs.shape)} do not match the student's logits "
                         f"{tuple(logits.shape)}: the teacher was made for another class count")
    target = temper(teacher_probs, temperature)
    log_student = F.log_softmax(logits.float() / temperature, dim=1)
    kl = (target * (target.clamp_min(PROB_FLOOR).log() - log_student)).sum(dim=1) * temperature ** 2
    if weight is None:
        return kl.mean()
    weight = weight.float()
    return (kl * weight).sum() / weight.sum().clamp_min(PROB_FLOOR)


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_probs: torch.Tensor, criterion,
                      *, alpha: float, temperature: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * criterion(logits, targets, weight)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--distill_alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"--distill_T must be > 0, got {temperature}")
    if alpha == 0.0:  # exactly plain training
        return criterion(logits, targets, weight)
    soft = distillation_term(logits, teacher_probs, temperature, weight)
    if alpha == 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * criterion(logits, targets, weight)
