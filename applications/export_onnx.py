"""``--onnx --resume CKPT [--output F] [--int8]``: the export as an ONNX model, checked with ONNX Runtime.

The network is the one ``--jit`` exports (engine/export.py), written by engine/onnx.py with a dynamic batch axis and
the class names and preprocessing as metadata. ONNX Runtime's output is checked against the eager, unfused model on
real images of the data set.

``--int8`` also writes ``<stem>.int8.onnx``, dynamically quantised by ONNX Runtime (int8 weights; activations
quantised per batch at run time, so no calibration data is needed), and scores both files on the val split
(``--split`` to choose another), so the cost of quantisation is a measured number.
"""
from __future__ import annotations

from pathlib import Path

import torch

from config import Config, given
from engine.export import compare_outputs, export_metadata, inference_models, log_fusion, require_parity, sample_images
from engine.job import open_job
from engine.onnx import (INT8_OP_TYPES, OPSET, OnnxExport, int8_path_of, onnx_metadata, ort_session, quantize_int8,
                         require_onnx, run_session, session_runner, split_top1, write_onnx)
from utils.logger import get_logger

MISSING = "--onnx needs --resume CKPT (a best.pth or last.pth written by training)"


def check(cfg: Config) -> None:
    require_onnx()  # fail before any work when the packages are missing


def run(cfg: Config, explicit: set[str]) -> OnnxExport | None:
    """Export to ONNX, check it with ONNX Runtime against eager; with --int8 also quantise and score both."""
    with open_job(cfg, explicit, checkpoint="required", missing=MISSING, device="cpu") as job:
        cfg, ckpt, log = job.cfg, job.ckpt, job.log
        if not job.info.is_main:  # export is a single-process job; other ranks have nothing to do
            return None
        out_path = Path(cfg.output) if cfg.output else Path(cfg.resume).with_suffix(".onnx")
        eager, fused, folded = inference_models(ckpt, cfg)
        log_fusion(cfg.model, eager, folded)
        images = sample_images(cfg, ckpt.class_names)
        metadata = onnx_metadata(export_metadata(cfg, ckpt.class_names, folded=folded, calibration=ckpt.calibration))
        write_onnx(fused, images, out_path, model_name=cfg.model, metadata=metadata)
        session = ort_session(out_path)
        with torch.no_grad():
            reference = eager(images)
        max_diff, agree = compare_outputs(reference, run_session(session, images))
        single_diff, single_agree = compare_outputs(reference[:1], run_session(session, images[:1]))
        max_diff, agree = max(max_diff, single_diff), min(agree, single_agree)
        log.info("exported %s to %s (ONNX opset %d, dynamic batch); on %d real images max |eager - ONNX Runtime| "
                 "= %.2e, top-1 agreement %.1f%%", cfg.model, out_path, OPSET, images.shape[0], max_diff, agree)
        require_parity(max_diff, agree, what="ONNX Runtime", out_path=out_path)
        result = OnnxExport(out_path, max_diff, agree)
        if cfg.int8:
            quantize_and_score(result, session, cfg, explicit, ckpt.class_names, images, reference)
        return result


def quantize_and_score(result: OnnxExport, session, cfg: Config, explicit: set[str], class_names: list[str],
                       images: torch.Tensor, reference: torch.Tensor) -> None:
    """--int8: write the quantised model next to the fp32 one and score both on a split (val unless --split)."""
    log = get_logger()
    result.int8_path = quantize_int8(result.path, int8_path_of(result.path))
    int8 = ort_session(result.int8_path)
    max_diff, agree = compare_outputs(reference, run_session(int8, images))
    log.info("int8 model %s (%.0f KiB vs %.0f KiB fp32; %s quantised); on %d real images max |eager - int8| = "
             "%.2e, top-1 agreement %.1f%%", result.int8_path, result.int8_path.stat().st_size / 1024,
             result.path.stat().st_size / 1024, "/".join(INT8_OP_TYPES), images.shape[0], max_diff, agree)
    result.split = given(cfg, explicit, "split", "val")
    top1, result.images = split_top1({"fp32": session_runner(session), "int8": session_runner(int8)}, cfg,
                                     class_names, result.split)
    result.top1_fp32, result.top1_int8 = top1["fp32"], top1["int8"]
    log.info("%s split (%d images): top-1 fp32 ONNX %.2f%%, int8 ONNX %.2f%% (%+.2f points)", result.split,
             result.images, result.top1_fp32, result.top1_int8, result.top1_int8 - result.top1_fp32)
