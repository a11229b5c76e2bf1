"""`--aug_preview N`: a PNG grid of N augmented training samples, as the training loop would see them.

The samples are the first N keys of training's epoch 0 (with `--balance`, of the balanced draw), augmented per
item exactly as in training (`--aug`). Each grid row is then one batch, steps 0, 1, 2, ...: multi-scale
resizing and the batch mixes run on it as in training, so a row shows one input size and mixes images within
the row. Tiles are enlarged by an integer factor (nearest neighbour) up to about `MIN_TILE` pixels and labelled
with the class name, or the two heaviest classes and their weights for mixed targets; with multi-scale a second
caption line gives the input size. A single-process tool: it trains nothing and writes one file.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from config import Config
from dataloader import build_loader
from engine.components import batch_augment_of, datasets_of, preprocessing_of
from engine.device import to_model_input
from engine.job import open_job, seed_everything
from utils.errors import UsageError

MIN_TILE = 96  # pixels: small inputs (digits are 32x32) are enlarged until a tile is at least this big
CAPTION_LINE = 14  # pixels per caption line under a tile
GAP = 2  # pixels between tiles
FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.35


def check(cfg: Config) -> None:
    if cfg.aug_preview is None or cfg.aug_preview <= 0:
        raise UsageError(f"--aug_preview needs a positive number of samples, got {cfg.aug_preview}")


def run(cfg: Config, explicit: set[str]) -> Path:
    """Write the preview PNG for `cfg` (a `--resume` checkpoint's recipe when given), print and return its path."""
    with open_job(cfg, explicit, device="cpu") as job:
        cfg = job.cfg
        seed_everything(cfg.seed)
        splits = datasets_of(cfg)
        cfg.num_classes = len(splits.class_names)
        rows = augmented_rows(cfg, splits.train, cfg.aug_preview)
        grid = draw_grid(rows, splits.class_names, zoom=tile_zoom(cfg.image_size), size_line=cfg.multi_scale)
        name = cfg.name or "aug_preview"
        path = Path(cfg.output) if cfg.output else Path(cfg.checkpoint_dir) / name / "aug_preview.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise UsageError(f"could not write {path}; give --output a .png path in a writable directory")
        print(f"wrote {sum(len(r[0]) for r in rows)} train samples (--aug {cfg.aug}; "
              f"{batch_augment_of(cfg, 0).describe()}) to {path}")
        return path


def grid_columns(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def tile_zoom(image_size: list[int] | tuple[int, int]) -> int:
    return max(1, math.ceil(MIN_TILE / max(image_size)))


def augmented_rows(cfg: Config, dataset, n: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Up to `n` samples as rows of (uint8 NHWC images, targets): one row per step, batch transform applied."""
    cols = grid_columns(n)
    # deliberately unsharded (not engine's loader_for): the preview shows epoch 0 as a world of one draws it
    loader = build_loader(dataset, batch_size=cols, workers=0, train=True, seed=cfg.seed, balance=cfg.balance)
    loader.sampler.set_epoch(0)
    preprocessing = preprocessing_of(cfg)
    batch_augment = batch_augment_of(cfg, rank=0)
    rows, left = [], n
    for step, (images, labels, _) in enumerate(loader):
        if left <= 0:
            break
        inputs = to_model_input(images, preprocessing, torch.device("cpu"), channels_last=False)
        inputs, targets = batch_augment(inputs, labels, epoch=0, step=step)
        take = min(left, inputs.shape[0])
        rows.append((to_uint8_images(inputs[:take], preprocessing.mean, preprocessing.std), targets[:take]))
        left -= take
    return rows


def to_uint8_images(batch: torch.Tensor, mean, std) -> np.ndarray:
    """Undo the normalisation: float NCHW -> uint8 NHWC RGB (a copy, so the input buffer may be reused)."""
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    pixels = (batch.float() * std + mean).mul(255.0).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def caption(target: torch.Tensor, class_names: list[str]) -> str:
    """The class name, or the two heaviest classes with their weights for a soft target."""
    if target.ndim == 0:
        return class_names[int(target)]
    weights, classes = target.topk(min(2, target.shape[0]))
    if float(weights[0]) > 0.995:  # an unmixed sample in a mixing run
        return class_names[int(classes[0])]
    return " + ".join(f"{class_names[int(c)]} {float(w):.2f}" for w, c in zip(weights, classes))


def _fit(text: str, width: int) -> str:
    while text and cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0] > width - 2:
        text = text[:-1]
    return text


def grid_size(row_shapes: list[tuple[int, int]], cols: int, zoom: int, lines: int) -> tuple[int, int, int, int]:
    """(canvas height, canvas width, cell height, cell width) for rows whose images have the given shapes."""
    cell_h = max(h for h, _ in row_shapes) * zoom
    cell_w = max(w for _, w in row_shapes) * zoom
    rows = len(row_shapes)
    return rows * (cell_h + lines * CAPTION_LINE) + (rows + 1) * GAP, cols * cell_w + (cols + 1) * GAP, cell_h, cell_w


def draw_grid(rows: list[tuple[np.ndarray, torch.Tensor]], class_names: list[str], *, zoom: int,
              size_line: bool) -> np.ndarray:
    """Tiles on a white canvas, one grid row per batch, captions under each tile."""
    if not rows:
        raise ValueError("no training samples to preview")
    cols = max(len(images) for images, _ in rows)
    lines = 2 if size_line else 1
    height, width, cell_h, cell_w = grid_size([images.shape[1:3] for images, _ in rows], cols, zoom, lines)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, (images, targets) in enumerate(rows):
        top = GAP + r * (cell_h + lines * CAPTION_LINE + GAP)
        h, w = images.shape[1] * zoom, images.shape[2] * zoom
        for c, (image, target) in enumerate(zip(images, targets)):
            left = GAP + c * (cell_w + GAP)
            canvas[top:top + h, left:left + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_NEAREST)
            texts = [caption(target, class_names)] + ([f"{images.shape[1]}x{images.shape[2]}"] if size_line else [])
            for i, text in enumerate(texts):
                baseline = top + cell_h + (i + 1) * CAPTION_LINE - 4
                cv2.putText(canvas, _fit(text, cell_w), (left + 1, baseline), FONT, FONT_SCALE, (0, 0, 0), 1,
                            cv2.LINE_AA)
    return canvas
