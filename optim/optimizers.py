"""Optimizer registry: each entry turns plain keyword arguments into a torch optimizer."""
from __future__ import annotations

from typing import Iterable

import torch

from utils.registry import Registry

OPTIMIZERS = Registry("--optimizer")
register_optimizer = OPTIMIZERS.register


@register_optimizer("adam")
def _adam(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@register_optimizer("adamw")
def _adamw(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@register_optimizer("sgd")
def _sgd(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights decay, norms and biases (1-d tensors) do not, as in timm and torchvision refs."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(params: Iterable, name: str, *, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """Build the named optimizer over ``params`` (tensors or param-group dicts)."""
    return OPTIMIZERS.get(name)(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
