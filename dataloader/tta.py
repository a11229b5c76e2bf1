"""Test-time augmentation: several views of each uint8 batch, whose class probabilities are averaged.

Views are made on the device from the letterboxed uint8 batch, before normalisation, so what a view fills in is
exactly what letterboxing pads with (0):

- ``flip``: the image and its horizontal mirror (2 views);
- ``crop``: five crops of the image padded by ``shift`` pixels, i.e. shifted by (0, 0) and (±shift, ±shift)
  (5 views; ``shift`` defaults to 1/16 of the input side, at least 1 pixel);
- ``scale``: the batch resized to 0.875x, 1x and 1.125x of the input side (3 views; the network must accept
  other sizes, which every model with global pooling does).

Groups multiply: ``flip,crop`` gives 10 views. ``--tta`` alone means ``flip``.
"""
from __future__ import annotations

import difflib
import itertools
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

TTA_GROUPS = ("flip", "crop", "scale")
DEFAULT_SCALES = (0.875, 1.0, 1.125)


def parse_tta(spec: str | None) -> tuple[str, ...]:
    """"flip,crop" → ("flip", "crop"); None or "" → (); unknown names fail with the valid choices."""
    if not spec:
        return ()
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    for name in names:
        if name not in TTA_GROUPS:
            close = difflib.get_close_matches(name, TTA_GROUPS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown --tta view group {name!r}{hint}; choose from {', '.join(TTA_GROUPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--tta lists a view group twice: {spec!r}")
    return names


def shift_image(batch: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content of an NCHW batch by (dy, dx) pixels, filling the uncovered border with 0."""
    if dy == 0 and dx == 0:
        return batch
    h, w = batch.shape[-2:]
    out = torch.zeros_like(batch)
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = batch[..., src_y, src_x]
    return out


def resize_uint8(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of a uint8 NCHW batch, rounded back to uint8."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    resized = F.interpolate(batch.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


class TestTimeAugmentation:
    """The product of the chosen view groups; ``views(batch)`` yields one uint8 batch per view."""

    __test__ = False  # a library class whose name starts with "Test"; not a pytest test case

    def __init__(self, groups: Sequence[str], *, image_size: Sequence[int], shift: int | None = None,
                 scales: Sequence[float] = DEFAULT_SCALES) -> None:
        self.groups = tuple(groups)
        height, width = int(image_size[0]), int(image_size[1])
        self.shift = shift if shift is not None else max(1, round(min(height, width) / 16))
        flips = (False, True) if "flip" in self.groups else (False,)
        s = self.shift
        shifts = ((0, 0), (-s, -s), (-s, s), (s, -s), (s, s)) if "crop" in self.groups else ((0, 0),)
        sizes = ([(max(1, round(height * f)), max(1, round(width * f))) for f in scales]
                 if "scale" in self.groups else [(height, width)])
        self.plan = list(itertools.product(sizes, shifts, flips))

    def __len__(self) -> int:
        return len(self.plan)

    def views(self, batch: torch.Tensor) -> Iterator[torch.Tensor]:
        if batch.dtype != torch.uint8 or batch.ndim != 4:
            raise ValueError(f"TTA expects a uint8 NCHW batch, got shape {tuple(batch.shape)} {batch.dtype}")
        for size, (dy, dx), flip in self.plan:
            view = shift_image(resize_uint8(batch, size), dy, dx)
            yield view.flip(-1) if flip else view

    def describe(self) -> str:
        return f"{'+'.join(self.groups) or 'none'} ({len(self)} views)"


def build_tta(spec: str | None, *, image_size: Sequence[int]) -> TestTimeAugmentation | None:
    """The TTA for ``--tta``, or None when it is off."""
    groups = parse_tta(spec)
    return TestTimeAugmentation(groups, image_size=image_size) if groups else None
