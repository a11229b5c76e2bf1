"""Airbench-style networks (Keller Jordan's CIFAR-10 speed runs, 2024) for small inputs: 28x28 / 32x32 images.

A conv-BN-GELU stem, then three groups; each group is a 3x3 convolution, a 2x2 max-pool, BN and GELU, followed by
one more conv-BN-GELU at the same width (airbench94's layout); with ``convs=3`` a third one and a residual over the
last two (airbench96's). Global max-pooling and one Linear close the network. There are no other shortcuts: each
convolution's first filters start as the identity (Dirac), which is what lets the plain stack train from the first
step.

Why here: the channels are wide (64-256) and the resolution drops right after the first convolution of every group,
so each convolution is a large matrix multiply. A bare training step (batch 128, bf16 + channels_last, 2 threads)
of airbench_m ran at 339 GFLOP/s on an AMD EPYC with AVX512-bf16 and 233-242 on an Intel Xeon with AMX, against
151-178 for WRN-22-1 on the Xeon (16-64 channels, memory-bound pre-activation BN).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_model


def dirac_conv(in_chans: int, out_chans: int) -> nn.Conv2d:
    """3x3 'same' convolution without bias whose first min(in, out) filters start as the identity. A plain
    nn.Conv2d, so FLOP counters and exporters see the layer they know."""
    conv = nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False)
    n = min(in_chans, out_chans)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:n, :n])
    return conv


def conv_bn_gelu(in_chans: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(dirac_conv(in_chans, out_chans), nn.BatchNorm2d(out_chans), nn.GELU())


class ConvGroup(nn.Module):
    """conv, 2x2 max-pool, BN, GELU, then (convs - 1) conv-BN-GELU; a residual over the last two when convs == 3."""

    def __init__(self, in_chans: int, out_chans: int, convs: int) -> None:
        super().__init__()
        assert convs in (2, 3), f"an airbench group has 2 or 3 convolutions, got {convs}"
        self.conv = dirac_conv(in_chans, out_chans)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(out_chans)
        self.rest = nn.Sequential(*[conv_bn_gelu(out_chans, out_chans) for _ in range(convs - 1)])
        self.residual = convs == 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn(self.pool(self.conv(x))))
        out = self.rest(x)
        return x + out if self.residual else out


class AirbenchNet(nn.Module):
    """Stem (`stem` channels) and three groups at `widths`, each halving the resolution; `pool`, `fc`."""

    def __init__(self, num_classes: int, *, widths: tuple[int, int, int], stem: int = 24, convs: int = 2,
                 in_chans: int = 3) -> None:
        super().__init__()
        assert num_classes >= 1, f"num_classes must be >= 1, got {num_classes}"
        assert len(widths) == 3, f"airbench has three groups, got widths {widths}"
        chans = [stem, *widths]
        self.features = nn.Sequential(conv_bn_gelu(in_chans, stem),
                                      *[ConvGroup(c_in, c_out, convs) for c_in, c_out in zip(chans, chans[1:])])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N, widths[-1], H/8, W/8): what CAM methods look at."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


@register_model("airbench94")
def airbench94(*, num_classes: int, **kwargs) -> AirbenchNet:
    """airbench94's widths 64-256-256, two convolutions per group: about 1.97 M parameters, 110 M multiply-adds at
    28x28."""
    return AirbenchNet(num_classes, widths=(64, 256, 256), **kwargs)


@register_model("airbench_m")
def airbench_m(*, num_classes: int, **kwargs) -> AirbenchNet:
    """Widths 64-128-256, two convolutions per group: about 1.16 M parameters, 60 M multiply-adds at 28x28."""
    return AirbenchNet(num_classes, widths=(64, 128, 256), **kwargs)
