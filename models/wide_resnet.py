"""Wide ResNets (Zagoruyko & Komodakis, 2016) for small inputs: 28x28 / 32x32 images such as Fashion-MNIST.

WRN-d-k: a 3x3 stem, then three groups of (d - 4) / 6 pre-activation basic blocks with 16k, 32k and 64k
channels at full, 1/2 and 1/4 resolution, BN-ReLU, global average pooling and one Linear. Unlike ImageNet
ResNets there is no 7x7 stride-2 stem or max-pool, so a 28x28 image keeps 7x7 in the last group. The Fashion-MNIST
README's best entry is WRN-28-10 with random erasing (96.3%); the narrower and shallower members trade a little
accuracy for much less compute on a CPU.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice, dropout between the convolutions; a 1x1 projection when the shape changes."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chans)
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.shortcut = (nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False)
                         if stride != 1 or in_chans != out_chans else None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in the original pre-activation ResNet.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen with the classifier as `fc` after `pool` (the layout small_cnn uses too)."""

    def __init__(self, num_classes: int, *, depth: int, widen: int, drop_rate: float = 0.0, in_chans: int = 3) -> None:
        super().__init__()
        assert (depth - 4) % 6 == 0, f"WRN depth must be 6n + 4 (10, 16, 22, 28, 40...), got {depth}"
        assert num_classes >= 1, f"num_classes must be >= 1, got {num_classes}"
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)]
        for group, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
            for i in range(blocks):
                stride = 2 if group > 0 and i == 0 else 1
                layers.append(PreActBlock(c_in if i == 0 else c_out, c_out, stride, drop_rate))
        layers += [nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N, 64k, H/4, W/4): what CAM methods look at."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def _register(depth: int, widen: int, note: str) -> None:
    def build(*, num_classes: int, drop_rate: float = 0.0, **kwargs) -> WideResNet:
        return WideResNet(num_classes, depth=depth, widen=widen, drop_rate=drop_rate, **kwargs)
    build.__doc__ = f"WRN-{depth}-{widen}: {note}"
    register_model(f"wrn{depth}_{widen}")(build)


_register(10, 4, "1 block per group, about 1.2 M parameters; the fast member")
_register(16, 4, "2 blocks per group, about 2.7 M parameters")
_register(22, 1, "3 blocks per group at widths 16-32-64, about 0.27 M parameters: ResNet-20's size, pre-activation")
_register(16, 8, "2 blocks per group, about 11 M parameters")
_register(28, 10, "4 blocks per group, about 36 M parameters: the Fashion-MNIST README's 96.3% model")
