"""``--predict DIR_OR_CSV --resume A [B ...]``: a submission CSV ``filename,label`` for unlabelled images.

Inputs are every image under a folder (recursively, sorted, names relative to the folder), or the rows of a CSV
whose ``filename`` column (else its first column) lists paths relative to the CSV's folder; the submission keeps
that order. Each ``--resume`` entry is a checkpoint of ours or an exported model (TorchScript ``.pt`` from
``--jit``, ``.onnx`` from ``--onnx``); their class probabilities are averaged, weighted by ``--ensemble_weights``,
after test-time augmentation (``--tta``) within each model. Under torchrun every process predicts its shard and
the probabilities are all-gathered, so each image is predicted once and the file is the same for any process count.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Callable

import torch

from applications.common import gather_probs, model_from_checkpoint, model_probs_fn, preprocessing_of, resolve_config
from applications.export import load_torchscript
from config import Config
from dataloader import ImageClassificationDataset, build_loader
from dataloader.datasets import list_inputs
from dataloader.preprocess import Preprocessing
from dataloader.tta import TestTimeAugmentation, build_tta
from utils.checkpoint import atomic_write
from utils.distributed import DistInfo, cleanup_distributed, init_distributed
from utils.hardware import choose_amp
from utils.logger import setup_logging


@dataclasses.dataclass
class Member:
    """One model of the ensemble: where it came from, its classes and input size, and uint8 batch → probs."""

    path: str
    class_names: list[str]
    image_size: tuple[int, int]
    probs: Callable[[torch.Tensor], torch.Tensor]
    fixed_size: bool = False  # an ONNX graph built for one input size cannot take TTA's scale views


def ensemble_weights(weights: list[float] | None, count: int) -> list[float]:
    """Normalised weights, one per model; equal when not given."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"--ensemble_weights has {len(weights)} values for {count} --resume models")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--ensemble_weights must be >= 0 with a positive sum, got {weights}")
    return [w / sum(weights) for w in weights]


def load_member(path: str, cfg: Config, explicit: set[str], device: torch.device) -> Member:
    """A checkpoint (.pth) or an exported model (.pt TorchScript, .onnx) as an ensemble member."""
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise FileNotFoundError(f"--resume {path}: no such file")
    if suffix == ".onnx":
        return _onnx_member(path)
    if suffix == ".pt":
        return _torchscript_member(path, device)
    member_cfg, ckpt = resolve_config(dataclasses.replace(cfg, resume=path), explicit)
    member_cfg.amp = choose_amp(cfg.amp if "amp" in explicit else None, device)
    model = model_from_checkpoint(ckpt, member_cfg, device)
    return Member(path, list(ckpt["class_names"]), tuple(member_cfg.image_size),
                  model_probs_fn(model, member_cfg, preprocessing_of(member_cfg), device))


def _torchscript_member(path: str, device: torch.device) -> Member:
    extra = {"class_names.json": "", "preprocessing.json": ""}
    # optimize_for_inference as the file says on CPU (what the demo runs); its passes are oneDNN ones
    module = load_torchscript(path, optimize=None if device.type == "cpu" else False, map_location=device,
                              extra_files=extra)
    if not extra["class_names.json"]:
        raise ValueError(f"--resume {path}: no embedded class names; export it with `main.py --jit`")
    preprocessing = Preprocessing.from_dict(json.loads(extra["preprocessing.json"]))
    module.eval()
    return Member(path, json.loads(extra["class_names.json"]), tuple(preprocessing.image_size), module)


def _onnx_member(path: str) -> Member:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("--resume *.onnx needs ONNX Runtime: pip install onnxruntime==1.32.0 (pinned in "
                          "requirements.txt)") from exc
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if "class_names" not in meta or "preprocessing" not in meta:
        raise ValueError(f"--resume {path}: no class_names/preprocessing metadata; export it with `main.py --onnx`")
    preprocessing = Preprocessing.from_dict(json.loads(meta["preprocessing"]))
    input_name = session.get_inputs()[0].name

    def probs(images: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {input_name: images.cpu().numpy()})[0]
        return torch.from_numpy(out).to(images.device)
    return Member(path, json.loads(meta["class_names"]), tuple(preprocessing.image_size), probs, fixed_size=True)


def predict_submission(cfg: Config, explicit: set[str]) -> Path:
    """Predict, average the ensemble, and write the submission CSV (rank 0); returns its path."""
    info = init_distributed(cfg.device)
    try:
        log = setup_logging(None, info.is_main)
        paths = [cfg.resume] if isinstance(cfg.resume, str) else list(cfg.resume or [])
        if not paths:
            raise ValueError("--predict needs --resume CKPT [CKPT ...] (checkpoints or exported .pt / .onnx files)")
        weights = ensemble_weights(cfg.ensemble_weights, len(paths))
        inputs = list_inputs(cfg.predict)
        names, probs, class_names = [name for name, _ in inputs], None, None
        for path, weight in zip(paths, weights):
            member = load_member(path, cfg, explicit, info.device)
            if class_names is not None and member.class_names != class_names:
                raise ValueError(f"--resume {path} predicts classes {member.class_names}, but {paths[0]} predicts "
                                 f"{class_names}; ensemble members must share classes in the same order")
            class_names = member.class_names
            member_probs = _predict_member(member, inputs, cfg, info)
            probs = member_probs * weight if probs is None else probs + member_probs * weight
            log.info("%s: %d images predicted (weight %.3f)", path, len(inputs), weight)
        out_path = Path(cfg.output) if cfg.output else Path(paths[0]).parent / "submission.csv"
        if info.is_main:
            write_submission(out_path, names, probs.cpu(), class_names, with_probabilities=cfg.probabilities)
            log.info("submission for %d images from %d model(s)%s written to %s", len(names), len(paths),
                     f", TTA {cfg.tta}" if cfg.tta else "", out_path)
        return out_path
    finally:
        cleanup_distributed()


def _predict_member(member: Member, inputs: list[tuple[str, Path]], cfg: Config, info: DistInfo) -> torch.Tensor:
    tta: TestTimeAugmentation | None = build_tta(cfg.tta, image_size=member.image_size)
    if tta is not None and member.fixed_size and "scale" in tta.groups:
        raise ValueError(f"--tta scale: {member.path} is an ONNX graph for one input size; drop 'scale' or use the "
                         "checkpoint instead")
    samples = [(str(path), -1) for _, path in inputs]  # no labels: -1
    dataset = ImageClassificationDataset(samples, member.class_names, image_size=member.image_size, seed=cfg.seed)
    loader = build_loader(dataset, batch_size=cfg.batch_size, workers=cfg.workers, train=False, seed=cfg.seed,
                          rank=info.rank, world_size=info.world_size, pin_memory=info.device.type == "cuda")
    indices, probs, _ = gather_probs(member.probs, loader, info.device, tta)
    assert torch.equal(indices.cpu(), torch.arange(len(inputs))), "gathered predictions are not one per input"
    return probs


def write_submission(path: Path, names: list[str], probs: torch.Tensor, class_names: list[str], *,
                     with_probabilities: bool) -> None:
    """``filename,label[,<class>...]`` rows in input order, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", "label"] + (list(class_names) if with_probabilities else []))
    labels = probs.argmax(dim=1).tolist()
    for name, label, row in zip(names, labels, probs.tolist()):
        writer.writerow([name, class_names[label]] + ([f"{p:.6f}" for p in row] if with_probabilities else []))
    atomic_write(path, lambda handle: handle.write(buffer.getvalue().encode("utf-8")))
