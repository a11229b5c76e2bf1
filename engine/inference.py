"""Inference: load a checkpoint or any exported file as a predictor, and the one batched predict + all-gather loop
that evaluation, prediction, knowledge, curriculum, training's validation and the benchmarks share.

Every loop here returns its results all-gathered in sample order, identical on every rank, so a metric computed
from them is exact whatever the number of processes.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch

from config import Config, given
from dataloader import EncodedImageDataset, ImageClassificationDataset
from dataloader.datasets import list_inputs
from dataloader.preprocess import Preprocessing, normalize_on_device
from dataloader.tta import TestTimeAugmentation
from engine.components import fitting_of, loader_for, model_from_checkpoint, preprocessing_of, split_dataset_of
from engine.device import autocast, to_device_uint8, to_model_input
from engine.job import resolve_config
from utils.calibration import Calibration, scores_to_probs, selective_metrics, temperature_of
from utils.checkpoint import Checkpoint
from utils.distributed import DistInfo, gather_predictions
from utils.errors import UsageError
from utils.hardware import choose_inference_amp
from utils.metrics import classification_report, ood_metrics

ProbsFn = Callable[[torch.Tensor], torch.Tensor]  # uint8 NCHW batch on the device -> class probabilities


@torch.no_grad()
def predict_logits(model: torch.nn.Module, loader, cfg: Config, preprocessing: Preprocessing,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (float32) for every sample of the loader's data set, all-gathered, each sample once, in index order.
    Returns ``(indices, logits, targets)`` identical on every rank."""
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
                   device: torch.device, temperature: float = 1.0) -> ProbsFn:
    """uint8 batch on the device → class probabilities of a trained network (normalised, under autocast), at the
    calibrated ``temperature`` (1: as trained)."""
    def probs(images: torch.Tensor) -> torch.Tensor:
        with autocast(cfg, device):
            out = model(normalize_on_device(images, preprocessing.mean, preprocessing.std,
                                            channels_last=cfg.channels_last))
        return scores_to_probs(out.float(), cfg.criterion, temperature)
    return probs


@torch.no_grad()
def gather_probs(probs_fn: ProbsFn, loader, device: torch.device,
                 tta: TestTimeAugmentation | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``probs_fn`` over every sample of the loader, all-gathered in index order; with ``tta`` the mean of the
    probabilities over its views. Returns ``(indices, probs, targets)`` identical on every rank."""
    indices, probs, targets = [], [], []
    for images, labels, idx in loader:
        images = to_device_uint8(images, device)
        total, count = None, 0
        for view in (tta.views(images) if tta is not None else [images]):
            p = probs_fn(view).float()
            total, count = (p if total is None else total + p), count + 1
        probs.append(total / count)
        targets.append(labels.to(device))
        indices.append(idx.to(device))
    # DistributedSampler pads every shard to the same non-zero length, so each rank has a batch here.
    assert probs, f"empty data set: {len(loader.dataset)} samples"
    return gather_predictions(torch.cat(indices), torch.cat(probs), torch.cat(targets))


def predict_probs(model: torch.nn.Module, loader, cfg: Config, preprocessing: Preprocessing, device: torch.device,
                  tta: TestTimeAugmentation | None = None,
                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class probabilities of a trained network for every sample (see gather_probs); rows sum to 1."""
    model.eval()
    return gather_probs(model_probs_fn(model, cfg, preprocessing, device, temperature), loader, device, tta)


def predict_split(cfg: Config, ckpt: Checkpoint, split: str, info: DistInfo,
                  tta: TestTimeAugmentation | None = None) -> tuple:
    """The checkpoint's class probabilities on one split of its data, carved as its run carved it, all-gathered.
    Returns ``(dataset, indices, probs, targets)`` (see gather_probs), identical on every rank."""
    dataset, model, loader = split_inputs(cfg, ckpt, split, info)
    temperature = temperature_of(ckpt.calibration)
    return (dataset, *predict_probs(model, loader, cfg, preprocessing_of(cfg), info.device, tta, temperature))


def split_logits(cfg: Config, ckpt: Checkpoint, split: str, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's raw logits (no temperature) and the targets on one split, all-gathered in sample order."""
    _, model, loader = split_inputs(cfg, ckpt, split, info)
    _, logits, targets = predict_logits(model, loader, cfg, preprocessing_of(cfg), info.device)
    return logits, targets


def split_inputs(cfg: Config, ckpt: Checkpoint, split: str, info: DistInfo) -> tuple:
    """``(dataset, network, loader)`` of one split of the checkpoint's data, carved as its run carved it."""
    dataset = split_dataset_of(cfg, split, ckpt.class_names)
    if cfg.decode == "device":  # workers only read the files; the prediction loop decodes each batch on the device
        dataset = EncodedImageDataset(dataset)
    return dataset, model_from_checkpoint(ckpt, cfg, info.device), loader_for(dataset, cfg, info)


def evaluation_report(cfg: Config, ckpt: Checkpoint, info: DistInfo, split: str,
                      tta: TestTimeAugmentation | None = None) -> dict:
    """Top-1/5, per-class metrics and the confusion matrix of the checkpoint on ``split`` (utils/metrics.py)."""
    _, _, probs, targets = predict_split(cfg, ckpt, split, info, tta)
    report = classification_report(probs.cpu().numpy(), targets.cpu().numpy(), ckpt.class_names)
    report.update({"checkpoint": str(cfg.resume), "split": split, "data": cfg.data,
                   "world_size": info.world_size, "tta": tta.describe() if tta else None})
    calibration = Calibration.from_dict(ckpt.calibration)
    if calibration is not None:
        report["calibration"] = {**calibration.to_dict(), **selective_metrics(probs.cpu(), targets.cpu(), calibration)}
    if cfg.ood_data:
        others = ood_probs(cfg, ckpt, info).cpu()
        report["ood"] = {"data": cfg.ood_data, **ood_metrics(probs.cpu(), others, calibration)}
    return report


def ood_probs(cfg: Config, ckpt: Checkpoint, info: DistInfo) -> torch.Tensor:
    """The checkpoint's (calibrated) class probabilities for the images of ``--ood_data``, all-gathered in order."""
    return predict_files(cfg, ckpt, [(str(path), -1) for _, path in list_inputs(cfg.ood_data, "--ood_data")], info)


def predict_files(cfg: Config, ckpt: Checkpoint, samples: list[tuple[str, int]], info: DistInfo) -> torch.Tensor:
    """The checkpoint's (calibrated) class probabilities for image files ``(path, label or -1)``, fitted to the input
    as its training fitted them; all-gathered in the order given."""
    dataset = ImageClassificationDataset(samples, ckpt.class_names, image_size=tuple(cfg.image_size), seed=cfg.seed,
                                         **fitting_of(cfg))
    model = model_from_checkpoint(ckpt, cfg, info.device)
    return predict_probs(model, loader_for(dataset, cfg, info), cfg, preprocessing_of(cfg), info.device,
                         temperature=temperature_of(ckpt.calibration))[1]


def resume_paths(cfg: Config) -> list[str]:
    """The --resume models: one path, or several for an ensemble."""
    return [cfg.resume] if isinstance(cfg.resume, str) else list(cfg.resume or [])


def ensemble_weights(weights: list[float] | None, count: int) -> list[float]:
    """Normalised weights, one per model; equal when not given."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise UsageError(f"--ensemble_weights has {len(weights)} values for {count} --resume models")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UsageError(f"--ensemble_weights must be >= 0 with a positive sum, got {weights}")
    return [w / sum(weights) for w in weights]


def load_member(path: str, cfg: Config, explicit: set[str], device: torch.device,
                class_names: list[str] | None, first: str) -> "Predictor":
    """One ensemble member (see load_predictor); its classes must be ``class_names`` (those of ``first``) when
    an earlier member set them."""
    member = load_predictor(path, cfg, explicit, device)
    if class_names is not None and member.class_names != class_names:
        raise UsageError(f"--resume {path} predicts classes {member.class_names}, but {first} predicts "
                         f"{class_names}; ensemble members must share classes in the same order")
    return member


@dataclasses.dataclass
class Predictor:
    """A trained model from any file we write: where it came from, its classes and input size, and
    ``probs(uint8 batch on the device) → class probabilities``."""

    path: str
    class_names: list[str]
    preprocessing: Preprocessing
    probs: ProbsFn
    fixed_size: bool = False  # an ONNX graph built for one input size cannot take TTA's scale views
    calibration: Calibration | None = None  # --calibrate's record; ``probs`` already applies its temperature

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.preprocessing.image_size)

    @property
    def fitting(self) -> dict:
        """How images are fitted to the input (dataset keywords): the model's own resize mode."""
        return {"resize_mode": self.preprocessing.resize_mode, "crop_pct": self.preprocessing.crop_pct}


def load_predictor(path: str, cfg: Config, explicit: set[str], device: torch.device) -> Predictor:
    """A checkpoint (.pth), TorchScript export (.pt) or ONNX export (.onnx) as a predictor. A checkpoint takes the
    typed flags on top of its config and AMP for this machine."""
    suffix = Path(path).suffix.lower()
    if Path(path).is_dir():
        raise FileNotFoundError(f"--resume {path} is a folder; pass a checkpoint (.pth) or an exported model "
                                "(.pt, .onnx) in it")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--resume {path}: no such file")
    if suffix == ".onnx":
        return _onnx_predictor(path)
    if suffix == ".pt":
        return _torchscript_predictor(path, device)
    member_cfg, ckpt = resolve_config(dataclasses.replace(cfg, resume=path), explicit)
    member_cfg.amp = choose_inference_amp(given(cfg, explicit, "amp"), member_cfg.amp, device)
    model = model_from_checkpoint(ckpt, member_cfg, device)
    probs = model_probs_fn(model, member_cfg, preprocessing_of(member_cfg), device, temperature_of(ckpt.calibration))
    return Predictor(path, list(ckpt.class_names), preprocessing_of(member_cfg), probs,
                     calibration=Calibration.from_dict(ckpt.calibration))


def _torchscript_predictor(path: str, device: torch.device) -> Predictor:
    from engine.export import load_torchscript

    extra = {"class_names.json": "", "preprocessing.json": "", "calibration.json": ""}
    # optimize_for_inference as the file says on CPU (what the demo runs); its passes are oneDNN ones
    module = load_torchscript(path, optimize=None if device.type == "cpu" else False, map_location=device,
                              extra_files=extra)
    if not extra["class_names.json"]:
        raise ValueError(f"--resume {path}: no embedded class names; export it with `main.py --jit`")
    preprocessing = Preprocessing.from_dict(json.loads(extra["preprocessing.json"]))
    module.eval()
    return Predictor(path, json.loads(extra["class_names.json"]), preprocessing, module,
                     calibration=Calibration.from_dict(json.loads(extra["calibration.json"] or "null")))


def _onnx_predictor(path: str) -> Predictor:
    from engine.onnx import ort_session, run_session

    session = ort_session(path)
    meta = session.get_modelmeta().custom_metadata_map
    if "class_names" not in meta or "preprocessing" not in meta:
        raise ValueError(f"--resume {path}: no class_names/preprocessing metadata; export it with `main.py --onnx`")
    preprocessing = Preprocessing.from_dict(json.loads(meta["preprocessing"]))

    def probs(images: torch.Tensor) -> torch.Tensor:
        return run_session(session, images.cpu()).to(images.device)
    return Predictor(path, json.loads(meta["class_names"]), preprocessing, probs, fixed_size=True,
                     calibration=Calibration.from_dict(json.loads(meta.get("calibration") or "null")))
