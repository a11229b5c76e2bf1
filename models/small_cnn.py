"""A small VGG-style CNN family for 28x28 / 32x32 images (Fashion-MNIST, CIFAR-sized data).

Three stages of (conv3x3-BN-ReLU) x 2 + max-pool, then global average pooling, dropout and one Linear. This is
the classic Fashion-MNIST recipe that reaches about 92-93% test top-1 within a few epochs; adaptive pooling
lets the same weights run at any input size >= 16 (three 2x poolings leave at least 2x2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import register_model


def conv_bn_relu(in_chans: int, out_chans: int) -> nn.Sequential:
    """3x3 convolution (no bias: BN supplies it), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(inplace=True),
    )


def conv_stage(in_chans: int, out_chans: int, drop_rate: float) -> nn.Sequential:
    """Two conv-BN-ReLU layers then a 2x max-pool; light spatial dropout regularises the small data sets."""
    return nn.Sequential(
        conv_bn_relu(in_chans, out_chans),
        conv_bn_relu(out_chans, out_chans),
        nn.MaxPool2d(2),
        nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity(),
    )


class SmallCNN(nn.Module):
    """Stages of conv-BN-ReLU x2 + max-pool, global average pool, dropout, Linear classifier `fc`."""

    def __init__(
        self,
        num_classes: int,
        *,
        widths: Sequence[int] = (32, 64, 128),
        in_chans: int = 3,
        drop_rate: float = 0.3,
        stage_drop_rate: float = 0.1,
    ) -> None:
        super().__init__()
        assert num_classes >= 1, f"num_classes must be >= 1, got {num_classes}"
        chans = [in_chans, *widths]
        stages = [conv_stage(c_in, c_out, stage_drop_rate) for c_in, c_out in zip(chans, chans[1:])]
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(chans[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init suits the ReLU stack; a zero head bias starts from uniform class probabilities.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N, C, H/8, W/8): what CAM methods look at."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.fc(self.dropout(x))


@register_model("small_cnn")
def small_cnn(*, num_classes: int, **kwargs) -> SmallCNN:
    """Widths 32/64/128, about 0.29 M parameters: the fast default for 28x28 / 32x32 inputs."""
    return SmallCNN(num_classes, widths=(32, 64, 128), **kwargs)


@register_model("small_cnn_wide")
def small_cnn_wide(*, num_classes: int, **kwargs) -> SmallCNN:
    """Widths 64/128/256, about 1.1 M parameters: a little more accuracy for about 4x the compute."""
    return SmallCNN(num_classes, widths=(64, 128, 256), **kwargs)


@register_model("small_cnn_tiny")
def small_cnn_tiny(*, num_classes: int, **kwargs) -> SmallCNN:
    """Widths 4/8/16, about 5 k parameters: a model whose checkpoints weigh a few KB, for test fixtures and smoke
    runs of the pipeline (it learns digits, not much more)."""
    return SmallCNN(num_classes, widths=(4, 8, 16), **kwargs)
