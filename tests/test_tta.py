"""Test-time augmentation: the views, probabilities equal to a hand computation, and --evaluation --tta under
one and two processes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import main as entry
from engine.inference import predict_probs
from config import Config
from dataloader.preprocess import Preprocessing, normalize_on_device
from dataloader.tta import TTA_GROUPS, build_tta, parse_tta, shift_image
from helpers import run, torchrun


def test_parse_names_and_refuse_unknown_or_repeated():
    assert parse_tta(None) == () and parse_tta("") == ()
    assert parse_tta(" flip , crop") == ("flip", "crop")
    with pytest.raises(ValueError, match=r"unknown --tta view group 'flips' \(did you mean 'flip'\?\)"):
        parse_tta("flips")
    with pytest.raises(ValueError, match="twice"):
        parse_tta("flip,flip")


@pytest.mark.parametrize("spec,count", [("flip", 2), ("crop", 5), ("scale", 3), ("flip,crop", 10),
                                        ("flip,crop,scale", 30)])
def test_view_count_is_the_product_of_the_groups(spec, count):
    tta = build_tta(spec, image_size=(32, 32))
    views = list(tta.views(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)))
    assert len(tta) == len(views) == count
    assert all(v.dtype == torch.uint8 and v.shape[:2] == (2, 3) for v in views)


def test_every_group_is_covered_above():
    assert set(TTA_GROUPS) == {"flip", "crop", "scale"}  # a new group needs a count and a view check here


def test_flip_view_is_the_mirror_and_identity_comes_first():
    batch = torch.randint(0, 256, (2, 3, 8, 10), dtype=torch.uint8)
    first, second = build_tta("flip", image_size=(8, 10)).views(batch)
    assert torch.equal(first, batch) and torch.equal(second, batch.flip(-1))


def test_crop_views_shift_content_and_pad_with_letterbox_zero():
    batch = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    shifted = shift_image(batch, 1, -1)  # down one row, left one column
    expected = torch.tensor([[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]], dtype=torch.uint8)
    assert torch.equal(shifted[0, 0], expected)
    tta = build_tta("crop", image_size=(32, 32))
    assert tta.shift == 2  # 1/16 of the side
    views = list(tta.views(torch.full((1, 1, 32, 32), 200, dtype=torch.uint8)))
    assert torch.equal(views[0], torch.full((1, 1, 32, 32), 200, dtype=torch.uint8))
    for view in views[1:]:  # each corner crop leaves a 2-pixel band of letterbox padding on two sides
        assert int((view == 0).sum()) == 32 * 32 - 30 * 30


def test_scale_views_have_the_scaled_sizes():
    views = list(build_tta("scale", image_size=(32, 24)).views(torch.zeros(1, 3, 32, 24, dtype=torch.uint8)))
    assert [tuple(v.shape[-2:]) for v in views] == [(28, 21), (32, 24), (36, 27)]


class Pooled(nn.Module):
    """A conv + global pooling network: any input size works, as TTA's scale views need."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).amax(dim=(2, 3)))


@pytest.mark.parametrize("criterion", ["softmax", "bce"])
def test_probabilities_are_the_mean_over_views_by_hand(criterion):
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    labels, indices = torch.tensor([0, 1, 2, 0, 1]), torch.arange(5)
    loader = [(images[:3], labels[:3], indices[:3]), (images[3:], labels[3:], indices[3:])]
    cfg = Config(criterion=criterion, amp=False, channels_last=False, image_size=[16, 16])
    prep = Preprocessing(image_size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    model = Pooled().eval()
    tta = build_tta("flip,scale", image_size=(16, 16))
    _, probs, targets = predict_probs(model, loader, cfg, prep, torch.device("cpu"), tta)

    def class_probs(view: torch.Tensor) -> torch.Tensor:
        logits = model(normalize_on_device(view, prep.mean, prep.std))
        if criterion == "bce":
            p = torch.sigmoid(logits)
            return p / p.sum(1, keepdim=True)
        return torch.softmax(logits, 1)

    with torch.no_grad():
        views = [images, images.flip(-1)]
        for size in (14, 18):
            small = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                    align_corners=False, antialias=True).round().clamp(0, 255)
            views += [small.to(torch.uint8), small.to(torch.uint8).flip(-1)]
        expected = sum(class_probs(v) for v in views) / len(views)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-6)
    assert torch.equal(targets, labels)
    _, plain, _ = predict_probs(model, loader, cfg, prep, torch.device("cpu"))
    assert torch.allclose(plain, class_probs(images), atol=1e-6)


def test_tta_without_evaluation_is_refused():
    with pytest.raises(ValueError, match="--tta is used by --evaluation and --predict only"):
        entry.run_command(["--tta", "flip"])


def test_evaluation_with_tta_one_and_two_processes_agree(tiny_digits, tmp_path):
    entry.run_command(["--data", str(tiny_digits), "--epochs", "1", "--warmup", "0", "-b", "8", "-j", "0",
                "--image_size", "32", "32", "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir",
                str(tmp_path / "logs"), "--name", "run", "--device", "cpu", "--no-amp", "--no-channels_last"])
    ckpt = tmp_path / "ck" / "run" / "last.pth"
    entry.run_command(["--evaluation", "--resume", str(ckpt), "--split", "val", "-j", "0", "--tta"])
    report = json.loads((tmp_path / "ck" / "run" / "eval_val_tta_flip" / "report.json").read_text())
    assert report["tta"] == "flip (2 views)"
    two = tmp_path / "two"
    torchrun(2, ["--evaluation", "--resume", str(ckpt), "--split", "val", "-j", "0", "--tta", "flip,crop",
                 "--output", str(two)])
    one = tmp_path / "one"
    run([sys.executable, "main.py", "--evaluation", "--resume", str(ckpt), "--split", "val", "-j", "0",
         "--tta", "flip,crop", "--output", str(one)])
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert r1["tta"] == r2["tta"] == "flip+crop (10 views)" and r2["world_size"] == 2
    for key in ("samples", "top1", "confusion_matrix"):
        assert r1[key] == r2[key], key
    assert Path(ckpt).exists()
