"""`--decode device` throughput: batched JPEG decode + letterbox in the training process, against the loader path.

    python benchmarks/gpu_decode.py                         # 1000 JPEGs of 640 px, network input 224, CUDA if present
    python benchmarks/gpu_decode.py --device cpu --aug      # on this CPU, with --aug basic on both paths

Three rows over the same files in the same order (all in the page cache after a warm-up pass), each the best of
--repeat passes, passes interleaved:

- `--decode loader`, per worker: `ImageClassificationDataset` items read in a loop in one process, one OpenCV and
  one torch thread: what one loader worker delivers (as `benchmarks/data_pipeline.py` measures it).
- `--decode device`, per worker: what a worker still does per item (read the bytes, check the JPEG header, draw the
  augmentation matrix), one process, one thread.
- `--decode device`, training process: `EncodedBatch.decode` on pre-collated batches of -b on the device (CUDA is
  synchronised before each clock stops; on CPU with --threads torch threads).

Ratios are against the loader path's images/s per worker. Then the value difference over every image: the device
path's uint8 batch against the loader path's, in uint8 levels.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import DEFAULT_ROOT, DEFAULT_SOURCE, environment, image_folder, markdown_table  # noqa: E402
from dataloader.datasets import ImageClassificationDataset, discover_split  # noqa: E402
from dataloader.gpu_decode import EncodedBatch, EncodedImageDataset  # noqa: E402
from utils.hardware import describe_hardware  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def item_rate(dataset, n: int) -> float:
    start = time.perf_counter()
    for index in range(n):
        dataset[(index, 0)]
    return n / (time.perf_counter() - start)


def decode_rate(batches: list[EncodedBatch], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        batch.decode(device)
    synchronize(device)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def value_difference(loader: ImageClassificationDataset, batches: list[EncodedBatch], device: torch.device) -> str:
    """Mean, max and share of differing uint8 values, device path against loader path, over all images."""
    total, differing, above_one, worst, abs_sum = 0, 0, 0, 0, 0
    index = 0
    for batch in batches:
        got = batch.decode(device).cpu().int()
        ref = torch.stack([loader[(i, 0)][0] for i in range(index, index + len(batch))]).int()
        index += len(batch)
        diff = (got - ref).abs()
        total += diff.numel()
        abs_sum += int(diff.sum())
        differing += int((diff > 0).sum())
        above_one += int((diff > 1).sum())
        worst = max(worst, int(diff.max()))
    return (f"value difference, --decode device vs --decode loader over {index} images: mean absolute difference "
            f"{abs_sum / total:.4f} uint8 levels, max {worst}, values differing {100 * differing / total:.2f}%, "
            f"by more than 1 level {100 * above_one / total:.3f}%")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="cache folder for the generated images")
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="ImageFolder tree the images come from")
    parser.add_argument("--images", type=int, default=1000, help="images to generate (90%% train are read)")
    parser.add_argument("--source_size", type=int, default=640, help="side of the generated (square) JPEGs")
    parser.add_argument("--size", type=int, default=224, help="network input side")
    parser.add_argument("--aug", action="store_true", help="--aug basic (flip + affine) on both paths")
    parser.add_argument("--repeat", type=int, default=3, help="passes per row; the best counts")
    parser.add_argument("--batch_size", "-b", type=int, default=64, help="images per decoded batch")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if present")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the decode step on CPU")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    cv2.setNumThreads(1)
    torch.set_num_threads(1)  # the worker rows measure one core
    folder = image_folder(root=args.root, source=args.source, images=args.images, source_size=args.source_size,
                          fmt="jpeg")
    samples, _ = discover_split(str(folder), "train")
    loader = ImageClassificationDataset([(path, 0) for path, _ in samples], ["all"], image_size=(args.size, args.size),
                                        aug="basic" if args.aug else None, seed=args.seed)
    encoded = EncodedImageDataset(loader)
    n = len(loader)
    batches = [encoded.collate_fn([encoded[(i, 0)] for i in range(start, min(n, start + args.batch_size))])[0]
               for start in range(0, n, args.batch_size)]
    print(f"data: {n} JPEGs of {args.source_size}x{args.source_size} px in {folder / 'train'}; network input "
          f"{args.size}x{args.size}; aug {'basic' if args.aug else 'none'}; best of {args.repeat} passes")

    item_rate(loader, n), item_rate(encoded, n)  # warm-up: page cache, nvjpeg and allocator start-up
    decode_rate(batches, device)
    best = [0.0, 0.0, 0.0]
    for _ in range(args.repeat):
        best[0] = max(best[0], item_rate(loader, n))
        best[1] = max(best[1], item_rate(encoded, n))
        torch.set_num_threads(args.threads)
        best[2] = max(best[2], decode_rate(batches, device))
        torch.set_num_threads(1)

    aug = " + flip + affine" if args.aug else ""
    rows = [
        ["--decode loader", f"worker: OpenCV decode + letterbox {args.size}{aug}", "1 worker", best[0]],
        ["--decode device", f"worker: read bytes, check the JPEG header{' + affine matrix' if args.aug else ''}",
         "1 worker", best[1]],
        ["--decode device", f"training process: batched decode_jpeg + letterbox{aug} on {device.type}, "
                            f"batches of {args.batch_size}",
         f"{device.type}, {args.threads} torch threads" if device.type == "cpu" else device.type, best[2]],
    ]
    print(markdown_table(["path", "what is measured", "on", "images/s", "ratio vs loader per worker"],
                         [[*row[:3], f"{row[3]:.0f}", f"{row[3] / best[0]:.2f}"] for row in rows]))
    torch.set_num_threads(args.threads)
    print(value_difference(loader, batches, device))
    print(environment(processes=1, workers=0, torch_threads=1) + f" (decode step: {args.threads} torch threads on "
          f"{device.type}); decode device: {describe_hardware(device)}")


if __name__ == "__main__":
    main()
