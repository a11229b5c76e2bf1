"""ResNet-9 (Myrtle's DAWNBench CIFAR-10 network, David Page, 2018) for small inputs: 28x28 / 32x32 images.

A conv-BN-ReLU stem, then three stages that each double the channels and halve the resolution with a max-pool; the
first and last stage add a residual block of two conv-BN-ReLU layers. Max-pooling early keeps the compute low: at
28x28 the half-width member costs about half the multiply-adds of WRN-10-4 for slightly more parameters, so it trains
about twice as many epochs in the same time on a CPU.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def conv_bn_relu(in_chans: int, out_chans: int, *, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), nn.BatchNorm2d(out_chans),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + f(x) with f two conv-BN-ReLU layers at constant width."""

    def __init__(self, chans: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(chans, chans), conv_bn_relu(chans, chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """Stem (w), stage 1 (2w, pool, residual), stage 2 (4w, pool), stage 3 (8w, pool, residual), pool, `fc`."""

    def __init__(self, num_classes: int, *, width: int = 64, in_chans: int = 3) -> None:
        super().__init__()
        assert num_classes >= 1, f"num_classes must be >= 1, got {num_classes}"
        w = width
        self.features = nn.Sequential(
            conv_bn_relu(in_chans, w),
            conv_bn_relu(w, 2 * w, pool=True), Residual(2 * w),
            conv_bn_relu(2 * w, 4 * w, pool=True),
            conv_bn_relu(4 * w, 8 * w, pool=True), Residual(8 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N, 8w, H/8, W/8): what CAM methods look at."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


@register_model("resnet9")
def resnet9(*, num_classes: int, **kwargs) -> ResNet9:
    """ResNet-9, widths 64-128-256-512: about 6.6 M parameters."""
    return ResNet9(num_classes, width=64, **kwargs)


@register_model("resnet9_half")
def resnet9_half(*, num_classes: int, **kwargs) -> ResNet9:
    """ResNet-9 at half width, 32-64-128-256: about 1.6 M parameters; the fast member."""
    return ResNet9(num_classes, width=32, **kwargs)
