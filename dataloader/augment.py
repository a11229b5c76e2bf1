"""Per-image augmentations (`--aug NAME[,NAME...]`), run in the loader workers on letterboxed uint8 images.

Every entry of `AUGMENTATIONS` is a builder `(*, pad_value) -> Augmentation`; an `Augmentation` maps an HxWx3 uint8
image and a numpy Generator to an HxWx3 uint8 image of the same shape (the input itself when it leaves the image
alone). It never writes to its input: with the RAM cache, the input is the cache's own array. One whose class sets
`takes_key = True` (`altflipcrop`) is also called with the item's `seed`, `epoch`, `index` and `draw`.
`AugmentationPipeline` chains the named entries in the order given and draws their randomness from one
`np.random.default_rng([seed, epoch, index])` (`altflipcrop`'s first-epoch coin comes from its own
`[seed, index, tag]` generator), so an augmented image is a pure function of (seed, epoch, index): independent of
worker count, rank and resume point. The torchvision
policies draw from torch's global RNG; they run inside `torch.random.fork_rng` with a seed taken from that
Generator, so they are just as deterministic and leave the caller's RNG untouched.

| name           | what it does                                                              |
| -------------- | ------------------------------------------------------------------------- |
| basic          | horizontal flip + light affine (the original `--aug`)                     |
| flipcrop       | horizontal flip + a random shift of up to `--crop_padding` px, no resampling |
| altflipcrop    | `flipcrop` with the flip alternating by epoch: each image shows both sides every two epochs |
| autoaugment    | torchvision v2 AutoAugment, ImageNet policy                               |
| randaugment    | torchvision v2 RandAugment, 2 ops at magnitude 9                          |
| trivialaugment | torchvision v2 TrivialAugmentWide, 1 op at a random magnitude             |
| myaugment      | the hand-made policy of `MyAugment`: flip, affine, colour jitter, blur/noise |
| erasing        | random erasing (cutout with a random size and noise fill), p = 0.5        |
| gridmask       | GridMask: a rotated grid of dropped squares, p = 0.5                      |
| vflip          | vertical flip, p = 0.5                                                    |
| cutout         | Cutout: 1 square of half the short side set to the pad value, always      |

Builders also take ``options`` (``AugmentOptions``: the `--erasing_*`, `--cutout_*`, `--gridmask_*` and `--vflip_p`
flags); the defaults are the values above, so a run without those flags augments exactly as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch

from utils.registry import Registry

Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]

AUGMENTATIONS = Registry("--aug")
register_augmentation = AUGMENTATIONS.register


@dataclass(frozen=True)
class AugmentOptions:
    """The parameters of the parametrised augmentations (seeds 002 and 004); None: the augmentation's default."""

    erasing_p: float = 0.5
    erasing_scale: tuple[float, float] = (0.02, 0.33)
    erasing_ratio: tuple[float, float] = (0.3, 1 / 0.3)
    erasing_value: int | None = None  # None: uniform noise; else this grey level
    cutout_holes: int = 1
    cutout_length: int | None = None  # pixels; None: half the short side
    gridmask_p: float = 0.5
    gridmask_d: tuple[int, int] | None = None  # period range in pixels; None: 10%-50% of the short side
    gridmask_ratio: tuple[float, float] = (0.4, 0.6)
    gridmask_rotate: float = 7.0
    vflip_p: float = 0.5
    crop_padding: int = 4

    def __post_init__(self) -> None:
        checks = {"--erasing_p": 0 <= self.erasing_p <= 1, "--gridmask_p": 0 <= self.gridmask_p <= 1,
                  "--vflip_p": 0 <= self.vflip_p <= 1, "--crop_padding": self.crop_padding >= 0,
                  "--erasing_scale": 0 < self.erasing_scale[0] <= self.erasing_scale[1] < 1,
                  "--erasing_ratio": 0 < self.erasing_ratio[0] <= self.erasing_ratio[1],
                  "--erasing_value": self.erasing_value is None or 0 <= self.erasing_value <= 255,
                  "--cutout_holes": self.cutout_holes >= 1,
                  "--cutout_length": self.cutout_length is None or self.cutout_length >= 1,
                  "--gridmask_d": self.gridmask_d is None or 3 <= self.gridmask_d[0] <= self.gridmask_d[1],
                  "--gridmask_ratio": 0 < self.gridmask_ratio[0] <= self.gridmask_ratio[1] < 1,
                  "--gridmask_rotate": self.gridmask_rotate >= 0}
        bad = [f"{flag} {_shown(getattr(self, flag[2:]))}" for flag, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{', '.join(bad)}: out of range; probabilities in [0, 1], ranges as MIN MAX with "
                             "0 < MIN <= MAX, erasing scale and GridMask ratio below 1, grey levels 0-255")


def _shown(value) -> str:
    return " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)


DEFAULT_OPTIONS = AugmentOptions()

# basic: light geometry, small enough that letterboxed objects stay inside the frame.
AUG_MAX_ROTATION_DEG = 10.0
AUG_SCALE_RANGE = (0.9, 1.1)
AUG_MAX_TRANSLATE = 0.05  # fraction of width / height


def item_rng(seed: int, epoch: int, index: int, draw: int = 0) -> np.random.Generator:
    """The generator of one training item. ``draw`` counts earlier copies of the same index in the epoch (the
    balanced sampler draws with replacement), so repeated copies get different augmentations; 0 keeps the seed
    of (seed, epoch, index) alone."""
    return np.random.default_rng([seed, epoch, index, draw] if draw else [seed, epoch, index])


ALTERNATING_FLIP_STREAM = 0x666C6970  # "flip": the per-image coin of `altflipcrop`, [seed, index, tag], one per image


def _seed_from(rng: np.random.Generator) -> int:
    """A 63-bit seed for a child generator (torch, or numpy noise drawn only when it is used)."""
    return int(rng.integers(0, 2**63 - 1))


def _warp(image: np.ndarray, matrix: np.ndarray, pad_value: int) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(pad_value,) * 3)


def random_affine(image: np.ndarray, rng: np.random.Generator, pad_value: int = 0) -> np.ndarray:
    """Random horizontal flip + light affine (rotation, scale, translation) on a letterboxed HxWx3 uint8 image.

    All random numbers are drawn whether or not they are used, so the stream per (seed, epoch, index) is fixed.
    """
    h, w = image.shape[:2]
    flip = rng.random() < 0.5
    angle = rng.uniform(-AUG_MAX_ROTATION_DEG, AUG_MAX_ROTATION_DEG)
    scale = rng.uniform(*AUG_SCALE_RANGE)
    tx, ty = rng.uniform(-AUG_MAX_TRANSLATE, AUG_MAX_TRANSLATE, size=2) * (w, h)
    if flip:
        image = cv2.flip(image, 1)  # 40x faster than copying a negative-stride view, same pixels
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    matrix[:, 2] += (tx, ty)
    return _warp(image, matrix, pad_value)


class BasicAffine:
    """`basic`: random horizontal flip + affine (±10°, scale 0.9-1.1, ±5% shift)."""

    def __init__(self, pad_value: int = 0) -> None:
        self.pad_value = pad_value

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return random_affine(image, rng, self.pad_value)


class FlipCrop:
    """`flipcrop`: horizontal flip with p 0.5, then pad by `padding` px of the pad value and crop back to the image's
    size at a random offset (torchvision's RandomCrop(size, padding) + RandomHorizontalFlip, the CIFAR reference
    augmentation). A whole-pixel shift: no interpolation blurs fine textures, unlike `basic`'s affine."""

    def __init__(self, pad_value: int = 0, padding: int = 4) -> None:
        self.pad_value, self.padding = pad_value, padding

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flip = rng.random() < 0.5
        return self.flip_shift(image, flip, rng)

    def flip_shift(self, image: np.ndarray, flip: bool, rng: np.random.Generator) -> np.ndarray:
        """`image` mirrored if `flip`, then moved by a shift drawn from `rng`."""
        dy, dx = (int(d) for d in rng.integers(-self.padding, self.padding + 1, size=2))
        if flip:
            image = cv2.flip(image, 1)
        if dy == 0 and dx == 0:
            return image
        h, w = image.shape[:2]
        out = np.full_like(image, self.pad_value)
        out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
            image[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
        return out


class AlternatingFlipCrop(FlipCrop):
    """`altflipcrop`: `flipcrop` whose flip alternates between epochs (Keller Jordan's airbench, 2024). Each image
    gets one fair coin for its first epoch; after that it is mirrored exactly in the epochs where it was not mirrored
    the epoch before, so every two consecutive epochs show both of its sides, where independent coins repeat a side
    half the time. The shift is drawn afresh each epoch as in `flipcrop`. Needs the item's key: the pipeline passes
    it to stages with ``takes_key``."""

    takes_key = True

    def __call__(self, image: np.ndarray, rng: np.random.Generator, *, seed: int, epoch: int, index: int,
                 draw: int = 0) -> np.ndarray:
        first = np.random.default_rng([seed, index, ALTERNATING_FLIP_STREAM]).random() < 0.5
        # a repeated copy in the same epoch (the balanced sampler's draw) shows the other side of the one before
        return self.flip_shift(image, bool((first + epoch + draw) % 2), rng)


class TorchvisionPolicy:
    """A torchvision v2 transform on the CHW uint8 tensor view of the image, seeded from `rng`.

    v2 transforms draw from torch's global generator; `fork_rng` restores it afterwards, and only the CPU
    generator is seeded (torch.manual_seed would also reseed CUDA, outside what fork_rng(devices=[]) restores).
    """

    def __init__(self, transform: torch.nn.Module) -> None:
        self.transform = transform

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seed = _seed_from(rng)
        chw = torch.from_numpy(image).permute(2, 0, 1)  # a view: the policies return new tensors
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            out = self.transform(chw)
        return np.ascontiguousarray(out.permute(1, 2, 0).numpy())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


class MyAugment:
    """`myaugment`: a hand-made policy for photos of objects, applied in this order.

    1. horizontal flip, p 0.5 (no vertical flip: most photos have an up);
    2. affine, always: rotation ±15°, scale 0.85-1.15, shear ±5°, shift ±8% of each side;
    3. colour jitter, p 0.8: brightness, contrast and saturation each times a factor in [0.7, 1.3];
    4. at most one of Gaussian blur (p 0.15, sigma 0.3-1.5 px) and Gaussian noise (p 0.15, std 2-10 levels).

    Every decision and parameter is drawn for every image, so the stream per (seed, epoch, index) is fixed.
    """

    MAX_ROTATION_DEG = 15.0
    SCALE_RANGE = (0.85, 1.15)
    MAX_SHEAR_DEG = 5.0
    MAX_TRANSLATE = 0.08
    JITTER_P, JITTER_RANGE = 0.8, (0.7, 1.3)
    BLUR_P, BLUR_SIGMA = 0.15, (0.3, 1.5)
    NOISE_P, NOISE_STD = 0.15, (2.0, 10.0)

    def __init__(self, pad_value: int = 0) -> None:
        self.pad_value = pad_value

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flip = rng.random() < 0.5
        matrix = self._affine_matrix(image.shape[:2], rng)
        jitter = rng.random() < self.JITTER_P
        factors = rng.uniform(*self.JITTER_RANGE, size=3)
        u, sigma, std = rng.random(), rng.uniform(*self.BLUR_SIGMA), rng.uniform(*self.NOISE_STD)
        noise_seed = _seed_from(rng)
        if flip:
            image = cv2.flip(image, 1)
        image = _warp(image, matrix, self.pad_value)
        if jitter:
            image = colour_jitter(image, *factors)
        if u < self.BLUR_P:
            image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)
        elif u < self.BLUR_P + self.NOISE_P:
            # torch draws normals about 4x faster than numpy; cv2.add rounds and saturates to uint8
            noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(noise_seed)).mul_(std)
            image = cv2.add(image.astype(np.float32), noise.numpy(), dtype=cv2.CV_8U)
        return image

    def _affine_matrix(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Rotation, scale and shear about the centre, then a shift; a 2x3 matrix for cv2.warpAffine."""
        h, w = shape
        angle = math.radians(rng.uniform(-self.MAX_ROTATION_DEG, self.MAX_ROTATION_DEG))
        scale = rng.uniform(*self.SCALE_RANGE)
        shear = math.tan(math.radians(rng.uniform(-self.MAX_SHEAR_DEG, self.MAX_SHEAR_DEG)))
        tx, ty = rng.uniform(-self.MAX_TRANSLATE, self.MAX_TRANSLATE, size=2) * (w, h)
        cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
        linear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
        centre = np.array([(w - 1) / 2, (h - 1) / 2])
        offset = centre - linear @ centre + (tx, ty)
        return np.hstack([linear, offset[:, None]])


def colour_jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Scale brightness, contrast (about the mean grey level) and saturation (about each pixel's grey) of RGB uint8.

    Brightness and contrast fold into one saturating `a * x + b`; OpenCV's uint8 kernels are ~15x faster than the
    same arithmetic in float numpy.
    """
    mean_grey = cv2.mean(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))[0]
    out = cv2.addWeighted(image, brightness * contrast, image, 0.0, brightness * mean_grey * (1.0 - contrast))
    grey = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(out, saturation, grey, 1.0 - saturation, 0.0)


class RandomErasing:
    """`erasing`: with p 0.5, replace one rectangle with uniform uint8 noise (Zhong et al., 2017).

    The rectangle covers 2-33% of the image with an aspect ratio in [0.3, 3.3] (log-uniform), anywhere inside;
    up to 10 tries find one that fits. Cutout (DeVries & Taylor) is the same idea with a fixed square and a
    constant fill; noise keeps the erased area's statistics close to the image's.
    """

    P, AREA, RATIO, TRIES = 0.5, (0.02, 0.33), (0.3, 1 / 0.3), 10

    def __init__(self, options: AugmentOptions = DEFAULT_OPTIONS) -> None:
        self.p, self.area, self.ratio = options.erasing_p, options.erasing_scale, options.erasing_ratio
        self.value = options.erasing_value

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        apply = rng.random() < self.p
        fill_seed = _seed_from(rng)
        if not apply:
            return image
        h, w = image.shape[:2]
        for _ in range(self.TRIES):
            area = rng.uniform(*self.area) * h * w
            ratio = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            eh, ew = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < eh < h and 0 < ew < w:
                top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
                image = image.copy()
                image[top:top + eh, left:left + ew] = (np.random.default_rng(fill_seed).integers(
                    0, 256, (eh, ew, image.shape[2]), dtype=np.uint8) if self.value is None else self.value)
                return image
        return image


class GridMask:
    """`gridmask`: with p 0.5, drop a rotated grid of squares (Chen et al., 2020), filled with the pad value.

    Grid period d in [10%, 50%] of the short side, each square's side a ratio in [0.4, 0.6] of d (16-36% of the
    pixels dropped), a random phase per axis, rotation ±7° (the settings of a 2nd-place competition write-up:
    ratio 0.4-0.6, rotate 7, p 0.5).
    """

    P, PERIOD, RATIO, MAX_ROTATION_DEG = 0.5, (0.1, 0.5), (0.4, 0.6), 7.0

    def __init__(self, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> None:
        self.pad_value, self.p, self.ratio = pad_value, options.gridmask_p, options.gridmask_ratio
        self.max_rotation, self.period_px = options.gridmask_rotate, options.gridmask_d

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        apply = rng.random() < self.p
        h, w = image.shape[:2]
        if self.period_px is None:
            period = max(3, int(round(rng.uniform(*self.PERIOD) * min(h, w))))
        else:  # seed 004's d1, d2 in pixels (the period drawn in [d1, d2])
            period = int(rng.integers(self.period_px[0], self.period_px[1] + 1))
        side = max(1, int(round(rng.uniform(*self.ratio) * period)))
        phase = rng.integers(0, period, size=2)
        angle = rng.uniform(-self.max_rotation, self.max_rotation)
        if not apply:
            return image
        mask = self.grid_mask((h, w), period, side, phase, angle)
        image = image.copy()
        image[mask] = self.pad_value
        return image

    @staticmethod
    def grid_mask(shape: tuple[int, int], period: int, side: int, phase: np.ndarray, angle: float) -> np.ndarray:
        """Boolean HxW mask, True where dropped: the grid is drawn on a square covering every rotation."""
        h, w = shape
        big = int(math.ceil(math.hypot(h, w))) + 1
        coords = np.arange(big)
        rows = (coords + phase[0]) % period < side
        cols = (coords + phase[1]) % period < side
        grid = (rows[:, None] & cols[None, :]).astype(np.uint8)
        matrix = cv2.getRotationMatrix2D(((big - 1) / 2, (big - 1) / 2), angle, 1.0)
        grid = cv2.warpAffine(grid, matrix, (big, big), flags=cv2.INTER_NEAREST)
        top, left = (big - h) // 2, (big - w) // 2
        return grid[top:top + h, left:left + w].astype(bool)


class VerticalFlip:
    """`vflip`: flip upside down with probability p (for images without an up: cells, satellite, textures)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.ascontiguousarray(image[::-1]) if rng.random() < self.p else image


class Cutout:
    """`cutout` (DeVries & Taylor, 2017; seed 002): `holes` squares of side `length` (default half the short side),
    centred anywhere (clipped at the border), set to the pad value, on every image."""

    def __init__(self, pad_value: int = 0, holes: int = 1, length: int | None = None) -> None:
        self.pad_value, self.holes, self.length = pad_value, holes, length

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        length = self.length or max(1, min(h, w) // 2)
        image = image.copy()
        for _ in range(self.holes):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            top, left = max(0, y - length // 2), max(0, x - length // 2)
            image[top:min(h, y + (length + 1) // 2), left:min(w, x + (length + 1) // 2)] = self.pad_value
        return image


@register_augmentation("basic")
def build_basic(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    return BasicAffine(pad_value)


@register_augmentation("flipcrop")
def build_flipcrop(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    return FlipCrop(pad_value, options.crop_padding)


@register_augmentation("altflipcrop")
def build_altflipcrop(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    return AlternatingFlipCrop(pad_value, options.crop_padding)


@register_augmentation("autoaugment")
def build_autoaugment(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    from torchvision.transforms import v2  # lazy: keeps `import dataloader` light for the demo path
    return TorchvisionPolicy(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET,
                                            interpolation=v2.InterpolationMode.BILINEAR, fill=pad_value))


@register_augmentation("randaugment")
def build_randaugment(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    from torchvision.transforms import v2
    return TorchvisionPolicy(v2.RandAugment(num_ops=2, magnitude=9, interpolation=v2.InterpolationMode.BILINEAR,
                                            fill=pad_value))


@register_augmentation("trivialaugment")
def build_trivialaugment(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    from torchvision.transforms import v2
    return TorchvisionPolicy(v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR, fill=pad_value))


@register_augmentation("myaugment")
def build_myaugment(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    return MyAugment(pad_value)


@register_augmentation("erasing")
def build_erasing(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    return RandomErasing(options)


@register_augmentation("gridmask")
def build_gridmask(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    return GridMask(pad_value, options)


@register_augmentation("vflip")
def build_vflip(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    return VerticalFlip(options.vflip_p)


@register_augmentation("cutout")
def build_cutout(*, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> Augmentation:
    return Cutout(pad_value, options.cutout_holes, options.cutout_length)


def parse_aug(spec: str | bool | None) -> str | None:
    """Normalise an `--aug` value: None/False/"" -> None, True -> "basic", "a, b" -> "a,b" (names checked).

    True is what configs written before `--aug` took names hold.
    """
    if spec is None or spec is False or (isinstance(spec, str) and not spec.strip()):
        return None
    if spec is True:
        return "basic"
    names = [name.strip() for name in spec.split(",")]
    for name in names:
        AUGMENTATIONS.get(name)  # an unknown name fails here, with the choices and the closest match
    return ",".join(names)


class AugmentationPipeline:
    """The `--aug` entries, applied in the order given, all drawing from one Generator per (seed, epoch, index)."""

    def __init__(self, spec: str | bool, *, pad_value: int = 0, options: AugmentOptions = DEFAULT_OPTIONS) -> None:
        self.spec = parse_aug(spec)
        if self.spec is None:
            raise ValueError("an augmentation pipeline needs at least one --aug name")
        self.stages = [AUGMENTATIONS.get(name)(pad_value=pad_value, options=options) for name in self.spec.split(",")]

    def __call__(self, image: np.ndarray, *, seed: int, epoch: int, index: int, draw: int = 0) -> np.ndarray:
        rng = item_rng(seed, epoch, index, draw)
        for stage in self.stages:
            if getattr(stage, "takes_key", False):
                image = stage(image, rng, seed=seed, epoch=epoch, index=index, draw=draw)
            else:
                image = stage(image, rng)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def build_augmentation(spec: str | bool | None, *, pad_value: int = 0,
                       options: AugmentOptions = DEFAULT_OPTIONS) -> AugmentationPipeline | None:
    """The pipeline for an `--aug` value, or None when it names nothing."""
    return AugmentationPipeline(spec, pad_value=pad_value, options=options) if parse_aug(spec) else None
