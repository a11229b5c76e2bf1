"""Batches onto the device: uint8 (or encoded) images → normalised float input, autocast, scores → probabilities."""
from __future__ import annotations

import contextlib

import torch

from config import Config
from dataloader.gpu_decode import EncodedBatch
from dataloader.preprocess import Preprocessing, normalize_on_device

_CPU_INPUT_BUFFERS: dict[tuple, torch.Tensor] = {}


def to_model_input(images: torch.Tensor | EncodedBatch, preprocessing: Preprocessing, device: torch.device,
                   channels_last: bool) -> torch.Tensor:
    """uint8 NCHW from the loader → normalised float on the device (the conversion runs on the device). With
    ``--decode device`` the loader delivers an ``EncodedBatch``, decoded and letterboxed on the device first.

    On CPU the float batch is written into a buffer kept per shape: the previous step's backward is over by
    the time the next batch arrives, and allocating ~40 MB per step costs more than the normalisation itself.
    CUDA's caching allocator already recycles memory, so there a fresh tensor is fine.
    """
    images = to_device_uint8(images, device)
    out = None
    if device.type == "cpu":
        key = (tuple(images.shape), channels_last)
        if key not in _CPU_INPUT_BUFFERS:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            _CPU_INPUT_BUFFERS[key] = torch.empty(images.shape, dtype=torch.float32, memory_format=fmt)
        out = _CPU_INPUT_BUFFERS[key]
    return normalize_on_device(images, preprocessing.mean, preprocessing.std, channels_last=channels_last, out=out)


def to_device_uint8(images: torch.Tensor | EncodedBatch, device: torch.device) -> torch.Tensor:
    """The loader's batch as uint8 NCHW on the device (an ``EncodedBatch`` is decoded there first)."""
    if isinstance(images, EncodedBatch):  # --decode device: the loader delivered file bytes; decode them here
        images = images.decode(device)
    return images.to(device, non_blocking=True)


def amp_dtype(device: torch.device) -> torch.dtype:
    """What --amp computes in: fp16 on CUDA (paired with a GradScaler in training), bf16 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``amp_dtype(device)`` under --amp, nothing otherwise."""
    if not cfg.amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))


