"""The default application: train a classifier, validate every epoch, checkpoint, log.

Reads top to bottom: set up the process group and the run, build data/model/optimizer, optionally
resume, then loop over epochs. Works unchanged as ``python main.py`` (a world of one) and under torchrun.
"""
from __future__ import annotations

import contextlib
import math
import time

import torch
from tqdm import tqdm

from applications.common import (autocast, batch_augment_of, criterion_from_config, model_options,
                                 optimizer_from_config, predict, preprocessing_of, resolve_config, run_dir,
                                 scheduler_from_config, seed_everything, to_model_input)
from applications.objective import TrainingLoss, training_loss_from_config
from config import Config
from criterions import resolve_head
from dataloader import Preprocessing, build_datasets, build_loader, encode_splits, hard_labels
from models import build_model
from models.heads import find_classifier_name
from models.registry import batchnorm_lag_warning
from optim import BackboneFreezer
from optim.averaging import build_ema, build_swa, swa_start_epoch, update_bn
from utils.checkpoint import (capture_rng_state, keep_epoch_checkpoint, load_checkpoint, restore_rng_state,
                              save_checkpoint)
from utils.distributed import (DistInfo, average_buffers, broadcast_buffers, broadcast_object, cleanup_distributed,
                               init_distributed, reduce_sum, unwrap, wrap_ddp)
from utils.hardware import choose_amp, choose_channels_last, describe_hardware
from utils.logger import RunRecorder, setup_logging
from utils.metrics import topk_correct
from utils.sync_batchnorm import convert_sync_batchnorm


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
                            seed=cfg.seed, kfold=cfg.kfold, fold=cfg.fold)
    class_names = splits.class_names
    if cfg.num_classes is not None and cfg.num_classes != len(class_names):
        raise ValueError(f"--num_classes {cfg.num_classes} but {cfg.data} has {len(class_names)} classes "
                         f"({', '.join(class_names[:10])}...); drop --num_classes or fix the data")
    cfg.num_classes = len(class_names)
    if cfg.decode == "device":  # workers only read the files; to_model_input decodes each batch on the device
        splits = encode_splits(splits, cache_images=cfg.cache_images)
    if splits.val is None:
        check_training_without_val(cfg)
        log.info("no val split (--val_ratio 0): training on all %d images without validation; best.pth holds the "
                 "last epoch's %s weights", len(splits.train), "EMA" if cfg.ema else "model")
    evaluated = [ds for ds in (splits.train, splits.val) if ds is not None]
    if cfg.cache_images == "ram":
        started = time.time()
        gib = sum(ds.cache_in_ram() for ds in evaluated)
        log.info("cached %d images (%.2f GiB) in RAM in %.1fs", sum(map(len, evaluated)), gib,
                 time.time() - started)
    loader_args = dict(batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed, rank=info.rank,
                       world_size=info.world_size, pin_memory=info.device.type == "cuda")
    train_loader = build_loader(splits.train, train=True, balance=cfg.balance, **loader_args)
    val_loader = build_loader(splits.val, train=False, **loader_args) if splits.val is not None else None
    preprocessing = preprocessing_of(cfg)

    cfg.head = resolve_head(cfg.criterion, cfg.head)  # stored resolved, so the checkpoint rebuilds the same head
    model = build_model(cfg.model, num_classes=cfg.num_classes, pretrained=None if ckpt else cfg.pretrained,
                        prior_bias=cfg.prior_bias, **model_options(cfg)).to(info.device)
    choose_speed_settings(cfg, model, info, log)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.accum_steps < 1:
        raise ValueError(f"--accum_steps must be >= 1, got {cfg.accum_steps}")
    if cfg.keep_epochs < 0:
        raise ValueError(f"--keep_epochs must be >= 0 (0 keeps only last.pth and best.pth), got {cfg.keep_epochs}")
    optimizer = optimizer_from_config(cfg, model, world_size=info.world_size)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    scheduler = scheduler_from_config(cfg, optimizer, steps_per_epoch=steps_per_epoch)
    if cfg.bn_momentum is None and (lag := batchnorm_lag_warning(model, cfg.model, steps_per_epoch * cfg.epochs)):
        log.warning(lag)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and info.device.type == "cuda")
    criterion = criterion_from_config(cfg, class_names=class_names, train_targets=splits.train.targets)
    criterion = criterion.to(info.device)  # GHM's running counts and the class weights live on the device
    step_loss = training_loss_from_config(cfg, criterion, splits.train, info.device)  # + teacher, curriculum

    ema = build_ema(model, cfg.ema_decay) if cfg.ema else None
    swa = build_swa(model) if cfg.swa else None
    swa_start = swa_start_epoch(cfg.epochs, cfg.swa_epochs) if cfg.swa else None

    start_epoch, best_top1, best_epoch = 0, -1.0, -1
    if ckpt is not None:
        model.load_state_dict(ckpt["train_model"] if "train_model" in ckpt else ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        criterion.load_state_dict(ckpt.get("criterion", {}), strict=False)  # GHM counts; absent in older runs
        for name, averaged in (("ema", ema), ("swa", swa)):
            if averaged is not None and ckpt.get(name) is not None:
                averaged.load_state_dict(ckpt[name])
        start_epoch, best_top1 = ckpt["epoch"] + 1, ckpt["best_top1"]
        best_epoch = ckpt.get("best_epoch", ckpt["epoch"])
        restore_rng_state(ckpt["rng"])
        log.info("resumed %s at epoch %d (best val top-1 %.2f)", cfg.resume, start_epoch, best_top1)
    if cfg.sync_bn and info.is_distributed:
        model = convert_sync_batchnorm(model, info.device)
    freezer = BackboneFreezer(model, head=find_classifier_name(model), epochs=cfg.freeze)
    freezer.set_epoch(start_epoch)  # before wrapping: DDP hooks only the parameters that require grad now
    ddp_model = maybe_compile(wrap_ddp(model, info), model, cfg, info, log)

    log.info("run %s: %s, %d classes, train %d / val %d images, world size %d on %s", cfg.name, cfg.model,
             cfg.num_classes, len(splits.train), len(splits.val or ()), info.world_size, info.device)
    recorder = RunRecorder(cfg.log_dir + "/" + cfg.name, out_dir / "summary.csv", info.is_main)
    last_epoch = min(cfg.epochs, cfg.stop_epoch) if cfg.stop_epoch is not None else cfg.epochs
    metrics: dict = {}
    for epoch in range(start_epoch, last_epoch):
        train_loader.sampler.set_epoch(epoch)
        started, lr = time.time(), optimizer.param_groups[0]["lr"]
        swa_lr = cfg.swa_lr if swa is not None and epoch >= swa_start else None
        if freezer.set_epoch(epoch) and info.is_distributed:  # unfrozen: a new DDP wrapper hooks the backbone too
            ddp_model = maybe_compile(wrap_ddp(model, info), model, cfg, info, log)
        train_stats = train_one_epoch(ddp_model, train_loader, step_loss, optimizer, scheduler, scaler, cfg,
                                      preprocessing, info, epoch, ema=ema, swa_lr=swa_lr, freezer=freezer)
        broadcast_buffers(model)
        if swa is not None and epoch >= swa_start:
            swa.update_parameters(model)
        val_stats, top1, source, best_weights = best_candidate(model, ema, val_loader, criterion, cfg,
                                                               preprocessing, info)
        if val_stats:
            scheduler.end_epoch(val_stats["val_loss"])
        improved = val_loader is None or top1 > best_top1  # without val, best.pth follows the latest weights
        if improved:
            best_top1, best_epoch = top1, epoch
        metrics = {"epoch": epoch, **train_stats, **val_stats, "lr": lr,
                   "seconds": round(time.time() - started, 2)}
        if info.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                     "best_top1": best_top1, "best_epoch": best_epoch, "metrics": metrics,
                     "rng": capture_rng_state(), "config": cfg.to_dict(), "class_names": class_names,
                     "preprocessing": preprocessing.to_dict(), "criterion": criterion.state_dict(),
                     "ema": ema.state_dict() if ema is not None else None,
                     "swa": swa.state_dict() if swa is not None else None}
            save_checkpoint(state, out_dir / "last.pth")
            if cfg.keep_epochs > 0:
                keep_epoch_checkpoint(out_dir / "last.pth", epoch, cfg.keep_epochs)
            if improved:  # best.pth holds the better of model and EMA as "model"; "train_model" resumes
                save_checkpoint({**state, "model": best_weights.state_dict(), "train_model": state["model"],
                                 "weights": source}, out_dir / "best.pth")
        recorder.scalars({"train/loss": train_stats["train_loss"], "train/top1": train_stats["train_top1"],
                          "lr": metrics["lr"], **{f"val/{k[4:]}": v for k, v in val_stats.items()
                                                  if k in ("val_loss", "val_top1", "ema_val_top1")}}, epoch)
        recorder.epoch_row(metrics)
        log.info("epoch %d/%d  train loss %.4f top-1 %.2f%s  lr %.2e  %.1fs", epoch + 1, cfg.epochs,
                 train_stats["train_loss"], train_stats["train_top1"], describe_val(val_stats), metrics["lr"],
                 metrics["seconds"])
        if cfg.patience is not None and epoch - best_epoch >= cfg.patience:
            log.info("early stopping: val top-1 has not improved for %d epochs (best %.2f at epoch %d)",
                     cfg.patience, best_top1, best_epoch + 1)
            break
    else:
        if swa is not None and last_epoch == cfg.epochs and start_epoch < cfg.epochs:
            metrics = {**metrics, **finish_swa(swa, model, train_loader, val_loader, criterion, cfg, preprocessing,
                                               info, best_top1, out_dir, log)}
            best_top1 = max(best_top1, metrics.get("swa_val_top1", best_top1))
    recorder.close()
    log.info("%s; checkpoints in %s (best.pth, last.pth), summary %s, TensorBoard %s/%s",
             f"best val top-1 {best_top1:.2f}" if val_loader is not None else "no validation", out_dir,
             out_dir / "summary.csv", cfg.log_dir, cfg.name)
    return metrics


def best_candidate(model: torch.nn.Module, ema, val_loader, criterion: torch.nn.Module, cfg: Config,
                   preprocessing: Preprocessing, info: DistInfo) -> tuple[dict, float, str, torch.nn.Module]:
    """Validate the model and its EMA (when kept). Returns the val metrics and the better of the two as this
    epoch's best.pth candidate: (metrics, top-1, "model" or "ema", module). Without a val split there is nothing to
    select on: no metrics, top-1 -1, and the latest weights (the EMA when kept)."""
    if val_loader is None:
        return {}, -1.0, *(("ema", ema.module) if ema is not None else ("model", model))
    val_stats = validate(model, val_loader, criterion, cfg, preprocessing, info)
    candidates = {"model": (val_stats["val_top1"], model)}
    if ema is not None:
        ema_stats = validate(ema.module, val_loader, criterion, cfg, preprocessing, info)
        val_stats.update({f"ema_{k}": v for k, v in ema_stats.items()})
        candidates["ema"] = (ema_stats["val_top1"], ema.module)
    source, (top1, weights) = max(candidates.items(), key=lambda item: item[1][0])
    return val_stats, top1, source, weights


def check_training_without_val(cfg: Config) -> None:
    """Without a val split only --val_ratio 0 trains (on purpose, e.g. a final model on all data); the options
    that decide from val numbers are refused."""
    if cfg.val_ratio != 0:
        raise ValueError(f"{cfg.data} has no val split and --val_ratio is {cfg.val_ratio}; add a val/ folder or "
                         "val.csv, pass --val_ratio 0.1 to validate on a stratified share of train, or --val_ratio 0 "
                         "to train on all of train without validation")
    needs_val = {"--lr_schedule plateau": cfg.lr_schedule == "plateau", "--patience": cfg.patience is not None}
    if any(needs_val.values()):
        raise ValueError(f"{', '.join(k for k, v in needs_val.items() if v)} decide(s) from the val loss or top-1, "
                         f"and {cfg.data} has no val split (--val_ratio 0); drop it or add a val split")


def describe_val(stats: dict) -> str:
    """The val part of an epoch's log line ('' when training without validation)."""
    if not stats:
        return ""
    ema = f"  EMA top-1 {stats['ema_val_top1']:.2f}" if "ema_val_top1" in stats else ""
    return (f"  val loss {stats['val_loss']:.4f} top-1 {stats['val_top1']:.2f} top-5 {stats['val_top5']:.2f}"
            + ema)


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


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, scaler, cfg: Config, preprocessing,
                    info: DistInfo, epoch: int, ema=None, swa_lr: float | None = None,
                    freezer: BackboneFreezer | None = None) -> dict:
    """One pass over the training shard; loss and accuracy stay on the device until the end of the epoch.

    ``loss_fn(logits, targets, inputs, indices, epoch)`` is the step loss (applications/objective.py), or a plain
    criterion ``(logits, targets)``.

    With ``--accum_steps N`` the optimizer steps every N batches on the mean gradient of those batches (DDP
    all-reduces only on the last of them); the schedule counts optimizer steps.
    """
    if not isinstance(loss_fn, TrainingLoss):
        loss_fn = TrainingLoss(loss_fn)
    model.train()
    if freezer is not None:
        freezer.hold_norms()  # a frozen backbone keeps its BatchNorm statistics too
    loss_sum = torch.zeros((), device=info.device, dtype=torch.float64)
    correct = torch.zeros((), device=info.device, dtype=torch.long)
    seen, steps = 0, len(loader)
    batch_augment = batch_augment_of(cfg, info.rank)  # multi-scale and mixes (dataloader/mix.py); may be identity
    penalised = [p for p in model.parameters() if p.ndim > 1] if cfg.l1 or cfg.l2 else []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not info.is_main, leave=False,
               mininterval=1.0, dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for step, (images, targets, indices) in enumerate(bar):
        inputs = to_model_input(images, preprocessing, info.device, cfg.channels_last)
        targets = targets.to(info.device, non_blocking=True)
        inputs, targets = batch_augment(inputs, targets, epoch=epoch, step=step)  # mixes give (N, C) targets
        group_start = step - step % cfg.accum_steps
        group_size = min(cfg.accum_steps, steps - group_start)  # the last group may be shorter
        boundary = step + 1 == group_start + group_size
        with contextlib.nullcontext() if boundary else no_sync(model):
            with autocast(cfg, info.device):
                logits = model(inputs)
                loss = loss_fn(logits, targets, inputs, indices, epoch)
            objective = loss + weight_penalty(penalised, cfg.l1, cfg.l2) if penalised else loss
            scaler.scale(objective / group_size).backward()
        if boundary:
            optimizer_step(model, optimizer, scaler, cfg.clip_grad)
            scheduler.step()
            if swa_lr is not None:
                set_constant_lr(optimizer, swa_lr)
            if ema is not None:
                ema.update_parameters(unwrap_model(model))
        loss_sum += loss.detach().double() * targets.shape[0]
        correct += (logits.detach().argmax(dim=1) == hard_labels(targets)).sum()
        seen += targets.shape[0]
        if (step + 1) % cfg.log_interval == 0:  # the only host sync inside the loop
            _check_finite(loss_sum.item() / seen, epoch, step)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    total_loss, total_correct, total_seen = reduce_sum([loss_sum.item(), correct.item(), seen], info.device)
    _check_finite(total_loss / total_seen, epoch, len(loader) - 1)
    return {"train_loss": total_loss / total_seen, "train_top1": 100.0 * total_correct / total_seen}


def optimizer_step(model, optimizer, scaler, clip_grad: float | None) -> None:
    """Unscale, optionally clip the global gradient norm, step and clear the gradients."""
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def weight_penalty(params: list[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    """``l1 * sum|w| + l2 * sum w^2`` over weight tensors (norms and biases excluded, as for weight decay)."""
    total = torch.zeros((), device=params[0].device)
    for p in params:
        if l1:
            total = total + l1 * p.abs().sum()
        if l2:
            total = total + l2 * p.pow(2).sum()
    return total


def set_constant_lr(optimizer, lr: float) -> None:
    """SWA phase: every group gets ``lr`` scaled by its share of the largest initial lr (keeps lr ratios)."""
    top = max(group.get("initial_lr", group["lr"]) for group in optimizer.param_groups)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("initial_lr", group["lr"]) / top


def no_sync(model) -> contextlib.AbstractContextManager:
    """DDP's no_sync (skip the gradient all-reduce of a non-final accumulation step); a no-op otherwise."""
    inner = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    return inner.no_sync() if hasattr(inner, "no_sync") else contextlib.nullcontext()


def unwrap_model(model) -> torch.nn.Module:
    """The trained network under a torch.compile wrapper and/or DDP."""
    return unwrap(getattr(model, "_orig_mod", model))


def maybe_compile(model, raw_model: torch.nn.Module, cfg: Config, info: DistInfo, log):
    """torch.compile with ``--compile``; falls back to eager with a warning when compiling fails here.

    Compilation happens lazily at the first call, so one forward and backward on a random batch is run at once;
    the weights, buffers and gradients it touches are restored, and the RNG is forked, so the run is unchanged.
    """
    if not cfg.compile:
        return model
    compiled = torch.compile(model)
    snapshot = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}
    try:
        devices = [info.device] if info.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            x = torch.randn(min(cfg.batch_size, 8), 3, *cfg.image_size, device=info.device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(cfg, info.device):
                out = compiled(x)
            out.float().sum().backward()
        log.info("torch.compile: compiled %s", cfg.model)
    except Exception as error:  # noqa: BLE001 - any backend failure means: train eagerly
        log.warning("--compile failed here (%s: %s); training without torch.compile", type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else "")
        compiled = model
    finally:
        raw_model.load_state_dict(snapshot)
        raw_model.zero_grad(set_to_none=True)
    return compiled


def finish_swa(swa, model, train_loader, val_loader, criterion, cfg: Config, preprocessing, info: DistInfo,
               best_top1: float, out_dir, log) -> dict:
    """After the last epoch: recompute the SWA model's BN statistics, validate it and save ``swa.pth``
    (and ``best.pth`` when it beats the best so far). Returns the SWA metrics."""
    if swa.n_averaged.item() == 0:
        return {}
    swa_model = swa.module
    batches = (to_model_input(images, preprocessing, info.device, cfg.channels_last)
               for images, _, _ in train_loader)
    with autocast(cfg, info.device):
        update_bn(swa_model, batches, after=average_buffers)
    stats = validate(swa_model, val_loader, criterion, cfg, preprocessing, info) if val_loader is not None else {}
    log.info("SWA over the last %d epochs (%d snapshots)%s", cfg.swa_epochs, int(swa.n_averaged.item()),
             describe_val(stats).replace("  val", ": val"))
    if info.is_main:
        last = load_checkpoint(out_dir / "last.pth")
        state = {**last, "model": swa_model.state_dict(), "train_model": last["model"], "weights": "swa",
                 "metrics": {**last["metrics"], **{f"swa_{k}": v for k, v in stats.items()}}}
        save_checkpoint(state, out_dir / "swa.pth")
        if val_loader is None or stats["val_top1"] > best_top1:  # without val the SWA weights are the result
            save_checkpoint({**state, "best_top1": stats.get("val_top1", best_top1)}, out_dir / "best.pth")
            log.info("best.pth now holds the SWA weights")
    return {f"swa_{k}": v for k, v in stats.items()}


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
