"""How much of a known corruption the dataset audit finds: make a corrupted copy of a data set, then score an audit.

    python -m benchmarks.audit_recall corrupt --data data/fashion-mnist --out /tmp/fmnist_corrupt --flip 0.05 \\
        --copies 50 --seed 0
    python main.py --audit --data /tmp/fmnist_corrupt ...
    python -m benchmarks.audit_recall score --truth /tmp/fmnist_corrupt/corruption.csv --audit RUN/audit

``corrupt`` hard-links (or copies, across file systems) every image of a folder-layout data root into OUT, moves a
share ``--flip`` of the train images to a wrong class folder (a label error) and copies ``--copies`` other train
images into test under their own class (leakage), and lists what it did in OUT/corruption.csv (kind, path, label,
original_label, source; paths relative to OUT). ``score`` prints the recall of the flips in the first k of
label_issues.csv (k = the number of flips times ``--multiple``) and of the copies among the exact duplicates: a copy
is found when it and its source share a group of exact_duplicates.csv. The source data is only read.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from dataloader.image_audit import inventory
from engine.audit_report import read_csv_rows


def place(source: str, target: Path) -> None:
    """A hard link of ``source`` at ``target`` (a real second name, never a changed original), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def corrupt(data: str, out: str, flip: float, copies: int, seed: int) -> dict:
    """Write the corrupted copy and OUT/corruption.csv; returns the counts."""
    root, dest = Path(data).resolve(), Path(out)
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"error: --out {out} exists and is not empty; choose a new folder")
    rows = inventory(str(root))
    train = [i for i, (split, _, _) in enumerate(rows) if split == "train"]
    classes = sorted({rows[i][2] for i in train})
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(train)
    flipped = {int(i): classes[(classes.index(rows[i][2]) + int(rng.integers(1, len(classes)))) % len(classes)]
               for i in chosen[:round(flip * len(train))]}
    copied = [int(i) for i in chosen[len(flipped):len(flipped) + copies]]
    truth = []
    for i, (split, path, label) in enumerate(rows):
        rel = Path(path).relative_to(root)
        if i in flipped:
            rel = Path(split, flipped[i], *rel.parts[2:])
            truth.append(("flip", rel.as_posix(), flipped[i], label, ""))
        place(path, dest / rel)
    for i in copied:
        _, path, label = rows[i]
        rel = Path("test", label, "copy_" + Path(path).name)
        place(path, dest / rel)
        truth.append(("copy", rel.as_posix(), label, label, Path(path).relative_to(root).as_posix()))
    with open(dest / "corruption.csv", "w", encoding="utf-8") as handle:
        handle.write("kind,path,label,original_label,source\n")
        handle.writelines(",".join(row) + "\n" for row in truth)
    return {"images": len(rows), "flips": len(flipped), "copies": len(copied)}


def score(truth_csv: str, audit: str, multiple: int = 1) -> dict:
    """Recall of the flips in the top k label issues and of the copies among the exact duplicate groups."""
    truth = read_csv_rows(Path(truth_csv))
    flips = {row["path"] for row in truth if row["kind"] == "flip"}
    copies = [(row["path"], row["source"]) for row in truth if row["kind"] == "copy"]
    issues = read_csv_rows(Path(audit) / "label_issues.csv")
    top = [row["path"] for row in issues[:multiple * len(flips)]]
    group_of = {row["path"]: row["group"] for row in read_csv_rows(Path(audit) / "exact_duplicates.csv")}
    found = sum(group_of.get(copy) is not None and group_of.get(copy) == group_of.get(source)
                for copy, source in copies)
    return {"flips": len(flips), "k": len(top), "flips_in_top_k": len(flips & set(top)),
            "flip_recall": len(flips & set(top)) / max(len(flips), 1),
            "queued": len(issues), "flips_queued": len(flips & {row["path"] for row in issues}),
            "flagged": sum(row["flagged"] == "1" for row in issues),
            "flips_flagged": len(flips & {row["path"] for row in issues if row["flagged"] == "1"}),
            "copies": len(copies), "copies_found": found, "copy_recall": found / max(len(copies), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("corrupt", help="write a corrupted copy of a folder-layout data root")
    make.add_argument("--data", required=True)
    make.add_argument("--out", required=True)
    make.add_argument("--flip", type=float, default=0.05, help="share of train images moved to a wrong class")
    make.add_argument("--copies", type=int, default=50, help="train images copied into test")
    make.add_argument("--seed", type=int, default=0)
    rate = commands.add_parser("score", help="recall of an audit of a corrupted copy")
    rate.add_argument("--truth", required=True, help="OUT/corruption.csv of `corrupt`")
    rate.add_argument("--audit", required=True, help="the audit folder (label_issues.csv, exact_duplicates.csv)")
    rate.add_argument("--multiple", type=int, default=1, help="k = this many times the number of flips")
    args = parser.parse_args(argv)
    if args.command == "corrupt":
        result = corrupt(args.data, args.out, args.flip, args.copies, args.seed)
    else:
        result = score(args.truth, args.audit, args.multiple)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
