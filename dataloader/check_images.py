"""List (and optionally quarantine) images the data loader cannot read, before they stop a training run.

    python dataloader/check_images.py data/                      # report; exit code 1 if any bad file
    python dataloader/check_images.py data/ --move data_bad/     # also move bad files, keeping relative paths

Checks every file with an image extension (the files the loader reads) with the loader's own `decode_image`:
zero-byte, truncated (PNG without IEND, JPEG without end marker), not an image, or undecodable.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataloader.datasets import is_image_file  # noqa: E402
from dataloader.preprocess import ImageDecodeError, decode_image  # noqa: E402


def list_image_files(root: str, skip: str | None = None) -> tuple[list[str], int]:
    """Relative paths of non-hidden image files under root (sorted), and how many other files were skipped."""
    images, others = [], 0
    skip = os.path.abspath(skip) if skip else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and os.path.abspath(os.path.join(dirpath, d)) != skip)
        for name in sorted(filenames):
            if is_image_file(name):
                images.append(os.path.relpath(os.path.join(dirpath, name), root))
            else:
                others += 1
    return images, others


def check_image(path: str) -> str | None:
    """Why the loader cannot use this file, or None when it decodes to a non-empty RGB image."""
    try:
        decode_image(path)
    except ImageDecodeError as e:
        return e.reason
    except OSError as e:
        return f"unreadable ({type(e).__name__}: {e.strerror or e})"
    return None


def find_bad_images(root: str, *, workers: int = 0, skip: str | None = None) -> tuple[list[tuple[str, str]], int, int]:
    """(relative path, reason) for every bad image under root, the number of images checked, and of other files.

    Files without an image extension (CSV lists, READMEs, hidden files) are not read by the loader; they are
    counted, not checked.
    """
    files, others = list_image_files(root, skip)
    # OpenCV decodes without the GIL, so threads give real parallelism here.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        reasons = list(pool.map(check_image, (os.path.join(root, f) for f in files), chunksize=64))
    return [(f, r) for f, r in zip(files, reasons) if r is not None], len(files), others


def quarantine(root: str, relpaths: list[str], dest: str) -> None:
    """Move files from root to dest keeping their relative paths; never overwrites."""
    for rel in relpaths:
        target = os.path.join(dest, rel)
        if os.path.exists(target):
            print(f"  not moved, {target} already exists: {rel}")
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(os.path.join(root, rel), target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="data root (or any folder) to scan recursively")
    parser.add_argument("--move", metavar="DIR", default=None, help="move bad files here, keeping relative paths")
    parser.add_argument("--workers", type=int, default=0, help="decode threads (default: all cores)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        parser.error(f"{args.root} is not a directory")

    bad, checked, others = find_bad_images(args.root, workers=args.workers, skip=args.move)
    for rel, reason in bad:
        print(f"BAD {rel}: {reason}")
    print(f"checked {checked} images under {args.root}: {len(bad)} bad "
          f"({others} files without an image extension skipped)")
    if bad and args.move:
        quarantine(args.root, [rel for rel, _ in bad], args.move)
        print(f"moved bad files to {args.move}")
    elif bad:
        print("fix or remove them, or rerun with --move DIR to quarantine them")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
