"""``--jit --resume CKPT``: a traced, frozen TorchScript model that carries its own preprocessing.

The exported module takes a uint8 NCHW batch of letterboxed RGB images and returns class probabilities;
normalisation is inside it, and the class names and preprocessing travel as extra files, so the demo needs
no flags and no training code.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from applications.common import model_from_checkpoint, preprocessing_of, resolve_config
from config import Config
from dataloader import build_split_dataset
from dataloader.preprocess import Preprocessing
from utils.distributed import cleanup_distributed, init_distributed
from utils.logger import setup_logging

EXTRA_FILES = ("class_names.json", "preprocessing.json", "meta.json")


class InferenceModel(torch.nn.Module):
    """uint8 NCHW images → probabilities, with the training normalisation baked in."""

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing, output: str):
        super().__init__()
        self.model = model
        self.sigmoid_output = output == "bce"
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model((images.float() - self.mean) / self.std)
        if self.sigmoid_output:
            probs = torch.sigmoid(logits)
            return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.softmax(logits, dim=1)


def export_jit(cfg: Config, explicit: set[str]) -> Path:
    """Trace, freeze and save; check eager vs exported outputs on real images of the data set."""
    info = init_distributed("cpu")
    try:
        log = setup_logging(None, info.is_main)
        if not cfg.resume:
            raise ValueError("--jit needs --resume CKPT (a best.pth or last.pth written by training)")
        cfg, ckpt = resolve_config(cfg, explicit)
        out_path = Path(cfg.output) if cfg.output else Path(cfg.resume).with_suffix(".torchscript.pt")
        if not info.is_main:  # export is a single-process job; other ranks have nothing to do
            return out_path
        preprocessing = preprocessing_of(cfg)
        model = model_from_checkpoint(ckpt, cfg, torch.device("cpu"))
        wrapper = InferenceModel(model, preprocessing, cfg.criterion).eval()
        images = sample_images(cfg, ckpt["class_names"])
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated, still supported
            scripted = torch.jit.freeze(torch.jit.trace(wrapper, images))
            extra = {"class_names.json": json.dumps(ckpt["class_names"]),
                     "preprocessing.json": json.dumps(preprocessing.to_dict()),
                     "meta.json": json.dumps({"model": cfg.model, "checkpoint": str(cfg.resume),
                                              "input": "uint8 NCHW RGB, letterboxed", "output": "probabilities"})}
            out_path.parent.mkdir(parents=True, exist_ok=True)
            torch.jit.save(scripted, str(out_path), _extra_files=extra)
            reloaded = torch.jit.load(str(out_path))
            eager, exported = wrapper(images), reloaded(images)
        max_diff = float((eager - exported).abs().max())
        agree = float((eager.argmax(1) == exported.argmax(1)).float().mean()) * 100
        log.info("exported %s to %s; on %d real images max |eager - TorchScript| = %.2e, top-1 agreement %.1f%%",
                 cfg.model, out_path, images.shape[0], max_diff, agree)
        if max_diff > 1e-4 or agree < 100.0:
            raise RuntimeError(f"TorchScript output differs from eager (max diff {max_diff:.2e}, top-1 agreement "
                               f"{agree:.1f}%); the export at {out_path} should not be used")
        return out_path
    finally:
        cleanup_distributed()


def sample_images(cfg: Config, class_names: list[str], count: int = 16) -> torch.Tensor:
    """A uint8 batch of real letterboxed images from the first split of the data set that exists."""
    errors = []
    for split in (cfg.split, "test", "val", "train"):
        try:
            dataset = build_split_dataset(cfg.data, split, image_size=tuple(cfg.image_size),
                                          class_names=class_names, val_ratio=cfg.val_ratio, seed=cfg.seed)
        except (FileNotFoundError, ValueError) as exc:
            errors.append(f"{split}: {exc}")
            continue
        step = max(1, len(dataset) // count)
        return torch.stack([dataset[i][0] for i in range(0, len(dataset), step)][:count])
    raise FileNotFoundError(f"no images found under --data {cfg.data} to check the export with: {errors}")
