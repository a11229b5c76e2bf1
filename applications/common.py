"""What several applications share: the opening of a job on a trained checkpoint, resolving its config, building the
model, moving uint8 batches to the device, autocast, and exact all-gathered prediction over a data set."""
from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from config import Config
from criterions import build_criterion, resolve_class_weights, resolve_head
from dataloader import build_loader, build_split_dataset
from dataloader.gpu_decode import EncodedBatch
from dataloader.mix import BatchAugment, build_batch_augment
from dataloader.preprocess import Preprocessing, normalize_on_device
from dataloader.tta import TestTimeAugmentation
from models import build_model
from models.heads import find_classifier_name
from optim import Scheduler, build_optimizer, build_scheduler, param_groups, scale_lr_by_batch
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo, cleanup_distributed, gather_predictions, init_distributed
from utils.hardware import choose_amp
from utils.logger import get_logger, setup_logging

# Options that describe how to run, not what was trained: on resume they come from the command line.
# --decode is one of them: where decoding runs depends on the machine (a GPU run's checkpoint evaluated on a laptop).
RUNTIME_FLAGS = {"resume", "evaluation", "jit", "device", "workers", "output", "split", "stop_epoch", "aug_preview",
                 "decode", "tta", "predict", "ensemble_weights", "probabilities", "average_last", "average",
                 "update_bn", "onnx", "int8", "knowledge", "make_curriculum", "visual_data", "visual_method",
                 "target_layer", "visual_limit", "repeat"}


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


class Job(NamedTuple):
    cfg: Config  # the checkpoint's config with the flags typed on top
    ckpt: dict
    info: DistInfo
    log: logging.Logger


@contextlib.contextmanager
def checkpoint_job(cfg: Config, explicit: set[str], missing_resume: str) -> Iterator[Job]:
    """The opening and closing of an application that runs a trained checkpoint: the process group (a world of one
    without torchrun), logging on rank 0, --resume required (``missing_resume`` is the error without it), the
    checkpoint's config with the typed flags on top, and AMP chosen for this machine rather than the training one.
    The process group is closed however the job ends."""
    info = init_distributed(cfg.device)
    try:
        log = setup_logging(None, info.is_main)
        if not cfg.resume:
            raise ValueError(missing_resume)
        cfg, ckpt = resolve_config(cfg, explicit)
        cfg.amp = choose_amp(cfg.amp if "amp" in explicit else None, info.device)
        yield Job(cfg, ckpt, info, log)
    finally:
        cleanup_distributed()


def split_dataset_of(cfg: Config, split: str, class_names: list[str]):
    """One split of ``cfg.data`` without augmentation, carved exactly as the run of ``cfg`` carved it (val ratio,
    seed, K-fold)."""
    return build_split_dataset(cfg.data, split, image_size=tuple(cfg.image_size), class_names=class_names,
                               val_ratio=cfg.val_ratio, seed=cfg.seed, kfold=cfg.kfold, fold=cfg.fold)


def preprocessing_of(cfg: Config) -> Preprocessing:
    return Preprocessing(image_size=tuple(cfg.image_size), mean=tuple(cfg.mean), std=tuple(cfg.std))


def batch_augment_of(cfg: Config, rank: int) -> BatchAugment:
    """Multi-scale and batch mixes for a training step, from the flags; the identity when none is set."""
    return build_batch_augment(image_size=cfg.image_size, num_classes=cfg.num_classes, seed=cfg.seed, rank=rank,
                               multi_scale=cfg.multi_scale, multi_scale_sizes=cfg.multi_scale_sizes,
                               mixup=cfg.mixup, cutmix=cfg.cutmix, ricap=cfg.ricap, mix_prob=cfg.mix_prob)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_options(cfg: Config) -> dict:
    """build_model's head (and BatchNorm) options from the config: training, evaluation, export and resume build the
    same network.

    The head is resolved here too (margin losses need the cosine head), so configs saved before --head existed
    rebuild their linear head.
    """
    return {"head": resolve_head(cfg.criterion, cfg.head), "dropout": cfg.dropout, "pooling": cfg.pooling,
            "cosine_scale": cfg.arc_scale, "bn_momentum": cfg.bn_momentum}


def criterion_from_config(cfg: Config, *, class_names: list[str], train_targets: list[int]) -> torch.nn.Module:
    """cfg → build_criterion's keyword arguments; --weighted_loss is resolved from the training labels or a file."""
    class_weights = resolve_class_weights(cfg.weighted_loss, class_names=class_names, train_targets=train_targets)
    return build_criterion(cfg.criterion, num_classes=len(class_names), label_smoothing=cfg.label_smoothing,
                           class_weights=class_weights, focal_gamma=cfg.focal_gamma, arc_margin=cfg.arc_margin,
                           arc_scale=cfg.arc_scale, loss_threshold=cfg.loss_threshold if cfg.threshold_loss else None,
                           ghm_bins=cfg.ghm_bins if cfg.ghm_loss else None, ghm_momentum=cfg.ghm_momentum,
                           ohm_ratio=cfg.ohm_ratio if cfg.ohm_loss else None)


def model_from_checkpoint(ckpt: dict, cfg: Config, device: torch.device) -> torch.nn.Module:
    """Rebuild the trained network from a checkpoint (no pretrained download, weights from the file)."""
    model = build_model(cfg.model, num_classes=len(ckpt["class_names"]), **model_options(cfg))
    model.load_state_dict(ckpt["model"])
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


_CPU_INPUT_BUFFERS: dict[tuple, torch.Tensor] = {}


def to_model_input(images: torch.Tensor | EncodedBatch, preprocessing: Preprocessing, device: torch.device,
                   channels_last: bool) -> torch.Tensor:
    """uint8 NCHW from the loader → normalised float on the device (the conversion runs on the device). With
    ``--decode device`` the loader delivers an ``EncodedBatch``, decoded and letterboxed on the device first.

    On CPU the float batch is written into a buffer kept per shape: the previous step's backward is over by
    the time the next batch arrives, and allocating ~40 MB per step costs more than the normalisation itself.
    CUDA's caching allocator already recycles memory, so there a fresh tensor is fine.
    """
    if isinstance(images, EncodedBatch):  # --decode device: the loader delivered file bytes; decode them here
        images = images.decode(device)
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


def model_probs_fn(model: torch.nn.Module, cfg: Config, preprocessing: Preprocessing,
                   device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 batch on the device → class probabilities of a trained network (normalised, under autocast)."""
    def probs(images: torch.Tensor) -> torch.Tensor:
        with autocast(cfg, device):
            out = model(normalize_on_device(images, preprocessing.mean, preprocessing.std,
                                            channels_last=cfg.channels_last))
        return scores_to_probs(out.float(), cfg.criterion)
    return probs


@torch.no_grad()
def gather_probs(probs_fn: Callable[[torch.Tensor], torch.Tensor], loader, device: torch.device,
                 tta: TestTimeAugmentation | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``probs_fn`` over every sample of the loader, all-gathered in index order; with ``tta`` the mean of the
    probabilities over its views. Returns ``(indices, probs, targets)`` identical on every rank."""
    indices, probs, targets = [], [], []
    for images, labels, idx in loader:
        if isinstance(images, EncodedBatch):
            images = images.decode(device)
        images = images.to(device, non_blocking=True)
        views = tta.views(images) if tta is not None else [images]
        total, count = None, 0
        for view in views:
            p = probs_fn(view).float()
            total, count = (p if total is None else total + p), count + 1
        probs.append(total / count)
        targets.append(labels.to(device))
        indices.append(idx.to(device))
    # DistributedSampler pads every shard to the same non-zero length, so each rank has a batch here.
    assert probs, f"empty data set: {len(loader.dataset)} samples"
    return gather_predictions(torch.cat(indices), torch.cat(probs), torch.cat(targets))


def predict_probs(model: torch.nn.Module, loader, cfg: Config, preprocessing: Preprocessing, device: torch.device,
                  tta: TestTimeAugmentation | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class probabilities of a trained network for every sample (see gather_probs); rows sum to 1."""
    model.eval()
    return gather_probs(model_probs_fn(model, cfg, preprocessing, device), loader, device, tta)


def predict_split(cfg: Config, ckpt: dict, split: str, info) -> tuple:
    """The checkpoint's class probabilities on one split of its data, carved as its run carved it, all-gathered.
    Returns ``(dataset, indices, probs, targets)`` (see gather_probs), identical on every rank."""
    dataset = split_dataset_of(cfg, split, ckpt["class_names"])
    loader = build_loader(dataset, batch_size=cfg.batch_size, workers=cfg.workers, train=False, seed=cfg.seed,
                          rank=info.rank, world_size=info.world_size, pin_memory=info.device.type == "cuda")
    model = model_from_checkpoint(ckpt, cfg, info.device)
    return (dataset, *predict_probs(model, loader, cfg, preprocessing_of(cfg), info.device))


def run_dir(cfg: Config) -> Path:
    return Path(cfg.checkpoint_dir) / cfg.name


def optimizer_from_config(cfg: Config, model: torch.nn.Module, *, world_size: int) -> torch.optim.Optimizer:
    """The configured optimizer: no decay on norms and biases, the backbone at lr x --backbone_lr_scale, and lr
    scaled linearly with the global batch (batch x world size x accum steps) under --lr_scale_batch.

    ``cfg.lr`` stays the unscaled lr. The scaled one lives in the optimizer's and scheduler's state (each group's
    lr and initial_lr, the scheduler's base_lrs), which a resumed run restores instead of scaling again.
    """
    global_batch = cfg.batch_size * world_size * cfg.accum_steps
    lr = scale_lr_by_batch(cfg.lr, global_batch=global_batch, reference=cfg.lr_scale_batch)
    if cfg.lr_scale_batch is not None:
        get_logger().info("lr %.4g x global batch %d / %d = %.4g (--lr_scale_batch)", cfg.lr, global_batch,
                          cfg.lr_scale_batch, lr)
    head = find_classifier_name(model) if cfg.backbone_lr_scale != 1.0 else None
    groups = param_groups(model, cfg.weight_decay, head=head, backbone_lr_scale=cfg.backbone_lr_scale)
    return build_optimizer(groups, cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                           lookahead=cfg.lookahead, lookahead_k=cfg.lookahead_k, lookahead_alpha=cfg.lookahead_alpha)


def scheduler_from_config(cfg: Config, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int) -> Scheduler:
    """The configured --lr_schedule over ``optimizer``, stepped ``steps_per_epoch`` times per epoch."""
    return build_scheduler(optimizer, cfg.lr_schedule, epochs=cfg.epochs, warmup=cfg.warmup,
                           steps_per_epoch=steps_per_epoch, restart_epochs=cfg.restart_epochs,
                           restart_mult=cfg.restart_mult, restart_decay=cfg.restart_decay, milestones=cfg.milestones,
                           gamma=cfg.gamma, plateau_patience=cfg.plateau_patience)
