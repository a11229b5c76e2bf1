"""--make_curriculum and --curriculum_learning: stages, the file, weights reaching the loss, pacing, stale files; the
issue's applications together under torchrun."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import main as entry
from applications.curriculum import assign_stages
from engine.objective import CurriculumWeights, TrainingLoss
from criterions import build_criterion
from helpers import torchrun
from utils.checkpoint import load_checkpoint


def common(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", "small_cnn", "--image_size", "32", "32", "-b", "16", "--epochs", "1",
            "--warmup", "0", "-j", "0", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"),
            "--name", name, "--device", "cpu", "--seed", "5", "--no-channels_last", "--no-amp", *extra]


def test_assign_stages_by_descending_thresholds():
    scores = np.array([0.95, 0.9, 0.6, 0.5, 0.1])
    assert assign_stages(scores, [0.9, 0.5]).tolist() == [0, 0, 1, 1, 2]


def test_a_sample_with_weight_zero_does_not_move_the_weights():
    # A model without BatchNorm, so a sample can only act through its loss term.
    torch.manual_seed(0)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    curriculum = CurriculumWeights(np.array([0, 0, 0, 1, 0, 0]), np.array([1, 1, 1, 0.7, 0, 1], dtype=np.float32),
                                   pacing=[3], device=torch.device("cpu"))
    loss = TrainingLoss(build_criterion("softmax", num_classes=3), curriculum=curriculum)

    def grad(rows: list[int], epoch: int) -> torch.Tensor:
        layer = torch.nn.Linear(5, 3)
        torch.nn.init.constant_(layer.weight, 0.1)
        torch.nn.init.zeros_(layer.bias)
        loss(layer(x[rows]), y[rows], x[rows], torch.tensor(rows), epoch).backward()
        return layer.weight.grad

    # sample 4 has weight 0: the gradient is that of the batch without it
    torch.testing.assert_close(grad([0, 1, 2, 4, 5], epoch=5), grad([0, 1, 2, 5], epoch=5))
    # sample 3 is in stage 1, which enters at epoch 3: before that it weighs 0 too
    torch.testing.assert_close(grad([0, 3], epoch=2), grad([0], epoch=2))
    assert not torch.allclose(grad([0, 3], epoch=3), grad([0], epoch=3))


@pytest.fixture
def data(tiny_digits, tmp_path) -> Path:
    copy = tmp_path / "digits"
    shutil.copytree(tiny_digits, copy)
    return copy


def test_make_curriculum_then_learn_with_it(data, tmp_path):
    entry.run_command(common(data, tmp_path, "scorer", "--epochs", "2", "--lr", "0.003"))
    entry.run_command(["--make_curriculum", "--resume", str(tmp_path / "ck/scorer/best.pth"), "-j", "0",
                "--curriculum_thresholds", "0.5", "0.2", "--curriculum_weights", "1", "0.5", "0"])
    rows = list(csv.DictReader(open(data / "curriculum.txt")))
    assert len(rows) == 40 and {r["stage"] for r in rows} <= {"0", "1", "2"}
    for r in rows:
        score, stage = float(r["score"]), int(r["stage"])
        assert stage == (0 if score >= 0.5 else 1 if score >= 0.2 else 2)
        assert float(r["weight"]) == [1, 0.5, 0][stage]
    entry.run_command(common(data, tmp_path, "plain"))
    entry.run_command(common(data, tmp_path, "curriculum", "--curriculum_learning", "--curriculum_pacing", "1", "1"))
    assert "curriculum learning from" in (tmp_path / "ck/curriculum/train.log").read_text()
    plain, weighted = (load_checkpoint(tmp_path / f"ck/{n}/last.pth").model for n in ("plain", "curriculum"))
    assert not all(torch.equal(plain[k], weighted[k]) for k in plain)


def test_stale_or_missing_curriculum_is_a_clear_error(data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"curriculum\.txt, which does not exist.*--make_curriculum"):
        entry.run_command(common(data, tmp_path, "x", "--curriculum_learning"))
    (data / "curriculum.txt").write_text("path,stage,weight,score\ntrain/0/gone.png,0,1,0.9\n")
    with pytest.raises(ValueError, match=r"curriculum\.txt:2: train/0/gone\.png is not an image .* stale"):
        entry.run_command(common(data, tmp_path, "x", "--curriculum_learning"))
    first = sorted((data / "train/0").iterdir())[0].name
    (data / "curriculum.txt").write_text(f"path,stage,weight,score\ntrain/0/{first},0,1,0.9\n")
    with pytest.raises(ValueError, match=r"no entry for 39 of the 40 training images"):
        entry.run_command(common(data, tmp_path, "x", "--curriculum_learning"))
    with pytest.raises(ValueError, match="one weight per stage"):
        entry.run_command(["--make_curriculum", "--resume", "nothing.pth", "--curriculum_weights", "1"])


def test_curriculum_distillation_and_cam_under_torchrun(data, tmp_path):
    """The issue's applications under DDP: a 2-process curriculum file equals the 1-process one, a 2-process run
    trains with curriculum weights and teacher knowledge together, and 2-process CAM explains each image once."""
    entry.run_command(common(data, tmp_path, "scorer", "--epochs", "2", "--lr", "0.003"))
    scorer = str(tmp_path / "ck/scorer/best.pth")
    entry.run_command(["--make_curriculum", "--resume", scorer, "-j", "0", "--output", str(tmp_path / "one.txt")])
    torchrun(2, ["--make_curriculum", "--resume", scorer, "-j", "0"])  # → DATA/curriculum.txt
    one, two = (list(csv.DictReader(open(p))) for p in (tmp_path / "one.txt", data / "curriculum.txt"))
    assert [r["path"] for r in one] == [r["path"] for r in two] and len(two) == 40
    assert all(a["stage"] == b["stage"] and abs(float(a["score"]) - float(b["score"])) < 1e-5 for a, b in zip(one, two))
    torchrun(2, ["--knowledge", "train", "--resume", scorer, "-j", "0"])  # → DATA/distill.txt
    torchrun(2, common(data, tmp_path, "both", "--curriculum_learning", "--distill"))
    log = (tmp_path / "ck/both/train.log").read_text()
    assert "curriculum learning from" in log and "world size 2" in log and "distilling from 1 knowledge" in log, log
    torchrun(2, ["--visual_data", "val", "--resume", scorer, "--visual_method", "grad-cam", "-j", "0",
                 "--output", str(tmp_path / "cam")])
    rows = list(csv.DictReader(open(tmp_path / "cam/results.csv")))
    assert len(rows) == len({r["path"] for r in rows}) == len(list((data / "val").rglob("*.png")))
    assert all((tmp_path / "cam" / name).is_file() for name in ("index.html", "0000_image.png", "0000_cam.png"))
