"""Opening and closing a job: the process group, logging, the config (a checkpoint's, with the typed flags on top),
seeding and the run folder. Every application starts with ``open_job``."""
from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from config import RUNTIME_FLAGS, Config, given, write_config_yaml
from utils.checkpoint import Checkpoint, load_checkpoint
from utils.distributed import DistInfo, broadcast_object, cleanup_distributed, init_distributed
from utils.errors import UsageError
from utils.hardware import choose_inference_amp
from utils.logger import attach_log_file, get_logger, setup_logging


AUTO = "auto"


def auto_resume_path(cfg: Config) -> str | None:
    """``--resume auto``: CHECKPOINT_DIR/NAME/last.pth when it exists (continue), None otherwise (start fresh)."""
    if not cfg.name:
        raise UsageError("--resume auto needs --name NAME: it continues CHECKPOINT_DIR/NAME/last.pth when that exists "
                         "and starts that run otherwise")
    last = run_dir(cfg) / "last.pth"
    return str(last) if last.is_file() else None


def resolve_config(cfg: Config, explicit: set[str], path: str | None = None) -> tuple[Config, Checkpoint | None]:
    """With --resume (or ``path``), start from the checkpoint's config and apply only the flags the user typed and
    the flags that say how to run (RUNTIME_FLAGS). ``--resume auto`` resolves to the run's last.pth or nothing."""
    if path is None and cfg.resume == AUTO:
        cfg.resume = auto_resume_path(cfg)
    path = path or cfg.resume
    if not path:
        return cfg, None
    ckpt = load_checkpoint(path)
    merged = Config.from_dict(ckpt.config)
    changed = []
    for key in explicit | RUNTIME_FLAGS:
        new = getattr(cfg, key)
        if key not in RUNTIME_FLAGS and getattr(merged, key) != new:
            changed.append(f"{key}: {getattr(merged, key)!r} -> {new!r}")
        setattr(merged, key, new)
    if changed:
        get_logger().warning("overriding the checkpoint's config: %s", "; ".join(changed))
    return merged, ckpt


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_dir(cfg: Config) -> Path:
    return Path(cfg.checkpoint_dir) / cfg.name


@dataclass
class Job:
    """What an application works with: the resolved config, the checkpoint of --resume (None without), the
    process's place in the world and the logger."""

    cfg: Config
    ckpt: Checkpoint | None
    info: DistInfo
    log: logging.Logger

    def start_run_folder(self, folder: Path, log_name: str) -> Path:
        """Create the run folder (rank 0), write its resolved config.yaml and start its log file, which receives
        what was logged so far. Called once the job has checked everything it can check before working, so a
        job that fails earlier leaves no folder behind."""
        if self.info.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            write_config_yaml(self.cfg, folder / "config.yaml")
            attach_log_file(folder / log_name, True)
        elif self.info.local_rank == 0:  # every other node keeps its own log (folders need not be shared)
            node = os.environ.get("GROUP_RANK", str(self.info.rank // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
            attach_log_file(folder / f"{Path(log_name).stem}.node{node}.log", True)
        return folder


@contextlib.contextmanager
def open_job(cfg: Config, explicit: set[str], *, checkpoint: str = "optional", missing: str = "",
             device: str | None = None, eval_amp: bool = False) -> Iterator[Job]:
    """Open a job: the process group (a world of one without torchrun), logging on rank 0, and the config.

    ``checkpoint``: "required" (``missing`` is the error without --resume), "optional" (resume a run when given) or
    "none" (--resume is ignored here: the job reads its checkpoints itself). ``device`` overrides --device (export
    runs on the CPU). ``eval_amp``: AMP for a job that only predicts: the flag, else the training's
    precision where this machine runs it natively (utils.hardware.choose_inference_amp). The process group is
    closed however the job ends.
    """
    info = init_distributed(device or cfg.device)
    log = setup_logging(None, info.is_main or info.local_rank == 0)  # rank 0 and, on other nodes, their first
    try:
        if checkpoint == "required" and not cfg.resume:
            raise UsageError(missing)
        ckpt = None
        if checkpoint != "none":
            cfg, ckpt = resolve_config(cfg, explicit)
            if checkpoint == "required" and ckpt is None:
                raise UsageError(f"{missing} (--resume auto found no last.pth for --name {cfg.name})")
        if eval_amp:
            cfg.amp = choose_inference_amp(given(cfg, explicit, "amp"), cfg.amp, info.device)
        yield Job(cfg, ckpt, info, log)
    finally:
        cleanup_distributed()


def default_run_name(cfg: Config, kind: str = "") -> str:
    """MODEL[-KIND]-YYYYmmdd-HHMMSS, the same on every rank."""
    return broadcast_object(f"{cfg.model}{'-' + kind if kind else ''}-{time.strftime('%Y%m%d-%H%M%S')}")
