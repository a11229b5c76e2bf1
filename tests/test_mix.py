"""dataloader.mix: batch mixes (mixup, cutmix, RICAP), multi-scale and progressive resizing, on the device,
repeatable from the seed.

Mixes are checked on batches of constant images whose value is their class, so every pixel says where it came
from: a soft target must give each source exactly the share of the image it contributes. The generic tests are
parametrised over `MIXES`; `SPECIFIC_CHECKS` must name every entry.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import main as entry
from criterions import build_criterion
from dataloader.mix import (MIXES, BatchAugment, build_batch_augment, hard_labels, multi_scale_shapes,
                            progressive_shapes, resize_batch)
from utils.checkpoint import load_checkpoint

N, C = 8, 8


def labelled_batch(n: int = N, shape=(3, 12, 20)) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is constant with value i and class i."""
    labels = torch.arange(n)
    return labels.float().view(-1, 1, 1, 1).expand(n, *shape).contiguous(), labels


def apply(name: str, seed: int = 0, param: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = labelled_batch()
    return MIXES.get(name)(images, torch.nn.functional.one_hot(labels, C).float(), param,
                           np.random.default_rng(seed))


# ---------------------------------------------------------------------------------------------------------------
# every registered mix


@pytest.mark.parametrize("name", list(MIXES))
def test_soft_targets_are_probabilities_matching_the_pixels(name):
    for seed in range(10):
        images, targets = apply(name, seed)
        assert targets.shape == (N, C) and targets.dtype == torch.float32
        assert (targets >= 0).all() and torch.allclose(targets.sum(dim=1), torch.ones(N))
        # the mean pixel of a mixed image is the target-weighted mean of its sources' values (= their classes)
        expected = targets @ torch.arange(C).float()
        assert torch.allclose(images.mean(dim=(1, 2, 3)), expected, atol=1e-4), (seed, images.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("name", list(MIXES))
def test_mix_is_repeatable_from_its_generator(name):
    first, again, other = apply(name, 5), apply(name, 5), apply(name, 6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


# ---------------------------------------------------------------------------------------------------------------
# what each one does


def check_mixup(images, targets):
    """Every image is lam * itself + (1 - lam) * one partner, with one lam for the batch."""
    own = targets.diagonal()
    paired = own < 1 - 1e-6  # not mixed with itself
    assert paired.any() and torch.allclose(own[paired], own[paired][0].expand(int(paired.sum())))
    assert ((targets > 0).sum(dim=1) <= 2).all()
    for i in range(N):
        assert images[i].unique().numel() == 1  # a blend of two constant images is constant


def check_cutmix(images, targets):
    """One box is pasted from a partner: the partner's target weight equals the pasted area exactly."""
    changed = images != torch.arange(N).float().view(-1, 1, 1, 1)
    for i in range(N):
        values = images[i].unique()
        assert values.numel() <= 2
        area = (images[i] != i).float().mean()
        assert targets[i, i] == pytest.approx(1 - float(area), abs=1e-6) or targets[i].max() == 1
    boxes = changed.any(dim=1)
    rows, cols = boxes.any(dim=0).any(dim=1), boxes.any(dim=0).any(dim=0)
    if rows.any():
        assert rows.nonzero().squeeze(1).diff().eq(1).all() and cols.nonzero().squeeze(1).diff().eq(1).all()


def check_ricap(images, targets):
    """Four rectangles (quadrants around one boundary), each from one source; weights equal their areas."""
    for i in range(N):
        values = images[i].unique()
        assert values.numel() <= 4
        for value in values:
            share = (images[i] == value).float().mean()
            assert targets[i, int(value)] == pytest.approx(float(share), abs=1e-6)


SPECIFIC_CHECKS = {"mixup": check_mixup, "cutmix": check_cutmix, "ricap": check_ricap}


@pytest.mark.parametrize("name", list(SPECIFIC_CHECKS))
def test_mix_does_what_it_says(name):
    for seed in range(10):
        SPECIFIC_CHECKS[name](*apply(name, seed))


def test_every_registered_mix_has_a_specific_check():
    missing = set(MIXES) - set(SPECIFIC_CHECKS)
    assert not missing, f"batch mixes without a check in SPECIFIC_CHECKS: {sorted(missing)}"


def test_cutmix_lambda_is_the_pasted_area():
    images, labels = labelled_batch()
    lams = []
    for seed in range(30):
        mixed, targets = apply("cutmix", seed)
        partner_share = 1 - targets.diagonal()
        pasted = (mixed != labels.float().view(-1, 1, 1, 1)).float().mean(dim=(1, 2, 3))
        self_paired = targets.max(dim=1).values == 1  # an image paired with itself changes nothing
        assert torch.allclose(partner_share[~self_paired], pasted[~self_paired], atol=1e-6)
        lams.append(float(targets.diagonal()[~self_paired].mean()) if (~self_paired).any() else 1.0)
    # Beta(1, 1) draws lam uniformly; boxes clipped at the border paste less than 1 - lam, and the targets follow
    assert len(set(lams)) > 20 and min(lams) < 0.6


# ---------------------------------------------------------------------------------------------------------------
# the per-step batch transform


def batch_augment(**kwargs) -> BatchAugment:
    return build_batch_augment(**{"image_size": (12, 20), "num_classes": C, "seed": 1, **kwargs})


def test_mix_prob_zero_leaves_the_batch_unchanged():
    augment = batch_augment(mixup=0.8, cutmix=1.0, ricap=0.3, mix_prob=0.0)
    for step in range(20):
        images, labels = labelled_batch()
        out, targets = augment(images.clone(), labels, epoch=0, step=step)
        assert torch.equal(out, images) and targets is labels
    identity = batch_augment()
    images, labels = labelled_batch()
    assert not identity.enabled and identity(images, labels, epoch=0, step=0) == (images, labels)


def test_mixes_are_picked_per_batch_with_the_probability_and_repeat_from_the_seed():
    augment = batch_augment(mixup=0.8, cutmix=1.0, mix_prob=0.6)
    picks = [augment.pick(epoch=2, step=s)[0] for s in range(600)]
    assert abs(sum(p is not None for p in picks) / 600 - 0.6) < 0.07
    assert abs(picks.count("mixup") - picks.count("cutmix")) < 80 and "ricap" not in picks

    def run(aug, epoch, step):
        images, labels = labelled_batch()
        return aug(images, labels, epoch=epoch, step=step)

    same = [run(batch_augment(mixup=0.8, cutmix=1.0), 3, 7) for _ in range(2)]
    assert torch.equal(same[0][0], same[1][0]) and torch.equal(same[0][1], same[1][1])
    other_step = run(batch_augment(mixup=0.8, cutmix=1.0), 3, 8)
    other_rank = run(batch_augment(mixup=0.8, cutmix=1.0, rank=1), 3, 7)
    assert not torch.equal(same[0][1], other_step[1]) and not torch.equal(same[0][1], other_rank[1])


def test_each_mix_with_its_own_probability():
    """--mix_probs (seed 004): cutmix on 50% of the batches, mixup on 20%, none on 30%; the same picks from the
    seed; the wrong count or a sum over 1 is refused."""
    augment = batch_augment(mixup=0.8, cutmix=1.0, mix_probs=[0.2, 0.5])
    picks = [augment.pick(epoch=2, step=s)[0] for s in range(1000)]
    assert abs(picks.count("mixup") / 1000 - 0.2) < 0.05 and abs(picks.count("cutmix") / 1000 - 0.5) < 0.05
    assert abs(picks.count(None) / 1000 - 0.3) < 0.05
    assert picks == [batch_augment(mixup=0.8, cutmix=1.0, mix_probs=[0.2, 0.5]).pick(epoch=2, step=s)[0]
                     for s in range(1000)]
    assert "mixup 0.8 with p 0.2 / cutmix 1 with p 0.5" in augment.describe()
    for bad in ([0.5], [0.6, 0.6], [-0.1, 0.5]):
        with pytest.raises(ValueError, match="--mix_probs"):
            batch_augment(mixup=0.8, cutmix=1.0, mix_probs=bad)


def test_soft_targets_work_with_the_softmax_loss_and_train_accuracy():
    augment = batch_augment(ricap=0.3)
    images, labels = labelled_batch()
    _, targets = augment(images, labels, epoch=0, step=0)
    logits = torch.randn(N, C)
    loss = build_criterion("softmax", num_classes=C, label_smoothing=0.1)(logits, targets)
    assert torch.isfinite(loss)
    assert torch.equal(hard_labels(targets), targets.argmax(dim=1)) and hard_labels(labels) is labels


def test_bad_settings_fail_with_the_flag_to_fix():
    with pytest.raises(ValueError, match="--multi_scale_sizes only takes effect with --multi_scale"):
        batch_augment(multi_scale_sizes=[16, 24])
    with pytest.raises(ValueError, match="--mix_prob"):
        batch_augment(mixup=0.8, mix_prob=1.5)
    with pytest.raises(ValueError, match="'cutmix': 0.0"):
        batch_augment(cutmix=0.0)


# ---------------------------------------------------------------------------------------------------------------
# multi-scale


def test_default_multi_scale_shapes():
    assert multi_scale_shapes((32, 32)) == [(24, 24), (28, 28), (32, 32), (36, 36), (40, 40)]
    assert multi_scale_shapes((224, 224)) == [(160, 160), (192, 192), (224, 224), (256, 256), (288, 288)]
    assert multi_scale_shapes((96, 96)) == [(72, 72), (88, 88), (96, 96), (112, 112), (120, 120)]
    wide = multi_scale_shapes((24, 40))  # both sides scaled by the same ratio, then rounded
    assert (24, 40) in wide and len(wide) == 5
    assert all(abs(h / w - 24 / 40) < 0.1 for h, w in wide)
    assert multi_scale_shapes((32, 32), [20, 32, 48]) == [(20, 20), (32, 32), (48, 48)]
    assert multi_scale_shapes((30, 60), [40, 80]) == [(20, 40), (40, 80)]  # S is the long side


def test_multi_scale_shape_is_the_same_on_every_rank_and_varies_by_step():
    ranks = [batch_augment(multi_scale=True, rank=r, mixup=0.5) for r in range(3)]
    shapes = [[aug.shape_for(epoch=1, step=s) for s in range(60)] for aug in ranks]
    assert shapes[0] == shapes[1] == shapes[2]
    assert set(shapes[0]) == set(ranks[0].shapes)  # every size is used
    assert shapes[0] != [ranks[0].shape_for(epoch=2, step=s) for s in range(60)]
    images, labels = labelled_batch()
    out, _ = ranks[0](images, labels, epoch=1, step=0)
    assert tuple(out.shape[-2:]) == shapes[0][0] and out.shape[:2] == (N, 3)


def test_resize_batch_keeps_memory_format_and_antialiases_when_shrinking():
    checker = (torch.arange(32).view(1, 1, 1, 32) + torch.arange(32).view(1, 1, 32, 1)) % 2
    batch = checker.float().expand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    small = resize_batch(batch, (8, 8))
    assert small.shape == (2, 3, 8, 8) and small.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)  # aliasing would leave a pattern
    assert resize_batch(batch, (32, 32)) is batch


# ---------------------------------------------------------------------------------------------------------------
# progressive resizing


def test_progressive_shapes_grow_to_the_image_size_at_the_last_ramp_epoch():
    # default ramp: from epoch 1 to 12 - 12 // 4 = 9, so the last quarter trains at full size
    assert progressive_shapes((28, 28), 20, 12) == [(20, 20)] * 4 + [(24, 24)] * 4 + [(28, 28)] * 4
    assert progressive_shapes((28, 28), 20, 12, (3, 9)) == [(20, 20)] * 5 + [(24, 24)] * 3 + [(28, 28)] * 4
    # between the two ends sides round down (32 px steps from a 128 px side): the full size comes at LAST
    assert progressive_shapes((224, 224), 128, 16, (11, 13)) == [(128, 128)] * 11 + [(160, 160)] + [(224, 224)] * 4
    # the start is the side asked for, not rounded; later sides never fall below it
    assert progressive_shapes((28, 28), 18, 6) == [(18, 18), (20, 20), (20, 20), (24, 24), (28, 28), (28, 28)]
    assert progressive_shapes((30, 60), 40, 4) == [(20, 40), (24, 48), (30, 60), (30, 60)]  # S is the long side
    assert progressive_shapes((28, 28), 20, 1) == [(28, 28)]  # one epoch: it is the last


def test_progressive_size_follows_the_epoch_alone_on_every_rank():
    ranks = [batch_augment(progressive_size=12, epochs=3, rank=r, mixup=0.5) for r in range(2)]
    assert ranks[0].epoch_shapes == [(7, 12), (8, 16), (12, 20)]  # image_size (12, 20): S is the long side
    assert ranks[0].describe().startswith("progressive resizing 7x12 in epoch 1, 8x16 in epoch 2, 12x20 in epoch 3")
    assert "epoch_shapes=[(7, 12), (8, 16), (12, 20)]" in repr(ranks[0])
    for epoch, shape in enumerate([(7, 12), (8, 16), (12, 20), (12, 20)]):  # past the last epoch: the full size
        for step in range(4):
            for augment in ranks:
                images, labels = labelled_batch()
                out, targets = augment(images, labels, epoch=epoch, step=step)
                assert tuple(out.shape) == (N, 3, *shape) and targets.shape == (N, C)


def test_progressive_settings_that_cannot_work_name_the_flag(tiny_digits, tmp_path):
    with pytest.raises(ValueError, match="--progressive_epochs only takes effect with --progressive_size"):
        batch_augment(progressive_epochs=[1, 2], epochs=3)
    with pytest.raises(ValueError, match="--multi_scale each step's: drop one of the two"):
        batch_augment(progressive_size=8, multi_scale=True, epochs=3)
    with pytest.raises(ValueError, match=r"--progressive_size must be between 1 and the --image_size long side \(20\)"):
        batch_augment(progressive_size=20, epochs=3)
    with pytest.raises(ValueError, match=r"--progressive_epochs 2 5: give FIRST <= LAST between 1 and --epochs \(3\)"):
        batch_augment(progressive_size=8, progressive_epochs=[2, 5], epochs=3)
    # from the command line: one line, before any training, and no run folder is left behind
    done = subprocess.run([sys.executable, "main.py", "--data", str(tiny_digits), "--image_size", "32", "32",
                           "--progressive_size", "40", "--checkpoint_dir", str(tmp_path / "ck"), "--device", "cpu"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --progressive_size must be between 1 and the "
                                                           "--image_size long side (32) exclusive, got 40")
    assert "Traceback" not in done.stderr and not (tmp_path / "ck").exists()


# ---------------------------------------------------------------------------------------------------------------
# training end to end


def test_progressive_resizing_trains_small_then_full_and_resumes_exactly(tiny_digits, tmp_path):
    def args(name: str, progressive: bool = True) -> list[str]:
        return ["--data", str(tiny_digits), "--image_size", "32", "32", "-b", "8", "-j", "0", "--epochs", "3",
                "--warmup", "0", "--device", "cpu", "--no-amp", "--no-channels_last", "--seed", "5",
                "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"), "--name", name,
                "--aug", "flipcrop"] + (["--progressive_size", "16", "--progressive_epochs", "1", "3"] if progressive
                                        else [])

    entry.run_command(args("full"))
    entry.run_command(args("split") + ["--stop_epoch", "1"])
    entry.run_command(["--resume", str(tmp_path / "ck/split/last.pth"), "-j", "0"])
    full, split = (load_checkpoint(tmp_path / f"ck/{n}/last.pth") for n in ("full", "split"))
    assert full.epoch == split.epoch == 2 and split.config["progressive_size"] == 16
    for key, tensor in full.model.items():
        assert torch.equal(tensor, split.model[key]), f"{key} differs after resume"
    assert "progressive resizing 16x16 in epoch 1, 24x24 in epoch 2, 32x32 in epoch 3" in (
        tmp_path / "ck/full/train.log").read_text()
    assert full.preprocessing["image_size"] == [32, 32]  # evaluation and exports take the full size
    entry.run_command(args("plain", progressive=False))
    unchanged = load_checkpoint(tmp_path / "ck/plain/last.pth")
    assert any(not torch.equal(t, unchanged.model[k]) for k, t in full.model.items() if t.is_floating_point())


def test_resume_with_mixes_multi_scale_and_balance_is_exact(tiny_digits, tmp_path):
    def args(name: str) -> list[str]:
        return ["--data", str(tiny_digits), "--image_size", "32", "32", "-b", "8", "-j", "1", "--epochs", "2",
                "--warmup", "0", "--device", "cpu", "--no-amp", "--no-channels_last", "--seed", "9",
                "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"), "--name", name,
                "--aug", "myaugment,erasing", "--mixup", "--cutmix", "--ricap", "--mix_prob", "0.8",
                "--multi_scale", "--balance"]

    entry.run_command(args("full"))
    entry.run_command(args("split") + ["--stop_epoch", "1"])
    entry.run_command(["--resume", str(tmp_path / "ck/split/last.pth"), "-j", "1"])
    full, split = (load_checkpoint(tmp_path / f"ck/{n}/last.pth") for n in ("full", "split"))
    assert full.epoch == split.epoch == 1
    assert split.config["mixup"] == 0.8 and split.config["aug"] == "myaugment,erasing"
    for key, tensor in full.model.items():
        assert torch.equal(tensor, split.model[key]), f"{key} differs after resume"
