"""dataloader.prepare: digits and Fashion-MNIST written as PNG folders that the data loader reads back."""
import gzip
import json
import os
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest

from dataloader.datasets import build_datasets
from dataloader.prepare import FASHION_MNIST_SOURCE, balanced_order, main, read_idx

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def count_per_class(split_dir) -> dict[str, int]:
    return {c: len(os.listdir(os.path.join(split_dir, c))) for c in sorted(os.listdir(split_dir))}


def test_digits_full_split_is_stratified(tmp_path, capsys):
    assert main(["digits", "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "prepare.json").read_text())
    assert manifest["counts"] == {"train": 1257, "val": 270, "test": 270}  # 1,797 images, 70/15/15
    assert manifest["class_names"] == [str(d) for d in range(10)]
    for split in ("val", "test"):
        per_class = count_per_class(tmp_path / split)
        assert sorted(per_class) == [str(d) for d in range(10)]
        assert min(per_class.values()) >= 26 and max(per_class.values()) <= 28  # ~15% of ~180 per class
    assert "train 1257, val 270, test 270" in capsys.readouterr().out
    image = cv2.imread(str(next((tmp_path / "train" / "7").iterdir())), cv2.IMREAD_UNCHANGED)
    assert image.shape == (32, 32) and image.dtype == np.uint8 and image.max() > 200


def test_digits_limit_idempotence_and_loader(tmp_path, capsys):
    args = ["digits", "--out", str(tmp_path), "--limit", "30", "--seed", "1"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "prepare.json").read_text())
    assert manifest["counts"] == {"train": 30, "val": 30, "test": 30}
    assert set(count_per_class(tmp_path / "train").values()) == {3}  # --limit keeps classes balanced
    first = sorted(p.name for p in (tmp_path / "train" / "0").iterdir())
    mtime = (tmp_path / "prepare.json").stat().st_mtime_ns
    capsys.readouterr()

    assert main(args) == 0  # same parameters: nothing is rewritten
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "prepare.json").stat().st_mtime_ns == mtime

    assert main(["digits", "--out", str(tmp_path), "--limit", "20", "--seed", "1"]) == 0  # new parameters: redone
    assert json.loads((tmp_path / "prepare.json").read_text())["counts"]["train"] == 20
    assert sum(count_per_class(tmp_path / "train").values()) == 20  # no leftovers of the previous copy
    assert {p.name for p in (tmp_path / "train" / "0").iterdir()} < set(first)  # a prefix of the same order

    splits = build_datasets(tmp_path, image_size=32, aug=False, val_ratio=0.1, seed=0)
    assert splits.class_names == [str(d) for d in range(10)] and splits.val_source == "folder"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 20, 20)


def test_cli_entry_point(tmp_path):
    cmd = [sys.executable, "-m", "dataloader.prepare", "digits", "--out", str(tmp_path), "--limit", "10"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote digits" in result.stdout and "train 10, val 10, test 10" in result.stdout


def test_refuses_to_overwrite_foreign_data(tmp_path, capsys):
    (tmp_path / "train" / "mine").mkdir(parents=True)
    assert main(["digits", "--out", str(tmp_path), "--limit", "5"]) == 2
    assert "without a prepare.json" in capsys.readouterr().err
    assert os.listdir(tmp_path / "train") == ["mine"]


def test_balanced_order_prefixes_cover_all_classes():
    labels = np.repeat(np.arange(4), [10, 3, 7, 5])
    order = balanced_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(len(labels)))
    assert sorted(labels[order[:4]].tolist()) == [0, 1, 2, 3]
    assert Counter(labels[order[:12]].tolist()) == {0: 3, 1: 3, 2: 3, 3: 3}
    assert np.array_equal(order, balanced_order(labels, seed=0))


def test_read_idx_parses_header(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    path = tmp_path / "x-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes())
    np.testing.assert_array_equal(read_idx(str(path)), images)
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(path))


def test_fashion_mnist_missing_source_says_what_to_install(tmp_path, capsys):
    assert main(["fashion-mnist", "--out", str(tmp_path / "out"), "--source", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "--source" in err


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_SOURCE),
                    reason=f"{FASHION_MNIST_SOURCE} missing: apt-get install dataset-fashion-mnist")
def test_fashion_mnist_limit(tmp_path):
    assert main(["fashion-mnist", "--out", str(tmp_path), "--limit", "40"]) == 0
    manifest = json.loads((tmp_path / "prepare.json").read_text())
    assert manifest["counts"] == {"train": 40, "val": 40, "test": 40}
    assert manifest["class_names"][0] == "T-shirt_top" and manifest["class_names"][9] == "Ankle_boot"
    assert set(count_per_class(tmp_path / "test").values()) == {4}
    image = cv2.imread(str(next((tmp_path / "val" / "Trouser").iterdir())), cv2.IMREAD_UNCHANGED)
    assert image.shape == (28, 28) and image.dtype == np.uint8
    splits = build_datasets(tmp_path, image_size=28, aug=False, val_ratio=0.1, seed=0)
    assert sorted(splits.class_names) == sorted(manifest["class_names"])


def test_val_ratio_zero_is_refused_for_digits(tmp_path, capsys):
    assert main(["digits", "--out", str(tmp_path), "--limit", "5", "--val_ratio", "0"]) == 2
    assert "--val_ratio must be in (0, 0.5), got 0" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_SOURCE),
                    reason=f"{FASHION_MNIST_SOURCE} missing: apt-get install dataset-fashion-mnist")
def test_fashion_mnist_val_ratio_zero_writes_no_val(tmp_path):
    assert main(["fashion-mnist", "--out", str(tmp_path), "--limit", "30", "--val_ratio", "0"]) == 0
    assert json.loads((tmp_path / "prepare.json").read_text())["counts"] == {"train": 30, "test": 30}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepare.json", "test", "train"]


def test_classes_and_train_per_class_select_a_transfer_task():
    """--classes keeps (and renumbers) some classes; --train_per_class N keeps N training images of each, val and
    test whole."""
    from dataloader.prepare import FASHION_MNIST_CLASSES, select_classes

    labels = np.repeat(np.arange(10), 30)
    split = (np.zeros((300, 2, 2), np.uint8), labels, np.arange(300))
    splits, names = select_classes({"train": split, "val": split, "test": split}, FASHION_MNIST_CLASSES,
                                   [7, 5], train_per_class=4, seed=0)
    assert names == ("Sneaker", "Sandal")
    train_images, train_labels, train_ids = splits["train"]
    assert Counter(train_labels.tolist()) == {0: 4, 1: 4} and set(labels[train_ids]) == {5, 7}
    assert all(labels[i] == (7, 5)[label] for i, label in zip(train_ids, train_labels))
    assert len(splits["val"][1]) == len(splits["test"][1]) == 60
    with pytest.raises(ValueError, match="--classes takes distinct class indices 0..9"):
        select_classes(splits, FASHION_MNIST_CLASSES, [3, 3], None, 0)
