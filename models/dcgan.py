"""A class-conditional DCGAN (seed 003's generative model, with labels): a generator that draws an image of a given
class from noise, and a discriminator that scores (image, class) pairs.

    G = ConditionalGenerator(num_classes=10, latent=100, channels=1, image_size=28)
    D = ConditionalDiscriminator(num_classes=10, channels=1, image_size=28)
    fake = G(torch.randn(8, 100), labels)          # (8, 1, 28, 28) in [-1, 1]
    score = D(fake, labels)                         # (8,) logits: real and of this class

The label enters the generator as a learned embedding concatenated to the noise, and the discriminator as one-hot
planes next to the image, so a generated image carries the label it was drawn for. A minibatch-stddev channel in the
discriminator exposes a batch of near-identical images; on its own it did not keep the generator from drawing one
image per class on 1,000 Fashion-MNIST images (engine/gan.py's mode-seeking term does).
Image sides are S * 2^k with a start side S in 3..8 and k >= 1 (28 = 7 * 4, 32 = 4 * 8, 64, 96, 256 ...).
These are not classifiers: they are not in the model registry.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def start_size(image_size: int) -> tuple[int, int]:
    """(start side, number of 2x up/down-samplings) for a square image side: 28 -> (7, 2), 32 -> (4, 3)."""
    side, steps = image_size, 0
    while side % 2 == 0 and side // 2 >= 3:
        side, steps = side // 2, steps + 1
    if steps == 0 or side > 8:
        raise ValueError(f"GAN image size {image_size} is not S x 2^k with S in 3..8 and k >= 1; use e.g. 16, 24, "
                         "28, 32, 48, 64, 96 or 128")
    return side, steps


class ConditionalGenerator(nn.Module):
    """Noise and a class label to an image in [-1, 1]: (z ++ embed(y)) -> linear -> start x start map -> k
    transposed convolutions, each doubling the side and halving the width (BatchNorm + ReLU), tanh at the end."""

    def __init__(self, *, num_classes: int, latent: int, channels: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        start, steps = start_size(image_size)
        self.latent, self.start = latent, start
        self.top = width * 2 ** (steps - 1)
        self.embed = nn.Embedding(num_classes, latent)
        self.project = nn.Sequential(nn.Linear(2 * latent, self.top * start * start, bias=False),
                                     nn.BatchNorm1d(self.top * start * start), nn.ReLU(inplace=True))
        layers, width_now = [], self.top
        for _ in range(steps - 1):
            layers += [nn.ConvTranspose2d(width_now, width_now // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width_now // 2), nn.ReLU(inplace=True)]
            width_now //= 2
        layers += [nn.ConvTranspose2d(width_now, channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, (nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)  # DCGAN's initialisation

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(labels)], dim=1))
        return self.body(h.view(-1, self.top, self.start, self.start))


def minibatch_stddev(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """``h`` (N, C, H, W) with one more channel: the mean standard deviation of the features over each group of
    ``group`` consecutive samples (ProGAN's minibatch-stddev). It lets the discriminator see a group whose images are
    all alike, which is how a conditional generator collapses to one image per class. Groups are consecutive, so a
    batch of real images followed by as many generated ones keeps them apart when the halves divide by the group."""
    n = h.shape[0]
    group = math.gcd(group, n // 2) if n % 2 == 0 and n > 2 else math.gcd(group, n)
    spread = h.view(n // group, group, *h.shape[1:]).std(dim=1, unbiased=False).mean(dim=(1, 2, 3))
    return torch.cat([h, spread.repeat_interleave(group).view(n, 1, 1, 1).expand(n, 1, *h.shape[2:])], dim=1)


class ConditionalDiscriminator(nn.Module):
    """(image, label) to a logit: the image with one one-hot plane per class appended (so the class enters before
    the first convolution), k strided convolutions with LeakyReLU, a minibatch-stddev channel, one linear layer."""

    def __init__(self, *, num_classes: int, channels: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        start, steps = start_size(image_size)
        self.num_classes = num_classes
        layers, width_now, width_in = [], width, channels + num_classes
        for _ in range(steps):
            layers += [nn.Conv2d(width_in, width_now, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            width_in, width_now = width_now, width_now * 2
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear((width_in + 1) * start * start, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)  # DCGAN's initialisation

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        planes = F.one_hot(labels, self.num_classes).to(images.dtype)[:, :, None, None]
        planes = planes.expand(-1, -1, *images.shape[2:])
        h = minibatch_stddev(self.features(torch.cat([images, planes], dim=1)))
        return self.linear(h.flatten(1)).squeeze(1)
