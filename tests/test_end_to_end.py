"""The product as a user runs it: main.py training, resume, torchrun DDP, evaluation, export and the demo."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

import main as entry
from engine.components import preprocessing_of
from engine.training import NonFiniteLossError
from config import Config
from dataloader.preprocess import ImageDecodeError, load_image_tensor, normalize_on_device
from helpers import run, torchrun
from models import build_model
from utils.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Real digits images; 101 per split so the validation set has an odd size (DDP padding matters)."""
    out = tmp_path_factory.mktemp("data") / "digits"
    run([sys.executable, "-m", "dataloader.prepare", "digits", "--out", str(out), "--limit", "101"])
    return out


def common_args(data: Path, out: Path, name: str) -> list[str]:
    return ["--data", str(data), "--model", "small_cnn", "--image_size", "32", "32", "-b", "16", "--lr", "0.003",
            "--warmup", "1", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--name", name,
            "--device", "cpu", "--seed", "7",
            "--no-channels_last", "--no-amp"]  # explicit: the auto probe could pick differently between runs


@pytest.fixture(scope="module")
def resumed_runs(digits, tmp_path_factory) -> tuple[Path, Path]:
    """A 4-epoch run, and the same run stopped after 2 epochs and resumed for the other 2."""
    out = tmp_path_factory.mktemp("runs")
    entry.run_command(common_args(digits, out, "full") + ["--epochs", "4", "--aug", "-j", "2"])
    entry.run_command(common_args(digits, out, "split") + ["--epochs", "4", "--aug", "-j", "2", "--stop_epoch", "2"])
    assert load_checkpoint(out / "ck/split/last.pth").epoch == 1
    entry.run_command(["--resume", str(out / "ck/split/last.pth"), "-j", "2"])
    return out / "ck/full", out / "ck/split"


def test_resume_continues_a_run_exactly(resumed_runs):
    full, split = (load_checkpoint(d / "last.pth") for d in resumed_runs)
    assert full.epoch == split.epoch == 3
    for key, tensor in full.model.items():
        assert torch.equal(tensor, split.model[key]), f"{key} differs after resume"
    assert full.best_top1 == split.best_top1
    rows = list(csv.DictReader(open(resumed_runs[1] / "summary.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]


def test_checkpoint_carries_config_classes_and_preprocessing(resumed_runs):
    ckpt = load_checkpoint(resumed_runs[0] / "best.pth")
    assert ckpt.class_names == [str(i) for i in range(10)]
    assert ckpt.preprocessing["image_size"] in ([32, 32], (32, 32))
    assert Config.from_dict(ckpt.config).epochs == 4
    assert all(value is not None for value in (ckpt.optimizer, ckpt.scheduler, ckpt.scaler, ckpt.rng, ckpt.metrics))
    assert (resumed_runs[0] / "train.log").read_text().count("epoch 4/4") == 1
    assert any((resumed_runs[0].parents[1] / "logs" / "full").iterdir())  # TensorBoard event file


def test_torchrun_two_processes_equal_single_process_metrics(digits, tmp_path):
    args = common_args(digits, tmp_path, "ddp") + ["--epochs", "2", "-j", "0"]
    torchrun(2, args)
    ckpt_path = tmp_path / "ck/ddp/last.pth"
    one = tmp_path / "eval1"
    two = tmp_path / "eval2"
    run([sys.executable, "main.py", "--evaluation", "--resume", str(ckpt_path), "--split", "val",
         "--output", str(one), "-j", "0"])
    torchrun(2, ["--evaluation", "--resume", str(ckpt_path), "--split", "val", "--output", str(two), "-j", "0"])
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert r1["samples"] == r2["samples"] == 101
    assert r2["world_size"] == 2
    for key in ("top1", "top5", "confusion_matrix", "per_class"):
        assert r1[key] == r2[key], key
    # the validation accuracy logged by the 2-process training equals the single-process evaluation
    last_row = list(csv.DictReader(open(tmp_path / "ck/ddp/summary.csv")))[-1]
    assert float(last_row["val_top1"]) == pytest.approx(r1["top1"], abs=1e-9)


def test_jit_export_and_demo_agree_with_eager_model(resumed_runs, digits, tmp_path):
    ckpt_path = resumed_runs[0] / "best.pth"
    exported = tmp_path / "model.pt"
    proc = run([sys.executable, "main.py", "--jit", "--resume", str(ckpt_path), "--output", str(exported)])
    assert "top-1 agreement 100.0%" in proc.stdout
    images = sorted((digits / "test").rglob("*.png"))[:12]
    demo = run([sys.executable, "demos/classifier.py", str(exported), str(digits / "test"), "--topk", "3", "--json"])
    results = {r["image"]: r["predictions"] for r in json.loads(demo.stdout)}
    assert len(results) == 101
    ckpt = load_checkpoint(ckpt_path)
    cfg = Config.from_dict(ckpt.config)
    model = build_model(cfg.model, num_classes=10)
    model.load_state_dict(ckpt.model)
    model.eval()
    pre = preprocessing_of(cfg)
    batch = torch.stack([load_image_tensor(p, pre) for p in images])
    with torch.no_grad():
        probs = torch.softmax(model(normalize_on_device(batch, pre.mean, pre.std, channels_last=False)), dim=1)
    for path, p in zip(images, probs):
        top = results[str(path)]
        assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
        assert top[0]["class"] == ckpt.class_names[int(p.argmax())]
        assert top[0]["probability"] == pytest.approx(float(p.max()), abs=1e-5)
    text = run([sys.executable, "demos/classifier.py", str(exported), str(images[0])]).stdout
    assert text.startswith(str(images[0]) + ": ")


def test_evaluation_writes_report_files(resumed_runs):
    ckpt_path = resumed_runs[0] / "best.pth"
    report = entry.run_command(["--evaluation", "--resume", str(ckpt_path), "-j", "0"])
    out = resumed_runs[0] / "eval_test"
    data = json.loads((out / "report.json").read_text())
    assert data["samples"] == 101 and 0 <= data["top1"] <= 100 and data["top5"] >= data["top1"]
    assert len(data["confusion_matrix"]) == 10 and set(data["per_class"]) == {str(i) for i in range(10)}
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "reliability_diagram.png").stat().st_size > 1000
    assert 0.5 <= data["macro_auroc"] <= 1 and 0 <= data["ece"] <= 1 and len(data["reliability"]) == 15
    assert all(0 <= c["auroc"] <= 1 and 0 <= c["ap"] <= 1 for c in data["per_class"].values())
    assert report == data


def test_nonfinite_loss_stops_with_a_clear_message(digits, tmp_path):
    args = common_args(digits, tmp_path, "nan") + ["--epochs", "2", "-j", "0", "--optimizer", "sgd", "--lr", "1e30",
                                                   "--warmup", "0", "--log_interval", "1"]
    with pytest.raises(NonFiniteLossError, match="Lower --lr"):
        entry.run_command(args)
    assert not (tmp_path / "ck/nan/last.pth").exists()


def test_corrupt_training_image_names_the_file(digits, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (data / split / cls).mkdir(parents=True)
            for i, src in enumerate(sorted((digits / split / str(int(cls == "b"))).glob("*.png"))[:4]):
                (data / split / cls / f"{i}.png").write_bytes(src.read_bytes())
    (data / "train/a/broken.png").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"broken\.png[\s\S]*check_images"):
        entry.run_command(common_args(data, tmp_path, "bad") + ["--epochs", "2", "-j", "0", "-b", "3"])


def test_num_classes_mismatch_and_missing_resume_are_clear(digits, tmp_path):
    with pytest.raises(ValueError, match="--num_classes 3 but"):
        entry.run_command(common_args(digits, tmp_path, "x") + ["--num_classes", "3", "-j", "0"])
    with pytest.raises(ValueError, match="--evaluation needs --resume"):
        entry.run_command(["--evaluation"])
