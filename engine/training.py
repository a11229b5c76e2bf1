"""A training run: build it from a config, fit it epoch by epoch (validation, best-candidate choice, checkpoints,
early stopping), and finish with SWA. ``train(cfg, explicit)`` is the whole run as one call (the train and repeat
jobs); ``build_training_run`` is shared with the lr finder and the benchmarks.

Works unchanged as ``python main.py`` (a world of one) and under torchrun.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from config import Config
from criterions import resolve_head
from dataloader import DataSplits, Preprocessing, encode_splits, hard_labels
from dataloader.unlabelled import with_extra_samples
from engine.components import (base_reference, batch_augment_of, criterion_from_config, datasets_of, init_from_data,
                               loader_for, new_model, optimizer_from_config, preprocessing_of, scheduler_from_config,
                               train_crop_of)
from engine.device import amp_dtype, autocast, to_model_input
from engine.inference import predict_logits
from engine.job import Job, default_run_name, open_job, run_dir, seed_everything
from engine.objective import PseudoTargets, TrainingLoss, training_loss_from_config
from engine.preemption import StepControl
from engine.semi import MeanTeacher, PseudoLabels, mean_teacher_from_config, state_checksum
from models.complexity import count_macs
from models.heads import find_classifier_name
from models.lora import adapter_keys, load_adapter_state, stage_trainable
from models.registry import batchnorm_lag_warning
from optim import BackboneFreezer, PartialFreezer, Scheduler
from optim.averaging import build_ema, build_swa, swa_start_epoch, update_bn
from utils.calibration import scores_to_probs
from utils.checkpoint import (Checkpoint, capture_rng_state, keep_epoch_checkpoint, load_checkpoint,
                              restore_rng_state, save_checkpoint)
from utils.distributed import (DistInfo, average_buffers, broadcast_buffers, broadcast_object, gather_objects,
                               reduce_sum, unwrap, wrap_ddp)
from utils.errors import Preempted, UsageError
from utils.hardware import choose_amp, choose_channels_last, describe_hardware
from utils.logger import RunRecorder, get_logger
from utils.metrics import classification_report, topk_correct
from utils.sync_batchnorm import convert_sync_batchnorm


class NonFiniteLossError(UsageError):
    """The loss stopped being finite: the recipe (lr, warmup, data) needs a change; exit code 2."""


def check_recipe(cfg: Config) -> None:
    """The numbers a run cannot start with (the flags' parser refuses them too; this guards library callers)."""
    for name, value, least in (("--epochs", cfg.epochs, 1), ("-b/--batch_size", cfg.batch_size, 1),
                               ("--accum_steps", cfg.accum_steps, 1), ("--keep_epochs", cfg.keep_epochs, 0),
                               ("--warmup", cfg.warmup, 0), ("--image_size", min(cfg.image_size), 1)):
        if value < least:
            raise UsageError(f"{name} must be >= {least}, got {value}")
    if cfg.resize_mode == "crop" and cfg.cache_images:
        raise UsageError(f"--cache_images {cfg.cache_images} keeps images at the input size, but --resize_mode crop "
                         "cuts each train image afresh from the whole picture every epoch: drop one of the two")
    if cfg.resize_mode == "crop" and cfg.decode == "device":
        raise UsageError("--decode device letterboxes on the device; --resize_mode crop needs --decode loader "
                         "(the default)")
    train_crop_of(cfg)
    preprocessing_of(cfg)
    batch_augment_of(cfg, 0)  # multi-scale, progressive resizing and mixes refuse bad settings before any work
    check_finetuning(cfg)


def check_finetuning(cfg: Config) -> None:
    """--lora and --freeze_stages: what they need and what they do not combine with; --lora_alpha resolved."""
    if not cfg.lora and not cfg.freeze_stages:
        return
    if cfg.lora and cfg.freeze_stages:
        raise UsageError("choose one of --lora R and --freeze_stages K")
    flag = "--lora" if cfg.lora else "--freeze_stages"
    clashes = {"--freeze": cfg.freeze > 0, "--ema": cfg.lora and cfg.ema, "--swa": cfg.lora and cfg.swa}
    for other, used in clashes.items():
        if used:
            raise UsageError(f"{flag} freezes part of the model for the whole run and does not combine with {other}; "
                             f"drop one of them")
    if cfg.lora and not cfg.pretrained:
        raise UsageError("--lora adapts pretrained weights: add --pretrained FILE (a state dict, or the best.pth of a "
                         "run on related data)")
    if cfg.lora and cfg.lora_alpha is None:
        cfg.lora_alpha = 2.0 * cfg.lora  # stored resolved, so a resumed run and the exports scale alike


@dataclass
class TrainingRun:
    """Everything a run trains with, built once by ``build_training_run``."""

    cfg: Config
    info: DistInfo
    class_names: list[str]
    splits: DataSplits
    train_loader: object
    val_loader: object | None
    preprocessing: Preprocessing
    model: torch.nn.Module  # the network itself
    ddp_model: torch.nn.Module  # what the steps call: DDP and/or torch.compile around ``model``
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    step_loss: TrainingLoss
    ema: object | None
    swa: object | None
    swa_start: int | None
    freezer: BackboneFreezer | PartialFreezer
    mean_teacher: MeanTeacher | None = None  # --mean_teacher: the unlabelled batches and consistency term
    base: dict | None = None  # LoRA: the base weights file the checkpoints name (Checkpoint.base)
    saved_keys: set[str] | None = None  # LoRA: the state-dict keys checkpoints hold (adapters + head); None: all
    start_epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1
    best_score: float = -math.inf  # the --monitor metric of the best epoch, higher is better (see monitored)
    start_batch: int = 0  # resumed mid-epoch: batches of start_epoch already done, and their sums
    partial: dict | None = None
    metrics: dict | None = None  # the last finished epoch's

    @property
    def out_dir(self) -> Path:
        return run_dir(self.cfg)

    @property
    def last_epoch(self) -> int:
        return last_epoch_of(self.cfg)


def train(cfg: Config, explicit: set[str]) -> dict:
    """Train per ``cfg`` (resuming ``--resume``); returns the last epoch's metrics (on every rank)."""
    with open_job(cfg, explicit) as job:
        if job.ckpt is not None and finished(job.cfg, job.ckpt):
            job.log.info("run %s already finished: %s holds epoch %d of %d; nothing to do (raise --epochs to train "
                         "longer)", job.cfg.name, job.cfg.resume, job.ckpt.epoch + 1, job.cfg.epochs)
            return job.ckpt.metrics
        run = build_training_run(job)
        job.start_run_folder(run.out_dir, "train.log")
        return fit(run, job.log)


def finished(cfg: Config, ckpt: Checkpoint) -> bool:
    """Whether ``ckpt`` ends the run ``cfg`` asks for (all epochs, or --stop_epoch, done; not mid-epoch)."""
    return ckpt.batches_done == 0 and ckpt.epoch + 1 >= last_epoch_of(cfg)


def last_epoch_of(cfg: Config) -> int:
    """The epoch count an invocation stops at (--stop_epoch ends early without changing the schedule)."""
    return min(cfg.epochs, cfg.stop_epoch) if cfg.stop_epoch is not None else cfg.epochs


def build_training_run(job: Job, pseudo: PseudoLabels | None = None) -> TrainingRun:
    """Data, model, speed settings, optimizer, schedule, loss, averaging and the resumed state of ``job.ckpt``;
    ``pseudo``: pseudo-labelled images to train on too. Nothing is written: a run that cannot be built leaves no run
    folder behind."""
    cfg, info, ckpt, log = job.cfg, job.info, job.ckpt, job.log
    check_recipe(cfg)
    if cfg.name is None:
        cfg.name = default_run_name(cfg)
    seed_everything(cfg.seed)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    splits, train_loader, val_loader = build_data(cfg, info, log, extra=pseudo.samples() if pseudo else None)
    cfg.head = resolve_head(cfg.criterion, cfg.head)  # stored resolved, so the checkpoint rebuilds the same head
    model = new_model(cfg, pretrained=ckpt is None, train_targets=splits.train.targets,
                      class_names=splits.class_names).to(info.device)
    if ckpt is None and (used := init_from_data(model, cfg, splits.class_names)):
        log.info("%s initialised from %d train images (unaugmented, drawn by --seed)", cfg.model, used)
    choose_speed_settings(cfg, model, info, log)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer_from_config(cfg, model, world_size=info.world_size)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    scheduler = scheduler_from_config(cfg, optimizer, steps_per_epoch=steps_per_epoch)
    if cfg.bn_momentum is None and (lag := batchnorm_lag_warning(model, cfg.model, steps_per_epoch * cfg.epochs)):
        log.warning(lag)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and info.device.type == "cuda")
    criterion = criterion_from_config(cfg, class_names=splits.class_names, train_targets=splits.train.targets)
    criterion = criterion.to(info.device)  # GHM's running counts and the class weights live on the device
    pseudo_targets = (PseudoTargets(len(splits.train) - len(pseudo.files), cfg.pseudo_weight,
                                    pseudo.probs if cfg.pseudo_targets == "soft" else None, info.device)
                      if pseudo is not None else None)
    step_loss = training_loss_from_config(cfg, criterion, splits.train, info.device, pseudo_targets,
                                          sample_weights=splits.train_weights)
    averaged = cfg.ema or cfg.mean_teacher  # the mean teacher is the run's EMA
    run = TrainingRun(cfg, info, splits.class_names, splits, train_loader, val_loader, preprocessing_of(cfg), model,
                      model, optimizer, scheduler, scaler, criterion, step_loss,
                      ema=build_ema(model, cfg.mean_teacher_decay if cfg.mean_teacher else cfg.ema_decay)
                      if averaged else None,
                      swa=build_swa(model) if cfg.swa else None,
                      swa_start=swa_start_epoch(cfg.epochs, cfg.swa_epochs) if cfg.swa else None,
                      freezer=None, base=base_reference(cfg.pretrained) if cfg.lora else None)
    run.mean_teacher = mean_teacher_from_config(cfg, splits.class_names, info, run.ema, run.preprocessing)
    if ckpt is not None:
        restore_training_state(run, ckpt)
        log.info("resumed %s at epoch %d%s (best val top-1 %.2f)", cfg.resume, run.start_epoch + 1,
                 f", after its batch {run.start_batch}" if run.start_batch else "", run.best_top1)
    if cfg.sync_bn and info.is_distributed:
        run.model = convert_sync_batchnorm(run.model, info.device)
    run.freezer, run.saved_keys = freezer_of(cfg, run.model)
    run.freezer.set_epoch(run.start_epoch)  # before wrapping: DDP hooks only the parameters that require grad now
    log_parameter_counts(run.model, log, cfg.image_size if info.is_main else None)
    if (batch_augment := batch_augment_of(cfg, info.rank)).enabled:
        log.info("batch augmentation on the device: %s", batch_augment.describe())
    run.ddp_model = maybe_compile(wrap_ddp(run.model, info), run.model, cfg, info, log)
    log.info("run %s: %s, %d classes, train %d / val %d images, world size %d on %s", cfg.name, cfg.model,
             cfg.num_classes, len(splits.train), len(splits.val or ()), info.world_size, info.device)
    return run


def freezer_of(cfg: Config, model: torch.nn.Module) -> tuple[BackboneFreezer | PartialFreezer, set[str] | None]:
    """What trains: everything (after --freeze N head-only epochs), the deep stages and head (--freeze_stages K) or
    the adapters and head (--lora R). Also the state-dict keys checkpoints hold (None: all of them)."""
    head = find_classifier_name(model)
    if cfg.lora:
        keys = adapter_keys(model, head)
        return PartialFreezer(model, trainable={n for n, _ in model.named_parameters() if n in keys}), keys
    if cfg.freeze_stages:
        try:
            trainable = stage_trainable(model, cfg.freeze_stages, cfg.model)
        except ValueError as error:
            raise UsageError(str(error)) from None
        return PartialFreezer(model, trainable=trainable), None
    return BackboneFreezer(model, head=head, epochs=cfg.freeze), None


def log_parameter_counts(model: torch.nn.Module, log, image_size: tuple[int, int] | None = None) -> None:
    """The log line with the total and trainable parameter counts (seed 003 prints them for LoRA; with --freeze N
    the count of the epoch the run starts in, the head alone while frozen) and thop's compute for one image at the
    input size, as the main seed's model table counts it."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    compute = ""
    if image_size is not None:
        try:
            macs = count_macs(model, tuple(image_size))
            size = "x".join(map(str, image_size))
            compute = f"; {macs / 1e6:,.1f} M multiply-accumulates per {size} image (thop; FLOPs = 2x)"
        except Exception as exc:  # noqa: BLE001  a layer thop cannot trace must not stop training
            compute = f"; compute not counted (thop: {type(exc).__name__}: {exc})"
    log.info("parameters: %s total, %s trainable (%.2f%%)%s", f"{total:,}", f"{trainable:,}",
             100.0 * trainable / total, compute)


def build_data(cfg: Config, info: DistInfo, log,
               extra: list[tuple[str, int]] | None = None) -> tuple[DataSplits, object, object | None]:
    """The splits (classes checked against --num_classes, RAM cache, device decoding) and their loaders;
    ``extra`` (path, class index) samples join the training split after its own."""
    splits = datasets_of(cfg)
    if extra:
        splits = dataclasses.replace(splits, train=with_extra_samples(splits.train, extra))
    class_names = splits.class_names
    if cfg.num_classes is not None and cfg.num_classes != len(class_names):
        raise UsageError(f"--num_classes {cfg.num_classes} but {cfg.data} has {len(class_names)} classes "
                         f"({', '.join(class_names[:10])}...); drop --num_classes or fix the data")
    cfg.num_classes = len(class_names)
    if splits.extra_count:
        log.info("--extra_train %s: %d images added to the %d of train, loss weight %g", cfg.extra_train,
                 splits.extra_count, len(splits.train) - splits.extra_count, cfg.extra_weight)
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
    train_loader = loader_for(splits.train, cfg, info, train=True, balance=cfg.balance)
    val_loader = loader_for(splits.val, cfg, info) if splits.val is not None else None
    return splits, train_loader, val_loader


def restore_training_state(run: TrainingRun, ckpt: Checkpoint) -> None:
    """Continue where ``ckpt`` stopped: weights, optimizer, schedule, scaler, loss statistics, averages, every
    rank's RNG and, for a mid-epoch checkpoint, the position in the epoch."""
    if ckpt.world_size is not None and ckpt.world_size != run.info.world_size:
        raise UsageError(f"--resume {run.cfg.resume} was trained by {ckpt.world_size} process(es) and this run has "
                         f"{run.info.world_size}: the global batch (and with --lr_scale_batch the lr), the data each "
                         f"process reads and the position in the epoch would change. Resume with "
                         f"{ckpt.world_size} process(es) (torchrun --nproc_per_node/--nnodes), or start a new run "
                         "from these weights with --pretrained")
    if run.base is not None:
        if ckpt.base is None or ckpt.base["sha256"] != run.base["sha256"]:
            raise UsageError(f"--resume {run.cfg.resume}: its LoRA adapters were trained on other base weights than "
                             f"--pretrained {run.cfg.pretrained} (sha256 differs); resume with the original file")
        load_adapter_state(run.model, ckpt.resume_weights)
    else:
        run.model.load_state_dict(ckpt.resume_weights)
    if ckpt.optimizer is None:
        raise UsageError(f"--resume {run.cfg.resume} holds weights without a training state (an average); "
                         "continue the run from its last.pth, or fine-tune from it with --pretrained")
    run.optimizer.load_state_dict(ckpt.optimizer)
    run.scheduler.load_state_dict(ckpt.scheduler)
    run.scaler.load_state_dict(ckpt.scaler)
    run.criterion.load_state_dict(ckpt.criterion, strict=False)  # GHM counts; absent in older runs
    for averaged, state in ((run.ema, ckpt.ema), (run.swa, ckpt.swa)):
        if averaged is not None and state is not None:
            averaged.load_state_dict(state)
    run.start_epoch, run.best_top1, run.best_epoch = ckpt.epoch + 1, ckpt.best_top1, ckpt.best_epoch
    if ckpt.best_score is not None:
        run.best_score = ckpt.best_score
    elif ckpt.best_epoch >= 0 and run.cfg.monitor == "top1":  # written before --monitor: top-1 was the rule
        run.best_score = ckpt.best_top1
    run.start_batch, run.partial, run.metrics = ckpt.batches_done, ckpt.partial, ckpt.metrics
    per_rank = ckpt.rng_per_rank
    restore_rng_state(per_rank[run.info.rank] if per_rank and len(per_rank) == run.info.world_size else ckpt.rng)


def fit(run: TrainingRun, log) -> dict:
    """Train from where ``run`` starts to the last epoch: a step pass, validation, checkpoints and logs per epoch;
    early stopping; SWA's finish. A stop signal ends it with ``Preempted`` once last.pth is written (see
    engine/preemption.py). Returns the last epoch's metrics."""
    cfg, info = run.cfg, run.info
    recorder = RunRecorder(cfg.log_dir + "/" + cfg.name, run.out_dir / "summary.csv", info.is_main)
    control = StepControl(save_every_minutes=cfg.save_every_minutes, save_every_steps=cfg.save_every_steps,
                          is_main=info.is_main).install()
    metrics: dict = run.metrics or {}
    try:
        for epoch in range(run.start_epoch, run.last_epoch):
            metrics = run_epoch(run, epoch, control)
            record_epoch(recorder, metrics, cfg, log)
            if control.stop_requested():
                raise Preempted(f"stopped by {control.signal_name} after epoch {epoch + 1}; last.pth holds it")
            if cfg.patience is not None and epoch - run.best_epoch >= cfg.patience:
                log.info("early stopping: val %s has not improved for %d epochs (best %s at epoch %d)", cfg.monitor,
                         cfg.patience, describe_score(run.best_score, cfg.monitor), run.best_epoch + 1)
                break
        else:
            if run.swa is not None and run.last_epoch == cfg.epochs and run.start_epoch < cfg.epochs:
                metrics = {**metrics, **finish_swa(run, log)}
    except Preempted as stop:
        log.warning("%s; continue with --resume auto --name %s (or --resume %s); exit code %d", stop.message,
                    cfg.name, run.out_dir / "last.pth", stop.code)
        raise
    finally:
        control.uninstall()
        recorder.close()
    top1 = f" (top-1 {run.best_top1:.2f})" if cfg.monitor != "top1" else ""
    best = f"best val {cfg.monitor} {describe_score(run.best_score, cfg.monitor)}{top1} at epoch {run.best_epoch + 1}"
    log.info("%s; checkpoints in %s (best.pth, last.pth), summary %s, TensorBoard %s/%s",
             best if run.val_loader is not None else "no validation", run.out_dir,
             run.out_dir / "summary.csv", cfg.log_dir, cfg.name)
    return metrics


def run_epoch(run: TrainingRun, epoch: int, control: StepControl | None = None) -> dict:
    """One epoch (or the rest of a resumed one): train, average, validate, choose best.pth's candidate and save.
    Returns the epoch's metrics."""
    cfg, info = run.cfg, run.info
    start_batch, partial = (run.start_batch, run.partial) if epoch == run.start_epoch else (0, None)
    run.train_loader.sampler.set_epoch(epoch)
    started = time.time()
    lr = partial["lr"] if partial else run.optimizer.param_groups[0]["lr"]
    swa_lr = cfg.swa_lr if run.swa is not None and epoch >= run.swa_start else None
    if run.freezer.set_epoch(epoch) and info.is_distributed:  # unfrozen: a new DDP wrapper hooks the backbone too
        run.ddp_model = maybe_compile(wrap_ddp(run.model, info), run.model, cfg, info, get_logger())

    def on_save(batches_done: int, sums: dict) -> None:
        save_mid_epoch(run, epoch, batches_done, {**sums, "lr": lr})

    train_stats = train_one_epoch(run.ddp_model, run.train_loader, run.step_loss, run.optimizer, run.scheduler,
                                  run.scaler, cfg, run.preprocessing, info, epoch, ema=run.ema, swa_lr=swa_lr,
                                  freezer=run.freezer, start_batch=start_batch, partial=partial, control=control,
                                  on_save=on_save, mean_teacher=run.mean_teacher)
    broadcast_buffers(run.model)
    if run.mean_teacher is not None:
        log_teacher_checksums(run.ema.module, epoch, info)
    if run.swa is not None and epoch >= run.swa_start:
        run.swa.update_parameters(run.model)
    val_stats, (score, top1), source, best_weights = best_candidate(run.model, run.ema, run.val_loader,
                                                                    run.criterion, cfg, run.preprocessing, info)
    if val_stats:
        run.scheduler.end_epoch(val_stats["val_loss"])
    improved = run.val_loader is None or score > run.best_score  # without val, best.pth follows the latest weights
    if improved:
        run.best_score, run.best_top1, run.best_epoch = score, top1, epoch
    run.metrics = {"epoch": epoch, **train_stats, **val_stats, "lr": lr, "seconds": round(time.time() - started, 2)}
    rngs = gather_objects(capture_rng_state())
    if info.is_main:
        save_epoch(run, epoch, rngs, best=(source, best_weights) if improved else None)
    return run.metrics


def log_teacher_checksums(teacher: torch.nn.Module, epoch: int, info: DistInfo) -> None:
    """Log every rank's checksum of the mean teacher: one network on every rank (engine/semi.py), or a warning."""
    checksums = gather_objects(state_checksum(teacher))
    if info.is_main:
        log = get_logger()
        log.info("mean teacher after epoch %d, state checksum per rank: %s", epoch + 1, " ".join(checksums))
        if len(set(checksums)) > 1:
            log.warning("the mean teacher differs between ranks after epoch %d", epoch + 1)


def training_state(run: TrainingRun, epoch: int, rngs: list) -> Checkpoint:
    """Everything a resumed run needs, as it stands now; ``epoch`` is the last finished one."""
    return Checkpoint(config=run.cfg.to_dict(), class_names=run.class_names,
                      preprocessing=run.preprocessing.to_dict(), model=saved_weights(run, run.model), epoch=epoch,
                      best_top1=run.best_top1, best_epoch=run.best_epoch,
                      best_score=run.best_score if math.isfinite(run.best_score) else None, metrics=run.metrics or {},
                      optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                      scaler=run.scaler.state_dict(), criterion=run.criterion.state_dict(),
                      ema=run.ema.state_dict() if run.ema is not None else None,
                      swa=run.swa.state_dict() if run.swa is not None else None, rng=rngs[0], rng_per_rank=rngs,
                      world_size=run.info.world_size, base=run.base)


def saved_weights(run: TrainingRun, module: torch.nn.Module) -> dict:
    """The state dict checkpoints hold: all of it, or for LoRA only the adapters and the head (Checkpoint.base)."""
    state = module.state_dict()
    return state if run.saved_keys is None else {k: v for k, v in state.items() if k in run.saved_keys}


def save_epoch(run: TrainingRun, epoch: int, rngs: list, best: tuple[str, torch.nn.Module] | None) -> None:
    """last.pth (and epoch_NNN.pth with --keep_epochs); best.pth when this epoch improved, holding the better of
    model and EMA as its weights and the model as the weights to continue from."""
    state = training_state(run, epoch, rngs)
    save_checkpoint(state, run.out_dir / "last.pth")
    if run.cfg.keep_epochs > 0:
        keep_epoch_checkpoint(run.out_dir / "last.pth", epoch, run.cfg.keep_epochs)
    if best is not None:
        source, weights = best
        save_checkpoint(state.replace(model=saved_weights(run, weights), train_model=state.model, weights=source),
                        run.out_dir / "best.pth")


def save_mid_epoch(run: TrainingRun, epoch: int, batches_done: int, partial: dict) -> None:
    """last.pth in the middle of ``epoch`` (called on every rank: each one's RNG state goes in; rank 0 writes)."""
    rngs = gather_objects(capture_rng_state())
    if run.info.is_main:
        state = training_state(run, epoch - 1, rngs).replace(batches_done=batches_done, partial=partial)
        save_checkpoint(state, run.out_dir / "last.pth")


def record_epoch(recorder: RunRecorder, metrics: dict, cfg: Config, log) -> None:
    """TensorBoard scalars, the summary.csv row and the epoch's log line."""
    recorder.scalars({"train/loss": metrics["train_loss"], "train/top1": metrics["train_top1"], "lr": metrics["lr"],
                      **{f"val/{k[4:]}": v for k, v in metrics.items()
                         if k in ("val_loss", "val_top1", "ema_val_top1")}}, metrics["epoch"])
    recorder.epoch_row(metrics)
    log.info("epoch %d/%d  train loss %.4f top-1 %.2f%s  lr %.2e  %.1fs", metrics["epoch"] + 1, cfg.epochs,
             metrics["train_loss"], metrics["train_top1"], describe_val(metrics), metrics["lr"], metrics["seconds"])


def best_candidate(model: torch.nn.Module, ema, val_loader, criterion: torch.nn.Module, cfg: Config,
                   preprocessing: Preprocessing, info: DistInfo) -> tuple[dict, tuple, str, torch.nn.Module]:
    """Validate the model and its EMA (when kept). Returns the val metrics and the better of the two by --monitor
    as this epoch's best.pth candidate: (metrics, (score, top-1), "model" or "ema", module). Without a val split
    there is nothing to select on: no metrics, (-inf, -1), and the latest weights (the EMA when kept)."""
    if val_loader is None:
        return {}, (-math.inf, -1.0), *(("ema", ema.module) if ema is not None else ("model", model))
    val_stats = validate(model, val_loader, criterion, cfg, preprocessing, info)
    candidates = {"model": ((monitored(val_stats, cfg.monitor), val_stats["val_top1"]), model)}
    if ema is not None:
        ema_stats = validate(ema.module, val_loader, criterion, cfg, preprocessing, info)
        val_stats.update({f"ema_{k}": v for k, v in ema_stats.items()})
        candidates["ema"] = ((monitored(ema_stats, cfg.monitor), ema_stats["val_top1"]), ema.module)
    source, (scores, weights) = max(candidates.items(), key=lambda item: item[1][0][0])
    return val_stats, scores, source, weights


def monitored(stats: dict, monitor: str) -> float:
    """The --monitor metric of validation ``stats`` as a score where higher is better (the loss negated)."""
    return -stats["val_loss"] if monitor == "loss" else stats[f"val_{monitor}"]


def describe_score(score: float, monitor: str) -> str:
    if not math.isfinite(score):
        return "none yet"
    return f"loss {-score:.4f}" if monitor == "loss" else f"{score:.4f}" if monitor != "top1" else f"{score:.2f}"


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
    if "val_loss" not in stats:
        return ""
    ema = f"  EMA top-1 {stats['ema_val_top1']:.2f}" if "ema_val_top1" in stats else ""
    return (f"  val loss {stats['val_loss']:.4f} top-1 {stats['val_top1']:.2f} top-5 {stats['val_top5']:.2f}"
            + ema)


def choose_speed_settings(cfg: Config, model: torch.nn.Module, info: DistInfo, log) -> None:
    """Resolve unset --amp / --channels_last from the hardware (rank 0 decides for all ranks); the resolved
    values go into the checkpoint's config, so a resumed run keeps them."""
    amp = choose_amp(cfg.amp, info.device)
    dtype = amp_dtype(info.device) if amp else None
    # the real batch where it is cheap (up to 128 images of 32x32 in pixels), at least 8 images: at 2 threads,
    # wrn22_1 at 28 px ran the same in both formats at batch 32 and 25% faster channels_last at its batch of 128
    height, width = cfg.image_size
    probe_shape = (min(cfg.batch_size, max(8, 128 * 32 * 32 // (height * width))), 3, height, width)
    channels_last, why = None, ""
    if info.is_main:  # one measurement (or cache read) for the whole world
        channels_last, why = choose_channels_last(cfg.channels_last, model, probe_shape, info.device, dtype,
                                                  model_name=cfg.model)
    cfg.amp, cfg.channels_last, why = broadcast_object((amp, channels_last, why))
    log.info("speed settings on %s: amp %s, channels_last %s (%s)", describe_hardware(info.device), cfg.amp,
             cfg.channels_last, why)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, scaler, cfg: Config, preprocessing,
                    info: DistInfo, epoch: int, ema=None, swa_lr: float | None = None,
                    freezer: BackboneFreezer | None = None, start_batch: int = 0, partial: dict | None = None,
                    control: StepControl | None = None, on_save: Callable[[int, dict], None] | None = None,
                    mean_teacher: MeanTeacher | None = None) -> dict:
    """One pass over the training shard; loss and accuracy stay on the device until the end of the epoch.

    ``loss_fn(logits, targets, inputs, indices, epoch)`` is the step loss (engine/objective.py), or a plain
    criterion ``(logits, targets)``.

    With ``--accum_steps N`` the optimizer steps every N batches on the mean gradient of those batches (DDP
    all-reduces only on the last of them); the schedule counts optimizer steps.

    A run resumed mid-epoch passes ``start_batch`` (the loader's sampler skips those batches) and the epoch's
    ``partial`` sums. After each optimizer step ``control`` may ask for a checkpoint: ``on_save(batches done,
    sums so far over all ranks)`` writes it, and on a stop signal the epoch ends there with ``Preempted``.
    ``mean_teacher`` (its teacher is ``ema``) adds each step's consistency term on an unlabelled batch."""
    if not isinstance(loss_fn, TrainingLoss):
        loss_fn = TrainingLoss(loss_fn)
    model.train()
    if freezer is not None:
        freezer.hold_norms()  # a frozen backbone keeps its BatchNorm statistics too
    loss_sum, correct, seen = epoch_sums(partial if info.is_main else None, info.device)
    steps = len(loader)
    batch_augment = batch_augment_of(cfg, info.rank)  # multi-scale and mixes (dataloader/mix.py); may be identity
    penalised = [p for p in model.parameters() if p.ndim > 1] if cfg.l1 or cfg.l2 else []
    if start_batch:
        loader.sampler.skip = start_batch * loader.batch_size  # the sampler leaves them out of this pass
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not info.is_main, leave=False,
               mininterval=1.0, dynamic_ncols=True, initial=start_batch)
    optimizer.zero_grad(set_to_none=True)
    for step, (images, targets, indices) in enumerate(bar, start=start_batch):
        inputs = to_model_input(images, preprocessing, info.device, cfg.channels_last)
        targets = targets.to(info.device, non_blocking=True)
        inputs, targets = batch_augment(inputs, targets, epoch=epoch, step=step)  # mixes give (N, C) targets
        group_start = step - step % cfg.accum_steps
        group_size = min(cfg.accum_steps, steps - group_start)  # the last group may be shorter
        boundary = step + 1 == group_start + group_size
        with contextlib.nullcontext() if boundary else no_sync(model):
            with autocast(cfg, info.device):
                logits, loss = forward_loss(model, loss_fn, inputs, targets, indices, epoch + step / steps,
                                            mean_teacher)
            objective = loss + weight_penalty(penalised, cfg.l1, cfg.l2) if penalised else loss
            scaler.scale(objective / group_size).backward()
        if boundary:
            optimizer_step(model, optimizer, scaler, cfg.clip_grad)
            scheduler.step()
            if swa_lr is not None:
                set_constant_lr(optimizer, swa_lr)
            if ema is not None:
                update_average(ema, model, mean_teacher)
        loss_sum += loss.detach().double() * targets.shape[0]
        correct += (logits.detach().argmax(dim=1) == hard_labels(targets)).sum()
        seen += targets.shape[0]
        if (step + 1) % cfg.log_interval == 0:  # the only host sync inside the loop
            _check_finite(loss_sum.item() / seen, epoch, step)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if boundary and control is not None and step + 1 < steps:
            stop_after_saving(control, on_save, step + 1, (loss_sum, correct, seen), info, epoch)
    total_loss, total_correct, total_seen = reduce_sum([loss_sum.item(), correct.item(), seen], info.device)
    _check_finite(total_loss / total_seen, epoch, len(loader) - 1)
    return {"train_loss": total_loss / total_seen, "train_top1": 100.0 * total_correct / total_seen}


def update_average(ema, model, mean_teacher: MeanTeacher | None) -> None:
    """The EMA's step after the optimizer's; a mean teacher then takes rank 0's BatchNorm statistics."""
    ema.update_parameters(unwrap_model(model))
    if mean_teacher is not None:
        mean_teacher.after_update()


def forward_loss(model, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor,
                 progress: float, mean_teacher: MeanTeacher | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled batch's logits and the step's loss (``progress``: epochs done, fractional). With a mean teacher
    the model sees the labelled images and one view of an unlabelled batch in one forward (under DDP, one forward
    per backward) and the consistency term joins the loss."""
    epoch = int(progress)
    if mean_teacher is None:
        logits = model(inputs)
        return logits, loss_fn(logits, targets, inputs, indices, epoch)
    student_view, teacher_view = mean_teacher.next_views(epoch)
    both = model(torch.cat([inputs, student_view]))
    logits = both[:inputs.shape[0]]
    loss = loss_fn(logits, targets, inputs, indices, epoch)
    return logits, loss + mean_teacher.consistency(both[inputs.shape[0]:], teacher_view, progress)


def epoch_sums(partial: dict | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The epoch's running loss sum, correct count and sample count: zero, or a resumed epoch's sums so far."""
    partial = partial or {"loss_sum": 0.0, "correct": 0, "seen": 0}
    return (torch.tensor(float(partial["loss_sum"]), device=device, dtype=torch.float64),
            torch.tensor(int(partial["correct"]), device=device, dtype=torch.long), int(partial["seen"]))


def stop_after_saving(control: StepControl, on_save, batches_done: int, sums: tuple, info: DistInfo,
                      epoch: int) -> None:
    """At an optimizer-step boundary: write the mid-epoch checkpoint when due, and stop when a signal came."""
    save, stop = control.poll()
    if not save:
        return
    loss_sum, correct, seen = reduce_sum([sums[0].item(), sums[1].item(), sums[2]], info.device)
    on_save(batches_done, {"loss_sum": loss_sum, "correct": int(correct), "seen": int(seen)})
    if stop:
        raise Preempted(f"stopped by {control.signal_name} after batch {batches_done} of epoch {epoch + 1}; "
                        "last.pth holds that position")


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


def finish_swa(run: TrainingRun, log) -> dict:
    """After the last epoch: recompute the SWA model's BN statistics, validate it and save ``swa.pth``
    (and ``best.pth`` when it beats the best so far). Returns the SWA metrics."""
    cfg, info, swa = run.cfg, run.info, run.swa
    if swa.n_averaged.item() == 0:
        return {}
    swa_model = swa.module
    batches = (to_model_input(images, run.preprocessing, info.device, cfg.channels_last)
               for images, _, _ in run.train_loader)
    with autocast(cfg, info.device):
        update_bn(swa_model, batches, after=average_buffers)
    stats = (validate(swa_model, run.val_loader, run.criterion, cfg, run.preprocessing, info)
             if run.val_loader is not None else {})
    log.info("SWA over the last %d epochs (%d snapshots)%s", cfg.swa_epochs, int(swa.n_averaged.item()),
             describe_val(stats).replace("  val", ": val"))
    if info.is_main:
        last = load_checkpoint(run.out_dir / "last.pth")
        state = last.replace(model=swa_model.state_dict(), train_model=last.model, weights="swa",
                             metrics={**last.metrics, **{f"swa_{k}": v for k, v in stats.items()}})
        save_checkpoint(state, run.out_dir / "swa.pth")
        better = run.val_loader is None or monitored(stats, cfg.monitor) > run.best_score
        if better:  # without val the SWA weights are the result
            run.best_score = monitored(stats, cfg.monitor) if stats else run.best_score
            run.best_top1 = stats.get("val_top1", run.best_top1)
            save_checkpoint(state.replace(best_top1=run.best_top1, best_score=run.best_score), run.out_dir / "best.pth")
            log.info("best.pth now holds the SWA weights")
    return {f"swa_{k}": v for k, v in stats.items()}


def _check_finite(value: float, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"loss became {value} in epoch {epoch + 1} by step {step + 1}; training stopped before saving. "
            "Lower --lr, add --warmup epochs, or check the data; resume from the last good last.pth.")


def validate(model, loader, criterion, cfg: Config, preprocessing, info: DistInfo) -> dict:
    """Exact validation: predictions are all-gathered so every sample is counted once on every rank."""
    _, logits, targets = predict_logits(model, loader, cfg, preprocessing, info.device)
    correct = topk_correct(logits, targets)
    n = targets.shape[0]
    stats = {"val_loss": float(criterion(logits, targets)), "val_top1": 100.0 * correct[1] / n,
             "val_top5": 100.0 * correct[5] / n}
    if cfg.monitor in ("macro_f1", "auroc"):  # what --monitor chooses by; the same numbers as --evaluation's report
        report = classification_report(scores_to_probs(logits.float(), cfg.criterion).numpy(), targets.numpy(),
                                       [str(c) for c in range(logits.shape[1])])
        stats[f"val_{cfg.monitor}"] = report["macro_f1" if cfg.monitor == "macro_f1" else "macro_auroc"]
    return stats
