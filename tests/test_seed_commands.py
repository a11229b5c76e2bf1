"""The main seed's command lines run here unchanged except for paths: its flags (README "部分重要配置参数说明")
through the parser and a short real run of each job, in the order its workflow uses them (train, knowledge, distill,
JIT, evaluation, CAM, curriculum). A flag of the seed that stopped parsing, or a job that stopped running with the
seed's spelling of its options, fails here."""
from __future__ import annotations

import shutil

import pytest

import main as entry
from config import parse_config
from utils.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def seed_run(tiny_digits, tmp_path_factory):
    """The seed's training command: a copy of the digits (knowledge and curriculum files are written into --data)."""
    out = tmp_path_factory.mktemp("seed")
    data = out / "data"
    shutil.copytree(tiny_digits, data)
    common = ["--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--device", "cpu", "-j", "0"]
    argv = ["--data", str(data), "--image_size", "32", "32", "--num_classes", "10", "-b", "8", "--criterion",
            "sigmoid", "--weighted_loss", "--ghm_loss", "--threshold_loss", "--ohm_loss", "--lr", "1e-3", "--warmup",
            "1", "--epochs", "2", "--aug", "--mixup", "--multi_scale", "--name", "seed"]
    cfg, _ = parse_config(argv)
    assert (cfg.criterion, cfg.weighted_loss, cfg.aug, cfg.mixup, cfg.multi_scale) == ("bce", "auto", "basic", 0.8,
                                                                                        True)
    entry.run_command(argv + common)
    return data, out, common


def test_the_seed_workflow_runs_with_its_flags(seed_run, tmp_path):
    data, out, common = seed_run
    best = out / "ck" / "seed" / "best.pth"
    assert load_checkpoint(best).config["criterion"] == "bce"
    entry.run_command(["--knowledge", "train", "--resume", str(best), *common])
    assert (data / "distill.txt").is_file() and (data / "label.txt").is_file()
    entry.run_command(["--data", str(data), "--image_size", "32", "32", "-b", "8", "--epochs", "1", "--warmup", "0",
                       "--distill", "--name", "student", *common])
    assert load_checkpoint(out / "ck" / "student" / "last.pth").config["distill"] is True
    entry.run_command(["--jit", "--resume", str(best), *common])
    assert best.with_suffix(".torchscript.pt").is_file()
    report = entry.run_command(["--evaluation", "--resume", str(best), *common])
    assert report["split"] == "test" and 0 <= report["top1"] <= 100
    cam = entry.run_command(["--visual_data", "test", "--visual_method", "grad-camm++", "--resume", str(best),
                             "--visual_limit", "4", *common])
    assert (cam / "index.html").is_file()
    entry.run_command(["--make_curriculum", "--resume", str(best), "--curriculum_thresholds", "0.9", "0.5",
                       "--curriculum_weights", "1.0", "0.7", "0.4", *common])
    assert (data / "curriculum.txt").is_file()
    entry.run_command(["--data", str(data), "--image_size", "32", "32", "-b", "8", "--epochs", "1", "--warmup", "0",
                       "--curriculum_learning", "--name", "curriculum", *common])
    assert load_checkpoint(out / "ck" / "curriculum" / "last.pth").config["curriculum_learning"] is True
