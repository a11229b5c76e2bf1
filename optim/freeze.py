"""Train only the classifier for the first epochs (``--freeze N``), then everything.

Freezing means ``requires_grad = False`` on every parameter outside the head and the backbone's BatchNorm
layers in eval mode, so their running statistics stay those of the (pretrained) backbone too. The optimizer
is built over all parameters before freezing; frozen ones simply have no gradient, so the optimizer's
layout is the same frozen or not and a checkpoint from either phase resumes.

Under DDP the wrapper must be rebuilt when the set of trainable parameters changes: DistributedDataParallel
registers its all-reduce hooks only for parameters that require grad when it is constructed, so parameters
unfrozen later would silently train on each rank's own gradients. ``set_epoch`` says when that happens.
"""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class BackboneFreezer:
    """Freezes everything but the module named ``head`` while ``epoch < epochs``."""

    def __init__(self, model: nn.Module, *, head: str, epochs: int):
        if epochs < 0:
            raise ValueError(f"--freeze must be >= 0 epochs, got {epochs}")
        head_params = {id(p) for p in model.get_submodule(head).parameters()}
        self.epochs = epochs
        self.backbone_params = [p for p in model.parameters() if id(p) not in head_params]
        head_modules = {id(m) for m in model.get_submodule(head).modules()}
        self.backbone_norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and id(m) not in head_modules]
        self.frozen = False

    def set_epoch(self, epoch: int) -> bool:
        """Freeze or unfreeze for ``epoch``; True when the trainable set changed (rebuild the DDP wrapper)."""
        frozen = epoch < self.epochs
        if frozen == self.frozen:
            return False
        for param in self.backbone_params:
            param.requires_grad_(not frozen)
        self.frozen = frozen
        self.hold_norms()
        return True

    def hold_norms(self) -> None:
        """While frozen, put the backbone's BatchNorm layers back in eval mode; call it after ``model.train()``."""
        if self.frozen:
            for norm in self.backbone_norms:
                norm.eval()


class PartialFreezer:
    """Freezes every parameter but the ``trainable`` ones (names) for the whole run: ``--freeze_stages`` (the deep
    stages and the head train) and ``--lora`` (the adapters and the head train).

    BatchNorm layers without a trainable parameter are held in eval mode, so a frozen part keeps its running
    statistics too and its weights and buffers stay bit-identical. The interface is ``BackboneFreezer``'s; the
    trainable set never changes, so ``set_epoch`` never asks for a new DDP wrapper.
    """

    def __init__(self, model: nn.Module, *, trainable: set[str]):
        names = {name for name, _ in model.named_parameters()}
        if unknown := sorted(trainable - names):
            raise ValueError(f"no such parameters to train: {unknown[:3]}")
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)
        self.frozen = True
        self.norms = [m for m in model.modules() if isinstance(m, _BatchNorm)
                      and not any(p.requires_grad for p in m.parameters())]

    def set_epoch(self, epoch: int) -> bool:
        return False

    def hold_norms(self) -> None:
        """Put the frozen BatchNorm layers back in eval mode; call it after ``model.train()``."""
        for norm in self.norms:
            norm.eval()
