"""Time to accuracy: our recipe against timm's ``train.py`` on the same folders and machine, one after the other.

    python benchmarks/time_to_accuracy.py --data data/fashion-mnist --eval_split val      # choosing recipes
    python benchmarks/time_to_accuracy.py --data data/fashion-mnist --eval_split test \\
        --ours z_task_shell/fashion_mnist_fast.yaml --results docs/results/time_to_accuracy/fast   # the table

Both tools train on ``DATA/train`` and evaluate after every epoch on ``DATA/<eval_split>`` (a folder of links named
``val``, which both read as their validation split): val while recipes are chosen, the official test split only for
a published table. Each run is a subprocess started from a quiet machine; its curve is (minutes since the start of
the process, top-1) at the moment its summary.csv gains the epoch's row, so start-up, data caching, validation and
checkpoint writes count for both. Our recipe is a ``--config`` YAML (what ``z_task_shell`` scripts run); timm runs
its ``train.py`` (``--timm_train``, default the copy in benchmarks/peers/) with ``TIMM_RECIPE`` and the speed flags
its README advises for the CPU present (bf16 autocast and channels_last where the CPU has native bf16).

Printed: both curves, the time to each ``--targets`` top-1, top-1 at equal wall time, the ratio
``time to the last target: ours / timm``, and each run's effective training FLOP/s (thop forward FLOPs x 3 x
training images x epochs / wall seconds) against a bf16 and an fp32 matmul measured at the same thread count.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, count_classes, count_images, markdown_table  # noqa: E402
from utils.hardware import cpu_has_native_bf16, describe_hardware  # noqa: E402

TIMM_TRAIN = REPO / "benchmarks" / "peers" / "timm_train.py"
# the peer's recipe, as the issue measured it: resnet18 at 32 px, AdamW 2e-3, wd 0.05, cosine, 1 warmup epoch
TIMM_RECIPE = ("--model", "resnet18", "--img-size", "32", "-b", "128", "--opt", "adamw", "--lr", "2e-3",
               "--weight-decay", "0.05", "--sched", "cosine", "--warmup-epochs", "1", "--epochs", "12",
               "--workers", "2", "--device", "cpu", "--log-interval", "100")
OURS = REPO / "z_task_shell" / "fashion_mnist_fast.yaml"
CPU = torch.device("cpu")


@dataclass
class Curve:
    """One tool's run: per epoch, minutes since the process started and top-1 on the evaluated split."""

    tool: str
    command: list[str]
    minutes: list[float] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    wall_minutes: float = 0.0
    train_flops: float | None = None  # thop forward FLOPs x 3 x images x epochs, over the whole run

    def minutes_to(self, target: float) -> float | None:
        """When the first epoch at or above ``target`` ended; None if none did."""
        return next((m for m, t in zip(self.minutes, self.top1) if t >= target), None)

    def top1_at(self, minutes: float) -> float | None:
        """Top-1 of the last epoch that ended within ``minutes``; None before the first."""
        done = [t for m, t in zip(self.minutes, self.top1) if m <= minutes + 1e-9]
        return done[-1] if done else None


def complete_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV another process appends to, up to its last complete line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return list(csv.DictReader(text[:text.rfind("\n") + 1].splitlines()))


def watch(curve: Curve, summary: Path, column: str, log: Path, timeout_s: float) -> Curve:
    """Run ``curve.command``, stamping each epoch when its row appears in ``summary``; its output goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(curve.command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                finished = proc.poll() is not None
                rows = complete_rows(summary)
                elapsed = (time.perf_counter() - started) / 60
                for row in rows[len(curve.top1):]:
                    curve.minutes.append(round(elapsed, 3))
                    curve.top1.append(float(row[column]))
                if finished:
                    break
                if elapsed * 60 > timeout_s:
                    raise TimeoutError(f"{curve.tool} ran past --timeout {timeout_s:.0f} s")
                time.sleep(0.25)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    curve.wall_minutes = round((time.perf_counter() - started) / 60, 3)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{curve.tool} failed ({proc.returncode}): {' '.join(curve.command)}\n{tail}")
    return curve


def race_folder(data: Path, eval_split: str, root: Path) -> Path:
    """``root`` with links train -> DATA/train and val -> DATA/<eval_split>: the one layout both tools read."""
    for split in ("train", eval_split):
        if not (data / split).is_dir():
            raise SystemExit(f"error: --data {data} has no {split}/ folder; prepare one with "
                             "`python -m dataloader.prepare fashion-mnist --out DIR`")
    root.mkdir(parents=True, exist_ok=True)
    (root / "train").symlink_to((data / "train").resolve(), target_is_directory=True)
    (root / "val").symlink_to((data / eval_split).resolve(), target_is_directory=True)
    return root


def timm_speed_flags() -> list[str]:
    """What timm's docs advise for training speed on this CPU: bf16 autocast + channels_last with native bf16."""
    return ["--amp", "--amp-dtype", "bfloat16", "--channels-last"] if cpu_has_native_bf16() else []


def run_ours(recipe: Path, race: Path, work: Path, timeout_s: float) -> tuple[Curve, Path]:
    run = work / "ours"
    command = [sys.executable, "main.py", "--config", str(recipe), "--data", str(race), "--name", "ours",
               "--checkpoint_dir", str(run), "--log_dir", str(work / "tb")]
    curve = watch(Curve("ours", command), run / "ours" / "summary.csv", "val_top1", work / "ours.log", timeout_s)
    return curve, run / "ours"


def run_timm(train_py: Path, race: Path, classes: int, extra: list[str], work: Path,
             timeout_s: float) -> tuple[Curve, Path]:
    command = [sys.executable, str(train_py), "--data-dir", str(race), "--train-split", "train", "--val-split", "val",
               "--num-classes", str(classes), *TIMM_RECIPE, *timm_speed_flags(), *extra,
               "--output", str(work / "timm"), "--experiment", "timm"]
    curve = watch(Curve("timm", command), work / "timm" / "timm" / "summary.csv", "eval_top1", work / "timm.log",
                  timeout_s)
    return curve, work / "timm" / "timm"


def forward_flops(tool: str, run_dir: Path, classes: int) -> float:
    """thop forward FLOPs (2 x MACs) of one image for the run's model at its input size."""
    from models.complexity import count_macs

    if tool == "ours":
        import yaml

        from models import build_model
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        model, size = build_model(cfg["model"], num_classes=classes), tuple(cfg["image_size"])
    else:
        import timm
        import yaml
        args = yaml.safe_load((run_dir / "args.yaml").read_text())
        model = timm.create_model(args["model"], num_classes=classes)
        size = (args["img_size"], args["img_size"])
    return 2 * count_macs(model, size)


def matmul_peak(dtype: torch.dtype, seconds: float = 2.0, n: int = 2048) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` at the current thread count (best of repeated calls)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best


def plot(curves: list[Curve], targets: list[float], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for curve in curves:
        axes.plot(curve.minutes, curve.top1, marker="o", markersize=3, label=curve.tool)
    for target in targets:
        axes.axhline(target, color="grey", linewidth=0.6, linestyle="--")
    low = min([min(c.top1) for c in curves if c.top1] + [min(targets)])
    axes.set_ylim(max(low - 1, 0), 100)
    axes.set(xlabel="minutes since the process started", ylabel="top-1 %", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summarise(curves: list[Curve], targets: list[float], budgets: list[float], peaks: dict[str, float],
              images: int) -> tuple[list[str], dict]:
    """The printed lines and the report's numbers for one tool or the pair (then with ours / timm)."""
    lines, numbers = [], {"targets": {}, "budgets": {}}
    for curve in curves:
        rows = [[i + 1, f"{m:.2f}", f"{t:.2f}"] for i, (m, t) in enumerate(zip(curve.minutes, curve.top1))]
        lines += [f"{curve.tool}: {' '.join(curve.command)}", "", markdown_table(["epoch", "minutes", "top-1 %"], rows),
                  ""]
    pair = len(curves) == 2
    rows = []
    for target in targets:
        times = [c.minutes_to(target) for c in curves]
        entry = {f"{c.tool}_minutes": t for c, t in zip(curves, times)}
        row = [f"time to {target:g}% (min)", *map(fmt, times)]
        if pair:
            a, b = times
            entry["ratio"] = a / b if a is not None and b is not None else None
            row.append(fmt(entry["ratio"], 2) if entry["ratio"] is not None else
                       f"< {a / curves[1].wall_minutes:.2f} (timm never reached it)" if a is not None else "-")
        numbers["targets"][str(target)] = entry
        rows.append(row)
    for budget in budgets:
        values = [c.top1_at(budget) for c in curves]
        numbers["budgets"][str(budget)] = {f"{c.tool}_top1": v for c, v in zip(curves, values)}
        row = [f"top-1 at {budget:g} min (%)", *(fmt(v, 2) for v in values)]
        if pair:
            a, b = values
            row.append(f"{a - b:+.2f} points" if a is not None and b is not None else "-")
        rows.append(row)
    end = [""] if pair else []
    rows.append(["final top-1 (%)", *(fmt(c.top1[-1], 2) for c in curves), *end])
    rows.append(["wall time (min)", *(fmt(c.wall_minutes) for c in curves), *end])
    if all(c.train_flops is not None for c in curves):
        rates = [c.train_flops * images * len(c.top1) / (c.wall_minutes * 60) for c in curves]
        numbers.update({f"{c.tool}_effective_flops": r for c, r in zip(curves, rates)})
        rows.append(["effective training GFLOP/s", *(f"{r / 1e9:.1f}" for r in rates), *end])
        rows.append(["as % of the bf16 / fp32 matmul", *(f"{100 * r / peaks['bf16']:.1f}% / "
                                                          f"{100 * r / peaks['fp32']:.1f}%" for r in rates), *end])
    if pair:
        numbers["ratio"] = numbers["targets"][str(targets[-1])]["ratio"]
    header = ["", *(c.tool for c in curves), *(["ours / timm"] if pair else [])]
    lines += [markdown_table(header, rows), "",
              f"matmul peak at {torch.get_num_threads()} threads: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, "
              f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s; {describe_hardware(CPU)}"]
    return lines, numbers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a prepared data root with train/ and the --eval_split folder")
    p.add_argument("--eval_split", choices=["val", "test"], default="val",
                   help="what both evaluate after every epoch: val to choose recipes, test for a published table")
    p.add_argument("--ours", default=str(OURS), metavar="RECIPE.yaml", help="our recipe: a main.py --config file")
    p.add_argument("--timm_train", default=str(TIMM_TRAIN), metavar="PATH/train.py",
                   help="timm's train.py (a copy ships in benchmarks/peers/; or a pytorch-image-models checkout)")
    p.add_argument("--timm_args", default="", metavar="'FLAGS'",
                   help="extra timm flags after TIMM_RECIPE (later flags win), e.g. '--epochs 1'")
    p.add_argument("--targets", type=float, nargs="+", default=[90.0, 93.0], help="top-1 targets in %%")
    p.add_argument("--budgets", type=float, nargs="+", default=[5.0, 15.0], help="equal wall times in minutes")
    p.add_argument("--only", choices=["ours", "timm"], default=None, help="run one tool (a recipe search on val)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="keep report.json, the summary table, the plot and each run's logs and summaries here")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per run before it is stopped")
    args = p.parse_args(argv)
    for flag, path in (("--ours", args.ours), ("--timm_train", args.timm_train)):
        if not Path(path).is_file():
            p.error(f"{flag} {path}: no such file")
    data = Path(args.data)
    with tempfile.TemporaryDirectory(prefix="tta_") as tmp:
        work = Path(tmp)
        race = race_folder(data, args.eval_split, work / "race")
        images, classes = count_images(race / "train"), count_classes(race / "train")
        print(f"race: {images} train images, {classes} classes, evaluated on {data / args.eval_split}; "
              f"{describe_hardware(CPU)}", flush=True)
        curves, dirs = [], []
        if args.only != "timm":
            curve, run_dir = run_ours(Path(args.ours).resolve(), race, work, args.timeout)
            curves.append(curve)
            dirs.append(run_dir)
            print(f"ours: {len(curve.top1)} epochs, final top-1 {curve.top1[-1]:.2f}% in {curve.wall_minutes:.1f} min",
                  flush=True)
        if args.only != "ours":
            curve, run_dir = run_timm(Path(args.timm_train).resolve(), race, classes, args.timm_args.split(), work,
                                      args.timeout)
            curves.append(curve)
            dirs.append(run_dir)
            print(f"timm: {len(curve.top1)} epochs, final top-1 {curve.top1[-1]:.2f}% in {curve.wall_minutes:.1f} min",
                  flush=True)
        for curve, run_dir in zip(curves, dirs):
            curve.train_flops = 3 * forward_flops(curve.tool, run_dir, classes)
        peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
        lines, numbers = summarise(curves, args.targets, args.budgets, peaks, images)
        text = "\n".join(lines)
        print("\n" + text)
        if args.results:
            keep(Path(args.results), curves, dirs, work, text, numbers, args, peaks, images)
    return 0


def keep(out: Path, curves: list[Curve], dirs: list[Path], work: Path, text: str, numbers: dict, args,
         peaks: dict, images: int) -> None:
    """report.json, summary.md, the plot, and each run's raw files under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for curve, run_dir in zip(curves, dirs):
        folder = out / curve.tool
        folder.mkdir(exist_ok=True)
        shutil.copy2(work / f"{curve.tool}.log", folder / "stdout.log")
        for name in ("summary.csv", "train.log", "config.yaml", "args.yaml"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, folder / name)
    report = {"data": args.data, "eval_split": args.eval_split, "train_images": images, "ours_recipe": args.ours,
              "curves": [asdict(c) for c in curves], "matmul_peak_flops": peaks,
              "hardware": describe_hardware(CPU), "threads": torch.get_num_threads(), **numbers}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text(text + "\n")
    plot(curves, args.targets, out / "curves.png", f"Fashion-MNIST, top-1 on {args.eval_split} after each epoch")


if __name__ == "__main__":
    sys.exit(main())
