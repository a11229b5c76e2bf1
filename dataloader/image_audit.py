"""What a dataset audit knows about each image file without a model: its split and label, hashes of its bytes and of
its decoded pixels, a perceptual hash, its size and mode, and whether the loader can read it; and the duplicates
these facts reveal, within a split and across splits (leakage).

Exact duplicates share the hash of their decoded pixels (a copy re-encoded losslessly, e.g. PNG at another
compression level or as BMP, counts); a byte-identical copy shares the file hash too. Near duplicates are pairs whose
64-bit perceptual hashes (DCT pHash of the grey image) differ in at most ``phash_threshold`` bits and whose small grey
thumbnails, each minus its mean brightness, differ by at most ``pixel_tolerance`` grey levels on average. The second
test is needed on small images: on Fashion-MNIST (28x28) 102 pairs of 20,000 train images share the same pHash, and
90% of them differ by more than 8 grey levels per pixel, i.e. are different garments of a similar shape.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from dataloader.check_images import check_image
from dataloader.datasets import SPLITS, discover_split

THUMB = 16  # side of the grey thumbnail that confirms a near duplicate
BLOCK_ELEMENTS = 1 << 23  # hash pairs compared per numpy step (64 MiB of uint64), whatever the data set's size


@dataclass
class ImageFacts:
    """One image file of a split. ``reason`` is why the loader cannot read it (then no hashes, size or mode)."""

    split: str
    path: str  # absolute, as the data layout names it
    label: str
    file_hash: str = ""
    pixel_hash: str = ""
    phash: int = 0
    width: int = 0
    height: int = 0
    mode: str = ""
    reason: str | None = None
    thumb: np.ndarray | None = None  # THUMB x THUMB grey uint8, for the near-duplicate check


def inventory(data_root: str) -> list[tuple[str, str, str]]:
    """``(split, absolute path, label)`` of every image of every split present (folders or CSV lists), in split
    order and each split in the loader's order, so that a train position here is a train position in training."""
    root = os.path.abspath(data_root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data {data_root}: no such folder")
    rows = []
    for split in SPLITS:
        found = discover_split(root, split)
        if found is not None:
            rows += [(split, path, label) for path, label in found[0]]
    return rows


def perceptual_hash(grey: np.ndarray) -> int:
    """64-bit DCT pHash (Zauner 2010): the signs of the 8x8 lowest frequencies of the 32x32 image against their
    median. Written here with OpenCV instead of taken from `imagehash`, which decodes and resizes with PIL and
    would bring PIL and PyWavelets along: the loader decodes with OpenCV, and these are ten lines."""
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term (overall brightness) is left out of the median
    return int(np.packbits(bits).view(">u8")[0])


def image_mode(raw: np.ndarray) -> str:
    """grey, RGB or RGBA as stored in the file, with the bit depth when it is not 8."""
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    name = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
    return name if raw.dtype == np.uint8 else f"{name} {raw.dtype.itemsize * 8}-bit"


def grey_uint8(raw: np.ndarray) -> np.ndarray:
    """The decoded array (any depth; grey, grey+alpha, BGR or BGRA) as one 8-bit grey channel."""
    image = raw
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image.astype(np.float32) * 255.0, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] <= 2:
        image = image[:, :, 0]
    elif image.ndim == 3:
        image = cv2.cvtColor(image[:, :, :4], cv2.COLOR_BGRA2GRAY if image.shape[2] >= 4 else cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(image)


def image_facts(split: str, path: str, label: str) -> ImageFacts:
    """Hashes, size and mode of one file; an unreadable one gets the reason check_images gives (the loader's)."""
    facts = ImageFacts(split, path, label)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        facts.reason = f"unreadable ({type(e).__name__}: {e.strerror or e})"
        return facts
    facts.file_hash = hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()
    facts.reason = check_image(path)
    if facts.reason is not None:
        return facts
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    pixels = hashlib.blake2b(f"{raw.shape}{raw.dtype}".encode(), digest_size=16)
    pixels.update(np.ascontiguousarray(raw).tobytes())
    facts.pixel_hash = pixels.hexdigest()
    facts.height, facts.width = raw.shape[:2]
    facts.mode = image_mode(raw)
    grey = grey_uint8(raw)
    facts.phash = perceptual_hash(grey)
    facts.thumb = cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return facts


def scan_images(rows: list[tuple[str, str, str]], workers: int = 0) -> list[ImageFacts]:
    """``image_facts`` of every row, in order, on threads (OpenCV and hashlib release the GIL)."""
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda row: image_facts(*row), rows))


def exact_groups(facts: list[ImageFacts]) -> list[list[int]]:
    """Positions of the images sharing decoded pixels (or, for unreadable files, bytes), groups of two or more,
    each sorted, in order of their first member."""
    members: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        key = f"p{f.pixel_hash}" if f.pixel_hash else f"f{f.file_hash}"
        if key != "f":
            members.setdefault(key, []).append(i)
    return sorted((group for group in members.values() if len(group) > 1), key=lambda g: g[0])


def hamming_pairs(hashes: np.ndarray, threshold: int, shard: tuple[int, int] = (0, 1)
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, distance)`` of every pair i < j of 64-bit hashes at most ``threshold`` bits apart.

    Row blocks of the upper triangle are XOR-ed against the rest at once and their bits counted with
    ``np.bitwise_count``, so 70,000 hashes (2.4e9 pairs) take seconds, in bounded memory. ``shard`` =
    (rank, world size) takes every world-size-th block, for processes that share the work."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    rows = max(1, BLOCK_ELEMENTS // max(n, 1))
    found_i, found_j, found_d = [], [], []
    for start in range(shard[0] * rows, n, rows * shard[1]):
        stop = min(start + rows, n)
        distance = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, start:])
        r, c = np.nonzero(distance <= threshold)
        keep = c > r  # columns start at `start` too: c > r is j > i
        found_i.append(start + r[keep])
        found_j.append(start + c[keep])
        found_d.append(distance[r[keep], c[keep]])
    if not found_i:
        return (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.uint8),)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d).astype(np.uint8)


def thumb_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey difference of two thumbnails after removing each one's mean brightness."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    return float(np.abs((a - a.mean()) - (b - b.mean())).mean())


def near_duplicates(facts: list[ImageFacts], phash_threshold: int, pixel_tolerance: float,
                    shard: tuple[int, int] = (0, 1)) -> list[tuple[int, int, int, float]]:
    """``(i, j, hamming, thumbnail distance)`` of readable image pairs that are near duplicates (see the module
    docstring) but not pixel-identical (those are exact duplicates); this shard's part when ``shard`` is given."""
    readable = np.array([i for i, f in enumerate(facts) if f.reason is None], dtype=np.int64)
    hashes = np.array([facts[i].phash for i in readable], dtype=np.uint64)
    ri, rj, rd = hamming_pairs(hashes, phash_threshold, shard)
    pairs = []
    for i, j, d in zip(readable[ri].tolist(), readable[rj].tolist(), rd.tolist()):
        if facts[i].pixel_hash == facts[j].pixel_hash:
            continue
        tolerance = thumb_distance(facts[i].thumb, facts[j].thumb)
        if tolerance <= pixel_tolerance:
            pairs.append((i, j, int(d), round(tolerance, 3)))
    return pairs


def pair_scope(split_a: str, split_b: str) -> str:
    """'train', 'val', 'test' for a pair inside one split; 'train-test' etc. (leakage) across splits."""
    if split_a == split_b:
        return split_a
    first, second = sorted((split_a, split_b), key=SPLITS.index)
    return f"{first}-{second}"


def class_balance(facts: list[ImageFacts]) -> dict[str, Counter]:
    """Images per class in each split."""
    counts: dict[str, Counter] = {}
    for f in facts:
        counts.setdefault(f.split, Counter())[f.label] += 1
    return counts


def size_modes(facts: list[ImageFacts]) -> Counter:
    """How many readable images of each (split, width, height, mode)."""
    return Counter((f.split, f.width, f.height, f.mode) for f in facts if f.reason is None)


def held_out(facts: list[ImageFacts], groups: list[list[int]], near: list[tuple[int, int, int, float]],
             flagged: list[int]) -> dict[int, tuple[str, int | None]]:
    """What a cleaned copy of the data leaves out: position -> (reason, position of the copy it duplicates).

    Only train loses duplicates: a train image with an exact or near copy in val or test goes (the evaluation copy
    stays, so scores keep their meaning), and of exact copies within train the first in loader order stays. Near
    duplicates inside one split stay (similar pictures, not a leak). Flagged labels go from every split."""
    out: dict[int, tuple[str, int | None]] = {}
    for group in groups:
        train = [i for i in group if facts[i].split == "train"]
        elsewhere = [i for i in group if facts[i].split != "train"]
        for i in (train if elsewhere else train[1:]):
            out[i] = ("duplicate across splits", elsewhere[0]) if elsewhere else ("duplicate within train", train[0])
    for i, j, *_ in near:
        for mine, other in ((i, j), (j, i)):
            if facts[mine].split == "train" and facts[other].split != "train":
                out.setdefault(mine, ("near duplicate across splits", other))
    for i in flagged:
        out.setdefault(i, ("label issue", None))
    return out
