"""dataloader.datasets: split discovery (folders, CSV), val carving, augmentation determinism, sampler, loader."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataloader.datasets import (
    EpochAwareDistributedSampler,
    build_datasets,
    build_loader,
    build_split_dataset,
)
from dataloader.preprocess import ImageDecodeError
from utils.errors import DataError

CLASS_VALUES = {"cat": 60, "dog": 180, "emu": 250}
SPLIT_SEEDS = {"train": 0, "val": 1000, "test": 2000}


def write_png(path, value: int, seed: int, size=(12, 16)) -> None:
    """Noisy image around a class brightness, so augmentation changes are visible and labels checkable."""
    rng = np.random.default_rng(seed)
    image = np.clip(value + rng.integers(-20, 20, size + (3,)), 1, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imencode(path.suffix, image)[1].tofile(str(path))


def make_folder(root, split: str, counts: dict[str, int], suffix=".png") -> None:
    for class_name, n in counts.items():
        for i in range(n):
            path = root / split / class_name / f"{split}_{i}{suffix}"
            write_png(path, CLASS_VALUES[class_name], seed=SPLIT_SEEDS[split] + i)


def make_csv(root, split: str, counts: dict[str, int]) -> None:
    lines = ["filename,label"]
    for class_name, n in counts.items():
        for i in range(n):
            rel = f"images/{split}_{class_name}_{i}.jpg"
            write_png(root / rel, CLASS_VALUES[class_name], i)
            lines.append(f"{rel},{class_name}")
    (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def labels_match_brightness(dataset) -> None:
    for i in range(len(dataset)):
        image, label, index = dataset[i]
        assert index == i
        content = image[image > 0].float().mean().item()
        assert abs(content - CLASS_VALUES[dataset.class_names[label]]) < 25


# ---------------------------------------------------------------------------------------------------------------
# discovery


def test_folder_layout(tmp_path):
    make_folder(tmp_path, "train", {"dog": 4, "cat": 3})
    make_folder(tmp_path, "val", {"cat": 2, "dog": 1})
    make_folder(tmp_path, "test", {"dog": 2})
    # Ignored: hidden files, non-image files, hidden folders. Counted: upper-case extensions, nested folders.
    (tmp_path / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("x")
    write_png(tmp_path / "train" / "cat" / ".cache" / "x.png", 60, 0)
    write_png(tmp_path / "train" / "cat" / "nested" / "deep.PNG", 60, 1)
    splits = build_datasets(tmp_path, image_size=16, aug=False, val_ratio=0.5, seed=0)
    assert splits.class_names == ["cat", "dog"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 3, 2)
    assert splits.val_source == "folder"
    assert Counter(splits.train.targets) == {0: 4, 1: 4}
    image, label, index = splits.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and isinstance(label, int)
    labels_match_brightness(splits.train)
    labels_match_brightness(splits.test)
    assert all(label == 1 for label in splits.test.targets)


def test_csv_layout_and_folder_wins(tmp_path):
    make_csv(tmp_path, "train", {"cat": 3, "emu": 2})
    make_csv(tmp_path, "test", {"emu": 2})
    splits = build_datasets(tmp_path, image_size=(8, 12), aug=False, val_ratio=0.0, seed=0)
    assert splits.class_names == ["cat", "emu"] and splits.val is None and splits.val_source == "none"
    assert (len(splits.train), len(splits.test)) == (5, 2)
    assert splits.train[0][0].shape == (3, 8, 12)
    labels_match_brightness(splits.train)
    make_folder(tmp_path, "train", {"dog": 2, "emu": 1})  # folder and CSV both present: the folder wins
    splits = build_datasets(tmp_path, image_size=8, aug=False, val_ratio=0.0, seed=0)
    assert splits.class_names == ["dog", "emu"] and len(splits.train) == 3 and len(splits.test) == 2


def test_csv_missing_file_is_reported(tmp_path):
    (tmp_path / "train.csv").write_text("filename,label\nimages/missing.png,cat\n")
    with pytest.raises(DataError, match="missing.png"):
        build_datasets(tmp_path, image_size=8, aug=False, val_ratio=0.0, seed=0)


def test_val_carved_from_train_is_stratified_and_deterministic(tmp_path):
    make_folder(tmp_path, "train", {"cat": 20, "dog": 10})
    a = build_datasets(tmp_path, image_size=8, aug=True, val_ratio=0.2, seed=3)
    b = build_datasets(tmp_path, image_size=8, aug=True, val_ratio=0.2, seed=3)
    c = build_datasets(tmp_path, image_size=8, aug=True, val_ratio=0.2, seed=4)
    assert Counter(a.val.targets) == {0: 4, 1: 2}  # 20% of each class
    assert a.val.samples == b.val.samples and a.train.samples == b.train.samples
    assert a.val.samples != c.val.samples
    assert set(a.train.samples).isdisjoint(a.val.samples) and len(a.train) + len(a.val) == 30
    assert a.train.aug and not a.val.aug
    assert "stratified" in a.val_source
    val = build_split_dataset(tmp_path, "val", image_size=8, class_names=a.class_names, val_ratio=0.2, seed=3)
    assert val.samples == a.val.samples and not val.aug


def test_unknown_class_in_val_names_split_and_class(tmp_path):
    make_folder(tmp_path, "train", {"cat": 2, "dog": 2})
    make_folder(tmp_path, "val", {"cat": 1, "emu": 1})
    with pytest.raises(DataError, match=r"'val'.*\['emu'\]"):
        build_datasets(tmp_path, image_size=8, aug=False, val_ratio=0.1, seed=0)


@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_missing_or_empty_train_explains_layout(tmp_path, layout):
    if layout == "empty":
        (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"train/<class>/<image>.*train\.csv"):
        build_datasets(tmp_path, image_size=8, aug=False, val_ratio=0.1, seed=0)


def test_build_split_dataset_uses_given_class_names(tmp_path):
    make_folder(tmp_path, "train", {"cat": 2, "dog": 2})
    make_folder(tmp_path, "test", {"dog": 2})
    test = build_split_dataset(tmp_path, "test", image_size=8, class_names=["ant", "cat", "dog"])
    assert test.targets == [2, 2] and not test.aug
    with pytest.raises(DataError, match="'test'"):
        build_split_dataset(tmp_path, "test", image_size=8, class_names=["cat"])
    with pytest.raises(ValueError, match="unknown split"):
        build_split_dataset(tmp_path, "holdout", image_size=8, class_names=["cat"])


# ---------------------------------------------------------------------------------------------------------------
# augmentation, sampler, loader


@pytest.fixture
def train_root(tmp_path):
    make_folder(tmp_path, "train", {"cat": 6, "dog": 5})
    return tmp_path


@pytest.fixture
def train_set(train_root):
    return build_datasets(train_root, image_size=16, aug=True, val_ratio=0.0, seed=7).train


def test_augmentation_is_a_function_of_seed_epoch_index(train_root, train_set):
    for index in range(4):
        first, label, got_index = train_set[(index, 2)]
        again, _, _ = train_set[(index, 2)]
        assert got_index == index
        assert torch.equal(first, again)
    differs = [not torch.equal(train_set[(i, 0)][0], train_set[(i, 1)][0]) for i in range(4)]
    assert all(differs)
    assert torch.equal(train_set[3][0], train_set[(3, 0)][0])  # a plain int key is epoch 0
    plain = build_split_dataset(train_root, "train", image_size=16, class_names=train_set.class_names, val_ratio=0)
    assert torch.equal(plain[(3, 0)][0], plain[(3, 9)][0])  # without aug the epoch does not matter


def test_aug_names_reach_the_train_split_only(train_root):
    splits = build_datasets(train_root, image_size=16, aug="myaugment,erasing", val_ratio=0.3, seed=7)
    assert splits.train.aug == "myaugment,erasing" and "myaugment,erasing" in repr(splits.train)
    assert splits.val.aug is None and splits.val.augment is None
    legacy = build_datasets(train_root, image_size=16, aug=True, val_ratio=0.3, seed=7).train  # old bool configs
    assert legacy.aug == "basic"
    basic = build_datasets(train_root, image_size=16, aug="basic", val_ratio=0.3, seed=7).train
    assert all(torch.equal(legacy[(i, 1)][0], basic[(i, 1)][0]) for i in range(4))


def test_sampler_yields_index_epoch_and_shards_disjointly(train_set):
    n = len(train_set)
    shards = []
    for rank in range(2):
        sampler = EpochAwareDistributedSampler(train_set, num_replicas=2, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(5)
        keys = list(sampler)
        assert all(isinstance(k, tuple) and k[1] == 5 for k in keys)
        shards.append([k[0] for k in keys])
    assert len(shards[0]) == len(shards[1]) == 6  # 11 padded to 12
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    assert len(set(shards[0]) & set(shards[1])) == 1  # exactly the one padding duplicate
    sampler = EpochAwareDistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=1)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append([k[0] for k in sampler])
    assert orders[0] == orders[2] != orders[1]


def test_eval_sampler_is_ordered_and_padded(train_set):
    ranks = [list(EpochAwareDistributedSampler(train_set, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert [i for i, _ in ranks[0]] == [0, 2, 4, 6, 8, 10]
    assert [i for i, _ in ranks[1]] == [1, 3, 5, 7, 9, 0]  # padded from the start, as DistributedSampler
    with pytest.raises(ValueError, match="rank 2"):
        EpochAwareDistributedSampler(train_set, num_replicas=2, rank=2, shuffle=False)


def test_loader_batches_drop_last_and_global_rng(train_set):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    loader = build_loader(train_set, batch_size=4, workers=0, train=True, seed=7)
    loader.sampler.set_epoch(1)
    batches = list(loader)
    assert torch.equal(torch.get_rng_state(), state)  # loader creation and iteration leave the global RNG alone
    assert len(batches) == 2 and loader.drop_last  # 11 images -> 2 full batches
    images, labels, indices = batches[0]
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and indices.dtype == torch.int64
    for image, index in zip(images, indices):
        assert torch.equal(image, train_set[(int(index), 1)][0])
    eval_loader = build_loader(train_set, batch_size=4, workers=0, train=False, seed=7)
    assert not eval_loader.drop_last and sum(len(b[2]) for b in eval_loader) == 11
    small = build_loader(train_set, batch_size=64, workers=0, train=True, seed=7)
    assert not small.drop_last and len(small) == 1  # a data set smaller than a batch still trains


def test_loader_is_independent_of_worker_count(train_set):
    def run(workers):
        loader = build_loader(train_set, batch_size=4, workers=workers, train=True, seed=7)
        loader.sampler.set_epoch(3)
        return [b for b in loader]

    single, multi = run(0), run(2)
    assert len(single) == len(multi)
    for (a_img, a_lab, a_idx), (b_img, b_lab, b_idx) in zip(single, multi):
        assert torch.equal(a_idx, b_idx) and torch.equal(a_lab, b_lab) and torch.equal(a_img, b_img)


def test_corrupt_image_error_survives_loader_workers(train_root):
    (train_root / "train" / "cat" / "train_0.png").write_bytes(b"")
    dataset = build_datasets(train_root, image_size=8, aug=False, val_ratio=0.0, seed=0).train
    loader = build_loader(dataset, batch_size=2, workers=1, train=False, seed=0)
    with pytest.raises(ImageDecodeError, match=r"train_0\.png.*check_images"):
        list(loader)


def test_loader_workers_start_after_parent_used_opencv_threads(tmp_path):
    """Regression: a forked worker calling cv2.setNumThreads after the parent ran OpenCV's pool hung forever."""
    make_folder(tmp_path, "train", {"cat": 4, "dog": 4})
    script = f"""
import cv2, numpy as np
from dataloader.datasets import build_datasets, build_loader
cv2.setNumThreads(2)
big = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
for _ in range(5):  # starts OpenCV's thread pool in the parent, as the RAM cache does
    cv2.resize(big, (16, 16), interpolation=cv2.INTER_AREA)
    cv2.GaussianBlur(big, (5, 5), 0)
dataset = build_datasets({str(tmp_path)!r}, image_size=16, aug=False, val_ratio=0.0, seed=0).train
loader = build_loader(dataset, batch_size=4, workers=1, train=False, seed=0)
print(sum(images.shape[0] for images, *_ in loader))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=str(Path(__file__).resolve().parents[1]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("8")
