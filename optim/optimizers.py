"""Optimizer registry: each entry turns plain keyword arguments into an optimizer.

Where each comes from: torch (sgd, adam, adamw, radam, nadam), timm (lamb, adabelief, novograd, muon, and the
Lookahead wrapper behind ranger and ``lookahead=True``) and this package (adabound, which neither has).
Every optimizer's ``state_dict`` holds tensors and plain types only, so it round-trips through our
``weights_only`` checkpoints; Lookahead keeps its slow weights in the inner optimizer's state.
"""
from __future__ import annotations

import functools
from typing import Iterable

import timm.optim.muon
import torch
from timm.optim import AdaBelief, Lamb, Lookahead, NvNovoGrad
from torch import nn

from optim.adabound import AdaBound
from utils.hardware import choose_matmul_dtype
from utils.registry import Registry

OPTIMIZERS = Registry("--optimizer")
register_optimizer = OPTIMIZERS.register

# Entries that are Lookahead around their inner optimizer by definition, so build_optimizer always wraps them.
_BUILT_IN_LOOKAHEAD = {"ranger"}


@register_optimizer("sgd")
def _sgd(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0)


@register_optimizer("adam")
def _adam(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@register_optimizer("adamw")
def _adamw(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@register_optimizer("radam")
def _radam(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Rectified Adam (Liu et al. 2020): Adam whose early, high-variance steps are damped instead of warmed up."""
    return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay)


@register_optimizer("nadam")
def _nadam(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Adam with Nesterov momentum (Dozat 2016)."""
    return torch.optim.NAdam(params, lr=lr, weight_decay=weight_decay)


@register_optimizer("ranger")
def _ranger(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """RAdam inside Lookahead (Wright 2019); build_optimizer adds the Lookahead with --lookahead_k/--lookahead_alpha."""
    return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay)


@register_optimizer("lamb")
def _lamb(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Layer-wise trust ratio on Adam's update (You et al. 2020), for large batches; timm's NVIDIA-style LAMB."""
    return Lamb(params, lr=lr, weight_decay=weight_decay)


@register_optimizer("adabelief")
def _adabelief(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """AdaBelief (Zhuang et al. 2020) with timm's defaults for the name: decoupled decay, not rectified."""
    return AdaBelief(params, lr=lr, weight_decay=weight_decay, rectify=False)


@register_optimizer("novograd")
def _novograd(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """NovoGrad (Ginsburg et al. 2019): second moment per layer (a gradient norm), timm's NvNovoGrad."""
    return NvNovoGrad(params, lr=lr, weight_decay=weight_decay)


class Muon(timm.optim.Muon):
    """timm's Muon with its Newton-Schulz iteration in the dtype of ``choose_matmul_dtype``: timm 1.0.31 always
    runs it in bf16, which a CPU without native bf16 emulates at over three times fp32's cost. The state and
    update rule are timm's; only the iteration's precision follows the hardware, chosen once from the parameters'
    device."""

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        first = next(p for group in self.param_groups for p in group["params"])  # torch refuses an empty list
        self.newton_schulz_dtype = choose_matmul_dtype(first.device)

    def step(self, closure=None):
        if self.newton_schulz_dtype == torch.bfloat16:  # timm's own default
            return super().step(closure)
        timm_iteration = timm.optim.muon.zeropower_via_newtonschulz
        timm.optim.muon.zeropower_via_newtonschulz = functools.partial(timm_iteration, dtype=self.newton_schulz_dtype)
        try:
            return super().step(closure)
        finally:
            timm.optim.muon.zeropower_via_newtonschulz = timm_iteration


@register_optimizer("muon")
def _muon(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Muon (Jordan et al. 2024), timm's: the Nesterov momentum of each weight matrix, a convolution's flattened to
    (out, in·k·k), is orthogonalised by 5 Newton-Schulz steps, and scaled by 0.2·sqrt(max(out, in)) so its RMS
    matches an AdamW step's; the lr and decoupled weight decay of AdamW carry over. Norms, biases and matrices
    with a side under 4 (a 3-class head) take timm's NAdamW fallback at the same lr.

    torch.optim.Muon takes 2-d parameters only, so a CNN's convolutions would need reshaping around it.
    """
    return Muon(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)


@register_optimizer("adabound")
def _adabound(params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Adam bounded towards SGD at lr 0.1 (Luo et al. 2019); see optim/adabound.py."""
    return AdaBound(params, lr=lr, weight_decay=weight_decay)


def param_groups(model: nn.Module, weight_decay: float, *, head: str | None = None,
                 backbone_lr_scale: float = 1.0) -> list[dict]:
    """Parameter groups: weights decay, norms and biases (1-d tensors) do not, as in timm and torchvision refs.

    With ``backbone_lr_scale != 1`` (discriminative learning rates) the parameters under the module named
    ``head`` keep the full lr and all others get ``lr_scale = backbone_lr_scale``, giving four groups
    ``[head decay, head no-decay, backbone decay, backbone no-decay]``; ``build_optimizer`` turns
    ``lr_scale`` into each group's lr. Group 0 always holds the full lr, which is the one training logs.
    Empty groups are kept so the group layout, and with it resuming, never depends on the model.
    """
    if backbone_lr_scale == 1.0:
        return _decay_split(model.named_parameters(), weight_decay)
    if head is None:
        raise ValueError(f"backbone_lr_scale={backbone_lr_scale} needs the classifier's module name (head=...)")
    in_head = {name for name, _ in model.get_submodule(head).named_parameters(prefix=head)}
    named = list(model.named_parameters())
    head_groups = _decay_split(((n, p) for n, p in named if n in in_head), weight_decay)
    backbone_groups = _decay_split(((n, p) for n, p in named if n not in in_head), weight_decay)
    for group in backbone_groups:
        group["lr_scale"] = backbone_lr_scale
    return head_groups + backbone_groups


def _decay_split(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, param in named_params:
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scale_lr_by_batch(lr: float, *, global_batch: int, reference: int | None) -> float:
    """Linear scaling rule (Goyal et al. 2017): ``lr * global_batch / reference``; unchanged without a reference."""
    if reference is None:
        return lr
    if reference <= 0 or global_batch <= 0:
        raise ValueError(f"--lr_scale_batch needs a positive reference batch and global batch, got "
                         f"reference={reference}, global batch={global_batch}")
    return lr * global_batch / reference


def build_optimizer(params: Iterable, name: str, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    lookahead: bool = False, lookahead_k: int = 6,
                    lookahead_alpha: float = 0.5) -> torch.optim.Optimizer:
    """Build the named optimizer over ``params`` (tensors or param-group dicts).

    A group's ``lr_scale`` (from ``param_groups``) multiplies ``lr`` for that group. ``lookahead`` wraps the
    optimizer in timm's Lookahead (Zhang et al. 2019): every ``lookahead_k`` steps the slow weights move
    ``lookahead_alpha`` of the way to the fast ones and the fast ones restart from there.
    """
    make = OPTIMIZERS.get(name)
    params = [_with_group_lr(group, lr) if isinstance(group, dict) else group for group in params]
    optimizer = make(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    if lookahead or name in _BUILT_IN_LOOKAHEAD:
        optimizer = Lookahead(optimizer, alpha=lookahead_alpha, k=lookahead_k)
    return optimizer


def _with_group_lr(group: dict, lr: float) -> dict:
    scale = group.get("lr_scale", 1.0)
    return {**group, "lr": lr * scale} if scale != 1.0 else group
