"""Semi-supervised training (issue 16): pseudo-labelling rounds (--pseudo_label) and mean teacher (--mean_teacher)."""
from __future__ import annotations

import copy
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import main as entry
from criterions import build_criterion
from dataloader.unlabelled import read_pseudo_labels, write_pseudo_labels
from engine.objective import PseudoTargets, TrainingLoss
from engine.semi import consistency_loss, select_confident, sigmoid_rampup
from helpers import eager_probs, torchrun
from utils.checkpoint import load_checkpoint

THRESHOLD = 0.205  # after round 0 of common(): 8 of the 40 unlabelled digits reach it (top probabilities 0.12-0.46)


def common(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", "small_cnn", "--image_size", "28", "28", "-b", "8", "--epochs", "6",
            "--lr", "0.005", "--lr_schedule", "cosine", "--warmup", "0", "-j", "0", "--checkpoint_dir",
            str(out / "ck"), "--log_dir", str(out / "logs"), "--name", name, "--device", "cpu", "--seed", "3",
            "--no-channels_last", "--no-amp", *extra]


@pytest.fixture(scope="module")
def semi_data(tiny_digits, tmp_path_factory) -> tuple[Path, Path]:
    """(the tiny digits, a nested folder of 40 unlabelled images: its test split without labels)."""
    root = tmp_path_factory.mktemp("semi")
    unlabelled = root / "unlabelled"
    for i, path in enumerate(sorted((tiny_digits / "test").rglob("*.png"))):
        target = unlabelled / ("a" if i % 2 else "b/c") / f"u{i:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return tiny_digits, unlabelled


# ------------------------------------------------------------------------------------------------- pseudo-labels

def test_select_confident_keeps_rows_at_or_above_the_threshold():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert select_confident(probs, 0.7).tolist() == [1, 2, 3]
    assert select_confident(probs, 0.95).tolist() == []


def test_pseudo_targets_weigh_and_soften_only_the_pseudo_labelled_images():
    soft = np.array([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    pseudo = PseudoTargets(labelled=4, weight=0.25, soft_targets=soft, device=torch.device("cpu"))
    targets, weight = pseudo(torch.tensor([2, 0, 1]), torch.tensor([3, 5, 4]))  # index 3 labelled, 4 and 5 pseudo
    torch.testing.assert_close(weight, torch.tensor([1.0, 0.25, 0.25]))
    torch.testing.assert_close(targets, torch.tensor([[0.0, 0.0, 1.0], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]]))
    hard = PseudoTargets(labelled=4, weight=0.0, soft_targets=None, device=torch.device("cpu"))
    loss = TrainingLoss(build_criterion("softmax", num_classes=3), pseudo=hard)
    logits = torch.randn(3, 3, requires_grad=True)
    loss(logits, torch.tensor([2, 0, 1]), None, torch.tensor([0, 4, 5]), 0).backward()
    assert logits.grad[1:].abs().sum() == 0 and logits.grad[0].abs().sum() > 0  # weight 0: no pull at all


def test_pseudo_label_file_round_trip(tmp_path):
    write_pseudo_labels(tmp_path / "p.csv", [("a/1.png", "cat", 0.97, 1), ("b,2.png", "dog", 0.5, 2)])
    rows = read_pseudo_labels(tmp_path / "p.csv")
    assert [(r["path"], r["label"], r["round"]) for r in rows] == [("a/1.png", "cat", 1), ("b,2.png", "dog", 2)]
    assert rows[0]["confidence"] == pytest.approx(0.97)


def test_pseudo_label_rounds_keep_confident_images_only_and_retrain(semi_data, tmp_path):
    data, unlabelled = semi_data
    entry.run_command(common(data, tmp_path, "semi", "--pseudo_label", str(unlabelled), "--pseudo_threshold",
                             str(THRESHOLD), "--pseudo_rounds", "2"))
    run = tmp_path / "ck/semi"
    rows = read_pseudo_labels(run / "pseudo_labels.csv")
    files = sorted(unlabelled.rglob("*.png"))
    for round_ in (1, 2):
        # what the model that ended the previous round says about every unlabelled image
        _, probs, _ = eager_probs(run / f"round{round_ - 1}/last.pth", files)
        top, label = probs.max(dim=1)
        class_names = load_checkpoint(run / "round0/last.pth").class_names
        expected = {f.relative_to(unlabelled).as_posix(): (class_names[int(c)], float(p))
                    for f, p, c in zip(files, top, label) if p >= THRESHOLD}
        written = {r["path"]: (r["label"], r["confidence"]) for r in rows if r["round"] == round_}
        assert written.keys() == expected.keys(), f"round {round_}"
        assert 0 < len(written) < len(files), f"round {round_}: the threshold should split the set"
        for name, (cls, conf) in written.items():
            assert cls == expected[name][0] and conf == pytest.approx(expected[name][1], abs=1e-4)
            assert conf >= THRESHOLD
        log = (run / f"round{round_}/train.log").read_text()
        assert f"40 labelled + {len(written)} pseudo-labelled training images" in log
    supervised = load_checkpoint(run / "round0/last.pth").model
    retrained = load_checkpoint(run / "round1/last.pth").model
    assert any(not torch.equal(supervised[k], retrained[k]) for k in supervised)


def test_pseudo_label_errors_are_one_line(semi_data, tmp_path, capsys):
    data, _ = semi_data
    with pytest.raises(SystemExit):
        entry.main(common(data, tmp_path, "bad", "--pseudo_label", str(tmp_path / "nowhere")))
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --pseudo_label") and "\n" not in err
    with pytest.raises(SystemExit):
        entry.main(common(data, tmp_path, "bad", "--pseudo_threshold", "0.5"))
    assert "--pseudo_threshold belongs to --pseudo_label" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the mean teacher's two batches share one input size
        entry.main(common(data, tmp_path, "bad", "--mean_teacher", "--unlabeled", str(semi_data[1]),
                          "--progressive_size", "20"))
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --mean_teacher runs labelled and unlabelled images in one batch") and "\n" not in err
    assert err.endswith("drop --progressive_size")


def test_torchrun_labels_each_unlabelled_image_once(semi_data, tmp_path):
    data, unlabelled = semi_data
    files = sorted(unlabelled.rglob("*.png"))[:37]  # 37: the two shards are padded to 19 each
    listing = tmp_path / "unlabelled.csv"
    listing.write_text("filename\n" + "".join(f"{f}\n" for f in files))
    torchrun(2, common(data, tmp_path, "ddp", "--epochs", "1", "--pseudo_label", str(listing), "--pseudo_threshold",
                       "0", "--pseudo_rounds", "1", "--pseudo_targets", "soft", "--pseudo_weight", "0.5"))
    rows = read_pseudo_labels(tmp_path / "ck/ddp/pseudo_labels.csv")
    assert Counter(r["path"] for r in rows) == Counter(str(f) for f in files)
    assert {r["round"] for r in rows} == {1}
    assert "round 1 of 1: 40 labelled + 37 pseudo-labelled" in (tmp_path / "ck/ddp/round1/train.log").read_text()
    assert "(soft targets, weight 0.5)" in (tmp_path / "ck/ddp/round0/train.log").read_text()


# --------------------------------------------------------------------------------------------------- mean teacher

def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 5) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(2.5, 5) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(4, 5) == pytest.approx(math.exp(-5 * 0.2 ** 2))
    assert sigmoid_rampup(5, 5) == 1.0 and sigmoid_rampup(9, 5) == 1.0 and sigmoid_rampup(0, 0) == 1.0
    values = [sigmoid_rampup(t / 2, 5) for t in range(11)]
    assert values == sorted(values)


def test_consistency_is_zero_for_the_same_network_on_the_same_images_only():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).eval()
    teacher = copy.deepcopy(student)
    x, other = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    assert consistency_loss(student(x), teacher(x)).item() == 0.0
    assert consistency_loss(student(x), teacher(other)).item() > 0
    with torch.no_grad():
        teacher[1].weight.add_(0.5)
    s = student(x)
    loss = consistency_loss(s, teacher(x))
    assert loss.item() > 0
    loss.backward()
    assert teacher[1].weight.grad is None and student[1].weight.grad.abs().sum() > 0  # only the student learns


def test_mean_teacher_changes_training_and_keeps_the_teacher(semi_data, tmp_path):
    data, unlabelled = semi_data
    entry.run_command(common(data, tmp_path, "plain", "--epochs", "2"))
    entry.run_command(common(data, tmp_path, "mt", "--epochs", "2", "--mean_teacher", "--unlabeled", str(unlabelled),
                             "--consistency_rampup", "1", "--consistency_weight", "20", "--mean_teacher_decay", "0.9"))
    plain, mt = load_checkpoint(tmp_path / "ck/plain/last.pth"), load_checkpoint(tmp_path / "ck/mt/last.pth")
    assert any(not torch.equal(plain.model[k], mt.model[k]) for k in plain.model)
    assert mt.ema is not None and plain.ema is None  # the teacher is the run's EMA, saved and validated
    assert "ema_val_top1" in mt.metrics
    assert (mt.config["consistency_weight"], mt.config["mean_teacher_decay"]) == (20.0, 0.9)
    with pytest.raises(SystemExit):
        entry.main(common(data, tmp_path, "bad", "--mean_teacher"))


def test_torchrun_mean_teacher_is_the_same_network_on_both_ranks(semi_data, tmp_path):
    data, unlabelled = semi_data
    torchrun(2, common(data, tmp_path, "mt2", "--epochs", "2", "--mean_teacher", "--unlabeled", str(unlabelled),
                       "--consistency_rampup", "1", "--unlabeled_batch_size", "6"))
    log = (tmp_path / "ck/mt2/train.log").read_text()
    lines = re.findall(r"mean teacher after epoch (\d+), state checksum per rank: ([0-9a-f ]+)", log)
    assert [epoch for epoch, _ in lines] == ["1", "2"]
    for _, checksums in lines:
        ranks = checksums.split()
        assert len(ranks) == 2 and ranks[0] == ranks[1], checksums
    assert "differs between ranks" not in log
    ckpt = load_checkpoint(tmp_path / "ck/mt2/last.pth")
    assert ckpt.world_size == 2 and ckpt.ema is not None


def test_semi_split_links_disjoint_labelled_and_unlabelled_images(tiny_digits, tmp_path):
    from dataloader.semi_split import semi_split

    out, unlabelled = tmp_path / "semi", tmp_path / "unlabelled"
    semi_split(tiny_digits, out, unlabelled, labelled=2, unlabelled=1, val=1, seed=0)
    labelled = sorted(out.glob("train/*/*.png"))
    assert len(labelled) == 20 and len(list(out.glob("val/*/*.png"))) == 10
    assert len(list((out / "test").glob("*/*.png"))) == 40  # the whole test split, linked
    pool = sorted(unlabelled.iterdir())
    assert len(pool) == 10 and all(p.is_symlink() for p in pool)
    assert not {p.resolve() for p in pool} & {p.resolve() for p in labelled}
    assert {p.name.split("_")[0] for p in pool} == {p.parent.name for p in labelled}
