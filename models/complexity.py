"""How big a network is: parameters, and compute as thop counts it (the seeds' "FLOPs" columns are thop's counts)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def count_macs(model: nn.Module, image_size: tuple[int, int], channels: int = 3) -> float:
    """thop's multiply-accumulate count of one image (convolutions, linear, normalisation, pooling and activations
    it hooks; not functional additions). Measured on a CPU copy with a zero input: thop adds buffers to the modules
    it hooks, and a random input would draw from the global RNG that training's numerics depend on."""
    from thop import profile

    probe = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        macs, _ = profile(probe, inputs=(torch.zeros(1, channels, *image_size),), verbose=False)
    return float(macs)
