"""Batch-level augmentation on the device: multi-scale resizing and the label-mixing family.

Applied by training to the normalised float batch, after the loader (`BatchAugment`, built by
`build_batch_augment`):

- multi-scale (`--multi_scale`): the batch is resized to a shape chosen per step from a Generator seeded by
  (seed, epoch, step) only, so every DDP rank picks the same shape without communicating;
- progressive resizing (`--progressive_size`): the batch is resized to a shape set by the epoch alone, growing from a
  small side to `--image_size` (FFCV's low-resolution start; fastai's progressive resizing), so early epochs cost
  less and the last ones train at the size the model is evaluated at;
- mixes (`MIXES`: `--mixup`, `--cutmix`, `--ricap`): with probability `--mix_prob` per batch one of the
  requested mixes (picked uniformly) blends images and returns soft targets of shape (N, C) that sum to 1.
  Their randomness comes from a Generator seeded by (seed, epoch, step, rank), so a run repeats and resumes
  exactly; ranks mix differently, as they hold different samples.

A mix builds new targets from the labels; it never reads the losses' label smoothing, which the loss applies to
the (N, C) probabilities it receives.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.registry import Registry

MIX_STREAM = 0x6D6978  # "mix"; these tags keep the streams apart from each other and from the per-item seeds
SCALE_STREAM = 0x736361  # "sca"
DEFAULT_SCALE_RATIOS = (0.75, 0.875, 1.0, 1.125, 1.25)

Mix = Callable[[torch.Tensor, torch.Tensor, float, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]

MIXES = Registry("batch mix")
register_mix = MIXES.register


def _permutation(rng: np.random.Generator, n: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(rng.permutation(n)).to(device)


@register_mix("mixup")
def mixup(images: torch.Tensor, probs: torch.Tensor, alpha: float,
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """mixup (Zhang et al., 2018): lam * x + (1 - lam) * x[perm], lam ~ Beta(alpha, alpha); targets alike.

    Written into `images` (the caller's per-step input buffer) instead of allocating another batch.
    """
    lam = float(rng.beta(alpha, alpha))
    perm = _permutation(rng, images.shape[0], images.device)
    images.lerp_(images[perm], 1.0 - lam)
    return images, probs.lerp(probs[perm], 1.0 - lam)


@register_mix("cutmix")
def cutmix(images: torch.Tensor, probs: torch.Tensor, alpha: float,
           rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019): paste one box of x[perm] into every image; targets weighted by area.

    The box covers a share 1 - lam of the image (lam ~ Beta(alpha, alpha)) around a uniform centre and is
    clipped at the border; the targets use the area actually pasted. Written into `images`.
    """
    h, w = images.shape[-2:]
    lam = float(rng.beta(alpha, alpha))
    cut_h, cut_w = int(h * np.sqrt(1.0 - lam)), int(w * np.sqrt(1.0 - lam))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y1, y2 = np.clip([cy - cut_h // 2, cy + cut_h - cut_h // 2], 0, h)
    x1, x2 = np.clip([cx - cut_w // 2, cx + cut_w - cut_w // 2], 0, w)
    perm = _permutation(rng, images.shape[0], images.device)
    images[:, :, y1:y2, x1:x2] = images[perm, :, y1:y2, x1:x2]
    pasted = float((y2 - y1) * (x2 - x1)) / (h * w)
    return images, probs.lerp(probs[perm], pasted)


@register_mix("ricap")
def ricap(images: torch.Tensor, probs: torch.Tensor, beta: float,
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """RICAP (Takahashi et al., 2018): four crops of four shuffles of the batch tile each image.

    The boundary (h, w) = (H, W) * Beta(beta, beta) splits the image into quadrants; quadrant k is a crop, at a
    random position shared by the batch, of permutation k. Targets weight each source by its quadrant's area.
    The crops are copied out before anything is written back into `images`.
    """
    height, width = images.shape[-2:]
    h = int(round(height * rng.beta(beta, beta)))
    w = int(round(width * rng.beta(beta, beta)))
    quadrants = [(0, 0, h, w), (0, w, h, width - w), (h, 0, height - h, w), (h, w, height - h, width - w)]
    crops, targets = [], torch.zeros_like(probs)
    for top, left, qh, qw in quadrants:
        perm = _permutation(rng, images.shape[0], images.device)
        y, x = int(rng.integers(0, height - qh + 1)), int(rng.integers(0, width - qw + 1))
        crops.append(images[perm, :, y:y + qh, x:x + qw])
        targets += probs[perm] * (qh * qw / (height * width))
    for (top, left, qh, qw), crop in zip(quadrants, crops):
        images[:, :, top:top + qh, left:left + qw] = crop
    return images, targets


def as_probabilities(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) class indices to (N, C) one-hot floats; (N, C) targets pass through as float."""
    if targets.ndim == 2:
        return targets.float()
    return F.one_hot(targets, num_classes).float()


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices for accuracy: the targets themselves, or the argmax of (N, C) soft targets."""
    return targets.argmax(dim=1) if targets.ndim == 2 else targets


# ----------------------------------------------------------------------------------------------------------------
# multi-scale


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, multiple * int(value / multiple + 0.5))


def _size_step(height: int, width: int) -> int:
    """The multiple resized sides are rounded to: 32 px, 8 below a 128 px short side, 4 below 64 px."""
    short = min(height, width)
    return 32 if short >= 128 else 8 if short >= 64 else 4


def _with_long_side(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) scaled so that the long side is ``side``; the other keeps the ratio, at least 1 px."""
    long_side = max(height, width)
    return max(1, round(height * side / long_side)), max(1, round(width * side / long_side))


def multi_scale_shapes(image_size: Sequence[int], sizes: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The (H, W) shapes multi-scale training chooses from.

    Default: `image_size` times 0.75, 0.875, 1, 1.125 and 1.25, each side rounded to a multiple of 32
    (of 8 when the short side is below 128 px, of 4 below 64 px). Given `sizes`, each S is the side of a square
    input; for a non-square `image_size` it is the long side and the other side is scaled by the same ratio.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if sizes:
        if min(sizes) <= 0:
            raise ValueError(f"--multi_scale_sizes must be positive, got {list(sizes)}")
        shapes = [_with_long_side(height, width, s) for s in sizes]
    else:
        multiple = _size_step(height, width)
        shapes = [(_round_to(height * r, multiple), _round_to(width * r, multiple)) for r in DEFAULT_SCALE_RATIOS]
    return list(dict.fromkeys(shapes))  # without repeats, in order


def progressive_shapes(image_size: Sequence[int], start: int, epochs: int,
                       ramp: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The (H, W) training shape of each of ``epochs`` epochs under progressive resizing.

    Epochs 1 to FIRST train at ``start`` (the square side; the long side for a non-square ``image_size``, the other
    side scaled alike), epochs from LAST on at ``image_size``, and the epochs between at sizes growing linearly,
    each side rounded down to a multiple of 4 px (8 from a 64 px short side, 32 from 128, as multi-scale rounds).
    ``ramp`` is (FIRST, LAST), 1-based as the log counts epochs; default (1, epochs - epochs // 4): the last quarter
    of the run at full size.
    """
    height, width = int(image_size[0]), int(image_size[1])
    long_side = max(height, width)
    if not 0 < start < long_side:
        raise ValueError(f"--progressive_size must be between 1 and the --image_size long side ({long_side}) "
                         f"exclusive, got {start}")
    first, last = ramp if ramp is not None else (1, max(1, epochs - epochs // 4))
    if not 1 <= first <= last <= epochs:
        raise ValueError(f"--progressive_epochs {first} {last}: give FIRST <= LAST between 1 and --epochs ({epochs}): "
                         "the epochs where growing from --progressive_size starts and where --image_size is reached")
    multiple = _size_step(height, width)
    first_shape = _with_long_side(height, width, start)
    shapes = []
    for epoch in range(1, epochs + 1):
        if epoch >= last:
            shapes.append((height, width))
            continue
        grown = max(0.0, (epoch - first) / (last - first)) if last > first else 0.0
        scale = (start + grown * (long_side - start)) / long_side
        # rounded down, as FFCV does, so the full size comes at LAST and not before; never below the start
        shapes.append((max(first_shape[0], int(height * scale) // multiple * multiple),
                       max(first_shape[1], int(width * scale) // multiple * multiple)))
    return shapes


def resize_batch(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an NCHW float batch, antialiased when shrinking; the memory format is kept."""
    if tuple(images.shape[-2:]) == tuple(shape):
        return images
    shrinking = shape[0] < images.shape[-2] or shape[1] < images.shape[-1]
    out = F.interpolate(images, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrinking)
    if images.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


# ----------------------------------------------------------------------------------------------------------------
# the per-step batch transform used by training


class BatchAugment:
    """Multi-scale or the epoch's progressive size, then one mix, per training step; the identity when none is
    configured."""

    def __init__(self, *, shapes: list[tuple[int, int]] | None, mixes: dict[str, float], mix_prob: float,
                 num_classes: int, seed: int, rank: int, mix_probs: tuple[float, ...] | None = None,
                 epoch_shapes: list[tuple[int, int]] | None = None) -> None:
        self.shapes = shapes
        self.epoch_shapes = epoch_shapes  # progressive resizing: the shape of each epoch, indexed from 0
        self.mixes: dict[str, tuple[Mix, float]] = {name: (MIXES.get(name), param) for name, param in mixes.items()}
        self.mix_prob, self.num_classes, self.seed, self.rank = mix_prob, num_classes, seed, rank
        self.mix_probs = mix_probs  # one probability per mix (seed 004); None: mix_prob, then one mix uniformly

    @property
    def enabled(self) -> bool:
        return bool(self.shapes) or bool(self.mixes) or bool(self.epoch_shapes)

    def shape_for(self, epoch: int, step: int) -> tuple[int, int]:
        """The input shape of a step: a function of (seed, epoch, step) only, hence equal on every rank."""
        rng = np.random.default_rng([SCALE_STREAM, self.seed, epoch, step])
        return self.shapes[int(rng.integers(len(self.shapes)))]

    def pick(self, epoch: int, step: int) -> tuple[str | None, np.random.Generator]:
        """The mix of a step (None: this batch stays unmixed) and the Generator it goes on drawing from."""
        rng = np.random.default_rng([MIX_STREAM, self.seed, epoch, step, self.rank])
        if self.mix_probs is not None:  # mix i on its own share of [0, 1), none on the rest
            which = int(np.searchsorted(np.cumsum(self.mix_probs), rng.random(), side="right"))
            return (list(self.mixes)[which] if which < len(self.mixes) else None), rng
        apply, which = rng.random() < self.mix_prob, int(rng.integers(len(self.mixes)))
        return (list(self.mixes)[which] if apply else None), rng

    def mix(self, images: torch.Tensor, targets: torch.Tensor, *, epoch: int,
            step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """With probability mix_prob, one of the mixes (uniformly), or each mix with its own probability (mix_probs);
        otherwise the batch as it was."""
        name, rng = self.pick(epoch, step)
        if name is None:
            return images, targets
        fn, param = self.mixes[name]
        return fn(images, as_probabilities(targets, self.num_classes), param, rng)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, *, epoch: int,
                 step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shapes:
            images = resize_batch(images, self.shape_for(epoch, step))
        elif self.epoch_shapes:
            images = resize_batch(images, self.epoch_shapes[min(epoch, len(self.epoch_shapes) - 1)])
        if self.mixes:
            images, targets = self.mix(images, targets, epoch=epoch, step=step)
        return images, targets

    def describe(self) -> str:
        """One line for people: the sizes and the mixes, or that the batch passes through."""
        parts = []
        if self.shapes:
            parts.append("multi-scale " + ", ".join(f"{h}x{w}" for h, w in self.shapes))
        if self.epoch_shapes:
            parts.append("progressive resizing " + describe_epoch_shapes(self.epoch_shapes))
        if self.mixes and self.mix_probs is not None:
            parts.append(" / ".join(f"{name} {param:g} with p {p:g}"
                                    for (name, (_, param)), p in zip(self.mixes.items(), self.mix_probs)))
        elif self.mixes:
            mixes = " / ".join(f"{name} {param:g}" for name, (_, param) in self.mixes.items())
            parts.append(f"{mixes} with p {self.mix_prob:g}")
        return "; ".join(parts) or "no batch augmentation"

    def __repr__(self) -> str:
        mixes = {name: param for name, (_, param) in self.mixes.items()}
        return (f"{type(self).__name__}(shapes={self.shapes}, epoch_shapes={self.epoch_shapes}, mixes={mixes}, "
                f"mix_prob={self.mix_prob}, mix_probs={self.mix_probs})")


def describe_epoch_shapes(shapes: list[tuple[int, int]]) -> str:
    """'20x20 in epochs 1-2, 24x24 in epochs 3-6, 28x28 in epochs 7-12': each shape and the epochs that train at it."""
    runs: list[list] = []  # [shape, first epoch, last epoch], 1-based
    for epoch, shape in enumerate(shapes, start=1):
        if runs and runs[-1][0] == shape:
            runs[-1][2] = epoch
        else:
            runs.append([shape, epoch, epoch])
    return ", ".join(f"{h}x{w} in epochs {first}-{last}" if first != last else f"{h}x{w} in epoch {first}"
                     for (h, w), first, last in runs)


def build_batch_augment(
    *,
    image_size: Sequence[int],
    num_classes: int,
    seed: int,
    rank: int = 0,
    multi_scale: bool = False,
    multi_scale_sizes: Sequence[int] | None = None,
    mixup: float | None = None,
    cutmix: float | None = None,
    ricap: float | None = None,
    mix_prob: float = 1.0,
    mix_probs: Sequence[float] | None = None,
    progressive_size: int | None = None,
    progressive_epochs: Sequence[int] | None = None,
    epochs: int = 1,
) -> BatchAugment:
    """The training step's batch transform. mixup/cutmix take Beta alphas, ricap its beta; None leaves one out.
    ``mix_probs``: one probability per given mix, in the order mixup, cutmix, ricap, instead of ``mix_prob``.
    ``progressive_size``: the side the first of ``epochs`` epochs train at (progressive_shapes, with
    ``progressive_epochs`` as its ramp)."""
    if multi_scale_sizes and not multi_scale:
        raise ValueError("--multi_scale_sizes only takes effect with --multi_scale; add --multi_scale")
    if progressive_epochs is not None and progressive_size is None:
        raise ValueError("--progressive_epochs only takes effect with --progressive_size; add --progressive_size S")
    if progressive_size is not None and multi_scale:
        raise ValueError("--progressive_size sets each epoch's size and --multi_scale each step's: drop one of the two")
    if not 0.0 <= mix_prob <= 1.0:
        raise ValueError(f"--mix_prob must be in [0, 1], got {mix_prob}")
    mixes = {name: param for name, param in (("mixup", mixup), ("cutmix", cutmix), ("ricap", ricap))
             if param is not None}
    bad = {name: param for name, param in mixes.items() if not param > 0}
    if bad:
        raise ValueError(f"Beta parameters must be > 0, got {bad}; drop the flag to switch a mix off")
    if mix_probs is not None and (len(mix_probs) != len(mixes) or not all(0 <= p <= 1 for p in mix_probs)
                                  or sum(mix_probs) > 1 + 1e-9):
        raise ValueError(f"--mix_probs {' '.join(map(str, mix_probs))}: give one probability in [0, 1] per mix set "
                         f"({', '.join(mixes) or 'none'}: in the order --mixup, --cutmix, --ricap), summing to <= 1")
    shapes = multi_scale_shapes(image_size, multi_scale_sizes) if multi_scale else None
    epoch_shapes = (progressive_shapes(image_size, progressive_size, epochs, progressive_epochs)
                    if progressive_size is not None else None)
    return BatchAugment(shapes=shapes, mixes=mixes, mix_prob=mix_prob, num_classes=num_classes, seed=seed,
                        rank=rank, mix_probs=tuple(mix_probs) if mix_probs is not None else None,
                        epoch_shapes=epoch_shapes)
