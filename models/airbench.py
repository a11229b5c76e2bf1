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

The ``_whiten`` variants replace the trained stem by airbench's whitening layer: a 2x2 convolution (no padding;
``_whiten3``: 3x3, padded to keep the input size) whose filters are the principal directions of the training
images' patches, each scaled to unit variance, in both signs, followed by GELU. The filters are set once from
training images before the first step and never train (they are a buffer, and there is no bias). Models that want
such an initialisation say how many images they still need in ``init_images`` and take them, normalised as the
network sees them, in ``init_from_images``.
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


class WhiteningStem(nn.Module):
    """A k x k convolution whose filters whiten k x k patches, then GELU (airbench's first layer: k = 2, no padding).

    ``out_chans / 2`` directions, each as a filter and its negative, so GELU passes both signs. Until ``fit`` the
    directions are the unit patches, which is what ``fit`` gives for white data, so an unfitted stem still passes
    its input on.

    Nothing here trains. airbench trains the bias for the first epochs, but a direction without variance gets a zero
    filter, and the bias of such a constant channel drifts freely: on Fashion-MNIST it reached |b| ~ 3,000 within
    two epochs and the zero padding of the next convolution turned it into a huge border artefact.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 2, padding: int = 0) -> None:
        super().__init__()
        dims = in_chans * kernel * kernel
        assert out_chans % 2 == 0 and out_chans // 2 <= dims, \
            f"a whitening stem has an even number of channels, at most 2 x {dims}, got {out_chans}"
        self.conv = nn.Conv2d(in_chans, out_chans, kernel, padding=padding, bias=False)
        # A buffer, not a parameter: no optimizer, freezer or DDP hook can train it. It keeps its place in the
        # state dict and nn.Conv2d (which FLOP counters and exporters know) reads it as its weight.
        del self.conv.weight
        self.conv.register_buffer("weight", self._unit_filters())
        self.act = nn.GELU()

    def _unit_filters(self) -> torch.Tensor:
        """The filters before ``fit``: the first out_chans / 2 unit patches, in both signs."""
        c, k, n = self.conv.in_channels, self.conv.kernel_size[0], self.conv.out_channels // 2
        units = torch.eye(c * k * k)[:n].view(n, c, k, k)
        return torch.cat([units, -units])

    @property
    def fitted(self) -> bool:
        """Whether the filters came from data (``fit``, or loaded weights of a fitted stem): any image set gives other
        filters than the unit patches, even white noise (scaled by 1 / sqrt(1 + eps))."""
        return not torch.equal(self.conv.weight.cpu(), self._unit_filters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    @torch.no_grad()
    def fit(self, images: torch.Tensor, eps: float = 5e-4, rank_tol: float = 1e-5, chunk: int = 256) -> None:
        """Filters from ``images`` (N, C, H, W, normalised): the leading eigenvectors of the patches' second-moment
        matrix (in float64), each divided by sqrt(eigenvalue + eps) as airbench does. A direction without variance
        (eigenvalue below ``rank_tol`` of the largest, e.g. the channel differences of grey images stored as RGB)
        gets a zero filter instead of one that would amplify rounding errors and noise by 1 / sqrt(eps)."""
        c, k = self.conv.in_channels, self.conv.kernel_size[0]
        moment, count = torch.zeros(c * k * k, c * k * k, dtype=torch.float64), 0
        for start in range(0, len(images), chunk):  # bounded memory at any image size
            patches = images[start:start + chunk].cpu().double().unfold(2, k, 1).unfold(3, k, 1)  # N C H' W' k k
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
            moment += patches.T @ patches
            count += len(patches)
        values, vectors = torch.linalg.eigh(moment / count)  # ascending
        n = self.conv.out_channels // 2
        values, vectors = values.flip(0)[:n], vectors.flip(1)[:, :n]
        scale = torch.where(values > rank_tol * values[0], (values + eps).rsqrt(), torch.zeros_like(values))
        filters = (vectors * scale).T.reshape(n, c, k, k)
        self.conv.weight.copy_(torch.cat([filters, -filters]))


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
                 in_chans: int = 3, whiten: int = 0) -> None:
        super().__init__()
        assert num_classes >= 1, f"num_classes must be >= 1, got {num_classes}"
        assert len(widths) == 3, f"airbench has three groups, got widths {widths}"
        chans = [stem, *widths]
        # whiten: the patch size of a whitening stem (0: a trained 3x3 conv-BN-GELU); 3x3 keeps the input size
        first = (WhiteningStem(in_chans, stem, whiten, padding=(whiten - 1) // 2) if whiten
                 else conv_bn_gelu(in_chans, stem))
        self.features = nn.Sequential(first,
                                      *[ConvGroup(c_in, c_out, convs) for c_in, c_out in zip(chans, chans[1:])])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    @property
    def init_images(self) -> int:
        """How many training images the network still needs: airbench fits its whitening on 5,000; none for a trained
        stem or a whitening stem already fitted (e.g. loaded with --pretrained weights)."""
        stem = self.features[0]
        return 5000 if isinstance(stem, WhiteningStem) and not stem.fitted else 0

    def init_from_images(self, images: torch.Tensor) -> None:
        """Fit the whitening stem to normalised training images (N, C, H, W); nothing to do for a trained stem."""
        if isinstance(self.features[0], WhiteningStem):
            self.features[0].fit(images)

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


@register_model("airbench94_whiten")
def airbench94_whiten(*, num_classes: int, **kwargs) -> AirbenchNet:
    """airbench94 with the whitening stem (2x2 patches, 24 channels) in place of the trained 3x3 one."""
    return AirbenchNet(num_classes, widths=(64, 256, 256), whiten=2, **kwargs)


@register_model("airbench_m_whiten")
def airbench_m_whiten(*, num_classes: int, **kwargs) -> AirbenchNet:
    """airbench_m with the whitening stem (2x2 patches, 24 channels) in place of the trained 3x3 one."""
    return AirbenchNet(num_classes, widths=(64, 128, 256), whiten=2, **kwargs)


@register_model("airbench_m_whiten3")
def airbench_m_whiten3(*, num_classes: int, **kwargs) -> AirbenchNet:
    """airbench_m with a whitening stem of 3x3 patches, padded to keep the input size: 27 directions (10 with variance
    for grey images stored as RGB, against 5 of 12 for 2x2 patches), the leading 12 of them in both signs."""
    return AirbenchNet(num_classes, widths=(64, 128, 256), whiten=3, **kwargs)
