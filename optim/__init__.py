"""Optimizers, parameter groups, learning-rate schedules and backbone freezing, each behind a registry or factory."""
from optim.freeze import BackboneFreezer, PartialFreezer
from optim.optimizers import OPTIMIZERS, build_optimizer, param_groups, register_optimizer, scale_lr_by_batch
from optim.schedules import (SCHEDULES, PlateauFactor, ScheduleSpec, Scheduler, build_scheduler, register_schedule,
                             warmup_step_lambda)

__all__ = ["OPTIMIZERS", "SCHEDULES", "BackboneFreezer", "PartialFreezer", "PlateauFactor", "ScheduleSpec",
           "Scheduler", "build_optimizer", "build_scheduler", "param_groups", "register_optimizer", "register_schedule",
           "scale_lr_by_batch", "warmup_step_lambda"]
