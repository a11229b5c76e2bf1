"""--val_ratio 0: a final model trained on all of train, without a val split (and what is refused then)."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

import main as entry
from utils.checkpoint import load_checkpoint


def args(data: Path, out: Path, name: str) -> list[str]:
    return ["--data", str(data), "--model", "small_cnn", "--image_size", "32", "32", "-b", "16", "--epochs", "2",
            "--warmup", "0", "-j", "0", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"),
            "--name", name, "--device", "cpu", "--seed", "3", "--no-channels_last", "--no-amp"]


@pytest.fixture
def train_only(tiny_digits, tmp_path) -> Path:
    data = tmp_path / "train_only"
    shutil.copytree(tiny_digits / "train", data / "train")
    return data


def test_val_ratio_zero_trains_on_everything_and_keeps_the_last_ema(train_only, tmp_path):
    entry.run_command(args(train_only, tmp_path, "all") + ["--val_ratio", "0", "--ema", "--ema_decay", "0.9"])
    run = tmp_path / "ck/all"
    best, last = load_checkpoint(run / "best.pth"), load_checkpoint(run / "last.pth")
    assert best.weights == "ema" and best.epoch == last.epoch == 1
    ema = {k[len("module."):]: v for k, v in last.ema.items() if k.startswith("module.")}  # AveragedModel's
    assert ema.keys() == best.model.keys()
    assert all(torch.equal(best.model[k], v) for k, v in ema.items())
    assert not all(torch.equal(last.model[k], v) for k, v in ema.items())
    rows = list(csv.DictReader(open(run / "summary.csv")))
    assert len(rows) == 2 and not any(k.startswith("val") for k in rows[0])
    log = (run / "train.log").read_text()
    assert "train 40 / val 0 images" in log and "without validation" in log
    entry.run_command(["--evaluation", "--resume", str(run / "best.pth"), "--split", "train"])  # evaluates as usual
    assert (run / "eval_train/report.json").is_file()


def test_without_val_the_default_ratio_carves_one_and_val_deciders_are_refused(train_only, tmp_path):
    entry.run_command(args(train_only, tmp_path, "carved") + ["--epochs", "1", "--val_ratio", "0.25"])  # 1 per class
    assert "train 30 / val 10 images" in (tmp_path / "ck/carved/train.log").read_text()
    with pytest.raises(ValueError, match="--lr_schedule plateau, --patience decide"):
        entry.run_command(args(train_only, tmp_path, "p") + ["--val_ratio", "0", "--lr_schedule", "plateau",
                                                      "--patience", "2"])


def test_val_ratio_zero_with_swa_keeps_the_swa_weights(train_only, tmp_path):
    entry.run_command(args(train_only, tmp_path, "swa") + ["--val_ratio", "0", "--epochs", "3", "--swa", "--swa_epochs", "2"])
    run = tmp_path / "ck/swa"
    best, swa = load_checkpoint(run / "best.pth"), load_checkpoint(run / "swa.pth")
    assert best.weights == "swa" and not any(k.startswith("swa_val") for k in best.metrics)
    assert all(torch.equal(best.model[k], v) for k, v in swa.model.items())
    assert "best.pth now holds the SWA weights" in (run / "train.log").read_text()
