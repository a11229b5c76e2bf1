"""``--lr_find``: an exponential learning-rate sweep on the training data (Smith 2017, as popularised by fastai).

    python main.py --lr_find --data data/digits --optimizer sgd --lr_find_steps 100
    torchrun --nproc_per_node 2 main.py --lr_find --data data/digits

The configured model, optimizer (with its param groups, so discriminative lr ratios are kept), loss and train
loader take one step per lr, ``lr_i = start * (end / start) ** (i / (steps - 1))``. The loss is averaged across
ranks and smoothed exponentially (bias-corrected, as fastai does); the sweep stops early once the smoothed loss
exceeds 4x its minimum. Rank 0 writes ``lr_find.csv`` and ``lr_find.png`` (loss vs lr, log x) to ``--output``
or CHECKPOINT_DIR/NAME/ and prints two suggestions: the lr where the smoothed loss falls fastest (steepest
negative slope against log lr) and the lr of its minimum divided by 10. No model is saved. Batch mixes
(mixup/cutmix) are not applied: the sweep reads plain labelled batches.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from config import Config
from engine.components import preprocessing_of
from engine.device import autocast, to_model_input
from engine.job import default_run_name, open_job, run_dir
from engine.training import build_training_run, check_recipe
from utils.distributed import DistInfo, reduce_sum
from utils.errors import UsageError

SMOOTHING = 0.98  # fastai's beta for the loss average
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum


def check(cfg: Config) -> None:
    check_recipe(cfg)
    if cfg.resume:
        raise UsageError("--lr_find starts from fresh (or --pretrained) weights and trains nothing to resume; "
                         "drop --resume and pass the recipe's flags")
    sweep_lrs(cfg.lr_find_start, cfg.lr_find_end, cfg.lr_find_steps)


def run(cfg: Config, explicit: set[str]) -> dict:
    """Run the sweep per ``cfg``; returns the lrs, losses and suggestions (identical on every rank)."""
    with open_job(cfg, explicit, checkpoint="none") as job:
        cfg, info, log = job.cfg, job.info, job.log
        lrs = sweep_lrs(cfg.lr_find_start, cfg.lr_find_end, cfg.lr_find_steps)
        if cfg.name is None:
            cfg.name = default_run_name(cfg, "lr_find")
        run = build_training_run(job)  # the recipe's data, model, speed settings, optimizer and loss, as training
        out_dir = job.start_run_folder(Path(cfg.output) if cfg.output else run_dir(cfg), "lr_find.log")
        log.info("lr finder: %s, %s, lr %.1e to %.1e over %d steps, world size %d", cfg.model, cfg.optimizer,
                 lrs[0], lrs[-1], len(lrs), info.world_size)
        losses = sweep(run.ddp_model, run.train_loader, run.criterion, run.optimizer, lrs, cfg, info)
        lrs, smoothed = lrs[:len(losses)], smooth_losses(losses)
        result = {"lrs": lrs, "losses": losses, "smoothed": smoothed, **suggest_lr(lrs, smoothed)}
        if info.is_main:
            write_csv(out_dir / "lr_find.csv", lrs, losses, smoothed)
            plot_lr_find(out_dir / "lr_find.png", result)
        log.info("lr finder: %d of %d steps%s; suggested lr %.2e (steepest descent of the smoothed loss), "
                 "%.2e (minimum / 10); plot %s", len(losses), cfg.lr_find_steps,
                 " (stopped: the loss diverged)" if len(losses) < cfg.lr_find_steps else "", result["steepest"],
                 result["min_div10"], out_dir / "lr_find.png")
        return result


def sweep_lrs(start: float, end: float, steps: int) -> list[float]:
    """``steps`` learning rates spaced evenly in log space from ``start`` to ``end``."""
    if not 0.0 < start < end or steps < 2:
        raise UsageError(f"--lr_find needs 0 < --lr_find_start < --lr_find_end and --lr_find_steps >= 2, got "
                         f"{start}, {end}, {steps}")
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


def sweep(model: torch.nn.Module, loader, criterion, optimizer: torch.optim.Optimizer, lrs: list[float],
          cfg: Config, info: DistInfo) -> list[float]:
    """One optimizer step per lr; returns each step's loss averaged over ranks, stopping once it diverges.

    Every rank sees the same averaged losses, so all ranks stop at the same step.
    """
    model.train()
    top = max(group["lr"] for group in optimizer.param_groups)
    shares = [group["lr"] / top for group in optimizer.param_groups]  # discriminative lr ratios
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and info.device.type == "cuda")
    preprocessing, batches = preprocessing_of(cfg), endless(loader)
    losses: list[float] = []
    for lr in lrs:
        for group, share in zip(optimizer.param_groups, shares):
            group["lr"] = lr * share
        images, targets, _ = next(batches)
        inputs = to_model_input(images, preprocessing, info.device, cfg.channels_last)
        with autocast(cfg, info.device):
            loss = criterion(model(inputs), targets.to(info.device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total, count = reduce_sum([loss.item(), 1.0], info.device)
        losses.append(total / count)
        if diverged(smooth_losses(losses)):
            break
    return losses


def endless(loader) -> Iterator:
    """Batches of the loader epoch after epoch (a sweep may be longer than one epoch)."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def smooth_losses(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average: ``avg_i / (1 - beta ** (i + 1))``."""
    smoothed, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        smoothed.append(avg / (1 - beta ** (i + 1)))
    return smoothed


def diverged(smoothed: list[float]) -> bool:
    last = smoothed[-1]
    return not math.isfinite(last) or last > DIVERGED * min(smoothed)


def suggest_lr(lrs: list[float], smoothed: list[float]) -> dict:
    """Two common picks: the lr of the steepest negative slope of the smoothed loss against log lr, and the lr
    of the smoothed loss's minimum divided by 10. Non-finite losses (a diverged last step) are ignored."""
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    if len(finite) < 2:
        raise ValueError(f"the lr finder needs at least 2 finite losses, got {len(finite)}; lower --lr_find_start "
                         "or raise --lr_find_steps")
    lr = np.log(np.asarray(lrs)[finite])
    loss = np.asarray(smoothed)[finite]
    slopes = np.gradient(loss, lr)
    return {"steepest": float(np.exp(lr[int(np.argmin(slopes))])),
            "min_div10": float(np.exp(lr[int(np.argmin(loss))]) / 10.0)}


def write_csv(path: Path, lrs: list[float], losses: list[float], smoothed: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["lr", "loss", "smoothed_loss"])
        writer.writerows(zip(lrs, losses, smoothed))


def plot_lr_find(path: Path, result: dict) -> None:
    """Loss (faint) and smoothed loss against lr on a log axis, with both suggestions marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result["lrs"], result["losses"], color="0.75", linewidth=1, label="loss")
    ax.plot(result["lrs"], result["smoothed"], color="C0", linewidth=2, label="smoothed loss")
    for key, color, text in (("steepest", "C3", "steepest"), ("min_div10", "C2", "min / 10")):
        ax.axvline(result[key], color=color, linestyle="--", label=f"{text}: {result[key]:.2e}")
    finite = [v for v in result["smoothed"] if math.isfinite(v)]
    ax.set_ylim(min(finite) * 0.95, min(max(finite), DIVERGED * min(finite)) * 1.05)  # the blow-up would hide the dip
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
