"""SyncBatchNorm that also works on CPU (gloo), where torch.nn.SyncBatchNorm refuses to run.

Batch statistics are computed over the global batch: every rank sums its per-channel count, sum and sum of
squares, one differentiable all-reduce adds them up, and autograd carries the gradient back through the same
all-reduce. On CUDA torch's own SyncBatchNorm (fused kernels) is used instead.
"""
from __future__ import annotations

import torch
from torch import nn

from utils.distributed import all_reduce_sum_differentiable, get_world_size, is_dist


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch summed over all ranks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_dist() and get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], device=x.device, dtype=torch.float32)
        stats = torch.cat([count, xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3))])
        stats = all_reduce_sum_differentiable(stats)
        n, channels = stats[0], self.num_features
        mean = stats[1:1 + channels] / n
        var = (stats[1 + channels:] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            shift = self.bias - mean * scale * self.weight
            scale = scale * self.weight
        else:
            shift = -mean * scale
        return (xf * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers synchronised across ranks: torch's SyncBatchNorm on CUDA, GlobalBatchNorm2d on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_2d(model)


def _convert_2d(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        converted = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats)
        # Share the Parameter and buffer objects, so an optimizer built before the conversion still updates them.
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _convert_2d(child))
    return module
