"""Load any model file main.py exports, with its class names and preprocessing: what the demo and the server run.

Only the exported file is read, plus dataloader/preprocess.py and utils/calibration.py (each loaded by its path, so
that none of the training packages is imported): the same letterbox code as training, and the same "unknown" and
conformal-set answers as ``--predict``. ``load_exported(path)`` recognises the format from the
file's content and returns an ``ExportedModel``: ``model(uint8 NCHW batch) -> class probabilities``.

Formats: TorchScript (``--jit``; a zip archive), an AOTInductor package (``--export pt2``; a zip archive whose
``archive_format`` says pt2), an OpenVINO IR (``--export openvino``; the .xml, with its .bin beside it), ONNX
(``--onnx``; a protobuf, run by ONNX Runtime), and a deploy manifest (``deploy.json``, written by
benchmarks/deploy.py): the model file it names, loaded with the runtime and threads it names. This module owns the
manifest's format (``write_deploy_manifest``, ``read_deploy_manifest``). onnxruntime and openvino are imported only
when a file needs them.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def _load_by_path(relative: str, name: str):
    """A module of the repository by its path: `import dataloader.preprocess` would first run the package's
    __init__, which imports the training data pipeline (datasets, augmentation, samplers)."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building their classes
    spec.loader.exec_module(module)
    return module


_preprocess = _load_by_path("dataloader/preprocess.py", "classifier_preprocess")
IMAGE_EXTENSIONS = _preprocess.IMAGE_EXTENSIONS
ImageDecodeError = _preprocess.ImageDecodeError
Preprocessing = _preprocess.Preprocessing
load_image_tensor = _preprocess.load_image_tensor
_calibration = _load_by_path("utils/calibration.py", "classifier_calibration")
Calibration = _calibration.Calibration
ANSWERS, answer_text, can_answer = _calibration.ANSWERS, _calibration.answer_text, _calibration.can_answer
require_answer = _calibration.require_answer
prediction_sets, set_names = _calibration.prediction_sets, _calibration.set_names

EXPORT_HINT = "export one with: python main.py --jit --resume CKPT  (or --onnx, --export pt2, --export openvino)"
DEPLOY_MANIFEST = "deploy.json"
# deploy.json's "runtime" -> the format of the file it runs (ExportedModel.format)
RUNTIMES = {"torchscript": "TorchScript", "onnxruntime": "ONNX", "aotinductor": "AOTInductor", "openvino": "OpenVINO"}
MANIFEST_KEYS = ("model", "runtime", "threads", "batch_size", "p50_ms", "p99_ms", "fps", "top1", "cpu", "measured")
OPENVINO_SECTION = "classifier"  # the rt_info section engine/openvino_ir.py writes the metadata to
_CAPABILITY_RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}  # x86 vector levels, as torch and AOTInductor name them
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
    format: str  # "TorchScript", "ONNX", "AOTInductor" or "OpenVINO"
    name: str  # the architecture, as exported
    threads: int | None = None  # the threads it runs with (None: the runtime's default)
    manifest: dict | None = None  # the deploy.json it was loaded through, if any
    calibration: Calibration | None = None  # --calibrate's threshold and conformal quantile (temperature: in the graph)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)


def load_exported(path: str | Path, threads: int | None = None) -> ExportedModel:
    """A model file written by main.py (TorchScript, ONNX, AOTInductor package, OpenVINO IR) with its class names and
    preprocessing, or a deploy.json naming one. ``threads`` sets torch's threads (TorchScript, AOTInductor) or the
    runtime's intra-op threads (ONNX Runtime, OpenVINO); for a deploy.json, None takes the manifest's."""
    path = Path(path)
    kind = _file_kind(path)
    if kind == "manifest":
        return _load_manifest(path, threads)
    if threads and kind in ("torchscript", "aotinductor"):  # torch's thread pool is the process's, so only these
        torch.set_num_threads(threads)
    if kind == "torchscript":
        model = _load_torchscript(path)
        model.threads = torch.get_num_threads()
    elif kind == "aotinductor":
        model = _load_aoti(path)
    elif kind == "openvino":
        model = _load_openvino(path, threads)
    else:
        model = _load_onnx(path, threads)
        model.threads = threads
    return model


def _file_kind(path: Path) -> str:
    """"manifest", "torchscript", "aotinductor", "openvino" or "onnx", from the file's first bytes (and, for a zip
    archive, its members); a missing path or a folder is a usage error."""
    if not path.exists():
        raise ModelFileError(f"model file {path} not found; {EXPORT_HINT}", USAGE_ERROR)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file; {EXPORT_HINT}", USAGE_ERROR)
    try:
        with path.open("rb") as handle:
            head = handle.read(256).lstrip()
            handle.seek(0)
            # torch.jit.save and AOTInductor write zip archives; an ONNX model is a bare protobuf message.
            if zipfile.is_zipfile(handle):
                return "aotinductor" if _is_pt2_archive(path) else "torchscript"
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"cannot read model file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if head.startswith(b"{"):
        return "manifest"
    if head.startswith(b"<?xml") or head.startswith(b"<net"):
        return "openvino"
    if path.suffix.lower() == ".bin" and path.with_suffix(".xml").is_file():
        raise ModelFileError(f"{path} holds the weights of an OpenVINO IR; give its graph, "
                             f"{path.with_suffix('.xml')}", USAGE_ERROR)
    return "onnx"


def _is_pt2_archive(path: Path) -> bool:
    """An AOTInductor package (torch's pt2 archive format) rather than a TorchScript archive."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith("/archive_format") and name.count("/") == 1:
                return archive.read(name).strip() == b"pt2"
    return False


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


def _read_calibration(path: Path, text: str | None) -> Calibration | None:
    """The export's calibration (utils/calibration.py); None for a model never calibrated or exported before it
    was recorded."""
    try:
        return Calibration.from_dict(json.loads(text)) if text else None
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path} has an unreadable calibration record ({exc}); export it again") from None


def _load_torchscript(path: Path) -> ExportedModel:
    extra = {"class_names.json": "", "preprocessing.json": "", "meta.json": "", "calibration.json": ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated, still supported
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception:  # noqa: BLE001  torch raises RuntimeError or its own C++ errors, with paragraphs of text
            raise ModelFileError(f"{path} is a zip archive that torch.jit.load cannot read: a training checkpoint "
                                 f"must be exported first (python main.py --jit --resume {path}), a damaged export "
                                 "exported again") from None
    class_names, preprocessing = _read_metadata(path, extra["class_names.json"], extra["preprocessing.json"], "--jit")
    meta = json.loads(extra["meta.json"] or "{}")
    if meta.get("optimize_for_inference"):  # checked against eager at export; it cannot be saved optimised
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            module = torch.jit.optimize_for_inference(module)
    return ExportedModel(module.eval(), class_names, preprocessing, "TorchScript", meta.get("model", "?"),
                         calibration=_read_calibration(path, extra["calibration.json"]))


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

    return ExportedModel(run, class_names, preprocessing, "ONNX", meta.get("model", "?"),
                         calibration=_read_calibration(path, meta.get("calibration")))


def _load_aoti(path: Path) -> ExportedModel:
    """An AOTInductor package: the metadata is read from the archive first (so a foreign file or a package built for
    a wider instruction set than this CPU's fails with one line instead of a crash), then the compiled model."""
    meta = _aoti_metadata(path)
    class_names, preprocessing = _read_metadata(path, meta.get("class_names"), meta.get("preprocessing"),
                                                "--export pt2")
    _check_cpu_isa(path, meta.get("AOTI_CPU_ISA", ""))
    quiet = logging.getLogger("torch.utils.cpp_extension")  # warns "No CUDA runtime is found" on CPU machines
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch._inductor import aoti_load_package

        runner = aoti_load_package(str(path))
    except Exception as exc:  # noqa: BLE001  a package from another torch version fails inside its C++ loader
        raise ModelFileError(f"{path} is an AOTInductor package this torch {torch.__version__} cannot load "
                             f"({type(exc).__name__}); export it again on this machine with "
                             "`main.py --export pt2`") from None
    finally:
        quiet.setLevel(level)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return runner(batch)

    return ExportedModel(run, class_names, preprocessing, "AOTInductor", meta.get("model", "?"),
                         torch.get_num_threads(), calibration=_read_calibration(path, meta.get("calibration")))


def _aoti_metadata(path: Path) -> dict:
    """The package's ``aot_inductor.metadata`` (plus AOTI_* entries), as compiled into its wrapper's metadata file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".wrapper_metadata.json")]
            return json.loads(archive.read(names[0])) if names else {}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path} is a damaged AOTInductor package ({exc}); export it again with "
                             "`main.py --export pt2`") from None


def _check_cpu_isa(path: Path, package_isa: str) -> None:
    """AOTInductor compiles its kernels for the exporting CPU's vector instructions (e.g. "AVX512 AVX512_VNNI");
    running them on a CPU without those would die of an illegal instruction."""
    needed = package_isa.split()[0].upper() if package_isa.split() else ""
    here = torch.backends.cpu.get_cpu_capability()
    if needed in _CAPABILITY_RANK and here in _CAPABILITY_RANK and _CAPABILITY_RANK[needed] > _CAPABILITY_RANK[here]:
        raise ModelFileError(f"{path} was compiled for {package_isa} CPUs and this CPU offers {here}; export it again "
                             "on this kind of machine with `main.py --export pt2`, or use the ONNX export")


def _load_openvino(path: Path, threads: int | None) -> ExportedModel:
    """An OpenVINO IR (.xml, weights in the .bin beside it), compiled for the CPU: float32 (OpenVINO would pick bf16
    on CPUs that have it, which breaks parity with the trained model), latency hint, ``threads`` inference threads."""
    try:
        import openvino as ov
    except ImportError:
        raise ModelFileError(f"{path} is an OpenVINO IR, which needs OpenVINO: pip install openvino==2026.4.1"
                             ) from None
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # noqa: BLE001  OpenVINO raises its own exception types, with long texts
        raise ModelFileError(f"{path} is not an OpenVINO IR OpenVINO can read ({type(exc).__name__}: "
                             f"{_first_line(exc)}); its weights must sit beside it as {path.with_suffix('.bin').name}; "
                             f"{EXPORT_HINT}") from None
    meta = {key: _openvino_info(model, key) for key in ("class_names", "preprocessing", "model", "calibration")}
    class_names, preprocessing = _read_metadata(path, meta["class_names"], meta["preprocessing"], "--export openvino")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    # The IR's batch axis is dynamic, and OpenVINO's CPU plugin pays for that on every call (shape inference, memory
    # planning): at batch 1 a copy compiled for the static shape took half the time. Batch 1 runs on that copy.
    dynamic = core.compile_model(model, "CPU", config)
    single_model = model.clone()
    single_model.reshape([1, 3, *preprocessing.image_size])  # the export's input: letterboxed to image_size
    requests = {"dynamic": dynamic.create_infer_request(),
                1: core.compile_model(single_model, "CPU", config).create_infer_request()}

    def run(batch: torch.Tensor) -> torch.Tensor:
        request = requests.get(batch.shape[0], requests["dynamic"])
        request.infer({0: batch.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    used = int(dynamic.get_property("INFERENCE_NUM_THREADS"))
    return ExportedModel(run, class_names, preprocessing, "OpenVINO", meta["model"] or "?", used,
                         calibration=_read_calibration(path, meta["calibration"]))


def _openvino_info(model, key: str) -> str | None:
    """A metadata entry from the IR's rt_info: our section, else the ONNX metadata_props OpenVINO copies into
    "framework" when it reads an ONNX file."""
    for section in (OPENVINO_SECTION, "framework"):
        if model.has_rt_info([section, key]):
            return model.get_rt_info([section, key]).astype(str)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# --- deploy.json: which exported file to run, with which runtime and threads (benchmarks/deploy.py chooses) --------

def write_deploy_manifest(path: str | Path, manifest: dict) -> Path:
    """Write ``manifest`` (MANIFEST_KEYS, "model" relative to the manifest's folder) as JSON, atomically: written
    beside and renamed, so a server never reads half a file."""
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing or manifest["runtime"] not in RUNTIMES:
        raise ValueError(f"a deploy manifest needs {', '.join(MANIFEST_KEYS)} and a runtime of {', '.join(RUNTIMES)}; "
                         f"missing {missing}, runtime {manifest.get('runtime')!r}")
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_deploy_manifest(path: str | Path) -> dict:
    """The manifest as written, with "model" resolved against the manifest's folder; one-line errors for a file that
    is not one."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable deploy manifest ({exc}); write one with "
                             "python benchmarks/deploy.py --resume CKPT --deploy") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), str):
        raise ModelFileError(f"{path} is JSON but not a deploy manifest (no \"model\" file named); write one with "
                             "python benchmarks/deploy.py --resume CKPT --deploy")
    runtime = manifest.get("runtime")
    if runtime not in RUNTIMES:
        raise ModelFileError(f"{path}: unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    threads = manifest.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ModelFileError(f"{path}: threads must be a positive integer or null, got {threads!r}")
    return {**manifest, "model": str(path.parent / manifest["model"])}


def _load_manifest(path: Path, threads: int | None) -> ExportedModel:
    """The model a deploy.json names, with its runtime and (unless ``threads`` overrides them) its threads."""
    manifest = read_deploy_manifest(path)
    model_path = Path(manifest["model"])
    if not model_path.exists():
        raise ModelFileError(f"{path} names the model file {model_path}, which does not exist; run "
                             "benchmarks/deploy.py --deploy again or fix \"model\"")
    if _file_kind(model_path) == "manifest":
        raise ModelFileError(f"{path} names another manifest, {model_path}; \"model\" must be an exported model file")
    model = load_exported(model_path, threads or manifest.get("threads"))
    expected = RUNTIMES[manifest["runtime"]]
    if model.format != expected:
        raise ModelFileError(f"{path} says runtime {manifest['runtime']} ({expected} files) but {model_path} is a "
                             f"{model.format} file; fix \"runtime\" or \"model\"")
    model.manifest = manifest
    return model
