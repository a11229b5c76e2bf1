"""Subprocess helpers for tests that run the product as a user does (python main.py, torchrun)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from engine.components import preprocessing_of
from config import Config
from dataloader.preprocess import Preprocessing, load_image_tensor, normalize_on_device
from models import build_model
from utils.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # every subprocess is bounded, so a hung collective fails the test instead of the CI run


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` in the repository with one thread per process; fail with its output when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}"
    return proc


def torchrun(nproc: int, args: list[str], script: str = "main.py") -> subprocess.CompletedProcess:
    """``script`` (main.py unless a test brings its own worker) under torchrun --standalone (a free port) with
    `nproc` CPU processes."""
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script,
                *args])


def eager_probs(checkpoint: Path, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor, Preprocessing]:
    """The trained network in eager mode, unfused, on image files: (uint8 batch, probabilities, preprocessing)."""
    ckpt = load_checkpoint(checkpoint)
    cfg = Config.from_dict(ckpt.config)
    model = build_model(cfg.model, num_classes=len(ckpt.class_names))
    model.load_state_dict(ckpt.model)
    model.eval()
    pre = preprocessing_of(cfg)
    batch = torch.stack([load_image_tensor(p, pre) for p in paths])
    with torch.no_grad():
        probs = torch.softmax(model(normalize_on_device(batch, pre.mean, pre.std)), dim=1)
    return batch, probs, pre
