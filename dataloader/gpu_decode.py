"""`--decode device`: loader workers only read the files; the training process decodes each batch on its device.

The JPEGs of a batch are decoded together by `torchvision.io.decode_jpeg(list, device=...)` (batched nvjpeg on
CUDA, libjpeg-turbo on CPU: the same code, which is how the tests run it) and letterboxed with torch ops on the
device, giving the uint8 NCHW batch that `normalize_on_device` expects. The geometry is `letterbox_geometry`, the
loader path's; so are the filters: shrinking averages each output pixel's footprint in the source (OpenCV's
INTER_AREA, as two matrix products), enlarging is bilinear (INTER_LINEAR). Decoded pixels are identical to OpenCV's
on CPU (both libjpeg-turbo); after resizing they differ by at most one uint8 level, rounding (README: Performance).

What the workers hand over instead of images:

- JPEGs that nvjpeg and libjpeg-turbo both decode (8-bit Huffman-coded, grey or colour; `is_device_jpeg`): the
  file's bytes, concatenated per batch into one tensor (one shared-memory transfer, not one per image).
- Every other file (PNG, BMP, TIFF, WebP, CMYK or 12-bit JPEG): decoded and letterboxed in the worker by the loader
  path's own code (`decode_image`, `letterbox_resize`), so its pixels are exactly those of `--decode loader`. This
  runs in parallel in the workers; torchvision's `decode_image` in the training process would decode serially,
  drops alpha where the loader path composites it on black, and reads fewer formats.
- `--aug basic`: a per-sample affine matrix, from the same draws of `default_rng([seed, epoch, index])` as
  `dataloader.augment.random_affine` (flip included), applied on the device with `grid_sample`. The other
  augmentations are per-image OpenCV/torchvision code that cannot run on undecoded bytes; they are refused.

EXIF orientation is ignored, as on the loader path (OpenCV's IMREAD_UNCHANGED). An undecodable file raises
`ImageDecodeError` naming it: from the worker (empty, truncated, not a JPEG) or from the decode step (a JPEG that
decode_jpeg rejects; the batch is then decoded image by image to find it).
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dataloader.augment import AUG_MAX_ROTATION_DEG, AUG_MAX_TRANSLATE, AUG_SCALE_RANGE, item_rng
from dataloader.datasets import DataSplits, ImageClassificationDataset, parse_key
from dataloader.preprocess import (ImageDecodeError, decode_image, letterbox_geometry, letterbox_resize,
                                   to_chw_uint8, truncation_reason)
from utils.logger import get_logger

SUPPORTED_AUG = (None, "basic")
# JPEG frame types both decoders handle: baseline, extended and progressive Huffman (not arithmetic or lossless).
_DEVICE_FRAMES = {0xC0, 0xC1, 0xC2}
_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn; C4, C8 and CC are DHT, JPG and DAC
# Upper bound on the float elements one resize step holds: 12-megapixel photos are resized one at a time.
_RESIZE_CHUNK_ELEMENTS = 2**26


def is_device_jpeg(data: np.ndarray) -> bool:
    """True for the bytes of an 8-bit, Huffman-coded JPEG with 1 (grey) or 3 (colour) components.

    Reads the marker segments up to the frame header. Anything else (other formats, CMYK/YCCK, 12-bit, arithmetic
    coded, or bytes too malformed to parse) is left to the loader path's OpenCV decoder in the worker.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = int(data[pos + 1])
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return False
        if marker in _FRAMES:  # FF Cn, length (2), precision (1), height (2), width (2), components (1)
            return pos + 10 <= n and marker in _DEVICE_FRAMES and data[pos + 4] == 8 and data[pos + 9] in (1, 3)
        pos += 2 + ((int(data[pos + 2]) << 8) | int(data[pos + 3]))
    return False


def read_encoded(path: str) -> np.ndarray:
    """A file's bytes, refusing empty and truncated files with the loader path's checks and messages."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    truncated = truncation_reason(data)
    if truncated:
        raise ImageDecodeError(path, truncated)
    return data


# ----------------------------------------------------------------------------------------------------------------
# --aug basic as a matrix


def basic_affine_matrix(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The 2x3 matrix (source to destination pixels) that `random_affine` (`--aug basic`) warps a letterboxed image
    of `size` = (H, W) with, its horizontal flip folded in.

    Draws the same numbers in the same order from `rng`, so (seed, epoch, index) gives the same augmentation on
    both paths; tests/test_gpu_decode.py checks it against `random_affine` itself.
    """
    h, w = size
    flip = rng.random() < 0.5
    angle = rng.uniform(-AUG_MAX_ROTATION_DEG, AUG_MAX_ROTATION_DEG)
    scale = rng.uniform(*AUG_SCALE_RANGE)
    tx, ty = rng.uniform(-AUG_MAX_TRANSLATE, AUG_MAX_TRANSLATE, size=2) * (w, h)
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    matrix[:, 2] += (tx, ty)
    if flip:  # random_affine flips first (cv2.flip: x -> w - 1 - x), then warps
        matrix = matrix @ np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return matrix


def affine_grid_theta(matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`cv2.warpAffine`'s 2x3 `matrix` (source to destination, pixels) as `F.affine_grid`'s theta (destination to
    source, coordinates normalised to [-1, 1] with align_corners=False) for images of `size` = (H, W)."""
    h, w = size
    to_normalised = np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
    return (to_normalised @ inverse @ np.linalg.inv(to_normalised))[:2]


def warp_affine(batch: torch.Tensor, thetas: torch.Tensor, pad_value: int = 0) -> torch.Tensor:
    """uint8 NCHW warped per sample as `cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT=pad_value)` does."""
    x = batch.float()
    if pad_value:  # grid_sample pads with 0: shift so that 0 is the pad value (exact for the bilinear blend too)
        x -= pad_value
    grid = F.affine_grid(thetas.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if pad_value:
        x += pad_value
    return x.round_().clamp_(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------------
# decoding and letterboxing on the device

_DECODE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg  # lazy: only this path needs torchvision's image ops

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its codecs in favour of TorchCodec, which is not a dependency of this project.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        if device.type != "cuda":
            return [image.to(device) for image in decode_jpeg(data, mode=ImageReadMode.RGB)]
        # On a stream of its own: torchvision's CUDA decoder lets nvjpeg write its outputs without waiting for the
        # work queued on the current stream, so on the training stream it could be handed, and overwrite, a block
        # that queued kernels still read (pytorch/vision PR #9606). This stream's blocks are only ever the
        # decoder's outputs, and record_stream keeps each from being reused before the training stream is done.
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in _DECODE_STREAMS:
            _DECODE_STREAMS[device] = torch.cuda.Stream(device)
        consumer = torch.cuda.current_stream(device)
        with torch.cuda.stream(_DECODE_STREAMS[device]):
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        consumer.wait_stream(_DECODE_STREAMS[device])
        for image in images:
            image.record_stream(consumer)
        return images


def _reason(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1].rsplit(", ", 1)[-1] if lines else type(error).__name__  # drop torchvision's "file.cpp:171, "


def decode_jpegs(data: list[torch.Tensor], paths: list[str], device: torch.device | str) -> list[torch.Tensor]:
    """RGB uint8 CHW images on `device` from JPEG bytes (uint8 1-D CPU tensors): batched nvjpeg on CUDA,
    libjpeg-turbo on CPU. Grey JPEGs come out with three equal channels (ImageReadMode.RGB), as on the loader path.

    One bad file fails the whole batched call, so then each file is decoded on its own: one that nvjpeg rejects is
    decoded on the CPU (with a warning), one that fails there too raises `ImageDecodeError` naming it.
    """
    device = torch.device(device)
    try:
        return _decode_jpegs(data, device)
    except RuntimeError:
        pass
    images = []
    for one, path in zip(data, paths):
        try:
            images.append(_decode_jpegs([one], device)[0])
            continue
        except RuntimeError as error:
            reason = _reason(error)
        if device.type == "cpu":
            raise ImageDecodeError(path, f"torchvision.io.decode_jpeg cannot decode it ({reason})")
        try:
            images.append(_decode_jpegs([one], torch.device("cpu"))[0].to(device))
        except RuntimeError as error:
            raise ImageDecodeError(path, f"torchvision.io.decode_jpeg cannot decode it on {device} ({reason}) "
                                         f"nor on the CPU ({_reason(error)})") from None
        get_logger().warning("nvjpeg cannot decode %s (%s); decoded it on the CPU", path, reason)
    return images


@functools.lru_cache(maxsize=256)
def area_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) float32 weights of OpenCV's INTER_AREA shrink along one axis: output pixel i is the mean of the
    input over [i s, (i + 1) s), s = n_in / n_out, each input pixel weighted by its overlap with that interval."""
    edges = torch.arange(n_out + 1, dtype=torch.float64) * (n_in / n_out)
    starts = torch.arange(n_in, dtype=torch.float64)
    overlap = (torch.minimum(edges[1:, None], starts + 1) - torch.maximum(edges[:-1, None], starts)).clamp_min(0)
    return (overlap / overlap.sum(dim=1, keepdim=True)).to(device=device, dtype=torch.float32)


def resize_uint8(images: torch.Tensor, new_h: int, new_w: int, *, shrink: bool) -> torch.Tensor:
    """uint8 NCHW to (new_h, new_w) as `letterbox_resize` does: area average when shrinking, bilinear otherwise."""
    h, w = images.shape[-2:]
    if (new_h, new_w) == (h, w):
        return images
    x = images.float()
    if shrink:
        x = area_matrix(h, new_h, x.device) @ x @ area_matrix(w, new_w, x.device).T
    else:
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def letterbox_into(batch: torch.Tensor, images: list[torch.Tensor], slots: list[int]) -> None:
    """Letterbox each CHW uint8 image into `batch[slots[k]]` (already filled with the pad value), as
    `letterbox_resize` does; images of the same size are resized together."""
    size = tuple(batch.shape[-2:])
    by_shape: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape[-2:]), []).append(k)
    for (h, w), members in by_shape.items():
        top, left, new_h, new_w, scale = letterbox_geometry(h, w, size)
        step = max(1, _RESIZE_CHUNK_ELEMENTS // (3 * h * w))
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            resized = resize_uint8(torch.stack([images[k] for k in chunk]), new_h, new_w, shrink=scale < 1)
            where = torch.tensor([slots[k] for k in chunk], device=batch.device)
            batch[where, :, top:top + new_h, left:left + new_w] = resized


# ----------------------------------------------------------------------------------------------------------------
# items, batches and the dataset


@dataclass
class EncodedImage:
    """One item from a worker: a JPEG's file bytes (uint8, 1-D) or, when `decoded`, its letterboxed uint8 CHW image."""

    data: torch.Tensor
    decoded: bool
    path: str
    theta: torch.Tensor | None = None  # --aug basic: 2x3 affine_grid matrix


@dataclass
class EncodedBatch:
    """A batch as the loader hands it to the training process; `decode(device)` gives the uint8 NCHW batch."""

    jpeg_bytes: torch.Tensor  # every JPEG's bytes, concatenated
    jpeg_offsets: list[int]  # JPEG k is jpeg_bytes[jpeg_offsets[k]:jpeg_offsets[k + 1]]
    jpeg_slots: list[int]  # its position in the batch
    decoded: torch.Tensor  # (M, 3, H, W) uint8: the other files, decoded and letterboxed in the workers
    decoded_slots: list[int]
    thetas: torch.Tensor | None  # (N, 2, 3) float32 affine_grid matrices of --aug basic
    paths: list[str]
    image_size: tuple[int, int]
    pad_value: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def pin_memory(self, device: str | None = None) -> "EncodedBatch":
        """The DataLoader's pin thread calls this; the JPEG bytes stay pageable (nvjpeg reads them on the host)."""
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return t.pin_memory() if t is not None and t.numel() else t
        return dataclasses.replace(self, decoded=pin(self.decoded), thetas=pin(self.thetas))

    def decode(self, device: torch.device | str) -> torch.Tensor:
        """Decode, letterbox and augment on `device`: the uint8 NCHW batch the loader path would have delivered."""
        device = torch.device(device)
        # Evaluation builds its inputs inside autocast; fp16/bf16 resize products would be off by whole levels.
        with torch.autocast(device_type=device.type, enabled=False):
            return self._decode(device)

    def _decode(self, device: torch.device) -> torch.Tensor:
        batch = torch.full((len(self), 3, *self.image_size), self.pad_value, dtype=torch.uint8, device=device)
        if self.decoded_slots:
            batch[torch.tensor(self.decoded_slots, device=device)] = self.decoded.to(device, non_blocking=True)
        if self.jpeg_slots:
            offsets = self.jpeg_offsets
            data = [self.jpeg_bytes[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            images = decode_jpegs(data, [self.paths[i] for i in self.jpeg_slots], device)
            letterbox_into(batch, images, self.jpeg_slots)
        if self.thetas is not None:
            batch = warp_affine(batch, self.thetas.to(device, non_blocking=True), self.pad_value)
        return batch


class EncodedImageDataset(Dataset):
    """`--decode device` view of an `ImageClassificationDataset`: items `(EncodedImage, label, index)`, batches
    `(EncodedBatch, labels, indices)` through `collate_fn` (which `build_loader` uses). Same keys, samples and
    targets as the wrapped dataset, so its samplers work unchanged."""

    def __init__(self, dataset: ImageClassificationDataset) -> None:
        if dataset.aug not in SUPPORTED_AUG:
            raise ValueError(
                f"--decode device supports only --aug basic (flip + light affine, applied on the device), got "
                f"--aug {dataset.aug}: the other augmentations run per image in the loader workers, on decoded "
                "images. Use --aug basic, or --decode loader (the default) for every --aug")
        if dataset.fitting.resize_mode != "letterbox":
            raise ValueError(f"--decode device letterboxes on the device; --resize_mode "
                             f"{dataset.fitting.resize_mode} needs --decode loader (the default)")
        self.dataset = dataset
        self.samples, self.targets, self.class_names = dataset.samples, dataset.targets, dataset.class_names
        self.image_size, self.pad_value, self.seed, self.aug = (dataset.image_size, dataset.pad_value, dataset.seed,
                                                                dataset.aug)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[EncodedImage, int, int]:
        index, epoch, draw = parse_key(key)
        path, label = self.samples[index]
        data = read_encoded(path)
        if is_device_jpeg(data):
            image = EncodedImage(torch.from_numpy(data), decoded=False, path=path)
        else:  # reads the file again; the page cache makes that cheap next to decoding it
            letterboxed = letterbox_resize(decode_image(path), self.image_size, self.pad_value)
            image = EncodedImage(to_chw_uint8(letterboxed), decoded=True, path=path)
        if self.aug == "basic":
            matrix = basic_affine_matrix(self.image_size, item_rng(self.seed, epoch, index, draw))
            image.theta = torch.from_numpy(affine_grid_theta(matrix, self.image_size)).float()
        return image, label, index

    def collate_fn(self, items: list[tuple[EncodedImage, int, int]]) -> tuple[EncodedBatch, torch.Tensor, torch.Tensor]:
        """Keeps the variable-length JPEG bytes (concatenated, with offsets) next to the worker-decoded images."""
        images, labels, indices = zip(*items)
        jpeg_slots = [i for i, image in enumerate(images) if not image.decoded]
        decoded_slots = [i for i, image in enumerate(images) if image.decoded]
        offsets = np.cumsum([0] + [images[i].data.numel() for i in jpeg_slots]).tolist()
        empty = torch.empty(0, dtype=torch.uint8)
        batch = EncodedBatch(
            jpeg_bytes=torch.cat([images[i].data for i in jpeg_slots]) if jpeg_slots else empty,
            jpeg_offsets=offsets,
            jpeg_slots=jpeg_slots,
            decoded=(torch.stack([images[i].data for i in decoded_slots]) if decoded_slots
                     else torch.empty((0, 3, *self.image_size), dtype=torch.uint8)),
            decoded_slots=decoded_slots,
            thetas=torch.stack([image.theta for image in images]) if images[0].theta is not None else None,
            paths=[image.path for image in images],
            image_size=tuple(self.image_size),
            pad_value=self.pad_value,
        )
        return batch, torch.tensor(labels), torch.tensor(indices)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r})"


def encode_splits(splits: DataSplits, *, cache_images: str | None) -> DataSplits:
    """`splits` with every dataset wrapped for `--decode device`; refuses `--cache_images`.

    The RAM cache holds decoded, letterboxed images: with it nothing would be left to decode on the device, and
    caching the bytes instead would only duplicate the OS page cache.
    """
    if cache_images:
        raise ValueError(f"--cache_images {cache_images} keeps decoded images in memory, so --decode device would "
                         "have nothing to decode: drop one of the two (the cache is the faster choice for a data set "
                         "that fits in RAM)")

    def wrap(dataset: ImageClassificationDataset | None) -> EncodedImageDataset | None:
        return EncodedImageDataset(dataset) if dataset is not None else None

    return dataclasses.replace(splits, train=wrap(splits.train), val=wrap(splits.val), test=wrap(splits.test))
