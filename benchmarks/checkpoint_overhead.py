"""Cost of periodic checkpoints: the write time of a full training checkpoint, and what --save_every_minutes costs
the Fashion-MNIST recipe.

    python benchmarks/checkpoint_overhead.py                       # resnet18, resnet50 and the recipe; ~10 minutes
    python benchmarks/checkpoint_overhead.py --dir /shared/ckpt --out docs/results/checkpoint_overhead

1. Write time. Each model's run is built as the train job builds it (``engine.training.build_training_run``), trained
   for one short pass so the optimizer and EMA hold their state, then ``save_mid_epoch`` writes its last.pth
   ``--writes`` times into ``--dir``: ``training_state`` (model, optimizer, schedule, scaler, EMA, loss state, every
   rank's RNG) through ``save_checkpoint`` (atomic_write: temporary file, fsync, rename, fsync of the folder). ResNets:
   torchvision, 10 classes, SGD with momentum and an EMA copy, on a few Fashion-MNIST images. The recipe's row is its
   own run (small_cnn at 28 px, Adam, no EMA), timed after part 2 on the same objects.
2. Overhead. One process builds the recipe's run (the flags of z_task_shell/fashion_mnist.sh) on ``--data`` and trains
   whole epochs through ``engine.training.run_epoch`` (train pass, validation, end-of-epoch last.pth/best.pth), after
   one warm-up epoch alternating: without periodic saves, and with ``--save_every_steps N`` (many saves). Cost per
   save = (epoch time with − without) / saves; it is also timed inside ``save_mid_epoch``. At one save per
   ``--minutes`` the overhead is cost per save / (minutes × 60 s), plus the poll that every optimizer step pays
   (``StepControl.poll``, no signal, a world of one) over the step time.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine.training  # noqa: E402
from benchmarks.common import (DEFAULT_ROOT, DEFAULT_SOURCE, REPO, environment, image_folder,  # noqa: E402
                               markdown_table)
from config import Config, parse_config  # noqa: E402
from engine.job import open_job  # noqa: E402
from engine.preemption import StepControl  # noqa: E402
from engine.training import build_training_run, run_epoch, train_one_epoch, training_state  # noqa: E402
from utils.checkpoint import capture_rng_state, serialise  # noqa: E402
from utils.hardware import describe_hardware  # noqa: E402

# z_task_shell/fashion_mnist.sh's training flags (tests/test_benchmarks.py checks they still match the script)
RECIPE = ("--model small_cnn --image_size 28 28 --aug --cache_images ram --optimizer adam --lr 0.003 "
          "--weight_decay 0.0001 --lr_schedule cosine --warmup 1 --epochs 12 -b 128 -j 1")
DEFAULT_DATA = REPO / "data" / "fashion-mnist-10k"
MB = 1e6


# --- measuring -------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def recording(module, name: str):
    """Replace ``module.name`` by a wrapper that appends each call's duration (s) to the yielded list."""
    original = getattr(module, name)
    durations: list[float] = []

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - started)

    setattr(module, name, timed)
    try:
        yield durations
    finally:
        setattr(module, name, original)


class CpuShare:
    """How many cores other processes used while a phase ran: the machine's busy CPU time from /proc/stat less this
    process's and its children's (loader workers). None where /proc is missing."""

    def __init__(self) -> None:
        self.start = self._snapshot()
        self.started = time.monotonic()

    @staticmethod
    def _snapshot() -> tuple[float, float] | None:
        try:
            tick = os.sysconf("SC_CLK_TCK")
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            machine = (sum(cpu[:8]) - cpu[3] - cpu[4]) / tick  # all but idle and iowait
            stats = {}
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    with contextlib.suppress(OSError, IndexError):
                        fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                        stats[int(entry.name)] = (int(fields[1]), [int(v) for v in fields[11:15]])
        except OSError:
            return None
        own, pids = 0, [os.getpid()]
        while pids:  # this process and its descendants
            pid = pids.pop()
            utime, stime, cutime, cstime = stats.get(pid, (0, [0, 0, 0, 0]))[1]
            own += utime + stime + (cutime + cstime if pid == os.getpid() else 0)  # + reaped children
            pids += [child for child, (parent, _) in stats.items() if parent == pid]
        return machine, own / tick

    def others(self) -> float | None:
        """Average cores busy with other processes since construction."""
        end = self._snapshot()
        if self.start is None or end is None:
            return None
        elapsed = time.monotonic() - self.started
        return max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / elapsed)


class InterleavedSaves(StepControl):
    """A save at every step boundary in alternate blocks of ``block`` steps, none in the blocks between, and the
    time from each poll to the next: that interval holds the save decided at the poll (when due) and the next
    step. Blocks a few seconds long see the same neighbours, so their difference is the cost of the saves even when
    the load drifts from epoch to epoch. The poll itself still runs as in a real run."""

    def __init__(self, block: int) -> None:
        super().__init__(save_every_minutes=None, save_every_steps=None, is_main=True)
        self.block = block
        self.intervals: dict[bool, list[float]] = {True: [], False: []}
        self._last: tuple[float, bool] | None = None

    def poll(self) -> tuple[bool, bool]:
        now = time.perf_counter()
        if self._last is not None:
            self.intervals[self._last[1]].append(now - self._last[0])
        save, stop = super().poll()
        due = (self.steps - 1) // self.block % 2 == 1
        self._last = (time.perf_counter(), due)
        return save or due, stop


def time_writes(run, writes: int) -> dict:
    """``writes`` mid-epoch saves of ``run`` as a periodic save writes them (fsync included), and the same state
    serialised to memory only; medians in seconds, the file size in bytes."""
    partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "lr": run.optimizer.param_groups[0]["lr"]}
    total, in_memory = [], []
    for _ in range(writes):
        started = time.perf_counter()
        engine.training.save_mid_epoch(run, 1, 1, partial)
        total.append(time.perf_counter() - started)
        started = time.perf_counter()
        serialise(training_state(run, 0, [capture_rng_state()]), io.BytesIO())
        in_memory.append(time.perf_counter() - started)
    return {"write_s": statistics.median(total), "write_s_all": total, "serialise_s": statistics.median(in_memory),
            "bytes": (run.out_dir / "last.pth").stat().st_size}


def model_write_time(name: str, folder: Path, workdir: Path, writes: int) -> dict:
    """A ResNet-style run (SGD with momentum, EMA) on a few images, its state filled by one pass, then timed."""
    cfg = Config(data=str(folder), model=name, image_size=[32, 32], batch_size=8, workers=0, optimizer="sgd",
                 momentum=0.9, lr=0.01, ema=True, epochs=1, warmup=0, amp=False, channels_last=False,
                 checkpoint_dir=str(workdir), log_dir=str(workdir / "logs"), name=name)
    with open_job(cfg, set(), checkpoint="none") as job:
        run = build_training_run(job)
        train_one_epoch(run.ddp_model, run.train_loader, run.step_loss, run.optimizer, run.scheduler, run.scaler,
                        run.cfg, run.preprocessing, job.info, 0, ema=run.ema)
        params = sum(p.numel() for p in run.model.parameters())
        return {"model": name, "contents": "weights + SGD momentum + EMA + RNG", "parameters": params,
                **time_writes(run, writes)}


def recipe_overhead(args, workdir: Path) -> tuple[dict, list[dict], dict]:
    """The recipe's run: epochs alternating without / with periodic saves, then its own write timing."""
    argv = ["--data", str(args.data), *RECIPE.split(), "--name", "recipe", "--checkpoint_dir", str(workdir),
            "--log_dir", str(workdir / "logs")]
    if args.batch_size is not None:
        argv += ["-b", str(args.batch_size)]
    cfg, explicit = parse_config(argv)
    plan = ["warm-up"] + [v for pair in range(args.pairs) for v in (("without", "with") if pair % 2 == 0
                                                                    else ("with", "without"))]
    plan += ["interleaved"] * args.interleaved_epochs
    cfg.epochs = max(cfg.epochs, len(plan))  # the schedule's length does not change a step's cost
    epochs = []
    with open_job(cfg, explicit, checkpoint="none") as job, \
            recording(engine.training, "save_mid_epoch") as saves, \
            recording(engine.training, "train_one_epoch") as passes:
        run = build_training_run(job)
        steps = len(run.train_loader)
        for epoch, variant in enumerate(plan):
            every = args.save_every_steps if variant == "with" else None
            control = (InterleavedSaves(args.block) if variant == "interleaved"
                       else StepControl(save_every_minutes=None, save_every_steps=every, is_main=True))
            before = len(saves)
            share = CpuShare()
            started = time.perf_counter()
            run_epoch(run, epoch, control)
            wall = time.perf_counter() - started
            epochs.append({"epoch": epoch + 1, "variant": variant, "wall_s": wall, "train_pass_s": passes[-1],
                           "saves": len(saves) - before, "inside_saves_s": sum(saves[before:]),
                           "other_cores": share.others(),
                           **({"intervals_with_save_s": control.intervals[True],
                               "intervals_without_save_s": control.intervals[False]}
                              if variant == "interleaved" else {})})
            print(f"epoch {epoch + 1} ({variant}): {wall:.2f} s, {len(saves) - before} mid-epoch saves", flush=True)
        writes = time_writes(run, args.writes)
        settings = {"amp": run.cfg.amp, "channels_last": run.cfg.channels_last, "batch_size": run.cfg.batch_size,
                    "steps_per_epoch": steps, "train_images": len(run.splits.train),
                    "val_images": len(run.splits.val or ()), "workers": run.cfg.workers,
                    "device": describe_hardware(job.info.device),
                    "parameters": sum(p.numel() for p in run.model.parameters())}
    recipe_row = {"model": "small_cnn (Fashion-MNIST recipe, 28 px)", "contents": "weights + Adam + RNG",
                  "parameters": settings["parameters"], **writes}
    return recipe_row, epochs, settings


def poll_seconds(calls: int, minutes: float) -> float:
    """Median time of one ``StepControl.poll()`` with a save interval set, nothing due, no signal, a world of one."""
    control = StepControl(save_every_minutes=minutes, save_every_steps=None, is_main=True)
    per_call = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            control.poll()
        per_call.append((time.perf_counter() - started) / calls)
    return statistics.median(per_call)


# --- reporting -------------------------------------------------------------------------------------------------------

def summarise(epochs: list[dict], poll_s: float, steps: int, minutes: float) -> dict:
    """Cost per save three ways, the poll's share of a step, and the overhead at one save per ``minutes``."""
    by = {v: [e for e in epochs if e["variant"] == v] for v in ("without", "with", "interleaved")}
    mean = statistics.fmean
    saves = sum(e["saves"] for e in by["with"])
    pairs = [(by["without"][i], by["with"][i]) for i in range(min(len(by["without"]), len(by["with"])))]
    per_pair = [(w["wall_s"] - o["wall_s"]) / w["saves"] for o, w in pairs if w["saves"]]
    difference = sum(w["wall_s"] for w in by["with"]) - sum(o["wall_s"] for o in by["without"])
    estimates = {"from_epoch_difference": difference / saves if saves else float("nan"),
                 "inside_save_mid_epoch": sum(e["inside_saves_s"] for e in by["with"]) / saves if saves
                 else float("nan")}
    with_save = [t for e in by["interleaved"] for t in e["intervals_with_save_s"]]
    without_save = [t for e in by["interleaved"] for t in e["intervals_without_save_s"]]
    if with_save and without_save:
        estimates["from_interleaved_blocks"] = mean(with_save) - mean(without_save)
    step_s = statistics.median(e["train_pass_s"] for e in by["without"]) / steps
    interval = minutes * 60
    per_save = max(v for v in estimates.values() if math.isfinite(v))  # the largest estimate decides
    overhead = per_save / interval + poll_s / step_s
    return {"saves_in_with_epochs": saves, "epoch_difference_s": difference, "cost_per_save_per_pair_s": per_pair,
            **{f"cost_per_save_s_{k}": v for k, v in estimates.items()},
            "interleaved_intervals": {"with_save": len(with_save), "without_save": len(without_save)},
            "cost_per_save_s_used": per_save, "poll_s": poll_s, "step_s": step_s, "interval_s": interval,
            "overhead_saves": per_save / interval, "overhead_poll": poll_s / step_s, "overhead_total": overhead,
            "target": 0.01, "meets_target": overhead < 0.01}


def print_report(rows: list[dict], epochs: list[dict], summary: dict, settings: dict, args, env: str,
                 busy: dict) -> None:
    minutes = f"{args.minutes:g}"
    print(f"\n## Write time of a full training checkpoint (median of {args.writes} writes, fsync included, "
          f"into {args.dir})\n")
    print(markdown_table(
        ["model", "checkpoint contents", "parameters", "file MB", "write ms", "of which serialising ms",
         f"overhead at one save per {minutes} min"],
        [[r["model"], r["contents"], f"{r['parameters']:,}", f"{r['bytes'] / MB:.1f}", f"{r['write_s'] * 1e3:.1f}",
          f"{r['serialise_s'] * 1e3:.1f}", f"{100 * r['write_s'] / summary['interval_s']:.3f}%"] for r in rows]))
    print(f"\n## Fashion-MNIST recipe, {settings['train_images']} train / {settings['val_images']} val images, "
          f"batch {settings['batch_size']}, {settings['steps_per_epoch']} steps per epoch, amp {settings['amp']}, "
          f"channels_last {settings['channels_last']}; epochs without and with --save_every_steps "
          f"{args.save_every_steps}, alternating\n")
    names = {"without": "without periodic saves", "with": f"--save_every_steps {args.save_every_steps}",
             "interleaved": f"interleaved: a save every step in alternate blocks of {args.block} steps"}
    by_variant = {v: [e for e in epochs if e["variant"] == v] for v in names}
    print(markdown_table(
        ["variant", "epochs", "wall s per epoch (each, in run order)", "wall s per epoch (mean)",
         "train pass s per epoch (mean)", "mid-epoch saves per epoch", "s inside the saves per epoch",
         "other processes' cores (mean)"],
        [[names[variant], len(runs), " / ".join(f"{e['wall_s']:.2f}" for e in runs),
          f"{statistics.fmean(e['wall_s'] for e in runs):.2f}",
          f"{statistics.fmean(e['train_pass_s'] for e in runs):.2f}",
          f"{statistics.fmean(e['saves'] for e in runs):.1f}",
          f"{statistics.fmean(e['inside_saves_s'] for e in runs):.3f}", _cores(runs)]
         for variant, runs in by_variant.items() if runs]))
    s = summary
    every = f"every {s['interval_s']:.0f} s"
    estimates = [("from the epoch time difference (with − without) / saves", "from_epoch_difference"),
                 ("from interleaved blocks (step interval with a save − without)", "from_interleaved_blocks"),
                 ("timed inside save_mid_epoch", "inside_save_mid_epoch")]
    print(f"\n## Overhead at --save_every_minutes {minutes}\n")
    print(markdown_table(
        ["component", "cost", "how often", "overhead"],
        [["StepControl.poll() (no signal, world of one)", f"{s['poll_s'] * 1e6:.2f} µs",
          f"every optimizer step ({s['step_s'] * 1e3:.0f} ms)", f"{100 * s['overhead_poll']:.4f}%"]]
        + [[f"mid-epoch save, {label}", f"{s['cost_per_save_s_' + key] * 1e3:.1f} ms", every,
            f"{100 * s['cost_per_save_s_' + key] / s['interval_s']:.4f}%"]
           for label, key in estimates if "cost_per_save_s_" + key in s]
        + [["total: poll + the largest save estimate", "", "", f"**{100 * s['overhead_total']:.3f}%**"]]))
    per_pair = s["cost_per_save_per_pair_s"]
    pairs = ", ".join(f"{v * 1e3:.0f}" for v in per_pair)
    if len(per_pair) > 1:
        pairs += (f" (mean {statistics.fmean(per_pair) * 1e3:.0f} ± standard error "
                  f"{statistics.stdev(per_pair) / math.sqrt(len(per_pair)) * 1e3:.0f})")
    print(f"\n{s['saves_in_with_epochs']} mid-epoch saves in the epochs with saves added "
          f"{s['epoch_difference_s']:.2f} s "
          f"of wall time in total; per pair of epochs, ms per save: {pairs}. The epoch difference carries the drift of "
          f"the neighbours' load between epochs; the interleaved blocks compare steps seconds apart "
          f"({s['interleaved_intervals']['with_save']} intervals with a save, "
          f"{s['interleaved_intervals']['without_save']} without).")
    print(f"verdict: {'PASS' if s['meets_target'] else 'FAIL'}: {100 * s['overhead_total']:.3f}% at one save per "
          f"{minutes} min on the Fashion-MNIST recipe (target < 1%)")
    note = " (busy: absolute times are slower than on an idle machine)" if busy["busy"] else ""
    print(f"machine: {settings['device']}; 1-minute load average {busy['loadavg_1min_at_start']:.2f} at the start; "
          f"other processes used on average {_fmt(busy['part1'])} cores during the ResNet write timings, "
          f"{_fmt(busy['epochs'])} during the epochs, {_fmt(busy['poll'])} during the poll timing{note}")
    print(env)


def _cores(runs: list[dict]) -> str:
    shares = [e["other_cores"] for e in runs if e["other_cores"] is not None]
    return f"{statistics.fmean(shares):.2f}" if shares else "n/a"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_results(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    s = report["summary"]
    rows = [["write", r["model"], "file_MB", round(r["bytes"] / MB, 3)] for r in report["writes"]]
    rows += [["write", r["model"], "write_ms", round(r["write_s"] * 1e3, 2)] for r in report["writes"]]
    rows += [["write", r["model"], "serialise_ms", round(r["serialise_s"] * 1e3, 2)] for r in report["writes"]]
    rows += [["epoch", f"{e['epoch']} {e['variant']}", k, round(e[k], 3) if isinstance(e[k], float) else e[k]]
             for e in report["epochs"] for k in ("wall_s", "train_pass_s", "saves", "inside_saves_s")]
    rows += [["overhead", "recipe", k, v] for k, v in s.items() if not isinstance(v, (list, dict))]
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["part", "item", "metric", "value"])
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default="/tmp", help="where the checkpoints are written (a temporary folder inside)")
    p.add_argument("--models", nargs="*", default=["resnet18", "resnet50"],
                   help="models timed with SGD momentum + EMA (the recipe's row is always added)")
    p.add_argument("--writes", type=int, default=5, help="writes per model (median)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="the recipe's data root (default: the 10,000-image subset the strategy tables use)")
    p.add_argument("--pairs", type=int, default=4, help="pairs of epochs without/with periodic saves")
    p.add_argument("--save_every_steps", type=int, default=2, help="save interval of the epochs 'with'")
    p.add_argument("--interleaved_epochs", type=int, default=2,
                   help="epochs with saves in alternate blocks of steps (0: none)")
    p.add_argument("--block", type=int, default=8, help="steps per block of the interleaved epochs")
    p.add_argument("--minutes", type=float, default=5.0, help="the --save_every_minutes the verdict is for")
    p.add_argument("--poll_calls", type=int, default=200_000, help="StepControl.poll calls per timing (5 timings)")
    p.add_argument("-b", "--batch_size", type=int, default=None, help="override the recipe's 128 (smoke tests)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="cache of the small image folder the ResNets train on")
    p.add_argument("--source", default=str(DEFAULT_SOURCE), help="images for that folder (prepared Fashion-MNIST)")
    p.add_argument("--out", type=Path, default=None, help="also write report.json and summary.csv here")
    args = p.parse_args(argv)
    if not (args.data / "train").is_dir():
        p.error(f"no data at {args.data}; prepare it with `python -m dataloader.prepare fashion-mnist --out "
                f"data/fashion-mnist-10k --limit 10000` (or pass --data)")
    loadavg = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="checkpoint_overhead-", dir=args.dir))
    try:
        share = CpuShare()
        folder = image_folder(root=args.root, source=args.source, images=40, source_size=32, fmt="png")
        rows = [model_write_time(name, folder, workdir, args.writes) for name in args.models]
        part1 = share.others()
        recipe_row, epochs, settings = recipe_overhead(args, workdir)
        share = CpuShare()
        poll_s = poll_seconds(args.poll_calls, args.minutes)
        poll_share = share.others()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows.append(recipe_row)
    summary = summarise(epochs, poll_s, settings["steps_per_epoch"], args.minutes)
    epoch_shares = [e["other_cores"] for e in epochs if e["other_cores"] is not None]
    busy = {"loadavg_1min_at_start": loadavg, "part1": part1, "poll": poll_share,
            "epochs": statistics.fmean(epoch_shares) if epoch_shares else None}
    busy["busy"] = any(v is not None and v > 0.25 for v in (part1, busy["epochs"], poll_share))
    env = environment(processes=1, workers=settings["workers"])
    print_report(rows, epochs, summary, settings, args, env, busy)
    if args.out is not None:
        write_results(args.out, {
            "command": " ".join(["python benchmarks/checkpoint_overhead.py",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "environment": env, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "checkpoint_dir": str(args.dir), "recipe_flags": RECIPE, "recipe_settings": settings,
            "save_every_steps": args.save_every_steps, "minutes": args.minutes, "machine_load": busy,
            "writes": rows, "epochs": epochs, "summary": summary})


if __name__ == "__main__":
    main()
