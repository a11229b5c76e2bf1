"""Load any model file main.py exports, with its class names and preprocessing: what the demo and the server run.

Only the exported file is read, plus dataloader/preprocess.py (loaded by its path, so that none of the training data
pipeline is imported): the same letterbox code as training. ``load_exported(path)`` recognises the format from the
file's content and returns an ``ExportedModel``: ``model(uint8 NCHW batch) -> class probabilities``.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def _load_preprocess_module():
    """dataloader/preprocess.py by its path: `import dataloader.preprocess` would first run the package's
    __init__, which imports the training data pipeline (datasets, augmentation, samplers)."""
    path = Path(__file__).resolve().parents[1] / "dataloader" / "preprocess.py"
    spec = importlib.util.spec_from_file_location("classifier_preprocess", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building Preprocessing
    spec.loader.exec_module(module)
    return module


_preprocess = _load_preprocess_module()
IMAGE_EXTENSIONS = _preprocess.IMAGE_EXTENSIONS
ImageDecodeError = _preprocess.ImageDecodeError
Preprocessing = _preprocess.Preprocessing
load_image_tensor = _preprocess.load_image_tensor

EXPORT_HINT = "export one with: python main.py --jit --resume CKPT  (or --onnx)"
USAGE_ERROR, DATA_ERROR = 2, 1  # exit statuses, the ones main.py uses (argparse exits with 2 on a bad flag)


class ModelFileError(Exception):
    """A model file that cannot be used, or a path that is not one: one `error: ...` line and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = DATA_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ExportedModel:
    """An exported classifier: ``model(uint8 NCHW batch)`` returns class probabilities."""

    run: Callable[[torch.Tensor], torch.Tensor]
    class_names: list[str]
    preprocessing: Preprocessing
    format: str  # "TorchScript" or "ONNX"
    name: str  # the architecture, as exported

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)


def load_exported(path: str | Path, threads: int | None = None) -> ExportedModel:
    """A TorchScript (zip archive) or ONNX file written by main.py, with its class names and preprocessing."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} not found; {EXPORT_HINT}", USAGE_ERROR)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file; {EXPORT_HINT}", USAGE_ERROR)
    try:
        with path.open("rb") as handle:
            # torch.jit.save writes a zip archive; an ONNX model is a bare protobuf message.
            is_zip = zipfile.is_zipfile(handle)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if threads:
        torch.set_num_threads(threads)
    return _load_torchscript(path) if is_zip else _load_onnx(path, threads)


def _read_metadata(path: Path, class_names: str | None, preprocessing: str | None,
                   flag: str) -> tuple[list[str], Preprocessing]:
    """The class names and preprocessing stored as JSON in an export; a file without them was not written by main.py."""
    if not class_names or not preprocessing:
        raise ModelFileError(f"{path} has no embedded class names and preprocessing; was it exported with "
                        f"`main.py {flag}`?")
    try:
        return json.loads(class_names), Preprocessing.from_dict(json.loads(preprocessing))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path} has unreadable class names or preprocessing ({exc}); export it again with "
                        f"`main.py {flag}`") from None


def _load_torchscript(path: Path) -> ExportedModel:
    extra = {"class_names.json": "", "preprocessing.json": "", "meta.json": ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated, still supported
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception:  # noqa: BLE001  torch raises RuntimeError or its own C++ errors, with paragraphs of text
            raise ModelFileError(f"{path} is a zip archive that torch.jit.load cannot read: a training checkpoint must be "
                            f"exported first (python main.py --jit --resume {path}), a damaged export exported "
                            "again") from None
    class_names, preprocessing = _read_metadata(path, extra["class_names.json"], extra["preprocessing.json"], "--jit")
    meta = json.loads(extra["meta.json"] or "{}")
    if meta.get("optimize_for_inference"):  # checked against eager at export; it cannot be saved optimised
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            module = torch.jit.optimize_for_inference(module)
    return ExportedModel(module.eval(), class_names, preprocessing, "TorchScript", meta.get("model", "?"))


def _load_onnx(path: Path, threads: int | None) -> ExportedModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelFileError(f"{path} is not a TorchScript archive, so it is read as ONNX, which needs ONNX Runtime: "
                        "pip install onnxruntime==1.32.0") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  ORT raises its own exception types for unreadable files
        raise ModelFileError(f"{path} is neither a TorchScript archive nor an ONNX model ONNX Runtime can load "
                        f"({type(exc).__name__}); {EXPORT_HINT}") from None
    meta = session.get_modelmeta().custom_metadata_map
    class_names, preprocessing = _read_metadata(path, meta.get("class_names"), meta.get("preprocessing"), "--onnx")
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: batch.numpy()})[0])

    return ExportedModel(run, class_names, preprocessing, "ONNX", meta.get("model", "?"))
