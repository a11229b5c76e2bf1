"""The default job: train a classifier, validate every epoch, checkpoint, log (engine/training.py does the work).

    python main.py --data data/digits --model resnet18 --epochs 30
    torchrun --nproc_per_node 2 main.py --data data/digits
    python main.py --resume checkpoints/RUN/last.pth        # continue a stopped run
"""
from __future__ import annotations

from config import Config
from engine.training import check_recipe, train


def check(cfg: Config) -> None:
    check_recipe(cfg)


def run(cfg: Config, explicit: set[str]) -> dict:
    """Train per ``cfg``; returns the last epoch's metrics (on every rank)."""
    return train(cfg, explicit)
