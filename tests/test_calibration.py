"""Calibrated confidence and the "unknown" answer: the maths on data with a known answer, then --calibrate end to end
(checkpoint, --evaluation with --ood_data, --predict --answer, the exports, the demo, the server), and its errors."""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main as entry
from helpers import REPO, run, torchrun
from utils.calibration import (UNKNOWN, Calibration, answer_labels, answer_text, conformal_coverage_interval,
                               conformal_quantile, coverage_threshold, fit_temperature, prediction_sets, scores_to_probs, wilson_interval)
from utils.checkpoint import load_checkpoint

FAST = ["-j", "0", "--device", "cpu", "--no-amp", "--no-channels_last"]


def sampled(count: int, classes: int, temperature: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits / temperature): the temperature that calibrates them is known."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, classes, generator=g, dtype=torch.float64) * 3
    labels = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_scaling_recovers_the_temperature_that_made_the_labels(temperature):
    logits, labels = sampled(20000, 10, temperature, seed=1)
    fitted = fit_temperature(logits, labels)
    assert abs(fitted - temperature) / temperature < 0.05, fitted
    probs = scores_to_probs(logits, "ce", fitted)
    assert torch.equal(probs.argmax(1), logits.argmax(1))  # one parameter: confidence changes, the ranking does not


def test_conformal_sets_cover_new_images_at_the_chosen_rate():
    alpha, covered, trials = 0.1, [], 40
    for seed in range(trials):
        logits, labels = sampled(1000, 10, 1.0, seed=100 + seed)
        probs = torch.softmax(logits, dim=1)
        cal = Calibration(qhat=conformal_quantile(probs[:500], labels[:500], alpha), alpha=alpha, threshold=0.0)
        sets = prediction_sets(probs[500:], cal)
        covered.append(float(sets.gather(1, labels[500:].view(-1, 1)).double().mean()))
    mean = sum(covered) / trials
    # Split conformal: E[coverage] is in [1 - alpha, 1 - alpha + 1 / (n + 1)]; 20,000 test draws in all.
    assert 1 - alpha - 0.01 <= mean <= 1 - alpha + 1 / 501 + 0.01, mean


def test_threshold_accepts_the_chosen_share_and_the_answers_follow_it():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45], [0.2, 0.8]])
    threshold = coverage_threshold(probs, 0.6)  # reject the lowest 2 of 5 top probabilities (0.55, 0.6)
    assert threshold == pytest.approx(0.7)
    cal = Calibration(threshold=threshold, coverage=0.6, qhat=0.5, alpha=0.1)
    assert answer_labels(probs, cal).tolist() == [0, -1, 1, -1, 1]
    assert answer_text(probs, ["cat", "dog"], cal, "unknown") == ["cat", UNKNOWN, "dog", UNKNOWN, "dog"]
    assert answer_text(probs, ["cat", "dog"], cal, "set") == ["cat", "cat", "dog", "cat", "dog"]
    cal.qhat = 0.6  # classes with p >= 0.4 join the set
    assert answer_text(probs, ["cat", "dog"], cal, "set") == ["cat", "cat|dog", "dog", "cat|dog", "dog"]
    with pytest.raises(ValueError, match="--calibrate"):
        answer_text(probs, ["cat", "dog"], None, "unknown")


def test_too_few_images_for_the_level_put_every_class_in_the_set():
    probs = torch.softmax(torch.randn(5, 3), dim=1)
    assert conformal_quantile(probs, torch.zeros(5, dtype=torch.long), alpha=0.1) == 1.0  # ceil(6 * 0.9) = 6 > 5


def test_the_expected_coverage_interval_holds_what_repeated_calibrations_measure():
    alpha, n_cal, n_test, measured = 0.1, 200, 300, []
    for seed in range(300):
        logits, labels = sampled(n_cal + n_test, 5, 1.0, seed=1000 + seed)
        probs = torch.softmax(logits, dim=1)
        cal = Calibration(qhat=conformal_quantile(probs[:n_cal], labels[:n_cal], alpha), alpha=alpha)
        measured.append(float(prediction_sets(probs[n_cal:], cal).gather(1, labels[n_cal:].view(-1, 1)).double()
                              .mean()))
    low, high = conformal_coverage_interval(n_cal, alpha, n_test)
    inside = sum(low <= m <= high for m in measured) / len(measured)
    assert 0.91 <= inside <= 0.99, (low, high, inside)  # a 95% interval, within the noise of 300 draws
    assert wilson_interval(270, 300)[1] - wilson_interval(270, 300)[0] < high - low  # wider: calibration noise too


def test_wilson_interval_holds_the_proportion():
    low, high = wilson_interval(900, 1000)
    assert low < 0.9 < high and high - low < 0.04


# --- end to end on digits: classes 8 and 9 held out of training as the "unknown" images -----------------------------

@pytest.fixture(scope="module")
def held_out(tiny_digits, tmp_path_factory) -> tuple[Path, Path]:
    """Digits 0-7 as the data (train/val/test) and the test images of 8 and 9 as images of no trained class."""
    root = tmp_path_factory.mktemp("held_out")
    data, ood = root / "data", root / "ood"
    for split in ("train", "val", "test"):
        for folder in (tiny_digits / split).iterdir():
            if folder.name not in ("8", "9"):
                shutil.copytree(folder, data / split / folder.name)
            elif split == "test":
                shutil.copytree(folder, ood / folder.name)
    return data, ood


@pytest.fixture(scope="module")
def calibrated(held_out, tmp_path_factory) -> Path:
    """`main.py --calibrate` without --resume: trains, then calibrates the run's best.pth."""
    data, _ = held_out
    out = tmp_path_factory.mktemp("calibrated")
    entry.run_command(["--data", str(data), "--model", "small_cnn", "--image_size", "16", "16", "--epochs", "4",
                       "--warmup", "0", "--lr_schedule", "cosine", "-b", "16", "--checkpoint_dir", str(out / "ck"),
                       "--log_dir", str(out / "logs"), "--name", "run", "--calibrate", *FAST])
    return out / "ck" / "run" / "best.pth"


def test_calibrate_after_training_stores_the_record_and_improves_the_held_out_half(calibrated):
    cal = Calibration.from_dict(load_checkpoint(calibrated).calibration)
    assert cal is not None and cal.temperature != 1.0 and cal.images > 0
    assert 0 < cal.threshold < 1 and cal.coverage == 0.95 and 0 < cal.qhat <= 1 and cal.alpha == 0.1
    report = json.loads((calibrated.parent / "calibration" / "report.json").read_text())
    assert report["nll_after"] < report["nll_before"]
    assert report["ece_after"] < report["ece_before"]
    assert 0.85 <= report["held_out"]["accepted"] <= 1.0
    for name in ("reliability_before.png", "reliability_after.png"):
        assert (calibrated.parent / "calibration" / name).stat().st_size > 1000


def test_calibration_is_the_same_with_two_processes(calibrated, tmp_path):
    copy = tmp_path / "best.pth"
    shutil.copy(calibrated, copy)
    torchrun(2, ["--calibrate", "--resume", str(copy), "--output", str(tmp_path / "report"), *FAST])
    one = load_checkpoint(calibrated).calibration
    two = load_checkpoint(copy).calibration
    assert one.keys() == two.keys()
    for key in one:
        assert one[key] == pytest.approx(two[key], rel=1e-9), key


def test_evaluation_reports_selective_accuracy_coverage_and_ood_auroc(calibrated, held_out, tmp_path):
    _, ood = held_out
    report = entry.run_command(["--evaluation", "--resume", str(calibrated), "--ood_data", str(ood), "--output",
                                str(tmp_path), "-j", "0"])
    cal = report["calibration"]
    assert 0 < cal["accepted"] <= 1 and cal["set_mean_size"] >= 1
    low, high = cal["set_coverage_ci95"]
    assert low <= cal["set_coverage"] <= high
    assert report["ood"]["images"] == len(list(ood.rglob("*.png")))
    assert 0.0 <= report["ood"]["auroc"] <= 1.0 and "unknown_share" in report["ood"]
    assert json.loads((tmp_path / "report.json").read_text())["ood"]["auroc"] == report["ood"]["auroc"]


def read_answers(path: Path) -> list[str]:
    return [row["label"] for row in csv.DictReader(open(path, newline=""))]


def test_predict_answers_unknown_and_sets_from_the_calibrated_probabilities(calibrated, held_out, tmp_path):
    data, ood = held_out
    ckpt = tmp_path / "half.pth"  # a copy whose threshold turns away about half of val: some answers are unknown
    shutil.copy(calibrated, ckpt)
    entry.run_command(["--calibrate", "--resume", str(ckpt), "--reject_coverage", "0.5", "--output",
                       str(tmp_path / "report"), "-j", "0"])
    cal = Calibration.from_dict(load_checkpoint(ckpt).calibration)
    assert cal.coverage == 0.5
    unknown_answers = {}
    for images in (data / "test", ood):
        top, unknown, sets = tmp_path / "top.csv", tmp_path / "unknown.csv", tmp_path / "sets.csv"
        for answer, path in (("top", top), ("unknown", unknown), ("set", sets)):
            entry.run_command(["--predict", str(images), "--resume", str(ckpt), "--answer", answer, "--output",
                               str(path), "--probabilities", "-j", "0"])
        rows = list(csv.DictReader(open(top, newline="")))
        classes = list(rows[0])[2:]
        probs = torch.tensor([[float(r[c]) for c in classes] for r in rows])
        assert read_answers(top) == [classes[i] for i in probs.argmax(1).tolist()]
        assert read_answers(unknown) == answer_text(probs, classes, cal, "unknown")
        assert read_answers(sets) == answer_text(probs, classes, cal, "set")
        unknown_answers[images.name] = read_answers(unknown)
    known = unknown_answers["test"]
    assert 0 < known.count(UNKNOWN) < len(known)  # half of val turned away: some test images too, not all


def test_exports_carry_the_calibration_and_give_the_calibrated_probabilities(calibrated, held_out, tmp_path):
    from serving.runtime import load_exported, load_image_tensor

    _, ood = held_out
    run_dir = tmp_path / "run"
    shutil.copytree(calibrated.parent, run_dir, ignore=shutil.ignore_patterns("eval_*"))
    ckpt = run_dir / "best.pth"
    entry.run_command(["--jit", "--resume", str(ckpt)])
    entry.run_command(["--onnx", "--resume", str(ckpt)])
    reference = tmp_path / "reference.csv"
    entry.run_command(["--predict", str(ood), "--resume", str(ckpt), "--output", str(reference), "--probabilities",
                       "-j", "0", "--no-amp"])  # fp32 like the exports
    rows = list(csv.DictReader(open(reference, newline="")))
    expected = torch.tensor([[float(r[c]) for c in list(rows[0])[2:]] for r in rows])
    stored = Calibration.from_dict(load_checkpoint(ckpt).calibration)
    for export in (run_dir / "best.torchscript.pt", run_dir / "best.onnx"):
        model = load_exported(export)
        assert model.calibration.to_dict() == stored.to_dict(), export  # serving's own copy of the class
        batch = torch.stack([load_image_tensor(ood / r["filename"], model.preprocessing) for r in rows])
        assert torch.allclose(model(batch).float(), expected, atol=1e-4), export  # temperature baked in

    demo = subprocess.run([sys.executable, "demos/classifier.py", str(run_dir / "best.onnx"), str(ood), "--answer",
                           "unknown", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    answers = {Path(item["image"]).relative_to(ood).as_posix(): item["answer"] for item in json.loads(demo.stdout)}
    assert [answers[r["filename"]] for r in rows] == answer_text(expected, list(rows[0])[2:], stored, "unknown")


def test_server_answers_unknown_and_sets_when_asked(calibrated, held_out, tmp_path):
    from fastapi.testclient import TestClient

    from serving.runtime import load_exported
    from serving.server import create_app

    _, ood = held_out
    run_dir = tmp_path / "run"
    shutil.copytree(calibrated.parent, run_dir, ignore=shutil.ignore_patterns("eval_*"))
    entry.run_command(["--jit", "--resume", str(run_dir / "best.pth")])
    model = load_exported(run_dir / "best.torchscript.pt")
    files = sorted(ood.rglob("*.png"))[:6]
    with TestClient(create_app(model)) as client:
        upload = [("files", (p.name, p.read_bytes(), "image/png")) for p in files]
        top = client.post("/predict?topk=10", files=upload).json()["results"]
        probs = torch.zeros(len(files), len(model.class_names))
        for row, result in zip(probs, top):
            for entry_ in result["predictions"]:
                row[entry_["index"]] = entry_["probability"]
        unknown = client.post("/predict?answer=unknown", files=upload).json()["results"]
        sets = client.post("/predict?answer=set", files=upload).json()["results"]
        assert [r["answer"] for r in unknown] == answer_text(probs, model.class_names, model.calibration, "unknown")
        expected_sets = [[model.class_names[c] for c in row.nonzero().flatten().tolist()]
                         for row in prediction_sets(probs, model.calibration)]
        assert [r["answer"] for r in sets] == expected_sets
        assert client.post("/predict?answer=maybe", files=upload).status_code == 400
        assert client.get(f"/v2/models/{model.name}").json()["calibration"]["threshold"] == pytest.approx(
            model.calibration.threshold)


def test_uncalibrated_models_refuse_unknown_answers_with_one_line(held_out, tmp_path):
    data, ood = held_out
    entry.run_command(["--data", str(data), "--model", "small_cnn", "--image_size", "16", "16", "--epochs", "1",
                       "--warmup", "0", "-b", "16", "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir",
                       str(tmp_path / "logs"), "--name", "plain", *FAST])
    ckpt = tmp_path / "ck" / "plain" / "best.pth"
    for args in (["--predict", str(ood), "--resume", str(ckpt), "--answer", "unknown"],
                 ["--predict", str(ood), "--resume", str(ckpt), ckpt.as_posix(), "--answer", "set"],
                 ["--calibrate", "--resume", str(ckpt), "--reject_coverage", "1.5"]):
        proc = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    entry.run_command(["--jit", "--resume", str(ckpt)])
    demo = subprocess.run([sys.executable, "demos/classifier.py", str(ckpt.with_name("best.torchscript.pt")), str(ood),
                           "--answer", "set"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 2 and demo.stderr.startswith("error: ") and "--calibrate" in demo.stderr


def test_calibrate_needs_a_val_split(tiny_digits, tmp_path):
    shutil.copytree(tiny_digits / "train", tmp_path / "data" / "train")  # no val folder
    proc = subprocess.run([sys.executable, "main.py", "--data", str(tmp_path / "data"), "--val_ratio", "0", "--epochs",
                           "1", "--calibrate", "--checkpoint_dir", str(tmp_path / "ck"), *FAST], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "val" in proc.stderr, proc.stderr
    assert not (tmp_path / "ck").exists()  # refused before training: no run folder left behind
