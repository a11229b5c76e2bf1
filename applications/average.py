"""``--average_last K --resume RUN/last.pth`` or ``--average A.pth B.pth ...``: one checkpoint holding the mean of
the weights of several checkpoints of the same model.

Seed 004 trained on all data and averaged its last 4 epochs. Epoch checkpoints exist when training ran with
``--keep_epochs K``. Averaged weights can have BatchNorm statistics that match none of the averaged models;
``--update_bn`` recomputes them on the training split (each process its shard, then averaged, as SWA does).
The result is a normal checkpoint: ``--evaluation``, ``--predict``, ``--jit`` and ``--onnx`` take it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from config import Config, given
from engine.components import loader_for, model_from_checkpoint, preprocessing_of, split_dataset_of
from engine.device import autocast, to_model_input
from engine.job import open_job, resolve_config
from optim.averaging import update_bn
from utils.checkpoint import Checkpoint, epoch_checkpoints, load_checkpoint, save_checkpoint
from utils.distributed import average_buffers
from utils.errors import UsageError
from utils.hardware import choose_inference_amp


def average_state_dicts(states: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (computed in float64); integer buffers such as BatchNorm's
    ``num_batches_tracked`` are taken from the last state. All states must have the same keys and shapes."""
    first = states[0]
    for state, name in zip(states[1:], names[1:]):
        if state.keys() != first.keys():
            diff = sorted(set(state) ^ set(first))
            raise ValueError(f"{name} does not hold the same model as {names[0]} (differing keys, e.g. {diff[:3]})")
        for key, tensor in state.items():
            if tensor.shape != first[key].shape:
                raise ValueError(f"{name}: {key} has shape {tuple(tensor.shape)}, {names[0]} has "
                                 f"{tuple(first[key].shape)}; only checkpoints of the same model can be averaged")
    averaged = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            mean = torch.stack([s[key].double() for s in states]).mean(dim=0)
            averaged[key] = mean.to(tensor.dtype)
        else:
            averaged[key] = states[-1][key].clone()
    return averaged


def checkpoints_to_average(cfg: Config) -> tuple[list[Path], Path]:
    """The checkpoint files and the default output path, from --average or --average_last with --resume."""
    if cfg.average:
        paths = [Path(p) for p in cfg.average]
        if len(paths) < 2:
            raise UsageError("--average needs at least two checkpoints")
        return paths, paths[0].parent / "average.pth"
    k = cfg.average_last
    if k is None or k < 2:
        raise UsageError(f"--average_last needs K >= 2 epoch checkpoints to average, got {k}")
    if not cfg.resume or isinstance(cfg.resume, list):
        raise UsageError("--average_last K needs --resume RUN/last.pth (or the run folder) to find the run")
    run_dir = Path(cfg.resume)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    found = epoch_checkpoints(run_dir) if run_dir.is_dir() else []
    if len(found) < k:
        raise FileNotFoundError(f"--average_last {k}: {run_dir} has {len(found)} epoch checkpoints "
                                f"({', '.join(p.name for p in found) or 'none'}); train with --keep_epochs {k} "
                                "(or more) to keep them")
    return found[-k:], run_dir / f"average_last{k}.pth"


def check(cfg: Config) -> None:
    checkpoints_to_average(cfg)


def run(cfg: Config, explicit: set[str]) -> Path:
    """Average, optionally recompute BatchNorm statistics, save; returns the written path."""
    paths, default_out = checkpoints_to_average(cfg)
    with open_job(cfg, explicit, checkpoint="none") as job:
        info, log = job.info, job.log
        ckpts = [load_checkpoint(p, flag="--average" if cfg.average else "--average_last") for p in paths]
        names = [str(p) for p in paths]
        for ckpt, name in zip(ckpts[1:], names[1:]):
            if ckpt.config["model"] != ckpts[0].config["model"] or ckpt.class_names != ckpts[0].class_names:
                raise UsageError(f"{name} ({ckpt.config['model']}) and {names[0]} ({ckpts[0].config['model']}) are "
                                 "not the same model and classes; average checkpoints of one run")
        if cfg.update_bn and ckpts[0].base is not None:
            raise UsageError(f"--update_bn: {names[0]} is a LoRA checkpoint, whose BatchNorm statistics are the "
                             "frozen base's (only adapters and head are stored); drop --update_bn")
        averaged = average_state_dicts([c.model for c in ckpts], names)
        # the last checkpoint's config, with the flags typed now (data, batch size, device for --update_bn)
        cfg, base = resolve_config(cfg, explicit, path=str(paths[-1]))
        out_path = Path(cfg.output) if cfg.output else default_out
        if cfg.update_bn:
            averaged = recompute_bn(averaged, base, cfg, explicit, info, log)
        if info.is_main:
            state = base.replace(model=averaged, train_model=base.resume_weights,
                                 weights=f"average of {len(paths)} checkpoints", averaged_from=names,
                                 bn_updated=bool(cfg.update_bn))
            save_checkpoint(state, out_path)
            log.info("averaged %d checkpoints (%s) into %s%s", len(paths), ", ".join(p.name for p in paths),
                     out_path, "; BatchNorm statistics recomputed on the train split" if cfg.update_bn else "")
        return out_path


def recompute_bn(weights: dict[str, torch.Tensor], ckpt: Checkpoint, cfg: Config, explicit: set[str], info,
                 log) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics of ``weights`` recomputed over the train split (no augmentation)."""
    cfg.amp = choose_inference_amp(given(cfg, explicit, "amp"), cfg.amp, info.device)
    model = model_from_checkpoint(ckpt, cfg, info.device, weights=weights)
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log.warning("--update_bn: %s has no BatchNorm layers; nothing to recompute", cfg.model)
        return weights
    dataset = split_dataset_of(cfg, "train", ckpt.class_names)  # a K-fold run's own K-1 folds
    loader = loader_for(dataset, cfg, info)
    preprocessing = preprocessing_of(cfg)
    batches = (to_model_input(images, preprocessing, info.device, cfg.channels_last) for images, _, _ in loader)
    with autocast(cfg, info.device):
        update_bn(model, batches, after=average_buffers)
    log.info("--update_bn: BatchNorm statistics recomputed over %d training images", len(dataset))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
