"""Knowledge files, --knowledge, offline and online distillation, K-fold splits and the CV report."""
from __future__ import annotations

import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main as entry
from criterions import build_criterion
from criterions.distill import distillation_loss, temper
from dataloader.datasets import build_datasets, kfold_split
from dataloader.knowledge import (KnowledgeFileError, merge_knowledge, read_knowledge, teacher_probabilities,
                                  write_knowledge)
from helpers import torchrun
from utils.checkpoint import load_checkpoint
from utils.cv_report import summarize

CLASSES = ["a", "b", "c"]


def common(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", "small_cnn", "--image_size", "32", "32", "-b", "16", "--epochs", "1",
            "--warmup", "0", "-j", "0", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"),
            "--name", name, "--device", "cpu", "--seed", "3", "--no-channels_last", "--no-amp", *extra]


@pytest.fixture(scope="module")
def teacher(tiny_digits, tmp_path_factory) -> tuple[Path, Path]:
    """(a private copy of the tiny digits data, a 2-epoch small_cnn teacher's best.pth)."""
    out = tmp_path_factory.mktemp("teacher")
    data = out / "digits"
    shutil.copytree(tiny_digits, data)
    entry.run_command(common(data, out, "teacher", "--epochs", "2", "--lr", "0.003"))
    return data, out / "ck/teacher/best.pth"


# ---------------------------------------------------------------------------------------------------------- files

def test_knowledge_file_round_trip_and_clear_errors(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]], dtype=np.float32)
    file = tmp_path / "distill.txt"
    write_knowledge(file, ["train/a/1.png", "train/b/2.png"], probs, CLASSES)
    assert file.read_text().splitlines()[0] == "path,a,b,c"
    table = read_knowledge(file, CLASSES)
    np.testing.assert_allclose(table["train/a/1.png"], probs[0], atol=1e-6)
    with pytest.raises(KnowledgeFileError, match=r"distill\.txt:1: classes .* do not match"):
        read_knowledge(file, ["a", "b"])
    file.write_text("path,a,b,c\ntrain/a/1.png,0.5,0.5\n")
    with pytest.raises(KnowledgeFileError, match=r"distill\.txt:2: 2 probabilities for 3 classes"):
        read_knowledge(file, CLASSES)
    file.write_text("path,a,b,c\ntrain/a/1.png,0.5,0.5,0.5\n")
    with pytest.raises(KnowledgeFileError, match=r":2: probabilities must be >= 0 and sum to 1"):
        read_knowledge(file, CLASSES)


def test_teacher_probabilities_average_files_and_name_stale_lines(tmp_path):
    root = tmp_path / "data"
    paths = [str(root / "train/a/1.png"), str(root / "train/b/2.png")]
    write_knowledge(root / "distill_1.txt", ["train/a/1.png", "train/b/2.png"],
                    np.array([[0.6, 0.4, 0], [0, 1, 0]], dtype=np.float32), CLASSES)
    write_knowledge(root / "distill_2.txt", ["train/b/2.png", "train/a/1.png"],  # any order
                    np.array([[0, 0, 1], [0.2, 0.8, 0]], dtype=np.float32), CLASSES)
    files = [str(root / "distill_1.txt"), str(root / "distill_2.txt")]
    np.testing.assert_allclose(teacher_probabilities(files, root, paths, CLASSES),
                               [[0.4, 0.6, 0], [0, 0.5, 0.5]], atol=1e-6)
    with pytest.raises(KnowledgeFileError, match=r"distill_1\.txt:3: train/b/2\.png is not an image"):
        teacher_probabilities(files, root, paths, CLASSES, known_paths=paths[:1])
    with pytest.raises(KnowledgeFileError, match=r"distill_1\.txt has no probabilities for 1 of the 3"):
        teacher_probabilities(files, root, paths + [str(root / "train/c/3.png")], CLASSES)


def test_merge_out_of_fold_files(tmp_path):
    write_knowledge(tmp_path / "f0.txt", ["x.png"], np.array([[1, 0, 0]], dtype=np.float32), CLASSES)
    write_knowledge(tmp_path / "f1.txt", ["y.png"], np.array([[0, 0, 1]], dtype=np.float32), CLASSES)
    assert merge_knowledge(str(tmp_path / "all.txt"), [str(tmp_path / "f0.txt"), str(tmp_path / "f1.txt")]) == 2
    assert sorted(read_knowledge(tmp_path / "all.txt", CLASSES)) == ["x.png", "y.png"]
    with pytest.raises(KnowledgeFileError, match="disjoint"):
        merge_knowledge(str(tmp_path / "bad.txt"), [str(tmp_path / "f0.txt"), str(tmp_path / "all.txt")])


# ----------------------------------------------------------------------------------------------------------- loss

def test_distillation_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    logits, teacher_logits = torch.randn(5, 4), torch.randn(5, 4)
    targets = torch.tensor([0, 1, 2, 3, 0])
    weight = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5])
    ce = build_criterion("softmax", num_classes=4)
    alpha, T = 0.3, 2.5
    p = torch.softmax(teacher_logits / T, dim=1)  # tempering probabilities == tempering logits
    torch.testing.assert_close(temper(torch.softmax(teacher_logits, dim=1), T), p)
    q = torch.log_softmax(logits / T, dim=1)
    kl = (p * (p.log() - q)).sum(1) * T * T
    hard = F.cross_entropy(logits, targets, reduction="none")
    expected = alpha * (kl * weight).sum() / weight.sum() + (1 - alpha) * (hard * weight).sum() / weight.sum()
    got = distillation_loss(logits, targets, torch.softmax(teacher_logits, dim=1), ce, alpha=alpha, temperature=T,
                            weight=weight)
    torch.testing.assert_close(got, expected)
    # alpha 0 is the criterion itself; T = 1 has the gradient of cross-entropy on labels mixed alpha : 1 - alpha
    assert torch.equal(distillation_loss(logits, targets, p, ce, alpha=0.0, temperature=T), ce(logits, targets))
    z = logits.clone().requires_grad_(True)
    distillation_loss(z, targets, p, ce, alpha=0.2, temperature=1.0).backward()
    mixed = 0.2 * p + 0.8 * F.one_hot(targets, 4)
    z2 = logits.clone().requires_grad_(True)
    (-(mixed * torch.log_softmax(z2, dim=1)).sum(1).mean()).backward()
    torch.testing.assert_close(z.grad, z2.grad)


# ---------------------------------------------------------------------------------------------------- end to end

def test_knowledge_is_the_same_with_two_processes_and_feeds_distillation(teacher, tmp_path):
    data, ckpt = teacher
    entry.run_command(["--knowledge", "train", "--resume", str(ckpt), "--output", str(tmp_path / "one/distill.txt"),
                "-j", "0"])
    torchrun(2, ["--knowledge", "train", "--resume", str(ckpt), "--output", str(tmp_path / "two/distill.txt"),
                 "-j", "0"])
    one, two = (read_knowledge(tmp_path / d / "distill.txt") for d in ("one", "two"))
    assert one.keys() == two.keys() and len(one) == 40  # the train split (the data has a val folder)
    assert all(np.allclose(one[k], two[k], atol=2e-6) for k in one)
    labels = read_knowledge(tmp_path / "one/label.txt")
    assert all(labels[k].max() == 1.0 and k.split("/")[1] == str(int(labels[k].argmax())) for k in labels)


def test_alpha_zero_distillation_equals_plain_training(teacher, tmp_path):
    data, ckpt = teacher
    entry.run_command(["--knowledge", "train", "--resume", str(ckpt), "-j", "0"])  # DATA/distill.txt
    try:
        entry.run_command(common(data, tmp_path, "plain"))
        entry.run_command(common(data, tmp_path, "alpha0", "--distill", "--distill_alpha", "0"))
        entry.run_command(common(data, tmp_path, "alpha7", "--distill", "--distill_alpha", "0.7", "--distill_T", "2"))
    finally:
        (data / "distill.txt").unlink()
        (data / "label.txt").unlink()
    plain, alpha0, alpha7 = (load_checkpoint(tmp_path / f"ck/{n}/last.pth").model
                             for n in ("plain", "alpha0", "alpha7"))
    assert all(torch.equal(plain[k], alpha0[k]) for k in plain)
    assert not all(torch.equal(plain[k], alpha7[k]) for k in plain)
    assert "distilling from 1 knowledge file(s) (distill.txt)" in (tmp_path / "ck/alpha7/train.log").read_text()


def test_online_teacher_and_clear_errors(teacher, tmp_path):
    data, ckpt = teacher
    before = load_checkpoint(ckpt).model
    entry.run_command(common(data, tmp_path, "online", "--teacher", "small_cnn", "--teacher_ckpt", str(ckpt),
                      "--cutmix", "1.0"))  # a live teacher sees the mixed images
    assert "online distillation from small_cnn" in (tmp_path / "ck/online/train.log").read_text()
    assert all(torch.equal(v, load_checkpoint(ckpt).model[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="--teacher wrn10_4 but .* holds a small_cnn"):
        entry.run_command(common(data, tmp_path, "x", "--teacher", "wrn10_4", "--teacher_ckpt", str(ckpt)))
    with pytest.raises(ValueError, match=r"trained on 32x32 inputs .* but this run feeds 28x28 inputs"):
        entry.run_command(common(data, tmp_path, "x", "--teacher", "small_cnn", "--teacher_ckpt", str(ckpt), "--image_size",
                          "28", "28"))  # the student's 28x28 batch is not what the teacher learned on
    with pytest.raises(ValueError, match="--cutmix mixes images"):
        entry.run_command(common(data, tmp_path, "x", "--distill", "--cutmix", "1.0"))
    with pytest.raises(KnowledgeFileError, match="found no distill"):
        entry.run_command(common(data, tmp_path, "x", "--distill"))


# --------------------------------------------------------------------------------------------------------- K-fold

def test_kfold_splits_are_disjoint_stratified_and_cover_train():
    labels = [c for c, n in (("x", 20), ("y", 10), ("z", 5)) for _ in range(n)]
    held_out = [kfold_split(labels, 5, i, seed=1)[1] for i in range(5)]
    assert sorted(sum(held_out, [])) == list(range(len(labels)))
    for fold, positions in enumerate(held_out):
        assert Counter(labels[p] for p in positions) == {"x": 4, "y": 2, "z": 1}
        train = kfold_split(labels, 5, fold, seed=1)[0]
        assert sorted(train + positions) == list(range(len(labels)))
    assert held_out[0] != kfold_split(labels, 5, 0, seed=2)[1]
    with pytest.raises(ValueError, match="at least 6 training images per class"):
        kfold_split(labels, 6, 0, seed=1)


def test_kfold_run_validates_on_its_fold_and_cv_report(tiny_digits, tmp_path):
    splits = build_datasets(tiny_digits, image_size=32, aug=None, val_ratio=0.1, seed=3, kfold=4, fold=1)
    assert (len(splits.train), len(splits.val)) == (30, 10)  # the val/ folder is not used under --kfold
    entry.run_command(common(tiny_digits, tmp_path, "fold1", "--kfold", "4", "--fold", "1"))
    assert "train 30 / val 10 images" in (tmp_path / "ck/fold1/train.log").read_text()
    stats = summarize([1.0, 2.0, 3.0])
    assert stats["mean"] == 2.0 and stats["std"] == 1.0
    assert stats["ci95"] == pytest.approx([2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)], rel=1e-6)
