"""``--jit --resume CKPT``: a traced, frozen TorchScript model that carries its own preprocessing.

The exported module takes a uint8 NCHW batch of letterboxed RGB images and returns class probabilities;
normalisation is inside it, and the class names and preprocessing travel as extra files, so the demo needs
no flags and no training code. Before tracing, every Conv+BatchNorm pair is folded into one convolution (torch.fx);
the traced module is frozen, and loading it applies ``torch.jit.optimize_for_inference`` where that stays exact and
is faster on the exporting CPU. The export is checked against the eager, unfused model on real images of the data
set (engine/export.py has the pieces).
"""
from __future__ import annotations

from pathlib import Path

from config import Config
from engine.export import export_metadata, inference_models, log_fusion, require_parity, sample_images, save_torchscript
from engine.job import open_job

MISSING = "--jit needs --resume CKPT (a best.pth or last.pth written by training)"


def check(cfg: Config) -> None:
    """Nothing beyond the flags' own checks."""


def run(cfg: Config, explicit: set[str]) -> Path:
    """Fuse, trace, freeze and save; check eager vs exported outputs on real images of the data set."""
    with open_job(cfg, explicit, checkpoint="required", missing=MISSING, device="cpu") as job:
        cfg, ckpt, log = job.cfg, job.ckpt, job.log
        out_path = Path(cfg.output) if cfg.output else Path(cfg.resume).with_suffix(".torchscript.pt")
        if not job.info.is_main:  # export is a single-process job; other ranks have nothing to do
            return out_path
        eager, fused, folded = inference_models(ckpt, cfg)
        log_fusion(cfg.model, eager, folded)
        images = sample_images(cfg, ckpt.class_names)
        extra = export_metadata(cfg, ckpt.class_names, folded=folded, calibration=ckpt.calibration)
        max_diff, agree, optimized = save_torchscript(fused, eager, images, out_path, extra)
        log.info("exported %s to %s (fused, frozen%s); on %d real images max |eager - TorchScript| = %.2e, "
                 "top-1 agreement %.1f%%", cfg.model, out_path, ", optimize_for_inference when loaded" if optimized
                 else "", images.shape[0], max_diff, agree)
        require_parity(max_diff, agree, what="TorchScript", out_path=out_path)
        return out_path
