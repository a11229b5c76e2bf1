from optim.optimizers import OPTIMIZERS, build_optimizer, param_groups, register_optimizer
from optim.schedules import SCHEDULES, build_scheduler, register_schedule, warmup_step_lambda

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler", "param_groups", "register_optimizer",
           "register_schedule", "warmup_step_lambda"]
