"""Data pipeline throughput: our OpenCV decode + letterbox (+ flip/affine) against torchvision's ImageFolder.

    python benchmarks/data_pipeline.py                          # per worker, train + eval, 2000 JPEGs at 224 px
    python benchmarks/data_pipeline.py --format png --size 128
    python benchmarks/data_pipeline.py --loader -j 2            # through a DataLoader with 2 workers

Per worker (the default): one process, one torch thread, one OpenCV thread, dataset items read in a loop with no
DataLoader, so images/s is what one core delivers. Both pipelines read the same files in the same order, after a
warm-up pass that puts every file in the page cache; each figure is the best of --repeat passes, and passes of
the pipelines are interleaved so a busy neighbour slows them alike.

The reference (torchvision ImageFolder, PIL loader) finishes with ToTensor + Normalize in the worker; ours hands
uint8 to the device, which normalises the batch (`normalize_on_device`). That step is measured on its own (on
this CPU, one thread) and the table gives both ratios: worker only, and worker + device normalisation (the
device step added to our worker time, as if the device were this same core).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from benchmarks.common import DEFAULT_ROOT, DEFAULT_SOURCE, environment, image_folder, markdown_table  # noqa: E402
from dataloader.datasets import ImageClassificationDataset, build_loader  # noqa: E402
from dataloader.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize_on_device  # noqa: E402

REFERENCE = "torchvision ImageFolder (PIL)"
OURS = "ours (OpenCV, uint8)"


@dataclass
class Pipeline:
    name: str
    transform: str
    kind: str  # "train" or "eval": the reference it is compared with
    dataset: Dataset
    is_reference: bool

    def item(self, index: int, epoch: int):
        # Our datasets take (index, epoch) keys so augmentation is a pure function of them.
        return self.dataset[index] if self.is_reference else self.dataset[(index, epoch)]


def reference_transform(kind: str, size: int) -> transforms.Compose:
    """torchvision's classification recipe: what the issue's 830 images/s/core was measured with."""
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if kind == "train":
        return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                               normalize])


def build_pipelines(train_dir: Path, kinds: list[str], size: int, seed: int) -> list[Pipeline]:
    """Reference and ours for each kind, over the same files in the same order."""
    pipelines = []
    for kind in kinds:
        reference = datasets.ImageFolder(str(train_dir), transform=reference_transform(kind, size))
        ours = dict(samples=reference.samples, class_names=reference.classes, image_size=(size, size), seed=seed)
        if kind == "train":
            pipelines += [
                Pipeline(REFERENCE, f"train: RandomResizedCrop({size}) + flip + ToTensor + Normalize", kind,
                         reference, True),
                Pipeline(OURS, f"train --aug: decode + letterbox {size} + flip + affine", kind,
                         ImageClassificationDataset(aug=True, **ours), False),
                Pipeline(OURS, f"train: decode + letterbox {size}", kind,
                         ImageClassificationDataset(aug=False, **ours), False),
            ]
        else:
            pipelines += [
                Pipeline(REFERENCE, f"eval: Resize({size}) + CenterCrop({size}) + ToTensor + Normalize", kind,
                         reference, True),
                Pipeline(OURS, f"eval: decode + letterbox {size}", kind,
                         ImageClassificationDataset(aug=False, **ours), False),
            ]
    return pipelines


def warm_up(pipelines: list[Pipeline], items: int = 20) -> None:
    """Read every file once (equal page cache for all pipelines) and run each pipeline on a few items."""
    for path, _ in pipelines[0].dataset.samples:
        with open(path, "rb") as f:
            f.read()
    for pipeline in pipelines:
        for index in range(min(items, len(pipeline.dataset))):
            pipeline.item(index, epoch=0)


def per_worker_rates(pipelines: list[Pipeline], repeat: int, seed: int) -> list[float]:
    """Best images/s of `repeat` passes per pipeline; passes interleaved across pipelines."""
    best = [0.0] * len(pipelines)
    torch.manual_seed(seed)  # torchvision's random transforms draw from the global RNG
    for epoch in range(repeat):
        for i, pipeline in enumerate(pipelines):
            n = len(pipeline.dataset)
            start = time.perf_counter()
            for index in range(n):
                pipeline.item(index, epoch)
            best[i] = max(best[i], n / (time.perf_counter() - start))
    return best


def normalization_rate(dataset: ImageClassificationDataset, batch_size: int, repeat: int, images: int) -> float:
    """Best images/s of `normalize_on_device` on a real uint8 batch (here the device is this CPU).

    As in training, the float batch is written into one reused buffer (`out=`), contiguous layout.
    """
    batch = torch.stack([dataset[(i % len(dataset), 0)][0] for i in range(batch_size)])
    out = normalize_on_device(batch, IMAGENET_MEAN, IMAGENET_STD)
    iterations = max(1, images // batch_size)
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(iterations):
            normalize_on_device(batch, IMAGENET_MEAN, IMAGENET_STD, out=out)
        best = max(best, iterations * batch_size / (time.perf_counter() - start))
    return best


def make_loader(pipeline: Pipeline, batch_size: int, workers: int, seed: int) -> DataLoader:
    """Ours through the project's `build_loader`; the reference through an equivalent plain DataLoader."""
    if not pipeline.is_reference:
        return build_loader(pipeline.dataset, batch_size=batch_size, workers=workers, train=pipeline.kind == "train",
                            seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(pipeline.dataset, batch_size=batch_size, shuffle=pipeline.kind == "train",
                      num_workers=workers, persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                      generator=generator)


def loader_pass(loader: DataLoader, epoch: int, normalize: bool) -> float:
    """images/s of one pass; with `normalize` the main process normalises each batch as training does."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    seen = 0
    out = None
    start = time.perf_counter()
    for images, *_ in loader:
        if normalize:
            reuse = out is not None and out.shape == images.shape
            out = normalize_on_device(images, IMAGENET_MEAN, IMAGENET_STD, out=out if reuse else None)
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def loader_rates(pipelines: list[Pipeline], batch_size: int, workers: int, repeat: int,
                 seed: int) -> list[tuple[float, float]]:
    """(worker only, with normalisation in the main process) best images/s per pipeline through a DataLoader.

    The reference already normalises in its workers, so both figures are one measurement for it.
    """
    loaders = [make_loader(p, batch_size, workers, seed) for p in pipelines]
    for loader in loaders:  # start the persistent workers and warm them up
        loader_pass(loader, epoch=0, normalize=False)
    best = [[0.0, 0.0] for _ in pipelines]
    for epoch in range(1, repeat + 1):
        for i, (pipeline, loader) in enumerate(zip(pipelines, loaders)):
            for column, normalize in enumerate((False, True)):
                if pipeline.is_reference and normalize:
                    continue
                best[i][column] = max(best[i][column], loader_pass(loader, epoch, normalize))
            if pipeline.is_reference:
                best[i][1] = best[i][0]
    del loaders  # shuts the worker processes down
    return [(a, b) for a, b in best]


def table_rows(pipelines: list[Pipeline], rates: list[tuple[float, float]]) -> list[list[str]]:
    """Each row's ratios are against the reference of the same kind (train or eval) measured in this run."""
    reference = {p.kind: r for p, r in zip(pipelines, rates) if p.is_reference}
    rows = []
    for pipeline, (worker, with_norm) in zip(pipelines, rates):
        ref_worker, ref_with_norm = reference[pipeline.kind]
        rows.append([pipeline.name, pipeline.transform, f"{worker:.0f}", f"{with_norm:.0f}",
                     f"{worker / ref_worker:.2f}", f"{with_norm / ref_with_norm:.2f}"])
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="cache folder for the generated images")
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="ImageFolder tree the images come from")
    parser.add_argument("--images", type=int, default=2000, help="images to generate (90%% train, 10%% val)")
    parser.add_argument("--source_size", type=int, default=224, help="side of the generated (square) images")
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    parser.add_argument("--size", type=int, default=224, help="network input side")
    parser.add_argument("--transforms", nargs="+", choices=("train", "eval"), default=["train", "eval"])
    parser.add_argument("--repeat", type=int, default=3, help="passes per pipeline; the best counts")
    parser.add_argument("--batch_size", "-b", type=int, default=64, help="batch for normalisation and --loader")
    parser.add_argument("--loader", action="store_true", help="measure through a DataLoader with -j workers")
    parser.add_argument("--workers", "-j", type=int, default=2, help="DataLoader workers with --loader")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    folder = image_folder(root=args.root, source=args.source, images=args.images, source_size=args.source_size,
                          fmt=args.format)
    pipelines = build_pipelines(folder / "train", args.transforms, args.size, args.seed)
    n = len(pipelines[0].dataset)
    print(f"data: {n} {args.format.upper()} images of {args.source_size}x{args.source_size} px in "
          f"{folder / 'train'}; network input {args.size}x{args.size}; best of {args.repeat} passes")
    warm_up(pipelines)
    ours_plain = next(p for p in pipelines if not p.is_reference)
    norm_rate = normalization_rate(ours_plain.dataset, args.batch_size, args.repeat, images=n)

    if args.loader:
        rates = loader_rates(pipelines, args.batch_size, args.workers, args.repeat, args.seed)
        header = [f"images/s total ({args.workers} workers)", "+ device normalisation (main process)"]
        env = environment(processes=1, workers=args.workers)
    else:
        worker = per_worker_rates(pipelines, args.repeat, args.seed)
        # Our worker time plus the device's normalisation time per image, as if both ran on this one core.
        rates = [(w, w if p.is_reference else 1.0 / (1.0 / w + 1.0 / norm_rate)) for p, w in zip(pipelines, worker)]
        header = ["images/s/worker", "+ device normalisation"]
        env = environment(processes=1, workers=0) + " (items read directly in the measuring process)"

    rows = table_rows(pipelines, rates)
    rows.append([OURS, f"device normalisation only: normalize_on_device, uint8 batch of {args.batch_size} "
                       f"into a reused buffer (cpu, 1 thread)", f"{norm_rate:.0f}", "-", "-", "-"])
    print(markdown_table(["pipeline", "transform", *header, "ratio vs reference (worker only)",
                          "ratio vs reference (worker + device normalisation)"], rows))
    print(env)


if __name__ == "__main__":
    main()
