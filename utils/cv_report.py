"""Mean, standard deviation and 95% confidence interval of several runs' scores (K folds or repeated seeds).

    python -m utils.cv_report checkpoints/kf/fold0 checkpoints/kf/fold1 ... [--out checkpoints/kf/cv_report.md]

Each run contributes its best val top-1 (best.pth) and, when it was evaluated, its test top-1
(eval_test/report.json). The interval is mean ± t(0.975, n-1) · std / sqrt(n), with the sample standard deviation
(n - 1), as seed 003 asks for repeated runs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from utils.checkpoint import atomic_write, load_checkpoint


def summarize(values: list[float]) -> dict:
    """n, mean, sample std and the 95% t confidence interval of ``values`` (the interval is None for n < 2)."""
    from scipy.stats import t  # scipy comes with scikit-learn

    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def run_scores(run_dir: str | Path) -> dict:
    """{"run", "val_top1", "test_top1"} of one finished run (test None when it was not evaluated)."""
    run_dir = Path(run_dir)
    best = run_dir / "best.pth"
    if not best.is_file():
        raise FileNotFoundError(f"{best} does not exist: is {run_dir} a finished training run?")
    report = run_dir / "eval_test" / "report.json"
    test = json.loads(report.read_text())["top1"] if report.is_file() else None
    return {"run": str(run_dir), "val_top1": float(load_checkpoint(best).best_top1), "test_top1": test}


def cv_report(rows: list[dict]) -> tuple[dict, str]:
    """The summary (per metric) and a Markdown table of ``rows`` (dicts from run_scores)."""
    summary = {}
    for metric in ("val_top1", "test_top1"):
        values = [r[metric] for r in rows if r[metric] is not None and r[metric] >= 0]
        if values:
            summary[metric] = summarize(values)
    lines = ["| run | best val top-1 % | test top-1 % |", "| --- | --- | --- |"]
    lines += [f"| {r['run']} | {fmt(r['val_top1'])} | {fmt(r['test_top1'])} |" for r in rows]
    for metric, stats in summary.items():
        ci = f"[{stats['ci95'][0]:.2f}, {stats['ci95'][1]:.2f}]" if stats["ci95"] else "n/a (one run)"
        std = f"{stats['std']:.2f}" if stats["std"] is not None else "n/a"
        lines.append(f"\n{metric}: n {stats['n']}, mean {stats['mean']:.2f}, std {std}, 95% CI {ci}")
    return summary, "\n".join(lines) + "\n"


def fmt(value: float | None) -> str:
    return f"{value:.2f}" if value is not None and value >= 0 else "—"


def write_cv_report(rows: list[dict], out: str | Path) -> dict:
    """Write OUT (Markdown) and OUT with .json (rows + summary); returns the summary."""
    summary, markdown = cv_report(rows)
    out = Path(out)
    data = json.dumps({"runs": rows, "summary": summary}, indent=2).encode("utf-8")
    atomic_write(out, lambda handle: handle.write(markdown.encode("utf-8")))
    atomic_write(out.with_suffix(".json"), lambda handle: handle.write(data))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m utils.cv_report")
    parser.add_argument("runs", nargs="+", help="run folders (CHECKPOINT_DIR/NAME) holding best.pth")
    parser.add_argument("--out", default=None, help="write the Markdown here (and .json beside it)")
    args = parser.parse_args(argv)
    try:
        rows = [run_scores(r) for r in args.runs]
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _, markdown = cv_report(rows)
    print(markdown, end="")
    if args.out:
        write_cv_report(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
