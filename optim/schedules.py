"""Learning-rate schedules as multipliers of each param group's base lr, stepped once per optimizer step.

Every schedule is a ``factor(step) -> float`` built from a ``ScheduleSpec``; ``Scheduler`` sets every group's lr
to ``base_lr * factor(step)``, so discriminative (per-group) learning rates keep their ratios. Stepping per
iteration lets continuous schedules (cosine, sgdr, onecycle) move every batch, while epoch-wise rules (the
seed's warmup-step, multistep) read the epoch as ``step // steps_per_epoch``. All start with a linear warmup
over ``--warmup`` epochs (from 0.1, the seed's warmup factor; onecycle's rise starts at 1/25 instead). A warmup
as long as the run is clipped to ``epochs - 1`` epochs, with a warning, so a one-epoch run trains at the full lr.

``plateau`` is the one schedule that learns from validation: its factor also holds a multiplier that
``Scheduler.end_epoch(val_loss)`` lowers when the loss stops improving, and that multiplier is part of the
scheduler's state, so a resumed run continues it exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from utils.logger import get_logger
from utils.registry import Registry

SCHEDULES = Registry("--lr_schedule")
register_schedule = SCHEDULES.register

WARMUP_START = 0.1  # the seed's warmup factor; linear warmups start here
ONECYCLE_START = 1 / 25  # Smith & Topin's initial lr = max_lr / 25 (torch's OneCycleLR div_factor)
ONECYCLE_END = 1e-4
ONECYCLE_PCT_RISE = 0.3  # torch's OneCycleLR pct_start, used when --warmup is 0
PLATEAU_THRESHOLD = 1e-4  # relative improvement that counts, torch's ReduceLROnPlateau default
STEP_STAGES = 4  # the step rule's factors after warmup: 1, 0.1, 0.01, 0.001

Factor = Callable[[int], float]


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything a schedule may read: the run's length in epochs and steps, and the schedule knobs."""
    epochs: int
    warmup: int
    steps_per_epoch: int
    restart_epochs: int = 10
    restart_mult: float = 2.0
    restart_decay: float = 1.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    plateau_patience: int = 2
    min_factor: float = 0.0  # cosine and sgdr end here (--min_lr / lr)
    stage_factors: tuple[float, ...] = ()  # multistep: the factor of each stage (--lr_steps / lr) instead of gamma

    @property
    def warmup_steps(self) -> int:
        return self.warmup * self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def linear_warmup(step: int, warmup_steps: int, start: float = WARMUP_START) -> float:
    """Linear ramp from ``start`` at step 0 towards 1 at ``warmup_steps``."""
    return start + (1.0 - start) * step / warmup_steps


def _with_warmup(spec: ScheduleSpec, after: Factor) -> Factor:
    """``after`` counts steps from the end of warmup, so every schedule's own shape starts at its step 0."""
    warmup_steps = spec.warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return linear_warmup(step, warmup_steps)
        return after(step - warmup_steps)
    return factor


def _half_cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_step_lambda(epoch: int, *, epochs: int, warmup: int) -> float:
    """The main seed's rule: 0.1 during warmup, then 1, 0.1, 0.01 and 0.001 at 1.5/4, 2.5/4, 3.5/4 of the rest.

    One change for short runs: the full lr lasts at least the first epoch after warmup. With 1 or 2 epochs after
    warmup the seed's first boundary truncates to the warmup's end, so its run never reached the full lr (a one-epoch
    run trained at 0.001x). From 3 epochs after warmup on, every factor is the seed's.
    """
    if epoch < warmup:
        return 0.1
    rest = epochs - warmup
    if epoch < warmup + max(1, int(1.5 * rest / 4.0)):
        return 1.0
    if epoch < warmup + int(2.5 * rest / 4.0):
        return 0.1
    if epoch < warmup + int(3.5 * rest / 4.0):
        return 0.01
    return 0.001


@register_schedule("step")
def _warmup_step(spec: ScheduleSpec) -> Factor:
    """The seed's rule (constant 0.1 during warmup, not a ramp), read per epoch; see warmup_step_lambda."""
    rest = spec.epochs - spec.warmup
    if 0 < rest < STEP_STAGES:
        factors = [warmup_step_lambda(e, epochs=spec.epochs, warmup=spec.warmup) for e in range(spec.epochs)]
        get_logger().warning("--lr_schedule step needs %d epochs after --warmup to pass through its stages "
                             "(1, 0.1, 0.01, 0.001); with --epochs %d --warmup %d the lr factor per epoch is %s",
                             STEP_STAGES, spec.epochs, spec.warmup, factors)
    return lambda step: warmup_step_lambda(step // spec.steps_per_epoch, epochs=spec.epochs, warmup=spec.warmup)


def _cosine_down(progress: float, peak: float, floor: float) -> float:
    """Half-cosine from ``peak`` to ``floor`` (--min_lr's factor) as ``progress`` goes from 0 to 1."""
    return floor + (peak - floor) * _half_cosine(progress)


@register_schedule("cosine")
def _warmup_cosine(spec: ScheduleSpec) -> Factor:
    """Linear warmup from 0.1 to 1, then half-cosine to --min_lr (default 0) at the last step."""
    rest = max(1, spec.total_steps - spec.warmup_steps)
    return _with_warmup(spec, lambda step: _cosine_down(step / rest, 1.0, spec.min_factor))


def sgdr_cycle(step: float, first: float, mult: float) -> tuple[int, float, float]:
    """Which SGDR cycle ``step`` falls in: ``(index, position in the cycle, cycle length)``, all in steps."""
    index, start, length = 0, 0.0, first
    while step >= start + length:
        start, length, index = start + length, length * mult, index + 1
    return index, step - start, length


@register_schedule("sgdr")
def _sgdr(spec: ScheduleSpec) -> Factor:
    """Cosine with warm restarts (Loshchilov & Hutter 2017): cycle i lasts restart_epochs * restart_mult**i
    epochs, runs a half-cosine from restart_decay**i to --min_lr (default 0), and the next cycle restarts at its
    peak."""
    if spec.restart_epochs <= 0 or spec.restart_mult < 1.0:
        raise ValueError(f"sgdr needs --restart_epochs > 0 and --restart_mult >= 1, got {spec.restart_epochs} "
                         f"and {spec.restart_mult}")
    first = spec.restart_epochs * spec.steps_per_epoch

    def after_warmup(step: int) -> float:
        index, position, length = sgdr_cycle(step, first, spec.restart_mult)
        return _cosine_down(position / length, spec.restart_decay ** index, spec.min_factor)
    return _with_warmup(spec, after_warmup)


@register_schedule("onecycle")
def _onecycle(spec: ScheduleSpec) -> Factor:
    """One-cycle (Smith & Topin 2018): linear rise from 1/25 to 1 over the --warmup epochs (30% of the run when
    --warmup is 0), then half-cosine down to 1e-4 at the last step. Momentum is not cycled."""
    rise = spec.warmup_steps or max(1, round(ONECYCLE_PCT_RISE * spec.total_steps))
    fall = max(1, spec.total_steps - rise)

    def factor(step: int) -> float:
        if step < rise:
            return linear_warmup(step, rise, start=ONECYCLE_START)
        return ONECYCLE_END + (1.0 - ONECYCLE_END) * _half_cosine((step - rise) / fall)
    return factor


@register_schedule("multistep")
def _multistep(spec: ScheduleSpec) -> Factor:
    """Linear warmup, then the factor is multiplied by --gamma at the start of each --milestones epoch; with
    --lr_steps (the seeds' non-uniform list, e.g. 5e-4 1e-4 1e-5 1e-6) each stage has its own lr instead."""
    milestones = list(spec.milestones)
    if not milestones:
        raise ValueError("--lr_schedule multistep needs --milestones E1 E2 ... (epochs where lr drops by --gamma)")
    stages = spec.stage_factors
    if stages and len(stages) != len(milestones) + 1:
        raise ValueError(f"--lr_steps gives {len(stages)} learning rates for {len(milestones) + 1} stages "
                         f"(--milestones {' '.join(map(str, milestones))}); give one more lr than milestones")
    if milestones != sorted(set(milestones)) or milestones[0] < spec.warmup or milestones[-1] >= spec.epochs:
        raise ValueError(f"--milestones {milestones} must be increasing epochs in [--warmup {spec.warmup}, "
                         f"--epochs {spec.epochs})")

    def factor(step: int) -> float:
        if step < spec.warmup_steps:  # towards the first stage's lr
            return linear_warmup(step, spec.warmup_steps) * (stages[0] if stages else 1.0)
        stage = sum(step // spec.steps_per_epoch >= m for m in milestones)
        return stages[stage] if stages else spec.gamma ** stage
    return factor


class PlateauFactor:
    """Linear warmup, then a multiplier lowered by ``gamma`` when the validation loss has not improved (by more
    than 1e-4 relative) for more than ``patience`` epochs; torch's ReduceLROnPlateau rule (mode min, no cooldown)
    applied to a factor so it composes with the warmup and with per-group learning rates."""

    def __init__(self, spec: ScheduleSpec):
        if spec.plateau_patience < 0 or not 0.0 < spec.gamma < 1.0:
            raise ValueError(f"plateau needs --plateau_patience >= 0 and 0 < --gamma < 1, got "
                             f"{spec.plateau_patience} and {spec.gamma}")
        self.warmup_steps, self.patience, self.gamma = spec.warmup_steps, spec.plateau_patience, spec.gamma
        self.scale, self.best, self.bad_epochs = 1.0, math.inf, 0

    def __call__(self, step: int) -> float:
        warmup = linear_warmup(step, self.warmup_steps) if step < self.warmup_steps else 1.0
        return warmup * self.scale

    def end_epoch(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True when the multiplier was lowered."""
        if val_loss < self.best * (1.0 - PLATEAU_THRESHOLD):
            self.best, self.bad_epochs = val_loss, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= self.patience:
            return False
        self.scale, self.bad_epochs = self.scale * self.gamma, 0
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = float(state["scale"]), float(state["best"]), int(state["bad_epochs"])


@register_schedule("plateau")
def _plateau(spec: ScheduleSpec) -> PlateauFactor:
    return PlateauFactor(spec)


class Scheduler:
    """The one interface the train loop uses: ``step()`` after every optimizer step, ``end_epoch(val_loss)``
    after validation, and ``state_dict()`` / ``load_state_dict()`` with plain values only.

    Each group's lr is ``base_lr * factor(step)``; ``base_lrs`` are the groups' lrs when the scheduler is built
    and are saved, so a resumed run uses the same ones. ``last_epoch`` counts optimizer steps, named as in torch's
    LRScheduler so checkpoints written with the earlier LambdaLR still load.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Factor):
        self.optimizer = optimizer
        self.factor = factor
        self._set_base_lrs([group["lr"] for group in optimizer.param_groups])
        self.last_epoch = 0
        self._apply()

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def end_epoch(self, val_loss: float) -> None:
        """Tell the schedule the epoch's validation loss (only plateau uses it); the new lr applies at once."""
        end_epoch = getattr(self.factor, "end_epoch", None)
        if end_epoch is not None and end_epoch(val_loss):
            self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        state = {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}
        if hasattr(self.factor, "state_dict"):
            state["factor"] = self.factor.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
        self._set_base_lrs([float(lr) for lr in state["base_lrs"]])
        if hasattr(self.factor, "load_state_dict"):
            self.factor.load_state_dict(state["factor"])
        self._apply()

    def _set_base_lrs(self, lrs: list[float]) -> None:
        # mirrored into each group as "initial_lr", where torch's schedulers (and SWA's constant lr) look for it
        self.base_lrs = lrs
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["initial_lr"] = lr

    def _apply(self) -> None:
        factor = self.factor(self.last_epoch)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor


def clip_warmup(warmup: int, epochs: int) -> int:
    """``warmup`` epochs, clipped to ``epochs - 1`` so that at least the last epoch runs at the full lr; warns when
    it clips, and when the warmup still takes half the run or more."""
    if 0 < epochs <= warmup:
        get_logger().warning("--warmup %d is not shorter than --epochs %d; warming up for %d epochs instead",
                             warmup, epochs, epochs - 1)
        warmup = epochs - 1
    if warmup > 0 and 2 * warmup >= epochs:
        get_logger().warning("--warmup %d is half or more of --epochs %d, so most of the run is below the full lr; use "
                             "fewer warmup epochs or more epochs", warmup, epochs)
    return warmup


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, *, epochs: int, warmup: int, steps_per_epoch: int,
                    restart_epochs: int = 10, restart_mult: float = 2.0, restart_decay: float = 1.0,
                    milestones: tuple[int, ...] | list[int] = (), gamma: float = 0.1,
                    plateau_patience: int = 2, min_lr: float = 0.0,
                    lr_steps: tuple[float, ...] | list[float] = ()) -> Scheduler:
    """The named schedule over ``optimizer``; call ``step()`` after every optimizer step and
    ``end_epoch(val_loss)`` after each validation.

    ``min_lr`` and ``lr_steps`` are learning rates of the group with the largest lr (the head when
    --backbone_lr_scale lowers the backbone's); every other group gets the same fraction of its own lr."""
    make_factor = SCHEDULES.get(name)
    warmup = clip_warmup(warmup, epochs)
    top = max(group["lr"] for group in optimizer.param_groups)
    if not 0.0 <= min_lr < top:
        raise ValueError(f"--min_lr {min_lr:g} must lie in [0, the lr {top:g})")
    if any(lr <= 0 for lr in lr_steps):
        raise ValueError(f"--lr_steps must all be > 0, got {' '.join(map(str, lr_steps))}")
    spec = ScheduleSpec(epochs=epochs, warmup=warmup, steps_per_epoch=max(1, steps_per_epoch),
                        restart_epochs=restart_epochs, restart_mult=restart_mult, restart_decay=restart_decay,
                        milestones=tuple(milestones), gamma=gamma, plateau_patience=plateau_patience,
                        min_factor=min_lr / top, stage_factors=tuple(lr / top for lr in lr_steps))
    return Scheduler(optimizer, make_factor(spec))
