"""Markdown table of finished runs: test top-1 from each run's evaluation report, best val top-1 and wall time.

    python -m utils.results_table checkpoints/strategy_* --split test > docs/results/strategy.md

A run is a checkpoint directory holding ``summary.csv`` and ``eval_<split>/report.json`` (written by
``main.py --evaluation``). Rows keep the order given; the label is the run's path below the runs' common folder
(``distill_kfold/final`` for checkpoints/distill_kfold/final beside checkpoints/distill_teacher), after ``--strip``.
``--parameters`` adds the trainable parameter count (the ``parameters:`` line of the run's train.log) and the mean
seconds per epoch (train + val, summary.csv).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from pathlib import Path


PARAMETERS_LINE = re.compile(r"parameters: ([\d,]+) total, ([\d,]+) trainable")


def run_row(run_dir: Path, split: str, strip: str, root: Path, parameters: bool = False) -> list[str]:
    """One table row; ``run_dir`` and ``root`` are resolved paths, the label is run_dir below root."""
    report_path = run_dir / f"eval_{split}" / "report.json"
    summary_path = run_dir / "summary.csv"
    for path in (report_path, summary_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: train the run and evaluate it with "
                                    f"`main.py --evaluation --resume {run_dir}/best.pth --split {split}` first")
    report = json.loads(report_path.read_text())
    rows = list(csv.DictReader(open(summary_path, newline="")))
    best_val = max(float(r["val_top1"]) for r in rows)
    if rows and "ema_val_top1" in rows[0] and rows[0]["ema_val_top1"]:
        best_val = max(best_val, max(float(r["ema_val_top1"]) for r in rows))
    minutes = sum(float(r["seconds"]) for r in rows) / 60
    label = run_dir.relative_to(root).as_posix().removeprefix(strip)
    row = [label, f"{report['top1']:.2f}", f"{report['top5']:.2f}", f"{report['macro_f1']:.4f}", f"{best_val:.2f}",
           str(len(rows)), f"{minutes:.1f}"]
    if parameters:
        found = PARAMETERS_LINE.findall((run_dir / "train.log").read_text(encoding="utf-8"))
        row += [found[-1][1] if found else "?", f"{minutes * 60 / len(rows):.1f}"]
    return row


def markdown(rows: list[list[str]], split: str, parameters: bool = False) -> str:
    header = ["run", f"{split} top-1 %", f"{split} top-5 %", "macro F1", "best val top-1 %", "epochs",
              "train + val minutes"] + (["trainable parameters", "seconds / epoch"] if parameters else [])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="checkpoint directories of finished runs")
    parser.add_argument("--split", default="test", help="the evaluation split whose report is read")
    parser.add_argument("--strip", default="", help="prefix removed from run names for the labels")
    parser.add_argument("--parameters", action="store_true",
                        help="add the trainable parameter count and the seconds per epoch")
    args = parser.parse_args(argv)
    runs = [run.resolve() for run in args.runs]
    root = runs[0].parent if len(set(runs)) == 1 else Path(os.path.commonpath(runs))
    rows = [run_row(run, args.split, args.strip, root, args.parameters) for run in runs]
    print(markdown(rows, args.split, args.parameters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
