"""--visual_data: CAM, Grad-CAM and Grad-CAM++ overlays, the contact sheet, and heat maps that peak where the model
looks (a model trained to find a bright square in the top-left quarter)."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import main as entry
from applications.visualize import canonical_method, find_target_layer
from models import build_model

SIZE = 32


def draw(rng: np.random.Generator, with_square: bool) -> np.ndarray:
    image = rng.integers(0, 60, size=(SIZE, SIZE, 3), dtype=np.uint8)
    if with_square:
        r, c = rng.integers(1, 8, size=2)  # somewhere inside the top-left quarter
        image[r:r + 7, c:c + 7] = 255
    return image


@pytest.fixture(scope="module")
def square_model(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, best.pth of a small_cnn that tells 'square' images from 'plain' ones)."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("val", 8), ("test", 8)):
        for name in ("plain", "square"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                cv2.imwrite(str(root / split / name / f"{i:03d}.png"), draw(rng, name == "square"))
    out = root / "runs"
    entry.run_command(["--data", str(root), "--model", "small_cnn", "--image_size", str(SIZE), str(SIZE), "-b", "16",
                "--epochs", "4", "--lr", "0.003", "--warmup", "0", "-j", "0", "--checkpoint_dir", str(out),
                "--log_dir", str(root / "logs"), "--name", "sq", "--device", "cpu", "--seed", "0",
                "--no-channels_last", "--no-amp"])
    return root, out / "sq/best.pth"


@pytest.mark.parametrize("method", ["cam", "grad-cam", "grad-camm++"])
def test_heat_maps_peak_on_the_square_and_files_are_written(square_model, tmp_path, method):
    root, ckpt = square_model
    out = tmp_path / method
    entry.run_command(["--visual_data", "test", "--resume", str(ckpt), "--visual_method", method, "--output", str(out),
                "-j", "0", "--log_dir", str(tmp_path / "logs")])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 16 and (out / "index.html").read_text().count("<figure") == 16
    for r in rows:
        for kind in ("image", "cam"):
            image = cv2.imread(str(out / f"{int(r['index']):04d}_{kind}.png"))
            assert image.shape == (SIZE, SIZE, 3)
    squares = [r for r in rows if r["true"] == "square"]
    assert sum(r["predicted"] == "square" for r in squares) >= 7
    inside = [int(r["peak_row"]) < 18 and int(r["peak_col"]) < 18 for r in squares if r["predicted"] == "square"]
    assert sum(inside) >= 0.85 * len(inside), (method, [(r["peak_row"], r["peak_col"]) for r in squares])
    assert any((tmp_path / "logs").rglob("events.out.tfevents.*"))


def test_folder_input_target_layer_and_errors(square_model, tmp_path):
    root, ckpt = square_model
    out = tmp_path / "folder"
    entry.run_command(["--visual_data", str(root / "val"), "--resume", str(ckpt), "--visual_method", "grad-cam++",
                "--output", str(out), "--visual_limit", "3", "-j", "0", "--target_layer", "features",
                "--log_dir", str(tmp_path / "logs")])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 3 and {r["true"] for r in rows} <= {"plain", "square"}  # class folders give the truth
    with pytest.raises(ValueError, match="unknown --visual_method"):
        canonical_method("gradcam")
    with pytest.raises(ValueError, match="--target_layer 'nope' is not a module"):
        entry.run_command(["--visual_data", "val", "--resume", str(ckpt), "--target_layer", "nope", "-j", "0",
                    "--output", str(tmp_path / "x")])


@pytest.mark.parametrize(("name", "expected"), [("resnet18", "layer4"), ("wrn10_4", "features"),
                                                ("resnet9_half", "features"), ("airbench_m", "features"),
                                                ("mobilenet_v3_small", "features")])
def test_target_layer_is_the_last_spatial_map(name, expected):
    model = build_model(name, num_classes=3).eval()
    assert find_target_layer(model, torch.randn(1, 3, 64, 64))[0] == expected
