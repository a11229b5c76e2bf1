"""--resize_mode letterbox|crop: the geometry, the datasets, and parity between the loader, the checkpoint, the
exports, the demo and the server for both modes on images that are not square."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config import Config
from dataloader.datasets import build_datasets
from dataloader.preprocess import (Preprocessing, center_crop_geometry, center_crop_resize, decode_image,
                                   letterbox_resize, load_image_tensor, random_resized_crop)
from tests.helpers import REPO, eager_probs, run
from utils.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def oblong(tmp_path_factory) -> Path:
    """Digits pasted into 24x40 and 40x24 noisy canvases (train 200 / val 50 / test 50), so letterbox and centre
    crop see different pixels."""
    from sklearn.datasets import load_digits

    out = tmp_path_factory.mktemp("oblong")
    digits, rng = load_digits(), np.random.default_rng(0)
    for i, (image, label) in enumerate(zip(digits.images[:300], digits.target[:300])):
        split = "train" if i < 200 else ("val" if i < 250 else "test")
        glyph = cv2.resize((image * 16).astype(np.uint8), (24, 24), interpolation=cv2.INTER_LINEAR)
        h, w = (24, 40) if i % 2 else (40, 24)
        canvas = rng.integers(0, 40, (h, w), dtype=np.uint8)
        top, left = (h - 24) // 2, (w - 24) // 2
        canvas[top:top + 24, left:left + 24] = np.maximum(canvas[top:top + 24, left:left + 24], glyph)
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), canvas)
    return out


# ---------------------------------------------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("src_hw, size, pct, expected", [
    ((100, 100), (64, 64), 1.0, (0, 0, 64, 64)),
    ((100, 100), (64, 64), 0.8, (8, 8, 80, 80)),
    ((50, 100), (64, 64), 1.0, (0, 32, 64, 128)),     # wide: the short side (height) fills the input
    ((200, 100), (32, 32), 0.5, (48, 16, 128, 64)),   # tall, half of the short side kept
    ((100, 100), (32, 64), 1.0, (16, 0, 64, 64)),     # a non-square input covers both sides
])
def test_center_crop_geometry(src_hw, size, pct, expected):
    assert center_crop_geometry(*src_hw, size, pct) == expected


def test_center_crop_keeps_the_centre_and_crop_pct_one_on_a_square_is_a_plain_resize():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 30:50] = 255  # a bar in the middle of a wide image
    out = center_crop_resize(image, (20, 20), 1.0)
    assert out.shape == (20, 20, 3)
    assert out[:, 5:15].min() == 255 and out[:, :4].max() == 0 and out[:, 16:].max() == 0
    square = np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    assert np.array_equal(center_crop_resize(square, (15, 15), 1.0),
                          cv2.resize(square, (15, 15), interpolation=cv2.INTER_AREA))


def test_random_resized_crop_is_seeded_sized_and_within_its_scale():
    image = np.arange(60 * 90 * 3, dtype=np.uint32).reshape(60, 90, 3).astype(np.uint8)
    draws = [random_resized_crop(image, (16, 24), np.random.default_rng(seed), (0.3, 0.6)) for seed in (1, 1, 2)]
    assert all(d.shape == (16, 24, 3) for d in draws)
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    # scale 1 at the image's own aspect ratio is the whole image
    whole = random_resized_crop(image, (60, 90), np.random.default_rng(0), (1.0, 1.0), (1.5, 1.5))
    assert np.array_equal(whole, image)
    # a ratio no crop of this image can have: the centre at the nearest allowed ratio (torchvision's fallback)
    tall = random_resized_crop(image, (60, 30), np.random.default_rng(0), (1.0, 1.0), (0.5, 0.5))
    assert np.array_equal(tall, image[:, 30:60])


def test_preprocessing_stores_the_mode_and_old_files_mean_letterbox():
    crop = Preprocessing((32, 32), (0.5,) * 3, (0.25,) * 3, resize_mode="crop", crop_pct=0.9)
    assert Preprocessing.from_dict(json.loads(json.dumps(crop.to_dict()))) == crop
    old = {"image_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "pad_value": 0, "channel_order": "RGB"}
    assert Preprocessing.from_dict(old).resize_mode == "letterbox"
    with pytest.raises(ValueError, match="resize_mode"):
        Preprocessing((32, 32), (0.5,) * 3, (0.25,) * 3, resize_mode="stretch")
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing((32, 32), (0.5,) * 3, (0.25,) * 3, resize_mode="crop", crop_pct=1.5)


def test_crop_datasets_draw_train_crops_per_epoch_and_centre_crop_the_others(oblong):
    splits = build_datasets(oblong, image_size=(16, 16), aug=None, val_ratio=0.0, seed=3, resize_mode="crop",
                            crop_pct=0.8, train_crop=((0.3, 1.0), (0.75, 1.333)))
    a, b, c = splits.train[(5, 0)][0], splits.train[(5, 0)][0], splits.train[(5, 1)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)  # a pure function of (seed, epoch, index)
    path = splits.val.samples[0][0]
    preprocessing = Preprocessing((16, 16), (0.5,) * 3, (0.25,) * 3, resize_mode="crop", crop_pct=0.8)
    assert torch.equal(splits.val[0][0], load_image_tensor(path, preprocessing))
    letterboxed = letterbox_resize(decode_image(path), (16, 16))
    assert not np.array_equal(splits.val[0][0].permute(1, 2, 0).numpy(), letterboxed)
    with pytest.raises(ValueError, match="--cache_images ram"):
        splits.train.cache_in_ram()


def test_the_server_fits_uploads_as_the_loader_does(oblong):
    from serving.server import decode_image_bytes

    path = next((oblong / "test").rglob("*.png"))
    for mode in ("letterbox", "crop"):
        preprocessing = Preprocessing((16, 16), (0.5,) * 3, (0.25,) * 3, resize_mode=mode, crop_pct=0.8)
        assert torch.equal(decode_image_bytes(path.read_bytes(), path.name, preprocessing),
                           load_image_tensor(path, preprocessing))


# ---------------------------------------------------------------------------------------------------------------
# end to end: train, export, demo, predict


def _demo_probs(model: Path, images: Path) -> dict[str, dict[str, float]]:
    proc = run([sys.executable, "demos/classifier.py", str(model), str(images), "--topk", "10", "--json"])
    return {Path(r["image"]).name: {p["class"]: p["probability"] for p in r["predictions"]}
            for r in json.loads(proc.stdout)}


@pytest.mark.parametrize("mode", ["letterbox", "crop"])
def test_loader_checkpoint_exports_demo_and_predict_agree(oblong, tmp_path, mode):
    ck = tmp_path / "ck"
    run([sys.executable, "main.py", "--data", str(oblong), "--model", "small_cnn", "--image_size", "20", "20",
         "--epochs", "2", "--warmup", "0", "--lr", "0.01", "-b", "32", "-j", "0", "--resize_mode", mode,
         "--crop_pct", "0.8", "--crop_scale", "0.5", "1", "--name", "run", "--checkpoint_dir", str(ck)])
    best = ck / "run" / "best.pth"
    ckpt = load_checkpoint(best)
    stored = Preprocessing.from_dict(ckpt.preprocessing)
    assert (stored.resize_mode, stored.crop_pct) == (mode, 0.8)
    assert Config.from_dict(ckpt.config).resize_mode == mode

    images = sorted((oblong / "test").rglob("*.png"))
    _, eager, _ = eager_probs(best, images)
    expected = {p.name: dict(zip(ckpt.class_names, row.tolist())) for p, row in zip(images, eager)}
    run([sys.executable, "main.py", "--jit", "--resume", str(best), "--output", str(tmp_path / "m.torchscript.pt")])
    run([sys.executable, "main.py", "--onnx", "--resume", str(best), "--output", str(tmp_path / "m.onnx")])
    submission = tmp_path / "sub.csv"
    run([sys.executable, "main.py", "--predict", str(oblong / "test"), "--resume", str(best), "--probabilities",
         "--output", str(submission), "-j", "0", "--no-amp"])  # fp32, as the eager reference
    predicted = {Path(row["filename"]).name: {c: float(row[c]) for c in ckpt.class_names}
                 for row in csv.DictReader(open(submission))}
    for source, got, tol in [("predict", predicted, 2e-6),
                             ("demo .pt", _demo_probs(tmp_path / "m.torchscript.pt", oblong / "test"), 1e-4),
                             ("demo .onnx", _demo_probs(tmp_path / "m.onnx", oblong / "test"), 1e-4)]:
        assert set(got) == set(expected), source
        worst = max(abs(got[n][c] - expected[n][c]) for n in expected for c in ckpt.class_names)
        assert worst < tol, f"{source} differs from the eager model on the {mode} inputs by {worst}"

    # The same weights on the other mode's pixels give other probabilities: the mode is really applied.
    other = Preprocessing.from_dict({**ckpt.preprocessing,
                                     "resize_mode": "letterbox" if mode == "crop" else "crop"})
    batch = torch.stack([load_image_tensor(p, other) for p in images])
    assert not torch.equal(batch, torch.stack([load_image_tensor(p, stored) for p in images]))


@pytest.mark.parametrize("flags, message", [
    (["--cache_images", "ram"], "--cache_images ram keeps images at the input size"),
    (["--decode", "device"], "--decode device letterboxes on the device"),
    (["--crop_scale", "0.5", "2"], "--crop_scale 0.5 2.0: need 0 < MIN <= MAX <= 1"),
    (["--crop_ratio", "2", "1"], "--crop_ratio 2.0 1.0: need 0 < MIN <= MAX"),
    (["--crop_pct", "0"], "--crop_pct 0.0: must be in (0, 1]"),
])
def test_crop_mode_refuses_what_it_cannot_do_in_one_line(oblong, tmp_path, flags, message):
    proc = subprocess.run([sys.executable, "main.py", "--data", str(oblong), "--model", "small_cnn", "--epochs", "1",
                           "--resize_mode", "crop", "--checkpoint_dir", str(tmp_path), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
