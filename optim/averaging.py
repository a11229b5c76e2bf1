"""Weight averaging: an exponential moving average (EMA) kept every step and stochastic weight averaging (SWA)
over the last epochs, both built on torch.optim.swa_utils.AveragedModel.

The averaged copies live beside the trained model, are validated with it, and are saved in the checkpoint as
plain state dicts, so a resumed run continues the same averages.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """EMA of parameters and buffers: ``ema = decay * ema + (1 - decay) * weights`` after every optimizer step."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"--ema_decay must be in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def build_swa(model: nn.Module) -> AveragedModel:
    """Equal-weight average of the weights at the end of each SWA epoch; BN statistics are recomputed after."""
    return AveragedModel(model, use_buffers=False)


def swa_start_epoch(epochs: int, swa_epochs: int) -> int:
    """First epoch (0-based) whose end-of-epoch weights enter the SWA average."""
    if not 0 < swa_epochs <= epochs:
        raise ValueError(f"--swa_epochs must be between 1 and --epochs ({epochs}), got {swa_epochs}")
    return epochs - swa_epochs


@torch.no_grad()
def update_bn(model: nn.Module, batches: Iterable[torch.Tensor], after: Callable[[nn.Module], None]) -> None:
    """Recompute BatchNorm running statistics of ``model`` as the plain average over ``batches``.

    ``batches`` yields ready model inputs; ``after`` runs once at the end (e.g. averaging the statistics over
    DDP ranks, each of which saw its own shard).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    was_training = model.training
    model.train()
    for inputs in batches:
        model(inputs)
    for m in norms:
        m.momentum = momenta[m]
    model.train(was_training)
    after(model)
