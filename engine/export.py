"""The export library: a trained network as an inference module that carries its own preprocessing, conv-BN
fusion, export metadata, TorchScript tracing and loading, and the parity check against eager.

The exported module takes a uint8 NCHW batch of letterboxed RGB images and returns class probabilities;
normalisation is inside it, and the class names and preprocessing travel as extra files, so the demo needs
no flags and no training code. Before tracing, every Conv+BatchNorm pair is folded into one convolution (torch.fx);
the traced module is frozen, and loading it applies ``torch.jit.optimize_for_inference`` where that stays exact and
is faster on the exporting CPU.
The export is checked against the eager, unfused model on real images of the data set.

``--jit`` (applications/export.py), ``--onnx`` (applications/export_onnx.py, with engine/onnx.py) and ``--export
pt2|openvino`` (applications/export_more.py, with engine/aoti.py and engine/openvino_ir.py) build their exports from
these pieces, and ``benchmarks/deploy.py`` times them.
"""
from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from config import Config
from dataloader import build_split_dataset
from dataloader.preprocess import Preprocessing
from engine.components import fitting_of, model_from_checkpoint, preprocessing_of
from utils.calibration import temperature_of
from utils.checkpoint import Checkpoint
from utils.logger import get_logger

EXTRA_FILES = ("class_names.json", "preprocessing.json", "meta.json", "calibration.json")
PARITY_TOLERANCE = 1e-4  # max |eager - exported| on probabilities; top-1 must agree on every image
OPTIMIZE_GAIN = 0.9  # optimize_for_inference is kept when it takes under 90% of the frozen module's time
INPUT_DESCRIPTION = "uint8 NCHW RGB, letterboxed"
OUTPUT_DESCRIPTION = "probabilities"
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class InferenceModel(torch.nn.Module):
    """uint8 NCHW images → probabilities, with the training normalisation baked in, and the calibrated temperature
    (``--calibrate``; 1: none) too, so that any runtime reading the file gets calibrated probabilities."""

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing, output: str, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.sigmoid_output = output == "bce"
        self.temperature = float(temperature)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model((images.float() - self.mean) / self.std)
        if self.temperature != 1.0:  # a constant in the traced or exported graph
            logits = logits / self.temperature
        if self.sigmoid_output:
            probs = torch.sigmoid(logits)
            return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.softmax(logits, dim=1)


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BATCHNORMS) for m in model.modules())


def fuse_conv_bn(model: nn.Module, name: str = "the model") -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with each BatchNorm that directly follows a Conv (or Linear) folded into it.

    torch.fx traces the model symbolically; one it cannot trace (Python control flow on tensor values) comes back
    unfused, with a warning: the export is still correct, and ``torch.jit.freeze`` folds what it can recognise.
    A BatchNorm before its convolution (pre-activation blocks) or after a layer whose output is also used elsewhere
    stays as it is. Returns the model and the number of BatchNorm layers folded.
    """
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
    try:
        fused = fuse(model)  # works on a deep copy
    except Exception as exc:  # noqa: BLE001  symbolic tracing raises many types (TraceError, TypeError, ...)
        get_logger().warning("conv-BN fusion skipped: torch.fx cannot trace %s (%s: %s); exporting it unfused",
                             name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return model, 0
    return fused.eval(), count_batchnorms(model) - count_batchnorms(fused)


def inference_models(ckpt: Checkpoint, cfg: Config) -> tuple[InferenceModel, InferenceModel, int]:
    """The eager InferenceModel of a checkpoint (the reference of every parity check), its conv-BN-fused twin
    (what gets exported) and the number of BatchNorm layers folded."""
    preprocessing = preprocessing_of(cfg)
    model = model_from_checkpoint(ckpt, cfg, torch.device("cpu"))
    temperature = temperature_of(ckpt.calibration)
    eager = InferenceModel(model, preprocessing, cfg.criterion, temperature).eval()
    fused_model, folded = fuse_conv_bn(model, cfg.model)
    return eager, InferenceModel(fused_model, preprocessing, cfg.criterion, temperature).eval(), folded


def log_fusion(name: str, model: nn.Module, folded: int) -> None:
    get_logger().info("conv-BN fusion: folded %d of %d BatchNorm layers of %s into the preceding layer", folded,
                      count_batchnorms(model), name)


def export_metadata(cfg: Config, class_names: list[str], *, folded: int,
                    calibration: dict | None = None) -> dict[str, str]:
    """What every export carries besides the weights, as JSON strings: TorchScript extra files and ONNX
    metadata_props are both string maps. ``calibration`` (the checkpoint's, utils/calibration.py) holds the
    temperature already baked into the graph, the reject threshold and the conformal quantile ("null": none)."""
    return {"class_names.json": json.dumps(list(class_names)),
            "preprocessing.json": json.dumps(preprocessing_of(cfg).to_dict()),
            "calibration.json": json.dumps(calibration),
            "meta.json": json.dumps({"model": cfg.model, "checkpoint": str(cfg.resume), "input": INPUT_DESCRIPTION,
                                     "output": OUTPUT_DESCRIPTION, "batchnorm_folded": folded})}


def plain_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The export metadata (``export_metadata``) as one flat string map with plain keys and JSON values: ONNX
    metadata_props, the AOTInductor package's metadata and OpenVINO's rt_info all hold it in this form, and
    serving/runtime.py reads it back from each."""
    meta = json.loads(metadata["meta.json"])
    return {"class_names": metadata["class_names.json"], "preprocessing": metadata["preprocessing.json"],
            "calibration": metadata.get("calibration.json", "null"),
            "model": meta["model"], "checkpoint": meta["checkpoint"], "input": INPUT_DESCRIPTION,
            "output": OUTPUT_DESCRIPTION, "batchnorm_folded": str(meta["batchnorm_folded"])}


def trace_for_inference(module: nn.Module, images: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace ``module`` on ``images`` and freeze it (weights become constants, conv-BN and similar folds)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated, still supported
        return torch.jit.freeze(torch.jit.trace(module.eval(), images))


def load_torchscript(path: str | Path, *, optimize: bool | None = None, map_location: str | torch.device = "cpu",
                     extra_files: dict[str, str] | None = None) -> torch.jit.ScriptModule:
    """Load an export; ``optimize`` applies ``torch.jit.optimize_for_inference`` (oneDNN convolutions with
    prepacked weights, further fusions), None as the file's meta.json says (what the demo does too). The keys of
    ``extra_files`` (e.g. "class_names.json") are filled with the file's extra files, as torch.jit.load does."""
    extra = {"meta.json": "", **(extra_files or {})}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
        if extra_files is not None:
            extra_files.update({key: extra[key] for key in extra_files})
        if optimize is None:
            optimize = bool(json.loads(extra["meta.json"] or "{}").get("optimize_for_inference", False))
        return torch.jit.optimize_for_inference(module) if optimize else module


def compare_outputs(reference: torch.Tensor, exported: torch.Tensor) -> tuple[float, float]:
    """Max |reference - exported| over all probabilities, and top-1 agreement in percent."""
    max_diff = float((reference - exported).abs().max())
    agree = float((reference.argmax(1) == exported.argmax(1)).float().mean()) * 100
    return max_diff, agree


@torch.no_grad()
def parity_on(reference: nn.Module, run, images: torch.Tensor) -> tuple[float, float]:
    """``compare_outputs`` of ``run`` (uint8 batch → probabilities: a loaded export) against the eager ``reference``
    on the whole batch and on batch 1 (a dynamic batch axis must serve both): the larger difference, the lower
    agreement."""
    expected = reference(images)
    max_diff, agree = compare_outputs(expected, run(images))
    single_diff, single_agree = compare_outputs(expected[:1], run(images[:1]))
    return max(max_diff, single_diff), min(agree, single_agree)


def parity_ok(max_diff: float, agree: float) -> bool:
    return max_diff <= PARITY_TOLERANCE and agree >= 100.0


def require_parity(max_diff: float, agree: float, *, what: str, out_path: Path) -> None:
    if not parity_ok(max_diff, agree):
        raise RuntimeError(f"{what} output differs from eager (max diff {max_diff:.2e} > {PARITY_TOLERANCE:.0e} or "
                           f"top-1 agreement {agree:.1f}% < 100%); the export at {out_path} should not be used")


def save_torchscript(fused: nn.Module, eager: nn.Module, images: torch.Tensor, out_path: Path,
                     extra: dict[str, str]) -> tuple[float, float, bool]:
    """Trace and freeze ``fused``, save it with ``extra``, and compare the file with ``eager`` on ``images`` (the
    whole batch and batch 1), as saved and after ``torch.jit.optimize_for_inference``.

    The optimised module holds oneDNN weight tensors that ``torch.jit.save`` cannot serialise, so the file holds
    the frozen module and the optimisation runs when it is loaded. It helps some models and slows others (on CPU,
    small plain CNNs gain, depthwise and squeeze-excitation networks lose), so meta.json's ``optimize_for_inference``
    is set only when it stays within the tolerance and is faster at batch 1 here; the demo applies it only then.
    Returns the max difference and the top-1 agreement over the forms checked, and that flag.
    """
    log = get_logger()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scripted = trace_for_inference(fused, images)
    meta = json.loads(extra.get("meta.json", "{}"))
    with torch.no_grad():
        reference = eager(images)

    def save(optimize: bool) -> None:
        files = {**extra, "meta.json": json.dumps({**meta, "optimize_for_inference": optimize})}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.jit.save(scripted, str(out_path), _extra_files=files)

    def parity(module: torch.jit.ScriptModule) -> tuple[float, float]:
        with torch.no_grad():
            max_diff, agree = compare_outputs(reference, module(images))
            single_diff, single_agree = compare_outputs(reference[:1], module(images[:1]))
        return max(max_diff, single_diff), min(agree, single_agree)

    save(optimize=False)
    frozen_module = load_torchscript(out_path, optimize=False)
    frozen = parity(frozen_module)
    try:
        optimized_module = load_torchscript(out_path, optimize=True)
        optimized = parity(optimized_module)
    except RuntimeError as exc:
        log.warning("torch.jit.optimize_for_inference fails on this model (%s); the export runs frozen",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return (*frozen, False)
    if not parity_ok(*optimized):
        log.warning("torch.jit.optimize_for_inference drifts from eager (max diff %.2e, top-1 agreement %.1f%%); "
                    "the export runs frozen", *optimized)
        return (*frozen, False)
    latency = batch1_latency_ms({"frozen": frozen_module, "optimized": optimized_module}, images[:1])
    use = latency["optimized"] < OPTIMIZE_GAIN * latency["frozen"]
    log.info("batch-1 latency on this CPU: frozen %.3f ms, with optimize_for_inference %.3f ms: %s", latency["frozen"],
             latency["optimized"], "applied when loaded" if use else "left out")
    if use:
        save(optimize=True)
    return max(frozen[0], optimized[0]), min(frozen[1], optimized[1]), use


@torch.no_grad()
def batch1_latency_ms(modules: dict[str, nn.Module], batch: torch.Tensor, *, rounds: int = 3, calls: int = 5,
                      warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each module on ``batch``; the modules take turns so that load from a
    neighbour falls on all of them alike."""
    for module in modules.values():
        for _ in range(warmup):
            module(batch)
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(rounds):
        for name, module in modules.items():
            for _ in range(calls):
                started = time.perf_counter()
                module(batch)
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def sample_images(cfg: Config, class_names: list[str], count: int = 16) -> torch.Tensor:
    """A uint8 batch of real images, fitted as the run fits them, from the first split of the data set that
    exists."""
    errors = []
    for split in (cfg.split, "test", "val", "train"):
        try:
            dataset = build_split_dataset(cfg.data, split, image_size=tuple(cfg.image_size),
                                          class_names=class_names, val_ratio=cfg.val_ratio, seed=cfg.seed,
                                          **fitting_of(cfg))
        except (FileNotFoundError, ValueError) as exc:
            errors.append(f"{split}: {exc}")
            continue
        step = max(1, len(dataset) // count)
        return torch.stack([dataset[i][0] for i in range(0, len(dataset), step)][:count])
    raise FileNotFoundError(f"no images found under --data {cfg.data} to check the export with: {errors}")
