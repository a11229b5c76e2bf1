"""``--export pt2|openvino --resume CKPT [--output F]``: the network ``--jit`` exports, for AOTInductor or OpenVINO.

- ``pt2``: torch.export with a dynamic batch axis, compiled ahead of time by AOTInductor into ``<stem>.pt2`` (needs
  a C++ compiler; the kernels are built for this CPU) with the class names and preprocessing in the package's
  metadata (engine/aoti.py).
- ``openvino``: the ONNX export (``<stem>.onnx``, written as ``--onnx`` would when it is missing or older than the
  checkpoint) read by OpenVINO and saved as IR, ``<stem>.openvino.xml`` and ``.bin``, with the metadata in rt_info
  (engine/openvino_ir.py).

Either file is then loaded as the demo and the server load it (serving/runtime.py) and checked against the eager,
unfused model on real images of the data set, the whole batch and batch 1, as ``--jit`` and ``--onnx`` are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config import Config, FlagError
from engine.aoti import PT2_SUFFIX, require_cpp_compiler, write_aoti_package
from engine.export import export_metadata, inference_models, log_fusion, parity_on, plain_metadata, require_parity
from engine.export import sample_images
from engine.job import open_job
from engine.onnx import onnx_exporter_of, require_onnx, write_onnx
from engine.openvino_ir import XML_SUFFIX, openvino_path_of, require_openvino, write_openvino_ir
from serving.runtime import load_exported
from utils.logger import get_logger

MISSING = "--export needs --resume CKPT (a best.pth or last.pth written by training)"
FORMATS = {"pt2": "AOTInductor", "openvino": "OpenVINO"}


@dataclass
class MoreExport:
    """What the export wrote and measured (rank 0; other ranks get None)."""

    path: Path
    format: str  # "AOTInductor" or "OpenVINO"
    max_diff: float
    agreement: float
    onnx_path: Path | None = None  # the ONNX file an OpenVINO IR was read from


def check(cfg: Config) -> None:
    """The tools the chosen form needs (before any work), and an --output the runtime can read."""
    suffix = PT2_SUFFIX if cfg.export == "pt2" else XML_SUFFIX
    if cfg.output and Path(cfg.output).suffix != suffix:
        raise FlagError(f"--export {cfg.export} --output must end in {suffix}, got {cfg.output}")
    if cfg.export == "pt2":
        require_cpp_compiler()
    else:
        require_onnx()
        require_openvino()


def run(cfg: Config, explicit: set[str]) -> MoreExport | None:
    """Export, load the file back as the demo does, and check it against eager on real images."""
    with open_job(cfg, explicit, checkpoint="required", missing=MISSING, device="cpu") as job:
        cfg, ckpt, log = job.cfg, job.ckpt, job.log
        if not job.info.is_main:  # export is a single-process job; other ranks have nothing to do
            return None
        eager, fused, folded = inference_models(ckpt, cfg)
        log_fusion(cfg.model, eager, folded)
        images = sample_images(cfg, ckpt.class_names)
        metadata = plain_metadata(export_metadata(cfg, ckpt.class_names, folded=folded, calibration=ckpt.calibration))
        onnx_path = None
        if cfg.export == "pt2":
            out_path = Path(cfg.output) if cfg.output else Path(cfg.resume).with_suffix(PT2_SUFFIX)
            log.info("compiling %s with AOTInductor (torch.export, dynamic batch); this takes a while", cfg.model)
            write_aoti_package(fused, images, out_path, model_name=cfg.model, metadata=metadata)
        else:
            out_path = Path(cfg.output) if cfg.output else openvino_path_of(cfg.resume)
            onnx_path = onnx_source(cfg, fused, images, metadata)
            write_openvino_ir(onnx_path, out_path, metadata=metadata)
        exported = load_exported(out_path)
        max_diff, agree = parity_on(eager, exported, images)
        log.info("exported %s to %s (%s, dynamic batch); on %d real images max |eager - %s| = %.2e, top-1 agreement "
                 "%.1f%%", cfg.model, out_path, FORMATS[cfg.export], images.shape[0], FORMATS[cfg.export], max_diff,
                 agree)
        require_parity(max_diff, agree, what=FORMATS[cfg.export], out_path=out_path)
        return MoreExport(out_path, FORMATS[cfg.export], max_diff, agree, onnx_path)


def onnx_source(cfg: Config, fused, images, metadata: dict[str, str]) -> Path:
    """The ONNX file OpenVINO reads: ``<stem>.onnx`` beside the checkpoint when it is there and not older than the
    checkpoint, else written now, as ``--onnx`` writes it."""
    log = get_logger()
    path = Path(cfg.resume).with_suffix(".onnx")
    if path.is_file() and path.stat().st_mtime >= Path(cfg.resume).stat().st_mtime:
        log.info("OpenVINO reads %s (written by the %s exporter)", path, onnx_exporter_of(path))
        return path
    why = "older than the checkpoint" if path.is_file() else "missing"
    write_onnx(fused, images, path, model_name=cfg.model, metadata=metadata)
    log.info("wrote %s for OpenVINO to read (it was %s; %s exporter)", path, why, onnx_exporter_of(path))
    return path
