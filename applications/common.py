"""What several applications share: resolving a checkpoint's config, building the model, moving uint8
batches to the device, autocast, and exact all-gathered prediction over a data set."""
from __future__ import annotations

import contextlib
import random
from pathlib import Path

import numpy as np
import torch

from config import Config
from dataloader.preprocess import Preprocessing, normalize_on_device
from models import build_model
from utils.checkpoint import load_checkpoint
from utils.distributed import gather_predictions
from utils.logger import get_logger

# Options that describe how to run, not what was trained: on resume they come from the command line.
RUNTIME_FLAGS = {"resume", "evaluation", "jit", "device", "workers", "output", "split", "stop_epoch"}


def resolve_config(cfg: Config, explicit: set[str]) -> tuple[Config, dict | None]:
    """With --resume, start from the checkpoint's config and apply only the flags the user typed."""
    if not cfg.resume:
        return cfg, None
    ckpt = load_checkpoint(cfg.resume)
    merged = Config.from_dict(ckpt["config"])
    changed = []
    for key in explicit | RUNTIME_FLAGS:
        new = getattr(cfg, key)
        if key not in RUNTIME_FLAGS and getattr(merged, key) != new:
            changed.append(f"{key}: {getattr(merged, key)!r} -> {new!r}")
        setattr(merged, key, new)
    if changed:
        get_logger().warning("overriding the checkpoint's config: %s", "; ".join(changed))
    return merged, ckpt


def preprocessing_of(cfg: Config) -> Preprocessing:
    return Preprocessing(image_size=tuple(cfg.image_size), mean=tuple(cfg.mean), std=tuple(cfg.std))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_from_checkpoint(ckpt: dict, cfg: Config, device: torch.device) -> torch.nn.Module:
    """Rebuild the trained network from a checkpoint (no pretrained download, weights from the file)."""
    model = build_model(cfg.model, num_classes=len(ckpt["class_names"]))
    model.load_state_dict(ckpt["model"])
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


_CPU_INPUT_BUFFERS: dict[tuple, torch.Tensor] = {}


def to_model_input(images: torch.Tensor, preprocessing: Preprocessing, device: torch.device,
                   channels_last: bool) -> torch.Tensor:
    """uint8 NCHW from the loader → normalised float on the device (the conversion runs on the device).

    On CPU the float batch is written into a buffer kept per shape: the previous step's backward is over by
    the time the next batch arrives, and allocating ~40 MB per step costs more than the normalisation itself.
    CUDA's caching allocator already recycles memory, so there a fresh tensor is fine.
    """
    images = images.to(device, non_blocking=True)
    out = None
    if device.type == "cpu":
        key = (tuple(images.shape), channels_last)
        if key not in _CPU_INPUT_BUFFERS:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            _CPU_INPUT_BUFFERS[key] = torch.empty(images.shape, dtype=torch.float32, memory_format=fmt)
        out = _CPU_INPUT_BUFFERS[key]
    return normalize_on_device(images, preprocessing.mean, preprocessing.std, channels_last=channels_last, out=out)


def autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU, fp16 on CUDA (paired with a GradScaler in training)."""
    if not cfg.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def scores_to_probs(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Class probabilities: softmax, or normalised sigmoids for the one-vs-all bce model."""
    if criterion == "bce":
        probs = torch.sigmoid(logits)
        return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict(model: torch.nn.Module, loader, cfg: Config, preprocessing: Preprocessing,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits for every sample of the loader's data set, all-gathered, each sample once, in index order.

    Returns ``(indices, logits, targets)`` identical on every rank.
    """
    model.eval()
    indices, logits, targets = [], [], []
    for images, labels, idx in loader:
        with autocast(cfg, device):
            out = model(to_model_input(images, preprocessing, device, cfg.channels_last))
        logits.append(out.float())
        targets.append(labels.to(device))
        indices.append(idx.to(device))
    # DistributedSampler pads every shard to the same non-zero length, so each rank has a batch here.
    assert logits, f"empty data set: {len(loader.dataset)} samples"
    return gather_predictions(torch.cat(indices), torch.cat(logits), torch.cat(targets))


def run_dir(cfg: Config) -> Path:
    return Path(cfg.checkpoint_dir) / cfg.name
