"""AdaBound: Adam whose per-element step size is clipped into bounds that close in on an SGD learning rate.

Luo, Xiong, Liu and Sun, "Adaptive Gradient Methods with Dynamic Bound of Learning Rate", ICLR 2019
(https://openreview.net/forum?id=Bkg3g2R9FX). Written here because neither torch nor timm has it, and the
packages that do (the authors' ``adabound`` 0.0.5 of 2019, ``torch-optimizer`` 0.3.0 of 2021) are no longer
released.

The bounds are the paper's (section 4), with ``gamma`` standing for ``1 - beta2``:

    lower(t) = final_lr * (1 - 1 / (gamma * t + 1))        upper(t) = final_lr * (1 + 1 / (gamma * t))

so early steps behave like Adam and late steps like SGD with ``final_lr``. As in the authors' code,
``final_lr`` follows the schedule: it is scaled by ``lr / base_lr`` of its group, where ``base_lr`` is the
group's lr when the optimizer was built. ``base_lr`` lives in the param group, so it round-trips through
``state_dict`` and a resumed run bounds exactly as the uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch


class AdaBound(torch.optim.Optimizer):
    """AdaBound with L2 weight decay added to the gradient, as in the paper and the authors' code."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 final_lr: float = 0.1, gamma: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0.0):
        if lr <= 0.0 or final_lr <= 0.0:
            raise ValueError(f"AdaBound needs lr > 0 and final_lr > 0, got lr={lr}, final_lr={final_lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdaBound betas must lie in [0, 1), got {betas}")
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"AdaBound gamma (the bounds' convergence speed) must lie in (0, 1), got {gamma}")
        defaults = dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            # the schedule moves group["lr"]; moving the bounds with it keeps their ratio to lr fixed
            final_lr = group["final_lr"] * group["lr"] / group["base_lr"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                lower = final_lr * (1 - 1 / (group["gamma"] * step + 1))
                upper = final_lr * (1 + 1 / (group["gamma"] * step))
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                update = torch.full_like(denom, step_size).div_(denom).clamp_(lower, upper).mul_(exp_avg)
                param.sub_(update)
        return loss
