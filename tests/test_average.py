"""Checkpoint averaging: --keep_epochs keeps the last K epoch files, --average / --average_last write the mean of
the weights, --update_bn recomputes BatchNorm statistics on the training split."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import main as entry
from applications.average import average_state_dicts
from engine.components import model_from_checkpoint, preprocessing_of
from engine.device import to_model_input
from config import Config
from dataloader import build_split_dataset
from utils.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def run_dir(tiny_digits, tmp_path_factory) -> Path:
    """Three epochs keeping the last two epoch checkpoints."""
    out = tmp_path_factory.mktemp("average_run")
    entry.run_command(["--data", str(tiny_digits), "--epochs", "3", "--warmup", "0", "-b", "8", "-j", "0", "--image_size",
                "32", "32", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--name", "run",
                "--device", "cpu", "--no-amp", "--no-channels_last", "--keep_epochs", "2"])
    return out / "ck" / "run"


def test_keep_epochs_keeps_the_last_k(run_dir):
    assert sorted(p.name for p in run_dir.glob("epoch_*.pth")) == ["epoch_002.pth", "epoch_003.pth"]
    last, third = load_checkpoint(run_dir / "last.pth"), load_checkpoint(run_dir / "epoch_003.pth")
    assert all(torch.equal(last.model[k], third.model[k]) for k in last.model)
    assert load_checkpoint(run_dir / "epoch_002.pth").epoch == 1


def test_average_of_two_checkpoints_is_the_mean_of_their_tensors(run_dir, tmp_path):
    out = tmp_path / "avg.pth"
    entry.run_command(["--average", str(run_dir / "epoch_002.pth"), str(run_dir / "epoch_003.pth"), "--output", str(out)])
    a, b, avg = (load_checkpoint(p) for p in (run_dir / "epoch_002.pth", run_dir / "epoch_003.pth", out))
    for key, tensor in avg.model.items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, (a.model[key] + b.model[key]) / 2, atol=1e-7, rtol=0), key
        else:
            assert torch.equal(tensor, b.model[key]), key
    assert not torch.equal(a.model["fc.weight"], b.model["fc.weight"])
    assert avg.averaged_from == [str(run_dir / "epoch_002.pth"), str(run_dir / "epoch_003.pth")]
    entry.run_command(["--evaluation", "--resume", str(out), "--split", "val", "-j", "0"])  # a normal checkpoint
    assert (tmp_path / "eval_val" / "report.json").is_file()


def test_average_last_reads_the_run_and_update_bn_recomputes_statistics(run_dir, tiny_digits):
    entry.run_command(["--average_last", "2", "--resume", str(run_dir / "last.pth"), "--update_bn", "-b", "1000", "--no-amp",
                "-j", "0"])
    avg = load_checkpoint(run_dir / "average_last2.pth")
    plain = average_state_dicts([load_checkpoint(run_dir / f"epoch_00{i}.pth").model for i in (2, 3)],
                                ["a", "b"])
    assert torch.equal(avg.model["fc.weight"], plain["fc.weight"]) and avg.bn_updated
    # by hand: the first BatchNorm's running mean is the mean of the first conv's output over the train split
    cfg = Config.from_dict(avg.config)
    model = model_from_checkpoint(avg, cfg, torch.device("cpu"))
    dataset = build_split_dataset(cfg.data, "train", image_size=cfg.image_size, class_names=avg.class_names,
                                  val_ratio=cfg.val_ratio, seed=cfg.seed)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    x = to_model_input(images, preprocessing_of(cfg), torch.device("cpu"), False)
    conv, bn = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), \
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        expected = conv(x).mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert not torch.allclose(plain[next(k for k in plain if k.endswith("running_mean"))], expected, atol=1e-3)


@pytest.mark.parametrize("argv,message", [
    (["--average_last", "3"], "has 2 epoch checkpoints"),
    (["--average_last", "1"], "K >= 2"),
])
def test_average_last_errors_say_what_to_do(run_dir, argv, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        entry.run_command(argv + ["--resume", str(run_dir / "last.pth")])


def test_different_models_are_refused(run_dir, tmp_path):
    ckpt = load_checkpoint(run_dir / "epoch_002.pth")
    ckpt.model = {k: v for k, v in ckpt.model.items() if not k.startswith("fc.")}
    save_checkpoint(ckpt, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not hold the same model"):
        entry.run_command(["--average", str(run_dir / "epoch_003.pth"), str(tmp_path / "other.pth"),
                    "--output", str(tmp_path / "x.pth")])
