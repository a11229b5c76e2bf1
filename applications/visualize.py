"""``--visual_data SPLIT_OR_DIR --resume CKPT --visual_method {cam,grad-cam,grad-cam++}``: class activation maps.

For each image (the first ``--visual_limit`` of a split, or of a folder, recursively) the network's prediction is
explained for the predicted class. Written to ``--output`` (default RUN/cam_METHOD_SOURCE/):

    NNNN_image.png    the letterboxed network input
    NNNN_cam.png      the heat map over it (jet colour map, half-transparent)
    index.html        a contact sheet: image, overlay, predicted class and probability, true class
    results.csv       index,path,true,predicted,probability,peak_row,peak_col (the heat map's maximum)

plus the first overlays under the run's TensorBoard folder (``cam/METHOD``). ``cam`` is the original CAM (Zhou et al.
2016): the target layer's feature maps weighted by the classifier's weights of the class, for networks whose
classifier is one Linear on globally pooled features. ``grad-cam`` and ``grad-cam++`` come from the grad-cam package
and work on any network. The target layer is found automatically (the last module whose output is a spatial map,
e.g. ``layer4`` of a ResNet, ``features`` of our models and of MobileNet/EfficientNet); ``--target_layer NAME``
overrides it. Under torchrun each process draws its share of the images.
"""
from __future__ import annotations

import csv
import html
import io
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from config import Config
from dataloader import ImageClassificationDataset
from dataloader.datasets import SPLITS, list_inputs
from dataloader.preprocess import normalize_on_device
from engine.components import fitting_of, loader_for, model_from_checkpoint, preprocessing_of, split_dataset_of
from engine.job import open_job
from models.heads import get_classifier
from utils.checkpoint import atomic_write
from utils.distributed import DistInfo, gather_predictions
from utils.errors import UsageError

METHODS = ("cam", "grad-cam", "grad-cam++")
ALIASES = {"grad-camm++": "grad-cam++"}  # the main seed's spelling
TENSORBOARD_IMAGES = 16


def canonical_method(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in METHODS:
        raise UsageError(f"unknown --visual_method {name!r}; choose one of {', '.join(METHODS)}")
    return name


def find_target_layer(model: torch.nn.Module, example: torch.Tensor, name: str | None = None
                      ) -> tuple[str, torch.nn.Module]:
    """``(name, module)`` of the layer to explain: ``name`` when given, else the last module to finish whose output
    is a 4-D map larger than 1x1 (the deepest feature map before global pooling)."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            close = [n for n in modules if n and (name in n or n in name)][:8]
            raise ValueError(f"--target_layer {name!r} is not a module of this model; "
                             f"e.g. {close or list(modules)[-8:]}")
        return name, modules[name]
    finished: list[str] = []

    def hook(module_name: str):
        def record(_module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1:
                finished.append(module_name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items() if n]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise ValueError("found no layer with a spatial feature map in this model; pass --target_layer NAME")
    return finished[-1], modules[finished[-1]]


def class_activation_maps(model: torch.nn.Module, layer: torch.nn.Module, inputs: torch.Tensor,
                          classes: torch.Tensor) -> np.ndarray:
    """Original CAM: sum_k w[c, k] * A_k of the target layer's maps A, ReLU, upsampled, scaled to [0, 1] per image."""
    classifier = get_classifier(model)
    maps: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: maps.append(out.detach().float()))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    weight = classifier.weight.detach().float()
    if weight.shape[1] != maps[-1].shape[1]:
        raise ValueError(f"--visual_method cam needs the classifier to be one Linear on the pooled target layer: "
                         f"{tuple(weight.shape)} weights for {maps[-1].shape[1]} channels. Use grad-cam or grad-cam++ "
                         "for this network (or --target_layer for the right map)")
    cams = torch.einsum("nk,nkhw->nhw", weight[classes], maps[-1]).clamp_min(0)
    cams = F.interpolate(cams[:, None], size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cams.flatten(1).max(dim=1).values.clamp_min(1e-12)
    return (cams / peak[:, None, None]).cpu().numpy()


def gradient_cams(model: torch.nn.Module, layer: torch.nn.Module, inputs: torch.Tensor, classes: torch.Tensor,
                  method: str) -> np.ndarray:
    """Grad-CAM / Grad-CAM++ of the grad-cam package for ``classes``: (N, H, W) in [0, 1]."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    explainer = (GradCAM if method == "grad-cam" else GradCAMPlusPlus)(model=model, target_layers=[layer])
    try:
        return explainer(input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        explainer.activations_and_grads.release()


def overlay(image_rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Jet heat map over the image, half and half (uint8 RGB)."""
    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image_rgb, 0.5, heat, 0.5, 0)


def visual_dataset(cfg: Config, class_names: list[str]) -> tuple[ImageClassificationDataset, str]:
    """The images to explain (a split of the run's data or a folder) and a short name for the output folder."""
    if cfg.visual_data in SPLITS:
        return split_dataset_of(cfg, cfg.visual_data, class_names), cfg.visual_data
    folder = Path(cfg.visual_data)
    if not folder.is_dir():
        raise FileNotFoundError(f"--visual_data {cfg.visual_data}: not a split ({', '.join(SPLITS)}) nor a folder")
    to_index = {name: i for i, name in enumerate(class_names)}
    # a class-named first folder gives the true class (folder layout); otherwise it is unknown (-1)
    samples = [(str(path), to_index.get(Path(name).parts[0], -1) if len(Path(name).parts) > 1 else -1)
               for name, path in list_inputs(folder, "--visual_data")]
    dataset = ImageClassificationDataset(samples, class_names, image_size=tuple(cfg.image_size), seed=cfg.seed,
                                         **fitting_of(cfg))
    return dataset, folder.name or "images"


MISSING = "--visual_data needs the model to explain: --resume CKPT"


def check(cfg: Config) -> None:
    canonical_method(cfg.visual_method)
    if cfg.visual_limit < 1:
        raise UsageError(f"--visual_limit must be >= 1, got {cfg.visual_limit}")


def run(cfg: Config, explicit: set[str]) -> Path:
    """Explain the predictions of ``--resume`` on ``--visual_data``; returns the output folder."""
    with open_job(cfg, explicit, checkpoint="required", missing=MISSING, eval_amp=True) as job:
        cfg, ckpt, info, log = job.cfg, job.ckpt, job.info, job.log
        method = canonical_method(cfg.visual_method)
        cfg.channels_last = False  # hooks and the grad-cam package expect plain NCHW maps
        class_names = ckpt.class_names
        model = model_from_checkpoint(ckpt, cfg, info.device)
        dataset, source = visual_dataset(cfg, class_names)
        count = min(cfg.visual_limit, len(dataset))
        subset = ImageClassificationDataset(dataset.samples[:count], class_names, image_size=dataset.image_size,
                                            seed=cfg.seed, **fitting_of(cfg))
        out_dir = Path(cfg.output) if cfg.output else Path(cfg.resume).parent / f"cam_{method}_{source}"
        preprocessing = preprocessing_of(cfg)
        example = normalize_on_device(subset[0][0][None].to(info.device), preprocessing.mean, preprocessing.std)
        layer_name, layer = find_target_layer(model, example, cfg.target_layer)
        log.info("%s of %s on %d images of %s, target layer %r", method, cfg.resume, count, cfg.visual_data,
                 layer_name)
        rows = explain(model, layer, method, subset, cfg, info, out_dir)
        if info.is_main:
            write_index(out_dir, rows, subset, class_names, method, layer_name, cfg)
            log_to_tensorboard(out_dir, rows, cfg, method)
            log.info("%d overlays, index.html and results.csv written to %s", count, out_dir)
        return out_dir


def explain(model, layer, method: str, dataset: ImageClassificationDataset, cfg: Config, info: DistInfo,
            out_dir: Path) -> list[tuple[int, int, int, float, int, int]]:
    """Each rank explains its shard and writes its images; returns (index, true, predicted, probability, peak row,
    peak col) for every image, all-gathered in index order."""
    loader = loader_for(dataset, cfg, info, batch_size=min(cfg.batch_size, 32))
    preprocessing = preprocessing_of(cfg)
    ints, confidences = [], []  # per batch: (index, true, predicted, peak row, peak col) and the probability
    for images, labels, idx in loader:
        inputs = normalize_on_device(images.to(info.device), preprocessing.mean, preprocessing.std)
        with torch.no_grad():
            probs = torch.softmax(model(inputs).float(), dim=1)
        confidence, predicted = probs.max(dim=1)
        if method == "cam":
            cams = class_activation_maps(model, layer, inputs, predicted)
        else:
            cams = gradient_cams(model, layer, inputs, predicted, method)
        peaks = [np.unravel_index(int(np.argmax(c)), c.shape) for c in cams]
        for k, i in enumerate(idx.tolist()):
            image = np.ascontiguousarray(images[k].permute(1, 2, 0).numpy())
            write_png(out_dir / f"{i:04d}_image.png", image)
            write_png(out_dir / f"{i:04d}_cam.png", overlay(image, cams[k]))
        ints.append(torch.stack([idx.to(info.device), labels.to(info.device), predicted,
                                 torch.tensor([p[0] for p in peaks], device=info.device),
                                 torch.tensor([p[1] for p in peaks], device=info.device)], dim=1))
        confidences.append(confidence[:, None])
    local = torch.cat(ints)
    _, gathered, confidence = gather_predictions(local[:, 0], local, torch.cat(confidences))
    return [(i, t, p, float(c), r, col) for (i, t, p, r, col), c in zip(gathered.tolist(), confidence[:, 0].tolist())]


def write_png(path: Path, image_rgb: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    atomic_write(path, lambda handle: handle.write(png.tobytes()))


def write_index(out_dir: Path, rows, dataset: ImageClassificationDataset, class_names: list[str], method: str,
                layer_name: str, cfg: Config) -> None:
    """results.csv and the index.html contact sheet."""
    def name(c: int) -> str:
        return class_names[c] if c >= 0 else "?"

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["index", "path", "true", "predicted", "probability", "peak_row", "peak_col"])
    cells = []
    for i, true, pred, prob, row, col in rows:
        path = dataset.samples[i][0]
        writer.writerow([i, path, name(true), name(pred), f"{prob:.4f}", row, col])
        verdict = "" if true < 0 else (" ok" if true == pred else " wrong")
        cells.append(f'<figure class="{verdict.strip()}"><img src="{i:04d}_image.png"><img src="{i:04d}_cam.png">'
                     f"<figcaption>{html.escape(name(pred))} {prob:.2f}<br>true {html.escape(name(true))}{verdict}"
                     f"<br><small>{html.escape(Path(path).name)}</small></figcaption></figure>")
    table_bytes = table.getvalue().encode("utf-8")
    atomic_write(out_dir / "results.csv", lambda handle: handle.write(table_bytes))
    page = (f"<!doctype html><meta charset=utf-8><title>{method}: {html.escape(str(cfg.resume))}</title>"
            "<style>body{font:13px sans-serif}figure{display:inline-block;margin:4px;padding:4px;border:2px solid #ccc}"
            "figure.wrong{border-color:#d33}figure.ok{border-color:#3a3}img{width:112px;height:112px;"
            "image-rendering:pixelated;margin:1px}figcaption{text-align:center}</style>"
            f"<h3>{method} of {html.escape(str(cfg.resume))}, target layer <code>{html.escape(layer_name)}</code>, "
            f"{len(rows)} images of {html.escape(str(cfg.visual_data))}</h3>" + "".join(cells))
    page_bytes = page.encode("utf-8")
    atomic_write(out_dir / "index.html", lambda handle: handle.write(page_bytes))


def log_to_tensorboard(out_dir: Path, rows, cfg: Config, method: str) -> None:
    """The first overlays as one image batch under LOG_DIR/NAME/cam/METHOD."""
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import

    images = [cv2.cvtColor(cv2.imread(str(out_dir / f"{i:04d}_cam.png")), cv2.COLOR_BGR2RGB)
              for i, *_ in rows[:TENSORBOARD_IMAGES]]
    with SummaryWriter(log_dir=str(Path(cfg.log_dir) / (cfg.name or "visual") / "cam" / method)) as writer:
        writer.add_images(f"cam/{method}", np.stack(images), dataformats="NHWC")
