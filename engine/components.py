"""The only place where a ``Config`` becomes keyword arguments: data, loaders, model, loss, optimizer, scheduler and
batch augmentation. Factories below (dataloader, models, criterions, optim) never see the config."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from config import Config
from criterions import build_criterion, resolve_class_weights, resolve_head
from dataloader import DataSplits, build_datasets, build_loader, build_split_dataset
from dataloader.augment import AugmentOptions
from dataloader.mix import BatchAugment, build_batch_augment
from dataloader.preprocess import Preprocessing, normalize_on_device
from models import build_model
from models.heads import find_classifier_name
from models.lora import add_lora, base_gaps, load_adapter_state, merge_lora, resolve_lora_targets
from optim import Scheduler, build_optimizer, build_scheduler, param_groups, scale_lr_by_batch
from utils.checkpoint import Checkpoint, file_sha256
from utils.distributed import DistInfo
from utils.errors import DataError, UsageError
from utils.logger import get_logger


def preprocessing_of(cfg: Config) -> Preprocessing:
    try:
        return Preprocessing(image_size=tuple(cfg.image_size), mean=tuple(cfg.mean), std=tuple(cfg.std),
                             resize_mode=cfg.resize_mode, crop_pct=cfg.crop_pct)
    except ValueError as error:
        raise UsageError(f"--crop_pct {cfg.crop_pct}: must be in (0, 1]" if "crop_pct" in str(error)
                         else str(error)) from None


def fitting_of(cfg: Config) -> dict:
    """How every split is fitted to the input size (``--resize_mode``, ``--crop_pct``), as dataset keywords."""
    preprocessing = preprocessing_of(cfg)
    return {"resize_mode": preprocessing.resize_mode, "crop_pct": preprocessing.crop_pct}


def train_crop_of(cfg: Config) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """``--resize_mode crop``'s random resized crop for train, (scale, ratio); None in letterbox mode."""
    if cfg.resize_mode != "crop":
        return None
    scale, ratio = tuple(cfg.crop_scale), tuple(cfg.crop_ratio)
    if not 0 < scale[0] <= scale[1] <= 1:
        raise UsageError(f"--crop_scale {scale[0]} {scale[1]}: need 0 < MIN <= MAX <= 1 (shares of the image's area)")
    if not 0 < ratio[0] <= ratio[1]:
        raise UsageError(f"--crop_ratio {ratio[0]} {ratio[1]}: need 0 < MIN <= MAX (width / height)")
    return scale, ratio


def aug_options_of(cfg: Config) -> AugmentOptions:
    """The parametrised augmentations' flags (--erasing_*, --cutout_*, --gridmask_*, --vflip_p, --crop_padding);
    checked there."""
    value = cfg.erasing_value
    if value != "random" and not (str(value).isdigit() and 0 <= int(value) <= 255):
        raise UsageError(f"--erasing_value {value}: give 'random' (uniform noise) or a grey level 0-255")
    try:
        return AugmentOptions(
            erasing_p=cfg.erasing_p, erasing_scale=tuple(cfg.erasing_scale), erasing_ratio=tuple(cfg.erasing_ratio),
            erasing_value=None if value == "random" else int(value), cutout_holes=cfg.cutout_holes,
            cutout_length=cfg.cutout_length, gridmask_p=cfg.gridmask_p,
            gridmask_d=tuple(cfg.gridmask_d) if cfg.gridmask_d else None, gridmask_ratio=tuple(cfg.gridmask_ratio),
            gridmask_rotate=cfg.gridmask_rotate, vflip_p=cfg.vflip_p,
            crop_padding=cfg.crop_padding)
    except ValueError as error:
        raise UsageError(str(error)) from None


def datasets_of(cfg: Config) -> DataSplits:
    """train / val / test of ``cfg.data`` with the train augmentation, carved by val ratio, seed and K-fold; train
    extended by ``--extra_train`` (weighted by ``--extra_weight``)."""
    return build_datasets(cfg.data, image_size=tuple(cfg.image_size), aug=cfg.aug, aug_options=aug_options_of(cfg),
                          val_ratio=cfg.val_ratio, seed=cfg.seed, kfold=cfg.kfold, fold=cfg.fold,
                          extra_train=cfg.extra_train, extra_weight=cfg.extra_weight, train_crop=train_crop_of(cfg),
                          **fitting_of(cfg))


def split_dataset_of(cfg: Config, split: str, class_names: list[str]):
    """One split of ``cfg.data`` without augmentation, carved exactly as the run of ``cfg`` carved it (val ratio,
    seed, K-fold)."""
    return build_split_dataset(cfg.data, split, image_size=tuple(cfg.image_size), class_names=class_names,
                               val_ratio=cfg.val_ratio, seed=cfg.seed, kfold=cfg.kfold, fold=cfg.fold,
                               **fitting_of(cfg))


def loader_for(dataset, cfg: Config, info: DistInfo, *, train: bool = False, batch_size: int | None = None,
               workers: int | None = None, balance: bool = False):
    """The data loader of ``dataset`` for this process: its shard under DDP, pinned memory on CUDA."""
    return build_loader(dataset, batch_size=batch_size or cfg.batch_size,
                        workers=cfg.workers if workers is None else workers, train=train, balance=balance,
                        seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                        pin_memory=info.device.type == "cuda")


def batch_augment_of(cfg: Config, rank: int) -> BatchAugment:
    """Multi-scale or progressive resizing and batch mixes for a training step, from the flags; the identity when none
    is set."""
    return build_batch_augment(image_size=cfg.image_size, num_classes=cfg.num_classes, seed=cfg.seed, rank=rank,
                               multi_scale=cfg.multi_scale, multi_scale_sizes=cfg.multi_scale_sizes,
                               mixup=cfg.mixup, cutmix=cfg.cutmix, ricap=cfg.ricap, mix_prob=cfg.mix_prob,
                               mix_probs=cfg.mix_probs, progressive_size=cfg.progressive_size,
                               progressive_epochs=cfg.progressive_epochs, epochs=cfg.epochs)


def model_options(cfg: Config) -> dict:
    """build_model's head (and BatchNorm) options from the config: training, evaluation, export and resume build the
    same network.

    The head is resolved here too (margin losses need the cosine head), so configs saved before --head existed
    rebuild their linear head.
    """
    return {"head": resolve_head(cfg.criterion, cfg.head), "dropout": cfg.dropout, "pooling": cfg.pooling,
            "cosine_scale": cfg.arc_scale, "bn_momentum": cfg.bn_momentum}


def new_model(cfg: Config, *, pretrained: bool = True, train_targets=None,
              class_names: list[str] | None = None) -> torch.nn.Module:
    """The network of a new run (``--pretrained`` weights when given and ``pretrained``); --prior_bias 'freq' and
    a priors file read the train split's targets and class names. With ``--lora`` the base always comes from
    ``--pretrained`` (LoRA checkpoints do not hold it) and carries the adapters; the resolved ``--lora_targets`` go
    into ``cfg``."""
    if cfg.lora:
        return lora_model(cfg, base=cfg.pretrained, num_classes=cfg.num_classes)
    return build_model(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained if pretrained else None,
                       prior_bias=class_priors(cfg.prior_bias, train_targets, class_names), **model_options(cfg))


def init_from_data(model: torch.nn.Module, cfg: Config, class_names: list[str]) -> int:
    """Give a new network whose initialisation depends on data (``model.init_images`` > 0, e.g. airbench's whitening
    stem) that many train images, drawn by --seed, without augmentation and normalised as in training. The same on
    every rank. Returns the number of images used (0: the model needs none, or has what they give already, e.g. a
    fitted stem loaded with --pretrained)."""
    wanted = getattr(model, "init_images", 0)
    if not wanted:
        return 0
    train = split_dataset_of(cfg, "train", class_names)
    picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:wanted]
    images = torch.stack([train[i][0] for i in picked.tolist()])
    preprocessing = preprocessing_of(cfg)
    model.init_from_images(normalize_on_device(images, preprocessing.mean, preprocessing.std))
    return len(images)


def class_priors(prior_bias, train_targets, class_names: list[str] | None):
    """--prior_bias as build_model takes it: None, one probability, or one per class (None: left as it is)."""
    if prior_bias is None or isinstance(prior_bias, float):
        return prior_bias
    if class_names is None or train_targets is None:
        raise UsageError(f"--prior_bias {prior_bias} needs the train split's classes")
    if prior_bias == "freq":
        counts = np.bincount(np.asarray(train_targets), minlength=len(class_names))
        return [float(c) / counts.sum() if c else None for c in counts]
    return read_priors(prior_bias, class_names)


def read_priors(path: str, class_names: list[str]) -> list[float | None]:
    """A CSV of ``class,prior`` rows (a header line is allowed) → one prior per class, None where not listed."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--prior_bias {path}: not a probability, 'freq' or an existing CSV file of class,prior")
    priors: list[float | None] = [None] * len(class_names)
    for number, row in enumerate(csv.reader(file.read_text().splitlines()), start=1):
        if not row or row[0].strip().lower() == "class":
            continue
        try:
            name, value = row[0].strip(), float(row[1])
        except (IndexError, ValueError):
            raise DataError(f"--prior_bias {path} line {number}: expected 'class,prior', got {','.join(row)!r}")
        if name not in class_names or not 0.0 < value < 1.0:
            raise DataError(f"--prior_bias {path} line {number}: {name!r} must be one of {class_names} with a prior "
                            f"in (0, 1), got {value}")
        priors[class_names.index(name)] = value
    return priors


def lora_model(cfg: Config, *, base: str, num_classes: int) -> torch.nn.Module:
    """The base weights of ``base`` with ``cfg``'s LoRA adapters (lora_B zero: it computes what the base does); only
    the adapters and the head require grad, so the optimizer holds (and checkpoints its state for) those alone."""
    model = build_model(cfg.model, num_classes=num_classes, pretrained=base, prior_bias=cfg.prior_bias,
                        **model_options(cfg))
    head = find_classifier_name(model)
    if gaps := base_gaps(model, base, head):
        raise UsageError(f"--lora: --pretrained {base} does not hold {len(gaps)} tensor(s) of {cfg.model}'s backbone "
                         f"(e.g. {', '.join(gaps[:3])}); LoRA checkpoints store only adapters and head, so the base "
                         "must come whole from that file")
    try:
        cfg.lora_targets = resolve_lora_targets(model, cfg.lora_targets, cfg.model)
    except ValueError as error:
        raise UsageError(str(error)) from None
    model = add_lora(model, rank=cfg.lora, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets)
    model.get_submodule(head).requires_grad_(True)  # trained in full (peft's modules_to_save), so in the optimizer
    return model


def base_reference(path: str) -> dict:
    """How a LoRA checkpoint names its base weights: the file's absolute path and sha256."""
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def checked_base(ckpt: Checkpoint, flag: str = "--resume") -> str:
    """The base weights file of a LoRA checkpoint, checked to be the one it was trained on."""
    path = ckpt.base["path"]
    why = ("is missing" if not Path(path).is_file() else
           "changed since training" if file_sha256(path) != ckpt.base["sha256"] else None)
    if why:
        raise UsageError(f"{flag}: this LoRA checkpoint stores adapters only and its base weights {path} {why}; "
                         "put that file back (sha256 " + ckpt.base["sha256"][:12] + "...) or use an export "
                         "(--jit/--onnx) made where it exists, which holds the merged weights")
    return path


def model_from_checkpoint(ckpt: Checkpoint, cfg: Config, device: torch.device,
                          weights: dict | None = None) -> torch.nn.Module:
    """Rebuild the trained network of a checkpoint (no pretrained download; ``weights`` or the checkpoint's own),
    in eval mode on ``device``, channels_last when the config says so. A LoRA checkpoint comes back merged: its
    base file plus the adapters folded into the weights, a plain model of the original architecture."""
    weights = ckpt.model if weights is None else weights
    if ckpt.base is not None:
        model = lora_model(cfg, base=checked_base(ckpt), num_classes=len(ckpt.class_names))
        load_adapter_state(model, weights)
        model = merge_lora(model)
    else:
        model = build_model(cfg.model, num_classes=len(ckpt.class_names), **model_options(cfg))
        model.load_state_dict(weights)
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def criterion_from_config(cfg: Config, *, class_names: list[str], train_targets: list[int]) -> torch.nn.Module:
    """cfg → build_criterion's keyword arguments; --weighted_loss is resolved from the training labels or a file."""
    class_weights = resolve_class_weights(cfg.weighted_loss, class_names=class_names, train_targets=train_targets)
    return build_criterion(cfg.criterion, num_classes=len(class_names), label_smoothing=cfg.label_smoothing,
                           class_weights=class_weights, focal_gamma=cfg.focal_gamma, arc_margin=cfg.arc_margin,
                           arc_scale=cfg.arc_scale, loss_threshold=cfg.loss_threshold if cfg.threshold_loss else None,
                           ghm_bins=cfg.ghm_bins if cfg.ghm_loss else None, ghm_momentum=cfg.ghm_momentum,
                           ohm_ratio=cfg.ohm_ratio if cfg.ohm_loss else None)


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
                           gamma=cfg.gamma, plateau_patience=cfg.plateau_patience, min_lr=cfg.min_lr,
                           lr_steps=cfg.lr_steps)
