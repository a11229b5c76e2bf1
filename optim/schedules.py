"""Learning-rate schedules as multipliers of the base lr, stepped once per iteration.

Every schedule is a function ``factor(step) -> float`` wrapped in ``LambdaLR``; stepping per iteration lets
continuous schedules (cosine) move every batch while epoch-wise rules (the seed's warmup-step) read the
epoch as ``step // steps_per_epoch``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from utils.registry import Registry

SCHEDULES = Registry("--lr_schedule")
register_schedule = SCHEDULES.register


def warmup_step_lambda(epoch: int, *, epochs: int, warmup: int) -> float:
    """The main seed's rule: 0.1 during warmup, then 1, 0.1, 0.01 and 0.001 at 1.5/4, 2.5/4, 3.5/4 of the rest."""
    if epoch < warmup:
        return 0.1
    rest = epochs - warmup
    if epoch < warmup + int(1.5 * rest / 4.0):
        return 1.0
    if epoch < warmup + int(2.5 * rest / 4.0):
        return 0.1
    if epoch < warmup + int(3.5 * rest / 4.0):
        return 0.01
    return 0.001


@register_schedule("step")
def _warmup_step(*, epochs: int, warmup: int, steps_per_epoch: int) -> Callable[[int], float]:
    return lambda step: warmup_step_lambda(step // steps_per_epoch, epochs=epochs, warmup=warmup)


@register_schedule("cosine")
def _warmup_cosine(*, epochs: int, warmup: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warmup from 0.1 to 1 over ``warmup`` epochs, then half-cosine to 0 at the last step."""
    warmup_steps = warmup * steps_per_epoch
    total = max(1, epochs * steps_per_epoch - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / total)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, *, epochs: int, warmup: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR for the named schedule; call ``scheduler.step()`` after every optimizer step."""
    make_factor = SCHEDULES.get(name)
    if warmup >= epochs and epochs > 0:
        raise ValueError(f"--warmup ({warmup}) must be smaller than --epochs ({epochs})")
    factor = make_factor(epochs=epochs, warmup=warmup, steps_per_epoch=max(1, steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
