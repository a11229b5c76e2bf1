"""The default application: train a classifier, validate every epoch, checkpoint, log.

Reads top to bottom: set up the process group and the run, build data/model/optimizer, optionally
resume, then loop over epochs. Works unchanged as ``python main.py`` (a world of one) and under torchrun.
"""
from __future__ import annotations

import math
import time

import torch
from tqdm import tqdm

from applications.common import (autocast, predict, preprocessing_of, resolve_config, run_dir, seed_everything,
                                 to_model_input)
from config import Config
from criterions import build_criterion
from dataloader import build_datasets, build_loader
from models import build_model
from optim import build_optimizer, build_scheduler, param_groups
from utils.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from utils.distributed import (DistInfo, broadcast_buffers, broadcast_object, cleanup_distributed,
                               init_distributed, reduce_sum, wrap_ddp)
from utils.hardware import choose_amp, choose_channels_last, describe_hardware
from utils.logger import RunRecorder, setup_logging
from utils.metrics import topk_correct


class NonFiniteLossError(RuntimeError):
    pass


def train(cfg: Config, explicit: set[str]) -> dict:
    """Train per ``cfg``; returns the last epoch's metrics (on every rank)."""
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, explicit, info)
    finally:
        cleanup_distributed()


def _train(cfg: Config, explicit: set[str], info: DistInfo) -> dict:
    cfg, ckpt = resolve_config(cfg, explicit)
    if cfg.name is None:
        cfg.name = broadcast_object(f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir = run_dir(cfg)
    log = setup_logging(out_dir / "train.log", info.is_main)
    seed_everything(cfg.seed)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    splits = build_datasets(cfg.data, image_size=tuple(cfg.image_size), aug=cfg.aug, val_ratio=cfg.val_ratio,
                            seed=cfg.seed)
    class_names = splits.class_names
    if cfg.num_classes is not None and cfg.num_classes != len(class_names):
        raise ValueError(f"--num_classes {cfg.num_classes} but {cfg.data} has {len(class_names)} classes "
                         f"({', '.join(class_names[:10])}...); drop --num_classes or fix the data")
    cfg.num_classes = len(class_names)
    if cfg.cache_images == "ram":
        started = time.time()
        gib = sum(ds.cache_in_ram() for ds in (splits.train, splits.val))
        log.info("cached %d images (%.2f GiB) in RAM in %.1fs", len(splits.train) + len(splits.val), gib,
                 time.time() - started)
    if splits.val is None:
        raise ValueError(f"{cfg.data} has no val split and --val_ratio is {cfg.val_ratio}; add a val/ folder or "
                         "val.csv, or pass --val_ratio 0.1 to validate on a stratified share of train")
    loader_args = dict(batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed, rank=info.rank,
                       world_size=info.world_size, pin_memory=info.device.type == "cuda")
    train_loader = build_loader(splits.train, train=True, **loader_args)
    val_loader = build_loader(splits.val, train=False, **loader_args)
    preprocessing = preprocessing_of(cfg)

    model = build_model(cfg.model, num_classes=cfg.num_classes, pretrained=None if ckpt else cfg.pretrained,
                        prior_bias=cfg.prior_bias).to(info.device)
    choose_speed_settings(cfg, model, info, log)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(param_groups(model, cfg.weight_decay), cfg.optimizer, lr=cfg.lr,
                                weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    scheduler = build_scheduler(optimizer, cfg.lr_schedule, epochs=cfg.epochs, warmup=cfg.warmup,
                                steps_per_epoch=len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and info.device.type == "cuda")
    criterion = build_criterion(cfg.criterion, num_classes=cfg.num_classes, label_smoothing=cfg.label_smoothing)

    start_epoch, best_top1 = 0, -1.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_top1 = ckpt["epoch"] + 1, ckpt["best_top1"]
        restore_rng_state(ckpt["rng"])
        log.info("resumed %s at epoch %d (best val top-1 %.2f)", cfg.resume, start_epoch, best_top1)
    ddp_model = wrap_ddp(model, info)

    log.info("run %s: %s, %d classes, train %d / val %d images, world size %d on %s", cfg.name, cfg.model,
             cfg.num_classes, len(splits.train), len(splits.val), info.world_size, info.device)
    recorder = RunRecorder(cfg.log_dir + "/" + cfg.name, out_dir / "summary.csv", info.is_main)
    last_epoch = min(cfg.epochs, cfg.stop_epoch) if cfg.stop_epoch is not None else cfg.epochs
    metrics: dict = {}
    for epoch in range(start_epoch, last_epoch):
        train_loader.sampler.set_epoch(epoch)
        started, lr = time.time(), optimizer.param_groups[0]["lr"]
        train_stats = train_one_epoch(ddp_model, train_loader, criterion, optimizer, scheduler, scaler, cfg,
                                      preprocessing, info, epoch)
        broadcast_buffers(model)
        val_stats = validate(model, val_loader, criterion, cfg, preprocessing, info)
        best_top1 = max(best_top1, val_stats["val_top1"])
        metrics = {"epoch": epoch, **train_stats, **val_stats, "lr": lr,
                   "seconds": round(time.time() - started, 2)}
        if info.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                     "best_top1": best_top1, "metrics": metrics, "rng": capture_rng_state(),
                     "config": cfg.to_dict(), "class_names": class_names, "preprocessing": preprocessing.to_dict()}
            save_checkpoint(state, out_dir / "last.pth")
            if val_stats["val_top1"] >= best_top1:
                save_checkpoint(state, out_dir / "best.pth")
        recorder.scalars({"train/loss": train_stats["train_loss"], "train/top1": train_stats["train_top1"],
                          "val/loss": val_stats["val_loss"], "val/top1": val_stats["val_top1"],
                          "lr": metrics["lr"]}, epoch)
        recorder.epoch_row(metrics)
        log.info("epoch %d/%d  train loss %.4f top-1 %.2f  val loss %.4f top-1 %.2f top-5 %.2f  lr %.2e  %.1fs",
                 epoch + 1, cfg.epochs, train_stats["train_loss"], train_stats["train_top1"],
                 val_stats["val_loss"], val_stats["val_top1"], val_stats["val_top5"], metrics["lr"],
                 metrics["seconds"])
    recorder.close()
    log.info("best val top-1 %.2f; checkpoints in %s (best.pth, last.pth), summary %s, TensorBoard %s/%s",
             best_top1, out_dir, out_dir / "summary.csv", cfg.log_dir, cfg.name)
    return metrics


def choose_speed_settings(cfg: Config, model: torch.nn.Module, info: DistInfo, log) -> None:
    """Resolve unset --amp / --channels_last from the hardware (rank 0 decides for all ranks); the resolved
    values go into the checkpoint's config, so a resumed run keeps them."""
    amp = choose_amp(cfg.amp, info.device)
    amp_dtype = (torch.float16 if info.device.type == "cuda" else torch.bfloat16) if amp else None
    probe_shape = (min(cfg.batch_size, 32), 3, *cfg.image_size)  # small batches can rank formats wrongly
    channels_last, why = choose_channels_last(cfg.channels_last, model, probe_shape, info.device, amp_dtype)
    cfg.amp, cfg.channels_last = broadcast_object((amp, channels_last))
    log.info("speed settings on %s: amp %s, channels_last %s (%s)", describe_hardware(info.device), cfg.amp,
             cfg.channels_last, why)


def train_one_epoch(model, loader, criterion, optimizer, scheduler, scaler, cfg: Config, preprocessing,
                    info: DistInfo, epoch: int) -> dict:
    """One pass over the training shard; loss and accuracy stay on the device until the end of the epoch."""
    model.train()
    loss_sum = torch.zeros((), device=info.device, dtype=torch.float64)
    correct = torch.zeros((), device=info.device, dtype=torch.long)
    seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not info.is_main, leave=False,
               mininterval=1.0, dynamic_ncols=True)
    for step, (images, targets, _) in enumerate(bar):
        inputs = to_model_input(images, preprocessing, info.device, cfg.channels_last)
        targets = targets.to(info.device, non_blocking=True)
        with autocast(cfg, info.device):
            logits = model(inputs)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach().double() * targets.shape[0]
        correct += (logits.detach().argmax(dim=1) == targets).sum()
        seen += targets.shape[0]
        if (step + 1) % cfg.log_interval == 0:  # the only host sync inside the loop
            _check_finite(loss_sum.item() / seen, epoch, step)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    total_loss, total_correct, total_seen = reduce_sum([loss_sum.item(), correct.item(), seen], info.device)
    _check_finite(total_loss / total_seen, epoch, len(loader) - 1)
    return {"train_loss": total_loss / total_seen, "train_top1": 100.0 * total_correct / total_seen}


def _check_finite(value: float, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"loss became {value} in epoch {epoch + 1} by step {step + 1}; training stopped before saving. "
            "Lower --lr, add --warmup epochs, or check the data; resume from the last good last.pth.")


def validate(model, loader, criterion, cfg: Config, preprocessing, info: DistInfo) -> dict:
    """Exact validation: predictions are all-gathered so every sample is counted once on every rank."""
    _, logits, targets = predict(model, loader, cfg, preprocessing, info.device)
    correct = topk_correct(logits, targets)
    n = targets.shape[0]
    return {"val_loss": float(criterion(logits, targets)), "val_top1": 100.0 * correct[1] / n,
            "val_top5": 100.0 * correct[5] / n}
