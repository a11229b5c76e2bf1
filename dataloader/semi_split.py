"""A labelled subset and an unlabelled folder of a prepared data set, as symbolic links (for semi-supervised tables).

    python -m dataloader.semi_split data/fashion-mnist --out data/fmnist_semi --unlabelled_out data/fmnist_unlabelled \\
        --labelled 100 --unlabelled 200 --val 200

OUT/train/<class>/ gets ``--labelled`` images per class of SOURCE/train, UNLABELLED_OUT/ ``--unlabelled`` other
train images per class in one flat folder (named CLASS_FILE, so the accuracy of pseudo-labels can be checked from
their names; training never reads them), OUT/val/<class>/ ``--val`` images per class of SOURCE/val, and OUT/test/
links SOURCE/test's class folders. The draw is seeded (``--seed``); existing outputs are refused.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from dataloader.datasets import is_image_file


def images_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))


def link_all(files: list[Path], folder: Path, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f"{prefix}{f.name}").symlink_to(f.resolve())


def semi_split(source: Path, out: Path, unlabelled_out: Path, *, labelled: int, unlabelled: int, val: int,
               seed: int) -> None:
    """Write the links (see the module docstring)."""
    for target in (out, unlabelled_out):
        if target.exists():
            raise SystemExit(f"{target} exists; remove it first (the split is drawn once)")
    rng = random.Random(seed)
    for class_dir in sorted(p for p in (source / "train").iterdir() if p.is_dir()):
        name = class_dir.name
        train = images_of(class_dir)
        rng.shuffle(train)
        if len(train) < labelled + unlabelled:
            raise SystemExit(f"{class_dir} has {len(train)} images, fewer than {labelled} + {unlabelled}")
        link_all(train[:labelled], out / "train" / name)
        link_all(train[labelled:labelled + unlabelled], unlabelled_out, prefix=f"{name}_")
        vals = images_of(source / "val" / name)
        rng.shuffle(vals)
        link_all(vals[:val], out / "val" / name)
        (out / "test").mkdir(parents=True, exist_ok=True)
        (out / "test" / name).symlink_to((source / "test" / name).resolve())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a prepared data root with train/, val/, test/ class folders")
    parser.add_argument("--out", type=Path, required=True, help="labelled data root to write")
    parser.add_argument("--unlabelled_out", type=Path, required=True, help="flat folder of unlabelled images")
    parser.add_argument("--labelled", type=int, default=100, help="labelled train images per class")
    parser.add_argument("--unlabelled", type=int, default=200, help="unlabelled train images per class")
    parser.add_argument("--val", type=int, default=200, help="val images per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    semi_split(args.source, args.out, args.unlabelled_out, labelled=args.labelled, unlabelled=args.unlabelled,
               val=args.val, seed=args.seed)


if __name__ == "__main__":
    main()
