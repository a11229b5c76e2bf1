"""Write a small real data set as PNG folders: OUT/{train,val,test}/<class>/<name>.png.

    python -m dataloader.prepare digits --out data/digits [--limit N] [--seed S] [--val_ratio R] [--image_size S]
    python -m dataloader.prepare fashion-mnist --out data/fashion-mnist [--source DIR] [--limit N]
    python -m dataloader.prepare fashion-mnist --out data/fmnist_5to9_n50 --classes 5 6 7 8 9 --train_per_class 50

digits: sklearn's bundled 8x8 digits (1,797 images, no download), upscaled (default 32x32), stratified
70/15/15 train/val/test (val_ratio is used for both val and test). fashion-mnist: the gzipped IDX files the
Debian package `dataset-fashion-mnist` installs in /usr/share/datasets/fashion-mnist; the official test set is
`test`, a stratified val_ratio (default 10%) of train is `val` (`--val_ratio 0`: all 60,000 in `train` and no
`val`, for a final model trained on all labelled data); images stay 28x28 unless --image_size is given.

``--classes`` keeps some classes only (a transfer task: pretrain on five, fine-tune on the other five);
``--train_per_class N`` keeps N training images per class (balanced_order, fixed by --seed) and val and test whole.

Idempotent: OUT/prepare.json (written last, atomically) records the parameters; a rerun with the same
parameters on a complete copy does nothing. Files are written to OUT/.prepare-tmp first and moved into place.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time
from typing import Callable

import cv2
import numpy as np

MANIFEST = "prepare.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
FASHION_MNIST_SOURCE = "/usr/share/datasets/fashion-mnist"
# The data set's label table (0..9) with filesystem-safe names.
FASHION_MNIST_CLASSES = (
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # (images NxHxW uint8, labels N, source ids N)


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A fixed permutation in which every prefix is (nearly) class-balanced, so `--limit N` keeps all classes."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = perm[labels[perm] == label]
        rank_in_class[members] = np.arange(len(members))
    # Round-robin over classes: all rank-0 samples first (in permuted order), then rank 1, ...
    position = np.empty(len(labels), dtype=np.int64)
    position[perm] = np.arange(len(labels))
    return np.lexsort((position, rank_in_class))


def _stratified_split(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels))
    keep, held_out = train_test_split(positions, test_size=test_size, random_state=seed, stratify=labels)
    return np.sort(keep), np.sort(held_out)


def _resize(images: np.ndarray, size: int | None, interpolation: int) -> np.ndarray:
    if size is None or images.shape[1:] == (size, size):
        return images
    return np.stack([cv2.resize(im, (size, size), interpolation=interpolation) for im in images])


def load_digits_splits(*, seed: int, val_ratio: float, image_size: int | None, source: None = None) -> dict[str, Split]:
    """sklearn digits as uint8, upscaled, split stratified into train/val/test (val and test each val_ratio).

    `source` is accepted for a uniform loader signature; the data ships with scikit-learn.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    # Bicubic keeps strokes smooth and legible at 4x; INTER_NEAREST would give 4x4 blocks.
    images = _resize(images, image_size or 32, cv2.INTER_CUBIC)
    labels, ids = digits.target.astype(np.int64), np.arange(len(images))
    rest, test = _stratified_split(labels, val_ratio, seed)
    train, val = _stratified_split(labels[rest], val_ratio / (1.0 - val_ratio), seed)
    train, val = rest[train], rest[val]
    return {name: (images[pos], labels[pos], ids[pos]) for name, pos in (("train", train), ("val", val),
                                                                        ("test", test))}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as a uint8 array shaped by its header."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {array.size} bytes (truncated download?)")
    return array.reshape(shape)


def _find_idx(source: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(source, name)):
            return os.path.join(source, name)
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}.gz not found in '{source}'. Install the Debian package "
        f"(`apt-get install dataset-fashion-mnist`, files land in {FASHION_MNIST_SOURCE}) or pass --source DIR "
        "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz"
    )


def load_fashion_mnist_splits(*, source: str, seed: int, val_ratio: float, image_size: int | None) -> dict[str, Split]:
    """Official train/test; a stratified val_ratio of train becomes val."""
    loaded = {}
    for split, (image_stem, label_stem) in FASHION_MNIST_FILES.items():
        images, labels = read_idx(_find_idx(source, image_stem)), read_idx(_find_idx(source, label_stem))
        if len(images) != len(labels):
            raise ValueError(f"{source}: {split} has {len(images)} images but {len(labels)} labels")
        loaded[split] = (_resize(images, image_size, cv2.INTER_LINEAR), labels.astype(np.int64))
    images, labels = loaded["train"]
    if val_ratio > 0:
        train, val = _stratified_split(labels, val_ratio, seed)
    else:  # all 60,000 for training (a final model); no val split is written
        train, val = np.arange(len(labels)), np.arange(0)
    test_images, test_labels = loaded["test"]
    return {
        "train": (images[train], labels[train], train),
        "val": (images[val], labels[val], val),
        "test": (test_images, test_labels, np.arange(len(test_labels))),
    }


def _write_split(split_dir: str, split: Split, class_names: tuple[str, ...], limit: int | None, seed: int) -> int:
    images, labels, ids = split
    order = balanced_order(labels, seed)[:limit]
    for name in class_names:
        os.makedirs(os.path.join(split_dir, name), exist_ok=True)
    for i in order:
        ok, png = cv2.imencode(".png", images[i])
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode image {ids[i]} as PNG")
        # tofile instead of cv2.imwrite: works for non-ASCII output paths too.
        png.tofile(os.path.join(split_dir, class_names[labels[i]], f"{ids[i]:05d}.png"))
    return len(order)


def select_classes(splits: dict[str, Split], class_names: tuple[str, ...], classes: list[int] | None,
                   train_per_class: int | None, seed: int) -> tuple[dict[str, Split], tuple[str, ...]]:
    """Only the images of ``classes`` (labels renumbered 0..k-1 in that order), and at most ``train_per_class``
    training images per class; val and test stay whole."""
    if classes is not None:
        if not all(0 <= c < len(class_names) for c in classes) or len(set(classes)) != len(classes):
            raise ValueError(f"--classes takes distinct class indices 0..{len(class_names) - 1}, got {classes}")
        renumber = np.full(len(class_names), -1)
        renumber[classes] = np.arange(len(classes))
        kept = {}
        for name, (images, labels, ids) in splits.items():
            keep = renumber[labels] >= 0
            kept[name] = (images[keep], renumber[labels[keep]], ids[keep])
        splits = kept
        class_names = tuple(class_names[c] for c in classes)
    if train_per_class is not None:
        if train_per_class <= 0:
            raise ValueError(f"--train_per_class must be positive, got {train_per_class}")
        images, labels, ids = splits["train"]
        order = balanced_order(labels, seed)
        keep = np.sort(np.concatenate([order[labels[order] == c][:train_per_class] for c in range(len(class_names))]))
        splits = {**splits, "train": (images[keep], labels[keep], ids[keep])}
    return splits, class_names


def _count_pngs(split_dir: str) -> int:
    return sum(f.endswith(".png") for _, _, files in os.walk(split_dir) for f in files)


def _is_complete(out: str, params: dict) -> bool:
    """OUT holds a finished copy made with `params` (manifest matches and every split has its file count)."""
    try:
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if manifest.get("params") != params:
        return False
    return all(_count_pngs(os.path.join(out, s)) == n for s, n in manifest.get("counts", {}).items())


def _write_manifest(out: str, manifest: dict) -> None:
    tmp = os.path.join(out, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, os.path.join(out, MANIFEST))  # atomic: a manifest is either absent or complete


def prepare_dataset(
    name: str,
    *,
    out: str,
    limit: int | None = None,
    source: str | None = None,
    seed: int = 0,
    val_ratio: float | None = None,
    image_size: int | None = None,
    classes: list[int] | None = None,
    train_per_class: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write data set `name` into `out` (skipped when already complete with these parameters); returns the manifest."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set '{name}'; choose one of {sorted(DATASETS)}")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    defaults = DATASETS[name]
    val_ratio = defaults["val_ratio"] if val_ratio is None else val_ratio
    zero_allowed = name == "fashion-mnist"  # digits carves its test split with val_ratio too
    if not ((zero_allowed and val_ratio == 0) or 0 < val_ratio < 0.5):
        raise ValueError(f"--val_ratio must be in (0, 0.5){' or 0 (no val split)' if zero_allowed else ''}, "
                         f"got {val_ratio}")
    source = os.path.abspath(source or defaults["source"]) if defaults["source"] else None
    params = {"dataset": name, "limit": limit, "seed": seed, "val_ratio": val_ratio,
              "image_size": image_size or defaults["image_size"], "source": source}
    if classes is not None or train_per_class is not None:  # absent otherwise: earlier copies stay complete
        params.update(classes=classes, train_per_class=train_per_class)
    out = os.path.abspath(out)
    if _is_complete(out, params):
        log(f"{out} already holds {name} prepared with the same parameters ({MANIFEST}); nothing to do")
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
            return json.load(f)
    _refuse_foreign_content(out, params)

    start = time.perf_counter()
    splits = defaults["load"](source=source, seed=seed, val_ratio=val_ratio, image_size=params["image_size"])
    splits, class_names = select_classes(splits, defaults["class_names"], classes, train_per_class, seed)
    tmp_root = os.path.join(out, ".prepare-tmp")
    shutil.rmtree(tmp_root, ignore_errors=True)  # leftovers of an interrupted run are ours to remove
    written = [s for s in SPLITS if len(splits[s][1])]  # --val_ratio 0: no val folder at all
    counts = {s: _write_split(os.path.join(tmp_root, s), splits[s], class_names, limit, seed) for s in written}
    for s in SPLITS:
        shutil.rmtree(os.path.join(out, s), ignore_errors=True)
        if s in counts:
            os.replace(os.path.join(tmp_root, s), os.path.join(out, s))
    os.rmdir(tmp_root)
    manifest = {"version": MANIFEST_VERSION, "params": params, "counts": counts, "class_names": list(class_names)}
    _write_manifest(out, manifest)
    elapsed = time.perf_counter() - start
    log(f"wrote {name} to {out}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
        + f" images, {len(class_names)} classes, {params['image_size']}x{params['image_size']} PNG, {elapsed:.1f}s")
    return manifest


def _refuse_foreign_content(out: str, params: dict) -> None:
    """Only replace split folders this script wrote (a manifest exists); never overwrite user data."""
    existing = [s for s in SPLITS if os.path.exists(os.path.join(out, s))]
    if existing and not os.path.isfile(os.path.join(out, MANIFEST)):
        raise FileExistsError(
            f"{out} already contains {existing} without a {MANIFEST} from this script (foreign data or an "
            "interrupted run); delete those folders or choose another --out"
        )


DATASETS = {
    "digits": {"load": load_digits_splits, "source": None, "val_ratio": 0.15,
               "image_size": 32, "class_names": tuple(str(d) for d in range(10))},
    "fashion-mnist": {"load": load_fashion_mnist_splits, "source": FASHION_MNIST_SOURCE, "val_ratio": 0.1,
                      "image_size": 28, "class_names": FASHION_MNIST_CLASSES},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--out", required=True, help="output data root (gets train/, val/, test/)")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per split (class-balanced)")
    parser.add_argument("--source", default=None, help=f"fashion-mnist IDX folder (default {FASHION_MNIST_SOURCE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and of --limit's selection")
    parser.add_argument("--val_ratio", type=float, default=None,
                        help="digits: 0.15 (val and test); fmnist: 0.1 (0: no val split)")
    parser.add_argument("--image_size", type=int, default=None, help="square side in pixels (digits 32, fmnist 28)")
    parser.add_argument("--classes", type=int, nargs="+", default=None, metavar="I",
                        help="keep only these class indices (e.g. 0 1 2 3 4), in this order")
    parser.add_argument("--train_per_class", type=int, default=None, metavar="N",
                        help="keep N training images per class (chosen by --seed); val and test stay whole")
    args = parser.parse_args(argv)
    try:
        prepare_dataset(args.dataset, out=args.out, limit=args.limit, source=args.source, seed=args.seed,
                        val_ratio=args.val_ratio, image_size=args.image_size, classes=args.classes,
                        train_per_class=args.train_per_class)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
