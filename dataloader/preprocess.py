"""The one place the image preprocessing is defined.

Training, evaluation, the demo and exported models all go through these functions, so a checkpoint's stored
`Preprocessing` reproduces exactly what the network saw: decode to RGB uint8, fit to the input size, then
normalise with mean/std on the device. Two ways to fit (``resize_mode``):

- letterbox (default): scale the long side to the input, keep the aspect ratio, centre, pad with `pad_value`;
- crop (torchvision's reference recipe): scale so that the input covers `crop_pct` of the image's short side,
  keeping the aspect ratio, and take the centre. Training then draws a random resized crop instead
  (`random_resized_crop`, scale and ratio from the run's flags).

This module needs only numpy, OpenCV and torch: the demo imports it without any training code.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("letterbox", "crop")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


@dataclass
class Preprocessing:
    """Everything needed to turn an image file into the network input; stored with checkpoints and exports."""

    image_size: tuple[int, int]  # (H, W) of the network input
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_value: int = 0
    channel_order: str = "RGB"
    resize_mode: str = "letterbox"  # see RESIZE_MODES; files written before it existed mean letterbox
    crop_pct: float = 0.875  # resize_mode crop: the share of the resized image's short side the input keeps

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so instances compare and hash predictably.
        self.image_size = tuple(int(v) for v in self.image_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.pad_value = int(self.pad_value)
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"image_size must be two positive ints (H, W), got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each (std > 0), got mean={self.mean} std={self.std}")
        if self.channel_order != "RGB":
            raise ValueError(f"only channel_order='RGB' is supported, got {self.channel_order!r}")
        self.crop_pct = float(self.crop_pct)
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {list(RESIZE_MODES)}, got {self.resize_mode!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def fit(self, image: np.ndarray) -> np.ndarray:
        """An HxWxC image at the network's input size, as evaluation, the demo and every export see it."""
        if self.resize_mode == "crop":
            return center_crop_resize(image, self.image_size, self.crop_pct)
        return letterbox_resize(image, self.image_size, self.pad_value)

    def to_dict(self) -> dict:
        """Plain-type dict (lists, ints, floats, str) that survives JSON, torch.save and TorchScript extra files."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """Inverse of `to_dict`; unknown keys are an error so a mismatched checkpoint is not silently misread."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


class ImageDecodeError(RuntimeError):
    """An image file that cannot be turned into pixels; names the file and how to find all such files."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None) -> None:
        if reason is None:
            # One-argument form: the full message, as when pickle or a DataLoader worker rebuilds the error.
            self.path, self.reason = None, None
            super().__init__(str(path))
            return
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(
            f"cannot decode image '{self.path}': {reason}. "
            "Run `python dataloader/check_images.py ROOT` on the data root to list (and --move) all bad images."
        )


def truncation_reason(data: bytes | np.ndarray) -> str | None:
    """Return why encoded PNG/JPEG bytes look truncated, or None.

    OpenCV decodes a JPEG cut short into a half-grey image with only a warning on stderr, so the end markers are
    checked explicitly. Other formats are left to the decoder.
    """
    head = bytes(data[:8])
    tail = bytes(data[-64:])
    if head.startswith(_PNG_SIGNATURE) and not tail.endswith(_PNG_IEND):
        return "truncated PNG (file does not end with the IEND chunk)"
    if head.startswith(_JPEG_SOI):
        # Some writers pad the end with zero bytes after the EOI marker; that is harmless.
        if not tail.rstrip(b"\x00").endswith(_JPEG_EOI):
            return "truncated JPEG (no end-of-image marker FFD9 at the end of the file)"
    return None


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale any decoded depth to uint8 (16-bit by 1/257, float assumed in [0, 1])."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.dtype in (np.float16, np.float32, np.float64):
        return np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {image.dtype}")


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's gray / BGR / BGRA uint8 array to HxWx3 RGB; alpha is composited on black."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    channels = image.shape[2]
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        alpha = image[:, :, 3:4].astype(np.uint16)
        # Compositing on black: colour * alpha / 255, rounded. Fully transparent pixels become the pad colour.
        bgr = ((image[:, :, :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unsupported channel count {channels}")


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array.

    Handles grayscale, RGBA (composited on black), 16-bit and palette images. Reads through `np.fromfile`
    because `cv2.imread` cannot open non-ASCII paths on every platform. Raises `ImageDecodeError` for
    zero-byte, truncated or non-image files (FileNotFoundError for a missing one).
    """
    return decode_image_bytes(np.fromfile(os.fspath(path), dtype=np.uint8), path)


def decode_image_bytes(data: bytes | np.ndarray, name: str | os.PathLike) -> np.ndarray:
    """An encoded image (a file's bytes, an upload) as an HxWx3 uint8 RGB array, with decode_image's checks;
    ``name`` is what an `ImageDecodeError` names."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data.size == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    truncated = truncation_reason(data)
    if truncated:
        raise ImageDecodeError(name, truncated)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageDecodeError(name, "OpenCV cannot decode it (not an image, corrupt, or unsupported format)")
    try:
        return _to_rgb(_to_uint8(image))
    except ValueError as e:
        raise ImageDecodeError(name, str(e)) from None


def letterbox_geometry(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int, float]:
    """Where `letterbox_resize` puts a `height` x `width` image inside `size` = (H, W):
    `(top, left, new_h, new_w, scale)`. The GPU decode path (`dataloader.gpu_decode`) uses the same numbers."""
    out_h, out_w = int(size[0]), int(size[1])
    scale = min(out_h / height, out_w / width)
    new_h = min(out_h, max(1, int(round(height * scale))))
    new_w = min(out_w, max(1, int(round(width * scale))))
    return (out_h - new_h) // 2, (out_w - new_w) // 2, new_h, new_w, scale


def letterbox_resize(image: np.ndarray, size: tuple[int, int], pad_value: int = 0) -> np.ndarray:
    """Scale `image` (HxW or HxWxC) to fit inside `size` = (H, W) keeping its aspect ratio, centre, pad.

    The long side (relative to the target) fills the target; e.g. a 100x50 image into 64x64 becomes 64x32
    content at columns 16..47. Shrinking uses INTER_AREA (no aliasing), enlarging INTER_LINEAR.
    """
    out_h, out_w = int(size[0]), int(size[1])
    h, w = image.shape[:2]
    top, left, new_h, new_w, _ = letterbox_geometry(h, w, size)
    resized = _resize(image, new_h, new_w)  # one scale for both sides: shrinking iff the area shrinks
    if (new_h, new_w) == (out_h, out_w):
        return np.ascontiguousarray(resized)
    canvas = np.full((out_h, out_w) + image.shape[2:], pad_value, dtype=image.dtype)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def _resize(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """cv2.resize to (new_h, new_w): INTER_AREA when shrinking (no aliasing), INTER_LINEAR otherwise; keeps a
    single channel axis."""
    h, w = image.shape[:2]
    if (new_h, new_w) == (h, w):
        return image
    interpolation = cv2.INTER_AREA if new_h * new_w < h * w else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return resized[:, :, None] if image.ndim == 3 and resized.ndim == 2 else resized


def center_crop_geometry(height: int, width: int, size: tuple[int, int],
                         crop_pct: float) -> tuple[int, int, int, int]:
    """Where `center_crop_resize` cuts: the image scaled to `(new_h, new_w)` (aspect kept) so that `size` = (H, W)
    is `crop_pct` of it along the tighter side, then cropped at `(top, left)`: `(top, left, new_h, new_w)`."""
    out_h, out_w = int(size[0]), int(size[1])
    scale = max(out_h / (crop_pct * height), out_w / (crop_pct * width))
    new_h = max(out_h, int(round(height * scale)))
    new_w = max(out_w, int(round(width * scale)))
    return (new_h - out_h) // 2, (new_w - out_w) // 2, new_h, new_w


def center_crop_resize(image: np.ndarray, size: tuple[int, int], crop_pct: float = 0.875) -> np.ndarray:
    """Evaluation in `resize_mode` crop: resize keeping the aspect ratio so that the input covers `crop_pct` of the
    short side (torchvision's Resize(size / crop_pct) + CenterCrop(size)), then take the centre `size`."""
    top, left, new_h, new_w = center_crop_geometry(*image.shape[:2], size, crop_pct)
    resized = _resize(image, new_h, new_w)
    return np.ascontiguousarray(resized[top:top + int(size[0]), left:left + int(size[1])])


def random_resized_crop(image: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Training in `resize_mode` crop: torchvision's RandomResizedCrop. A region of `scale` of the image's area with
    an aspect ratio drawn log-uniformly from `ratio` (10 tries, then the centre at the nearest allowed ratio),
    resized to `size` = (H, W)."""
    h, w = image.shape[:2]
    log_ratio = np.log(ratio)
    for _ in range(10):
        area = h * w * rng.uniform(scale[0], scale[1])
        aspect = float(np.exp(rng.uniform(log_ratio[0], log_ratio[1])))
        crop_w, crop_h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < crop_w <= w and 0 < crop_h <= h:
            top, left = int(rng.integers(0, h - crop_h + 1)), int(rng.integers(0, w - crop_w + 1))
            break
    else:
        crop_h, crop_w = h, w
        if w / h < ratio[0]:
            crop_h = min(h, max(1, int(round(w / ratio[0]))))
        elif w / h > ratio[1]:
            crop_w = min(w, max(1, int(round(h * ratio[1]))))
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
    crop = image[top:top + crop_h, left:left + crop_w]
    return np.ascontiguousarray(_resize(crop, int(size[0]), int(size[1])))


def to_chw_uint8(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 array to a contiguous uint8 CHW tensor (normalisation happens later, on the device)."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected an HxWxC uint8 array, got shape {image.shape} dtype {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def normalize_on_device(
    batch_uint8: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 NCHW batch (already on its device) to float32 `(x / 255 - mean) / std`.

    Batches travel host-to-device as uint8 (4x less traffic than float) and are normalised here.
    With `channels_last` the result uses torch.channels_last memory format (same NCHW shape). `out`, a float32
    tensor of the same shape and memory format, is reused instead of allocating: on CPU a fresh batch-sized
    tensor costs thousands of page faults per step.
    """
    if batch_uint8.dtype != torch.uint8 or batch_uint8.ndim != 4:
        raise ValueError(f"expected a uint8 NCHW batch, got shape {tuple(batch_uint8.shape)} {batch_uint8.dtype}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if out is None:
        out = torch.empty(batch_uint8.shape, dtype=torch.float32, device=batch_uint8.device,
                          memory_format=memory_format)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32, device=out.device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32, device=out.device).view(1, -1, 1, 1)
    return out.copy_(batch_uint8).mul_(scale).add_(shift)


def load_image_tensor(path: str | os.PathLike, preprocessing: Preprocessing) -> torch.Tensor:
    """Decode + fit (letterbox or centre crop) one file into the uint8 CHW tensor the network's input expects."""
    return to_chw_uint8(preprocessing.fit(decode_image(path)))
