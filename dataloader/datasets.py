"""Split discovery, the image dataset, the epoch-aware sampler and the DataLoader factory.

Data layouts under a data root (see data/README.md):

- folders: ROOT/{train,val,test}/<class>/<file>  (class = directory name, sorted; nested folders allowed)
- CSV:     ROOT/{train,val,test}.csv with header `filename,label` (filename relative to ROOT, label = class name)

If both exist for a split, the folder wins. Class names come from train; val/test may only use those classes.
Without a val split, a fixed stratified `val_ratio` share of train (seeded) becomes val.

Reproducibility: the samplers yield `(index, epoch)` keys and the dataset seeds its augmentation
(`dataloader.augment`) with `np.random.default_rng([seed, epoch, index])`, so every augmented image is a pure
function of (seed, epoch, index): independent of worker count, rank and resume point.
"""
from __future__ import annotations

import csv
import itertools
import os
import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dataloader.augment import DEFAULT_OPTIONS, AugmentOptions, build_augmentation, parse_aug
from dataloader.preprocess import (IMAGE_EXTENSIONS, ImageDecodeError, Preprocessing, decode_image,
                                   random_resized_crop, to_chw_uint8)
from dataloader.sampler import ClassBalancedDistributedSampler
from utils.errors import DataError

SPLITS = ("train", "val", "test")

Sample = tuple[str, str]  # (absolute path, class name)


def _as_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    if len(image_size) == 1:
        return (int(image_size[0]), int(image_size[0]))
    return (int(image_size[0]), int(image_size[1]))


def is_image_file(name: str) -> bool:
    """True for non-hidden files with a known image extension (case-insensitive)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------------------------------------------
# split discovery


def _scan_folder(split_dir: str, split: str) -> list[Sample]:
    """ImageFolder-style scan: one sub-directory per class, images anywhere below it, sorted paths."""
    samples: list[Sample] = []
    class_dirs = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    for class_name in class_dirs:
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(split_dir, class_name), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f)]
        if not found and split == "train":
            raise DataError(
                f"class folder '{os.path.join(split_dir, class_name)}' has no images "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
        samples += [(path, class_name) for path in found]
    return samples


def _read_csv(csv_path: str, data_root: str) -> list[Sample]:
    """Read `filename,label` rows; filenames are relative to the data root and must exist."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"filename", "label"} <= {n.strip() for n in reader.fieldnames}:
            raise DataError(f"{csv_path}: expected a header line 'filename,label', got {reader.fieldnames}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    samples = [(os.path.join(data_root, r["filename"]), r["label"]) for r in rows if r["filename"]]
    empty_labels = [path for path, label in samples if not label]
    if empty_labels:
        raise DataError(f"{csv_path}: {len(empty_labels)} rows have an empty label, e.g. {empty_labels[0]}")
    missing = [path for path, _ in samples if not os.path.isfile(path)]
    if missing:
        raise DataError(
            f"{csv_path}: {len(missing)} listed files do not exist, e.g. {missing[:3]} "
            f"(filenames must be relative to the data root {data_root})"
        )
    return samples


def write_split_csv(data_root: str, split: str, samples: list[Sample]) -> Path:
    """Write ``DATA_ROOT/SPLIT.csv`` (header `filename,label`, filenames relative to the root) that `_read_csv` reads
    back as these samples: the one writer of the CSV layout (the dataset audit's cleaned roots)."""
    path = Path(data_root) / f"{split}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["filename", "label"])
        writer.writerows((os.path.relpath(file, data_root), label) for file, label in samples)
    return path


def discover_split(data_root: str, split: str) -> tuple[list[Sample], str] | None:
    """Samples of one split and where they came from ('folder' or 'csv'); None when the split is absent.

    A folder without any image does not hide a CSV list; with neither, an empty folder gives an empty list.
    """
    split_dir = os.path.join(data_root, split)
    if os.path.isdir(split_dir):
        samples = _scan_folder(split_dir, split)
        if samples:
            return samples, "folder"
    csv_path = os.path.join(data_root, f"{split}.csv")
    if os.path.isfile(csv_path):
        return _read_csv(csv_path, data_root), "csv"
    if os.path.isdir(split_dir):
        return [], "folder"
    return None


def _expected_layout(data_root: str) -> str:
    return (
        f"expected either {data_root}/train/<class>/<image> (one folder per class; also val/ and test/) "
        f"or {data_root}/train.csv with header 'filename,label' (filenames relative to {data_root}); "
        "see data/README.md, or create a demo set with `python -m dataloader.prepare digits --out DIR`"
    )


def _check_classes(samples: list[Sample], class_names: list[str], split: str, data_root: str) -> None:
    known = set(class_names)
    unknown = sorted({label for _, label in samples} - known)
    if unknown:
        example = next(path for path, label in samples if label == unknown[0])
        raise DataError(
            f"split '{split}' under {data_root} has classes not present in train: {unknown} "
            f"(e.g. {example}); train classes are {class_names}"
        )


def stratified_val_split(labels: list[str], val_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Fixed stratified split of train positions into (train, val) — same inputs, same split, on every rank."""
    from sklearn.model_selection import train_test_split  # lazy: keeps `import dataloader.preprocess` light

    positions = np.arange(len(labels))
    try:
        train_pos, val_pos = train_test_split(
            positions, test_size=val_ratio, random_state=seed, shuffle=True, stratify=labels
        )
    except ValueError as e:
        counts = Counter(labels)
        raise ValueError(
            f"cannot carve a stratified val split (val_ratio={val_ratio}) from {len(labels)} train images "
            f"with class counts {dict(sorted(counts.items()))}: {e}. Provide a val/ folder or val.csv, "
            "or change val_ratio (0 disables val)"
        ) from None
    return sorted(train_pos.tolist()), sorted(val_pos.tolist())


def kfold_split(labels: list[str], kfold: int, fold: int, seed: int) -> tuple[list[int], list[int]]:
    """Positions of (the other K-1 folds, fold ``fold``) of a stratified K-fold partition fixed by ``seed``: the
    K held-out folds are disjoint and together cover every position."""
    from sklearn.model_selection import StratifiedKFold  # lazy: keeps `import dataloader.preprocess` light

    if kfold < 2 or not 0 <= fold < kfold:
        raise ValueError(f"--kfold must be >= 2 and --fold in 0..K-1, got --kfold {kfold} --fold {fold}")
    smallest = min(Counter(labels).values())
    if smallest < kfold:
        raise ValueError(f"--kfold {kfold} needs at least {kfold} training images per class; the smallest class "
                         f"has {smallest}. Lower --kfold or add images")
    folds = StratifiedKFold(n_splits=kfold, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    train_pos, held_out = list(folds)[fold]
    return sorted(train_pos.tolist()), sorted(held_out.tolist())


def _discover_all(data_root: str, val_ratio: float, seed: int, kfold: int | None = None,
                  fold: int = 0) -> tuple[dict, list[str], str]:
    """Samples per split (None where absent), train class names, and a description of where val came from.
    With ``kfold``, val is fold ``fold`` of train and train the other folds (a val/ folder is not used)."""
    data_root = os.path.abspath(os.fspath(data_root))
    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"--data {data_root}: no such folder; {_expected_layout(data_root)}")
    train = discover_split(data_root, "train")
    if train is None or not train[0]:
        what = "no train split" if train is None else f"no images in {data_root}/train"
        raise DataError(f"{what} under data root '{data_root}': {_expected_layout(data_root)}")
    splits: dict[str, list[Sample] | None] = {"train": train[0]}
    class_names = sorted({label for _, label in train[0]})
    val_source = "none"
    for split in ("val", "test"):
        found = discover_split(data_root, split)
        splits[split] = found[0] if found and found[0] else None
        if splits[split] is not None:
            _check_classes(splits[split], class_names, split, data_root)
            if split == "val":
                val_source = found[1]
    if kfold is not None:
        train_pos, val_pos = kfold_split([label for _, label in train[0]], kfold, fold, seed)
        splits["train"] = [train[0][i] for i in train_pos]
        splits["val"] = [train[0][i] for i in val_pos]
        val_source = f"fold {fold} of a stratified {kfold}-fold split of train (seed {seed})"
    elif splits["val"] is None and val_ratio > 0:
        train_pos, val_pos = stratified_val_split([label for _, label in train[0]], val_ratio, seed)
        splits["train"] = [train[0][i] for i in train_pos]
        splits["val"] = [train[0][i] for i in val_pos]
        val_source = f"stratified {val_ratio:g} of train (seed {seed})"
    return splits, class_names, val_source


# ----------------------------------------------------------------------------------------------------------------
# dataset


def parse_key(key: int | tuple[int, ...]) -> tuple[int, int, int]:
    """A sampler key as (index, epoch, draw): an int is (index, 0, 0); samplers yield (index, epoch) or, when an
    index can repeat within an epoch, (index, epoch, draw) with draw = the number of earlier copies."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1]), int(key[2]) if len(key) > 2 else 0
    return int(key), 0, 0


CROP_STREAM = 1  # the random resized crop's generator: [seed, epoch, index, draw, CROP_STREAM]
UNREADABLE = -2  # the label of an image that could not be decoded, with skip_unreadable (unlabelled images are -1)


class ImageClassificationDataset(Dataset):
    """Items are `(image_uint8_chw, label, index)`; keys are an int index or an `(index, epoch)` tuple.

    With `skip_unreadable` an image that cannot be decoded yields a blank image labelled `UNREADABLE` instead of
    an error, so a prediction job can classify every readable file and list the others.

    Images are decoded and fitted to `image_size` as `resize_mode` says (letterbox, or crop: the centre
    `crop_pct`); with `train_crop` = (scale, ratio) in crop mode each item is a random resized crop instead.
    `aug` names the augmentations that follow (`dataloader.augment`, e.g. "myaugment,erasing"; True means
    "basic"). Randomness is seeded by (seed, epoch, index). A plain int key means epoch 0.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        class_names: list[str],
        *,
        image_size: int | tuple[int, int],
        aug: str | bool | None = None,
        aug_options: AugmentOptions = DEFAULT_OPTIONS,
        seed: int = 0,
        pad_value: int = 0,
        skip_unreadable: bool = False,
        resize_mode: str = "letterbox",
        crop_pct: float = 0.875,
        train_crop: tuple[tuple[float, float], tuple[float, float]] | None = None,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seed sequences), got {seed}")
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.class_names = list(class_names)
        self.image_size = _as_size(image_size)
        self.aug = parse_aug(aug)
        self.augment = build_augmentation(self.aug, pad_value=pad_value, options=aug_options)
        self.seed = seed
        self.pad_value = pad_value
        self.skip_unreadable = skip_unreadable
        # the evaluation geometry; mean/std are applied on the device, not here
        self.fitting = Preprocessing(self.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), pad_value=pad_value,
                                     resize_mode=resize_mode, crop_pct=crop_pct)
        self.train_crop = train_crop if resize_mode == "crop" else None
        self._cache: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def cache_in_ram(self, threads: int | None = None) -> float:
        """Decode and fit every image once into one uint8 array; returns its size in GiB.

        Loader workers are forked after this, so they share the array copy-on-write instead of decoding
        again every epoch. Augmentation still runs per item on top of the cached image. A random resized crop
        needs the whole image each time, so a `train_crop` dataset refuses the cache.
        """
        if self.train_crop is not None:
            raise ValueError("--cache_images ram keeps images at the input size, but --resize_mode crop cuts each "
                             "train image afresh from the whole picture every epoch: drop one of the two")
        h, w = self.image_size
        need = len(self) * h * w * 3
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if need > 0.8 * free:
            raise MemoryError(
                f"--cache_images ram needs {need / 2**30:.2f} GiB for {len(self)} images at {h}x{w} but only "
                f"{free / 2**30:.2f} GiB of memory are free; drop --cache_images or lower --image_size")
        cache = np.empty((len(self), h, w, 3), dtype=np.uint8)

        def load(i: int) -> None:
            cache[i] = self.fitting.fit(decode_image(self.samples[i][0]))

        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:  # OpenCV releases the GIL
            list(pool.map(load, range(len(self))))
        self._cache = cache
        return need / 2**30

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, int, int]:
        index, epoch, draw = parse_key(key)
        path, label = self.samples[index]
        if self._cache is not None:
            image = self._cache[index]  # never written to: augmentation and to_chw_uint8 copy
        else:
            try:
                image = self._fit(decode_image(path), epoch, index, draw)
            except (ImageDecodeError, OSError):
                if not self.skip_unreadable:
                    raise
                # a blank image labelled UNREADABLE: the caller lists the file instead of its prediction
                return torch.zeros(3, *self.image_size, dtype=torch.uint8), UNREADABLE, index
        if self.augment is not None:
            image = self.augment(image, seed=self.seed, epoch=epoch, index=index, draw=draw)
        return to_chw_uint8(image), label, index

    def _fit(self, image: np.ndarray, epoch: int, index: int, draw: int) -> np.ndarray:
        if self.train_crop is None:
            return self.fitting.fit(image)
        # its own stream, so that the crop and the augmentations after it draw independent numbers
        rng = np.random.default_rng([self.seed, epoch, index, draw, CROP_STREAM])
        return random_resized_crop(image, self.image_size, rng, *self.train_crop)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {len(self.class_names)} classes, "
                f"image_size={self.image_size}, resize_mode={self.fitting.resize_mode!r}, aug={self.aug!r})")


def _make_dataset(samples: list[Sample], class_names: list[str], **kwargs) -> ImageClassificationDataset:
    to_index = {name: i for i, name in enumerate(class_names)}
    return ImageClassificationDataset([(p, to_index[c]) for p, c in samples], class_names, **kwargs)


@dataclass
class DataSplits:
    """Datasets per split (None where absent) and the class names shared by all of them."""

    train: ImageClassificationDataset
    val: ImageClassificationDataset | None
    test: ImageClassificationDataset | None
    class_names: list[str]
    val_source: str = "none"  # 'folder', 'csv', 'stratified ... of train' or 'none'
    train_weights: np.ndarray | None = None  # per train index loss weight (--extra_train images: W); None: all 1
    extra_count: int = 0  # how many train images came from --extra_train (the last ones)


def build_datasets(
    data_root: str | os.PathLike,
    *,
    image_size: int | tuple[int, int],
    aug: str | bool | None,
    val_ratio: float,
    aug_options: AugmentOptions = DEFAULT_OPTIONS,
    seed: int,
    kfold: int | None = None,
    fold: int = 0,
    extra_train: str | os.PathLike | None = None,
    extra_weight: float = 1.0,
    resize_mode: str = "letterbox",
    crop_pct: float = 0.875,
    train_crop: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> DataSplits:
    """Discover train/val/test under `data_root` and build their datasets (augmentation on train only).

    Without a val split, `val_ratio` of train (stratified, fixed by `seed`) becomes val; 0 means no val. With
    `kfold`, val is fold `fold` of a stratified K-fold split of train and train the other folds. `extra_train`
    (a folder of class folders or a CSV list, see `read_extra_set`) is appended to train after val was carved,
    each of its images with the loss weight `extra_weight` (`DataSplits.train_weights`). `resize_mode` and
    `crop_pct` fit every split to `image_size`; in crop mode, train draws random resized crops per `train_crop`.
    """
    splits, class_names, val_source = _discover_all(os.fspath(data_root), val_ratio, seed, kfold, fold)
    extra = read_extra_set(extra_train, class_names) if extra_train is not None else []
    weights = None
    if extra:
        weights = np.concatenate([np.ones(len(splits["train"])), np.full(len(extra), float(extra_weight))])
    make = {"class_names": class_names, "image_size": image_size, "seed": seed, "resize_mode": resize_mode,
            "crop_pct": crop_pct}
    return DataSplits(
        train=_make_dataset(splits["train"] + extra, aug=aug, aug_options=aug_options, train_crop=train_crop,
                            **make),
        val=_make_dataset(splits["val"], **make) if splits["val"] else None,
        test=_make_dataset(splits["test"], **make) if splits["test"] else None,
        class_names=class_names,
        val_source=val_source,
        train_weights=weights.astype(np.float32) if weights is not None else None,
        extra_count=len(extra),
    )


def read_extra_set(source: str | os.PathLike, class_names: list[str]) -> list[Sample]:
    """The samples of another labelled set (``--extra_train``): a folder of class folders (as train/), or a CSV
    with header `filename,label` whose filenames are relative to the CSV's folder. Every label must be one of
    ``class_names`` (the main set's); a set may leave classes out."""
    path = os.path.abspath(os.fspath(source))
    if os.path.isdir(path):
        samples = _scan_folder(path, "train")
    elif os.path.isfile(path) and path.lower().endswith(".csv"):
        samples = _read_csv(path, os.path.dirname(path))
    else:
        raise FileNotFoundError(f"--extra_train {source}: expected a folder of class folders or a .csv list "
                                "(filename,label)")
    if not samples:
        raise DataError(f"--extra_train {source}: no images in its class folders")
    unknown = sorted({label for _, label in samples} - set(class_names))
    if unknown:
        raise DataError(f"--extra_train {source} has classes the main set does not have: {unknown[:5]} "
                        f"({len(unknown)} in all); the main set's classes are {class_names[:10]}"
                        f"{'...' if len(class_names) > 10 else ''}. Rename them to match")
    return samples


def build_split_dataset(
    data_root: str | os.PathLike,
    split: str,
    *,
    image_size: int | tuple[int, int],
    class_names: list[str],
    val_ratio: float = 0.1,
    seed: int = 0,
    kfold: int | None = None,
    fold: int = 0,
    resize_mode: str = "letterbox",
    crop_pct: float = 0.875,
) -> ImageClassificationDataset:
    """One split, without augmentation, labelled with `class_names` (e.g. those stored in a checkpoint), fitted to
    `image_size` as `resize_mode` says.

    'train' and 'val' are the same images training used: when val is carved out of train, pass the training
    run's `val_ratio` and `seed` (and `kfold`, `fold`).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; choose one of {list(SPLITS)}")
    data_root = os.fspath(data_root)
    # The test split does not depend on how val is carved out of train; skip that (it can fail on tiny sets).
    if split == "test":
        val_ratio, kfold = 0.0, None
    splits, _, _ = _discover_all(data_root, val_ratio, seed, kfold, fold)
    if splits[split] is None:
        raise FileNotFoundError(f"no '{split}' split under '{data_root}': {_expected_layout(data_root)}")
    _check_classes(splits[split], list(class_names), split, data_root)
    return _make_dataset(splits[split], class_names=list(class_names), image_size=image_size, seed=seed,
                         resize_mode=resize_mode, crop_pct=crop_pct)


# ----------------------------------------------------------------------------------------------------------------
# sampler and loader


class EpochAwareDistributedSampler(DistributedSampler):
    """DistributedSampler that yields `(index, epoch)` keys, with explicit rank and world size.

    Shuffling is seeded with seed + epoch (as DistributedSampler). Without shuffle (evaluation) the index list
    is padded by repeating from the start so every rank gets the same count; the evaluator drops duplicates
    by index.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        num_replicas: int,
        rank: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)

    skip = 0  # keys left out of the next iteration only: a run resumed in the middle of an epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip, self.skip = self.epoch, self.skip, 0
        return itertools.islice(((int(index), epoch) for index in super().__iter__()), skip, None)


def _worker_init(_worker_id: int) -> None:
    # Each loader worker is already one process per core; OpenCV's own thread pool would oversubscribe.
    # A no-op for forked workers (build_loader set it in the parent); needed under the spawn start method.
    cv2.setNumThreads(1)
    # Ctrl-C and Slurm's SIGUSR1 warning reach the whole process group; they are the training process's to handle
    # (it finishes its step and writes last.pth), and a worker killed by them would fail that step first. SIGTERM
    # keeps its default: multiprocessing ends daemon workers with it at exit (ignoring it hangs the exit).
    for name in ("SIGINT", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    train: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    balance: bool = False,
) -> DataLoader:
    """DataLoader over this rank's shard; call `loader.sampler.set_epoch(epoch)` before each epoch.

    Train: shuffled (with `balance`, a class-balanced draw with replacement: `ClassBalancedDistributedSampler`),
    and drops the last incomplete batch when the shard holds more than one batch (a tiny last batch gives noisy
    BatchNorm statistics). Eval: in order, padded to equal shards, nothing dropped.
    The DataLoader gets its own generator seeded with `seed`, so creating or iterating loaders does not
    consume the global torch RNG.
    """
    if balance and not train:
        raise ValueError("balance=True is for training; evaluation must see every sample once")
    if balance:
        sampler = ClassBalancedDistributedSampler(dataset.targets, num_replicas=world_size, rank=rank, seed=seed)
    else:
        sampler = EpochAwareDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train,
                                               seed=seed)
    if workers > 0:
        # Set in the parent, before the workers fork: once the parent has used OpenCV's thread pool (the RAM
        # cache decodes there), calling cv2.setNumThreads in a forked child waits forever on the parent's pool
        # threads, which the child does not have. Forked workers inherit the setting instead.
        cv2.setNumThreads(1)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=train and len(sampler) > batch_size,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=generator,
        collate_fn=getattr(dataset, "collate_fn", None),  # EncodedImageDataset (--decode device) batches file bytes
    )


def list_inputs(source: str | os.PathLike, flag: str = "--predict") -> list[tuple[str, Path]]:
    """``(name, file)`` for each image of a folder (recursively, sorted; the name is the path below it) or of a CSV
    list (a 'filename' column or the first, paths relative to the CSV's folder), in that order. Errors name ``flag``."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p.name))
        if not files:
            raise FileNotFoundError(f"{flag} {source}: no image files in this folder or below")
        return [(p.relative_to(source).as_posix(), p) for p in files]
    if source.is_file() and source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise ValueError(f"{flag} {source}: empty CSV; expected a header with a 'filename' column")
            column = header.index("filename") if "filename" in header else 0
            names = [row[column] for row in reader if row and row[column].strip()]
        if not names:
            raise ValueError(f"{flag} {source}: the CSV lists no files under '{header[column]}'")
        files = [(name, Path(name) if os.path.isabs(name) else source.parent / name) for name in names]
        missing = [name for name, path in files if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{flag} {source}: {len(missing)} listed files do not exist (paths are relative "
                                    f"to the CSV's folder), e.g. {missing[:3]}")
        return files
    raise FileNotFoundError(f"{flag} {source}: expected a folder of images or a .csv list of files")
