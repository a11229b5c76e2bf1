"""ONNX: write a module as an ONNX graph with metadata, run it with ONNX Runtime, quantise it, score it on a split.

The graph is the one ``--jit`` exports (engine/export.py): uint8 NCHW letterboxed RGB in, probabilities out,
normalisation inside, Conv+BatchNorm pairs folded; the batch axis is dynamic. Class names, preprocessing, the model
name and the input/output description travel as ``metadata_props``, so the demo reads them from the file.

The graph comes from torch's dynamo exporter (torch.export, translated by onnxscript) where it works, else from the
older TorchScript-based exporter, with a log line saying why; either file computes the same function, and ONNX
Runtime ran both at the same speed (README, "Deployment speed").
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from config import Config
from engine.components import split_dataset_of
from engine.export import INPUT_DESCRIPTION, OUTPUT_DESCRIPTION, plain_metadata
from utils.checkpoint import atomic_write
from utils.logger import get_logger

OPSET = 17  # the TorchScript-based exporter's
DYNAMO_OPSET = 18  # the dynamo exporter's lowest: asked for 17, its version converter fails on Reduce* axes inputs
ONNX_EXPORTERS = ("dynamo", "torchscript")
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
INSTALL_HINT = "pip install onnx==1.23.2 onnxruntime==1.32.0"
ONNXSCRIPT_HINT = "pip install onnxscript==0.7.2"
# Dynamic quantisation of the matrix products only. ONNX Runtime 1.32 runs dynamically quantised convolutions
# (ConvInteger, int8 weights), but batch-1 latency was 4.4x (small_cnn, 28 px) to 9x (mobilenet_v3_small, 224 px)
# that of the float convolution on one AVX512 core, per-channel and with ORT's pre-processing alike.
INT8_OP_TYPES = ("MatMul", "Gemm")
ACCURACY_BATCH = 64


@dataclass
class OnnxExport:
    """What ``export_onnx`` wrote and measured (rank 0; other ranks get None)."""

    path: Path
    max_diff: float
    agreement: float
    int8_path: Path | None = None
    split: str | None = None
    images: int = 0
    top1_fp32: float | None = None
    top1_int8: float | None = None


def require_onnx():
    """The onnx and onnxruntime modules, or an ImportError that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx and onnxruntime packages ({exc}); install them with: "
                          f"{INSTALL_HINT}") from exc
    return onnx, onnxruntime


def onnx_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The export's extra files (applications/export.py) as ONNX metadata_props: plain keys, JSON values."""
    return plain_metadata(metadata)


def require_onnxscript() -> None:
    """The dynamo exporter's dependency, or an ImportError that says how to install it."""
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the dynamo ONNX exporter needs the onnxscript package ({exc}); install it with: "
                          f"{ONNXSCRIPT_HINT}") from exc


def write_onnx(module: nn.Module, images: torch.Tensor, path: Path, *, model_name: str,
               metadata: dict[str, str] | None = None, opset: int = OPSET, exporter: str = "auto") -> Path:
    """Export ``module`` (uint8 images → probabilities) with a dynamic batch axis, add ``metadata`` as
    metadata_props, check the graph and write it atomically to ``path``.

    ``exporter``: "dynamo" (torch.export + onnxscript, opset DYNAMO_OPSET), "torchscript" (the older tracing
    exporter, opset ``opset``) or "auto": dynamo, and the TorchScript-based exporter when dynamo fails, with one log
    line saying why. The exporter used is recorded in metadata_props["exporter"].
    """
    onnx, _ = require_onnx()
    if exporter not in ("auto", *ONNX_EXPORTERS):
        raise ValueError(f"unknown ONNX exporter {exporter!r}; choose auto, {' or '.join(ONNX_EXPORTERS)}")
    proto = None
    if exporter in ("auto", "dynamo"):
        try:
            proto = _export_dynamo(module, images)
            used = "dynamo"
        except Exception as exc:  # noqa: BLE001  torch.export and the translation fail in many ways
            if exporter == "dynamo":
                raise RuntimeError(f"{model_name} could not be exported with the dynamo ONNX exporter "
                                   f"({_root_cause(exc)}); try exporter='torchscript'") from exc
            get_logger().info("ONNX: the dynamo exporter failed on %s (%s); using the TorchScript-based exporter",
                              model_name, _root_cause(exc))
    try:
        if proto is None:
            proto, used = _export_torchscript(module, images, opset), "torchscript"
        for key, value in {**(metadata or {}), "exporter": used}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"{model_name}: {INPUT_DESCRIPTION} -> {OUTPUT_DESCRIPTION}"
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001  the exporter fails in many ways (unsupported op, tracing, checker)
        raise RuntimeError(f"{model_name} could not be exported to ONNX ({_first_line(exc)}); export it with --jit "
                           "(TorchScript) instead") from exc
    data = proto.SerializeToString()
    atomic_write(path, lambda handle: handle.write(data))
    return Path(path)


def onnx_exporter_of(path: str | Path) -> str:
    """Which exporter wrote an ONNX file of write_onnx ("dynamo" or "torchscript"; "?" for older files)."""
    onnx, _ = require_onnx()
    props = {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    return props.get("exporter", "?")


def _export_dynamo(module: nn.Module, images: torch.Tensor):
    """torch.export of ``module`` with a dynamic batch, translated by onnxscript and optimised (constant folding,
    dead code): the ONNX exporter torch supports from 2.9 on."""
    require_onnxscript()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad(), _quiet("onnxscript", "onnx_ir"):
        warnings.filterwarnings("ignore", category=UserWarning)  # e.g. its advice on input_names with dynamic_shapes
        program = torch.onnx.export(module.eval(), (images,), dynamo=True, opset_version=DYNAMO_OPSET,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                                    dynamic_shapes={"images": {0: batch}}, external_data=False, optimize=True)
    return program.model_proto


def _export_torchscript(module: nn.Module, images: torch.Tensor, opset: int):
    """The TorchScript-based (tracing) exporter: deprecated in torch 2.9, but needs nothing beyond torch."""
    onnx, _ = require_onnx()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module.eval(), (images,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause: the dynamo exporter wraps the reason (an operator without an ONNX
    translation, say) in paragraphs of advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return _first_line(exc)


@contextlib.contextmanager
def _quiet(*names: str):
    """Loggers ``names`` at WARNING for the duration (onnxscript's optimiser reports every pass at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def ort_session(path: str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session; ``threads`` sets the intra-op thread count (None: ORT's default)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT warns about things like unused initializers
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW batch → probabilities, through an ONNX Runtime session."""
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """ONNX Runtime dynamic quantisation of ``src`` (int8 weights of INT8_OP_TYPES) written to ``dst``."""
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run ORT's pre-processing first concerns static quantisation
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OP_TYPES))
    finally:
        root.setLevel(level)
    return Path(dst)


def int8_path_of(path: Path) -> Path:
    return path.with_name(f"{path.stem}.int8.onnx")


def split_top1(runs: dict[str, Callable[[torch.Tensor], torch.Tensor]], cfg: Config, class_names: list[str],
               split: str) -> tuple[dict, int]:
    """Top-1 (%) of each model (uint8 batch → probabilities) on every image of ``split`` as the run of ``cfg``
    carved it, batched; and the number of images."""
    try:
        dataset = split_dataset_of(cfg, split, class_names)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; choose the split to score the exported models on with --split") from exc
    correct = dict.fromkeys(runs, 0)
    with torch.inference_mode():
        for start in range(0, len(dataset), ACCURACY_BATCH):
            items = [dataset[i] for i in range(start, min(start + ACCURACY_BATCH, len(dataset)))]
            images = torch.stack([item[0] for item in items])
            labels = torch.tensor([int(item[1]) for item in items])
            for name, run in runs.items():
                correct[name] += int((run(images).argmax(1) == labels).sum())
    return {name: 100.0 * hits / len(dataset) for name, hits in correct.items()}, len(dataset)


def session_runner(session) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda images: run_session(session, images)


