"""End-to-end training images/s: a loop written the standard way vs our train application's loop.

    python benchmarks/train_throughput.py --model resnet18 --size 112 --batch 64 -j 2

Reference: torchvision ImageFolder + PIL (RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize), fp32,
default memory format, ``loss.item()`` every step, as in most tutorials and torchvision's reference script.
Ours: ``engine.training.train_one_epoch`` fed by our loader (OpenCV decode, letterbox, flip+affine, uint8
to the device), with the defaults the train application would choose on this hardware (or the flags given).
Same model, optimizer, images, batch size and workers; each loop runs one untimed warm-up epoch (worker
start-up, allocator, oneDNN/cuDNN kernel choice, torch.compile) and then timed epochs.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, image_folder, markdown_table  # noqa: E402
from config import Config  # noqa: E402
from engine.job import open_job  # noqa: E402
from engine.training import build_training_run, train_one_epoch  # noqa: E402
from models import build_model  # noqa: E402
from utils.hardware import describe_hardware  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference_images_per_second(folder: Path, args, device: torch.device) -> float:
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = datasets.ImageFolder(str(folder / "train"), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=args.workers > 0)
    model = build_model(args.model, num_classes=len(dataset.classes)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch() -> int:
        model.train()
        seen = 0
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            loss = F.cross_entropy(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            _ = loss.item()  # the usual per-step logging sync
            seen += targets.shape[0]
        return seen

    return _timed(epoch, args.epochs, device)


def our_images_per_second(folder: Path, args, device: torch.device) -> tuple[float, str]:
    """Our training run as the train job builds it (engine.training.build_training_run), stepped epoch by epoch."""
    cfg = Config(data=str(folder), image_size=[args.size, args.size], batch_size=args.batch, workers=args.workers,
                 model=args.model, aug="basic", amp=args.amp, channels_last=args.channels_last, lr=1e-3,
                 epochs=args.epochs + 1, warmup=0, cache_images=args.cache_images, compile=args.compile,
                 device=device.type, val_ratio=0.0)
    with open_job(cfg, set(), checkpoint="none") as job:
        run = build_training_run(job)
        counter = {"epoch": 0}

        def epoch() -> int:
            run.train_loader.sampler.set_epoch(counter["epoch"])
            train_one_epoch(run.ddp_model, run.train_loader, run.step_loss, run.optimizer, run.scheduler, run.scaler,
                            run.cfg, run.preprocessing, job.info, counter["epoch"])
            counter["epoch"] += 1
            return len(run.train_loader) * args.batch

        ips = _timed(epoch, args.epochs, device)
    settings = f"amp {cfg.amp}, channels_last {cfg.channels_last}, compile {args.compile}, cache {cfg.cache_images}"
    return ips, settings


def _timed(run_epoch, epochs: int, device: torch.device) -> float:
    run_epoch()  # warm-up epoch, not timed
    if device.type == "cuda":
        torch.cuda.synchronize()
    started, seen = time.perf_counter(), 0
    for _ in range(epochs):
        seen += run_epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=112, help="network input (square)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per loop (after one warm-up epoch)")
    p.add_argument("--images", type=int, default=1000, help="images in the generated folder (90%% train)")
    p.add_argument("--source_size", type=int, default=224, help="size of the JPEG files on disk")
    p.add_argument("--root", default="/tmp/bench_images")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="ours; unset: auto")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None, help="ours; unset: auto")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (compile time not counted)")
    p.add_argument("--cache_images", choices=["ram"], default=None, help="ours: decoded-image RAM cache")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    torch.manual_seed(0)
    folder = image_folder(root=args.root, images=args.images, source_size=args.source_size)
    reference = reference_images_per_second(folder, args, device)
    ours, settings = our_images_per_second(folder, args, device)
    print(f"\nTraining throughput, {args.model} at {args.size}x{args.size}, batch {args.batch}, -j {args.workers}, "
          f"{args.images} JPEGs of {args.source_size}px, {describe_hardware(device)}")
    print(environment(processes=1, workers=args.workers))
    print(markdown_table(["loop", "settings", "images/s", "ratio"], [
        ["reference (ImageFolder + PIL, fp32, contiguous)", "torchvision transforms", f"{reference:.1f}", "1.00"],
        ["ours (train_one_epoch, our loader)", settings, f"{ours:.1f}", f"{ours / reference:.2f}"],
    ]))


if __name__ == "__main__":
    main()
