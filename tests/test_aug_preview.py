"""`--aug_preview N`: one PNG grid of augmented training samples, written without training."""
from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

import main as entry
from applications.aug_preview import CAPTION_LINE, GAP, caption, grid_size
from config import Config
from dataloader.mix import build_batch_augment



def preview(data: Path, tmp_path: Path, extra: list[str]) -> None:
    entry.run_command(["--data", str(data), "--image_size", "32", "32", "--checkpoint_dir", str(tmp_path / "ck"),
                "--name", "look", *extra])


def test_preview_grid_has_one_tile_per_sample(tiny_digits, tmp_path, capsys):
    preview(tiny_digits, tmp_path, ["--aug_preview", "6", "--aug", "myaugment,erasing"])
    path = tmp_path / "ck/look/aug_preview.png"
    assert str(path) in capsys.readouterr().out
    grid = cv2.imread(str(path))
    # 6 samples: 3 columns x 2 rows of 32 px images enlarged 3x to 96 px, one caption line each
    assert grid.shape == (2 * (96 + CAPTION_LINE) + 3 * GAP, 3 * 96 + 4 * GAP, 3)
    tiles = [grid[GAP + r * (96 + CAPTION_LINE + GAP):][:96, GAP + c * (96 + GAP):][:, :96]
             for r in range(2) for c in range(3)]
    assert len({t.tobytes() for t in tiles}) == 6 and all(t.std() > 10 for t in tiles)  # six real images
    assert not (tmp_path / "ck/look/last.pth").exists()  # nothing was trained


def test_preview_with_mixes_and_multi_scale_goes_to_output(tiny_digits, tmp_path, capsys):
    out = tmp_path / "previews/mixed.png"
    preview(tiny_digits, tmp_path, ["--aug_preview", "9", "--aug", "--cutmix", "--multi_scale",
                                    "--multi_scale_sizes", "24", "40", "--balance", "--output", str(out)])
    assert str(out) in capsys.readouterr().out
    grid = cv2.imread(str(out))
    augment = build_batch_augment(image_size=(32, 32), num_classes=10, seed=Config().seed, multi_scale=True,
                                  multi_scale_sizes=[24, 40])
    row_shapes = [augment.shape_for(epoch=0, step=row) for row in range(3)]  # each row is one training step
    height, width, _, _ = grid_size(row_shapes, cols=3, zoom=3, lines=2)
    assert grid.shape == (height, width, 3)


def test_preview_needs_a_positive_count_and_runs_alone(tiny_digits, tmp_path):
    with pytest.raises(ValueError, match="positive number"):
        preview(tiny_digits, tmp_path, ["--aug_preview", "0"])
    with pytest.raises(ValueError, match="choose one job"):
        preview(tiny_digits, tmp_path, ["--aug_preview", "4", "--evaluation"])


def test_captions_name_the_class_or_the_mixed_classes():
    names = ["cat", "dog", "emu"]
    assert caption(torch.tensor(2), names) == "emu"
    assert caption(torch.tensor([0.0, 1.0, 0.0]), names) == "dog"
    assert caption(torch.tensor([0.3, 0.0, 0.7]), names) == "emu 0.70 + cat 0.30"


def test_preview_of_a_checkpoint_uses_its_recipe_and_run_directory(tiny_digits, tmp_path, capsys):
    entry.run_command(["--data", str(tiny_digits), "--image_size", "32", "32", "--epochs", "1", "--warmup", "0", "-b", "8",
                "-j", "0", "--device", "cpu", "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir",
                str(tmp_path / "logs"), "--name", "run", "--aug", "gridmask", "--mixup", "--mix_prob", "0.5"])
    capsys.readouterr()
    entry.run_command(["--aug_preview", "4", "--resume", str(tmp_path / "ck/run/last.pth")])
    printed = capsys.readouterr().out
    assert "--aug gridmask; mixup 0.8 with p 0.5" in printed
    assert str(tmp_path / "ck/run/aug_preview.png") in printed
    assert cv2.imread(str(tmp_path / "ck/run/aug_preview.png")).shape[:2] == (2 * (96 + CAPTION_LINE) + 3 * GAP,
                                                                            2 * 96 + 3 * GAP)
