"""The class-conditional DCGAN (--gan), its image sets (--gan_generate) and training with another labelled set
(--extra_train, --extra_weight): run as a user runs them, on the tiny digits set at 16x16, one and two processes."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config import Config
from criterions import build_criterion
from dataloader.datasets import build_datasets
from engine.gan import (build_networks, generate, generator_from_checkpoint, mode_seeking_loss,
                        paired_labels)
from engine.objective import TrainingLoss
from helpers import REPO, TIMEOUT, run, torchrun
from models.dcgan import minibatch_stddev, start_size
from utils.checkpoint import load_checkpoint, save_checkpoint

GAN = ["--gan", "--gan_image_size", "16", "--gan_latent", "16", "--gan_width", "16", "-b", "8", "-j", "0"]


def gan_args(data: Path, tmp: Path, name: str, epochs: int) -> list[str]:
    return [*GAN, "--data", str(data), "--gan_epochs", str(epochs), "--name", name, "--checkpoint_dir",
            str(tmp / "ck"), "--log_dir", str(tmp / "logs")]


def dark_and_light(root: Path, per_class: int = 48) -> Path:
    """Two classes a conditional generator must tell apart: dark noise (0..59) and light noise (196..255)."""
    rng = np.random.default_rng(0)
    for name, low in (("dark", 0), ("light", 196)):
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / "train" / name / f"{i}.png"), rng.integers(low, low + 60, (16, 16), np.uint8))
    return root


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    """An 8-epoch GAN run (96 images, 48 steps) on dark and light images; its run folder."""
    tmp = tmp_path_factory.mktemp("gan")
    data = dark_and_light(tmp / "bw")
    run([sys.executable, "main.py", *gan_args(data, tmp, "bw", 8), "-b", "16", "--gan_lr", "1e-3"])
    return tmp / "ck" / "bw"


def fail(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0, proc.stdout
    return proc


def test_image_sizes() -> None:
    assert start_size(28) == (7, 2) and start_size(32) == (4, 3) and start_size(16) == (4, 2)
    for side in (8 * 2 + 2, 27, 7):  # 18 = 9 * 2; odd; no upsampling
        with pytest.raises(ValueError, match="S x 2"):
            start_size(side)
    generator, discriminator = build_networks(Config(gan_image_size=28, gan_latent=8, gan_width=8), 3, 1)
    fake = generator(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    assert fake.shape == (4, 1, 28, 28) and float(fake.detach().abs().max()) <= 1.0
    assert discriminator(fake, torch.tensor([0, 1, 2, 0])).shape == (4,)


def test_minibatch_stddev_sees_a_collapsed_group() -> None:
    """A discriminator batch is 8 real images, then 8 generated ones; generated images all alike score 0."""
    h = torch.randn(16, 5, 3, 3)
    h[8:] = h[8]
    spread = minibatch_stddev(h)[:, -1, 0, 0]
    assert spread.shape == (16,) and float(spread[:8].min()) > 0.5 and float(spread[8:].abs().max()) == 0.0
    assert torch.equal(minibatch_stddev(h)[:, :5], h)


def test_mode_seeking_pairs_share_a_label_and_punish_equal_images() -> None:
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    assert paired_labels(labels).tolist() == [3, 1, 4, 3, 1, 4, 2]
    z = torch.randn(6, 8)
    alike = torch.zeros(6, 1, 4, 4, requires_grad=True)
    varied = torch.randn(6, 1, 4, 4)
    assert float(mode_seeking_loss(alike, z).detach()) > 1e4 > 10 > float(mode_seeking_loss(varied, z))
    push = torch.autograd.grad(mode_seeking_loss(varied.requires_grad_(), z), varied)[0]
    pairs = (varied[:3] - varied[3:]).detach()
    assert float((push[:3] * pairs).sum()) < 0  # descending the loss moves the pair's images apart


def test_run_writes_both_checkpoints_and_the_losses_move(gan_run: Path) -> None:
    generator = load_checkpoint(gan_run / "generator.pth")
    discriminator = load_checkpoint(gan_run / "discriminator.pth")
    assert (generator.weights, discriminator.weights) == ("generator", "discriminator")
    assert generator.epoch == discriminator.epoch == 7 and generator.world_size == 1
    assert generator.preprocessing["channels"] == 1  # the images are gray
    assert generator.class_names == ["dark", "light"]
    with open(gan_run / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(8))
    d_loss, g_loss, d_real = ([float(r[key]) for r in rows] for key in ("d_loss", "g_loss", "d_real"))
    assert all(np.isfinite(d_loss + g_loss))
    assert min(d_loss) < d_loss[0] - 0.05 and max(g_loss) > g_loss[0] + 0.05, (d_loss, g_loss)
    assert max(d_real) > d_real[0] + 0.1, d_real  # the discriminator learned to tell real images
    torch.manual_seed(42)  # the run's seed: its networks' initial weights
    fresh, _ = build_networks(Config.from_dict(generator.config), 2, 1)
    moved = [k for k, v in fresh.state_dict().items()
             if v.is_floating_point() and not torch.equal(v, generator.model[k])]
    assert "embed.weight" in moved and len(moved) > 5
    assert cv2.imread(str(gan_run / "samples.png")) is not None


def test_samples_change_with_the_label(gan_run: Path) -> None:
    """Same noise, label dark or light: the generator draws the class it is asked for."""
    generator = generator_from_checkpoint(load_checkpoint(gan_run / "generator.pth"), "g", torch.device("cpu"))
    z = torch.randn(16, generator.latent, generator=torch.Generator().manual_seed(0))
    dark = generate(generator, torch.zeros(16, dtype=torch.long), z).mean(axis=(1, 2, 3))
    again = generate(generator, torch.zeros(16, dtype=torch.long), z).mean(axis=(1, 2, 3))
    light = generate(generator, torch.ones(16, dtype=torch.long), z).mean(axis=(1, 2, 3))
    assert np.array_equal(dark, again)  # eval mode: an image depends on its own (z, label) only
    # real means 29.5 and 225.5; after 48 steps every dark image is darker than every light one by a margin
    assert dark.max() + 40 < light.min() and dark.mean() < 100 < 130 < light.mean(), (dark, light)


def test_generate_writes_n_per_class_a_csv_and_a_grid(gan_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    run([sys.executable, "main.py", "--gan_generate", "3", "--resume", str(gan_run / "generator.pth"),
         "--output", str(out)])
    classes = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert classes == ["dark", "light"]
    for name in classes:
        files = sorted((out / name).glob("*.png"))
        assert len(files) == 3
        assert cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED).shape == (16, 16)  # gray, at the GAN's size
    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and all((out / r["filename"]).is_file() and r["filename"].startswith(r["label"] + "/")
                                   for r in rows)
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape[0] == 2 * (56 + 2) + 2  # one row per class
    proc = fail(["--gan_generate", "3", "--resume", str(gan_run / "generator.pth"), "--output", str(out)])
    assert proc.stderr.strip().startswith("error:") and "already exists" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_default_folder_is_data_gen_dataset_run(gan_run: Path, tmp_path: Path) -> None:
    data = dark_and_light(tmp_path / "bw", per_class=2)
    ckpt = load_checkpoint(gan_run / "generator.pth")
    ckpt_path = tmp_path / "bw_gan" / "generator.pth"
    save_checkpoint(ckpt.replace(config={**ckpt.config, "data": str(data)}), ckpt_path)
    run([sys.executable, "main.py", "--gan_generate", "2", "--resume", str(ckpt_path)])
    assert len(list((data / "gen_dataset" / "bw").rglob("*.png"))) == 2 * 2 + 1  # + grid.png
    assert (data / "gen_dataset" / "bw" / "labels.csv").is_file()


def test_resume_continues_bit_for_bit(tiny_digits: Path, tmp_path: Path) -> None:
    run([sys.executable, "main.py", *gan_args(tiny_digits, tmp_path, "straight", 2)])
    run([sys.executable, "main.py", *gan_args(tiny_digits, tmp_path, "stopped", 1)])
    stopped = tmp_path / "ck" / "stopped"
    run([sys.executable, "main.py", "--gan", "--resume", str(stopped / "discriminator.pth"), "--gan_epochs", "2",
         "-j", "0", "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs")])
    for name in ("generator.pth", "discriminator.pth"):
        a, b = load_checkpoint(tmp_path / "ck" / "straight" / name), load_checkpoint(stopped / name)
        assert b.epoch == 1
        assert all(torch.equal(a.model[k], b.model[k]) for k in a.model), name
    proc = fail(["--gan", "--resume", str(stopped / "generator.pth"), "--gan_latent", "32", "--checkpoint_dir",
                 str(tmp_path / "ck")])
    assert "trained with 16" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_two_process_gan_run(tiny_digits: Path, tmp_path: Path) -> None:
    torchrun(2, gan_args(tiny_digits, tmp_path, "ddp", 2))
    generator = load_checkpoint(tmp_path / "ck" / "ddp" / "generator.pth")
    assert generator.world_size == 2 and generator.epoch == 1
    assert np.isfinite(generator.metrics["d_loss"]) and np.isfinite(generator.metrics["g_loss"])


def test_usage_errors_are_one_line(tiny_digits: Path) -> None:
    proc = fail(["--gan", "--data", str(tiny_digits), "--gan_image_size", "30"])
    assert proc.stderr.startswith("error: --gan_image_size") and len(proc.stderr.strip().splitlines()) == 1
    proc = fail(["--gan_generate", "5"])
    assert "needs --resume" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = fail(["--gan_latent", "5", "--data", str(tiny_digits)])
    assert "belongs to --gan" in proc.stderr


# --- --extra_train / --extra_weight ----------------------------------------------------------------------------


def extra_set(root: Path, classes: dict[str, int]) -> Path:
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"x{i}.png"), np.full((8, 8, 3), 20 * i, np.uint8))
    return root


def test_extra_train_adds_its_images_to_train_only(tiny_digits: Path, tmp_path: Path) -> None:
    plain = build_datasets(tiny_digits, image_size=16, aug=None, val_ratio=0.1, seed=1)
    extra = extra_set(tmp_path / "extra", {"3": 4, "5": 2})
    more = build_datasets(tiny_digits, image_size=16, aug=None, val_ratio=0.1, seed=1, extra_train=extra,
                          extra_weight=0.25)
    assert len(more.train) == len(plain.train) + 6 and more.extra_count == 6
    assert len(more.val) == len(plain.val) and more.class_names == plain.class_names
    assert more.train.targets[-6:] == [3, 3, 3, 3, 5, 5]
    assert more.train_weights.tolist() == [1.0] * len(plain.train) + [0.25] * 6
    rows = ["filename,label", *(f"3/x{i}.png,3" for i in range(4))]
    (extra / "list.csv").write_text("\n".join(rows) + "\n")
    listed = build_datasets(tiny_digits, image_size=16, aug=None, val_ratio=0.1, seed=1,
                            extra_train=extra / "list.csv")
    assert listed.extra_count == 4 and listed.train_weights[-1] == 1.0


def test_extra_weight_scales_the_extra_images_loss() -> None:
    criterion = build_criterion("softmax", num_classes=3)
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 1])
    indices = torch.tensor([0, 1, 5, 6])  # 5 and 6 are extra images
    grads = {}
    for w in (0.0, 1.0, 3.0):
        weights = torch.tensor([1.0] * 5 + [w] * 2)
        loss = TrainingLoss(criterion, sample_weights=weights)(logits, targets, None, indices, 0)
        grads[w] = torch.autograd.grad(loss, logits)[0]
        per_sample = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        expected = (per_sample * weights[indices]).sum() / weights[indices].sum()
        assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert grads[0.0][2:].abs().max() == 0 and grads[1.0][2:].abs().max() > 0
    ratio = grads[3.0][2:].norm() / grads[1.0][2:].norm() * (2 + 2 * 3) / 4  # undo the mean over the weights
    assert float(ratio) == pytest.approx(3.0, rel=1e-4)


def test_training_with_extra_train_and_class_mismatch(tiny_digits: Path, tmp_path: Path) -> None:
    extra = extra_set(tmp_path / "extra", {"1": 5, "2": 5})
    common = ["--data", str(tiny_digits), "--epochs", "1", "-j", "0", "--image_size", "16", "16", "--checkpoint_dir",
              str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs")]
    proc = run([sys.executable, "main.py", *common, "--name", "x", "--extra_train", str(extra), "--extra_weight", "2"])
    assert "10 images added to the" in proc.stderr + proc.stdout
    ckpt = load_checkpoint(tmp_path / "ck" / "x" / "last.pth")
    assert ckpt.config["extra_train"] == str(extra) and ckpt.config["extra_weight"] == 2.0
    extra_set(tmp_path / "extra", {"cat": 1})
    proc = fail([*common, "--name", "y", "--extra_train", str(extra)])
    assert "error: --extra_train" in proc.stderr and "['cat']" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
