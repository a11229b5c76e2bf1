"""Where a training step's time goes: our training loop under torch.profiler, grouped by kind of work.

    python benchmarks/train_profile.py --config z_task_shell/fashion_mnist_fast.yaml --data data/fashion-mnist
    python benchmarks/train_profile.py --config RECIPE.yaml --data DATA --steps 40 --amp --channels_last

The recipe's training run is built as the train job builds it (engine.training.build_training_run, the speed
settings chosen for this hardware unless flags say otherwise) and ``train_one_epoch`` runs ``--warmup`` untimed
steps, then ``--steps`` profiled ones. Every operator's own (self) CPU time is put in one group: convolutions by
kind (dense k x k, pointwise 1 x 1, depthwise; forward and backward together), batch norm, activations, pooling,
linear layers, dtype casts (bf16 autocast copies), everything under the optimizer's step, the wait for the next
batch from the loader, and the rest. The table gives each group's share of the profiled steps' wall time; the
remainder is Python, dispatch and idle threads. The profiler adds its own overhead; read the shares, not the
absolute milliseconds.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table  # noqa: E402
from config import parse_config  # noqa: E402
from engine.job import open_job  # noqa: E402
from engine.training import build_training_run, train_one_epoch  # noqa: E402
from utils.hardware import describe_hardware  # noqa: E402

DATA_WAIT = "data: wait for the next batch"
GROUPS = (  # (group, pattern on the operator's name), first match wins
    ("batch norm", r"batch_norm"),
    ("activations", r"relu|threshold_backward|silu|hardswish|hardsigmoid|gelu|sigmoid|tanh|elu"),
    ("pooling", r"pool"),
    ("linear layers", r"addmm|\bmm\b|aten::mm|matmul|linear"),
    ("dtype casts (autocast)", r"_to_copy|aten::copy_|aten::to\b"),
    ("loss", r"cross_entropy|log_softmax|nll_loss|_softmax"),
)


class FirstBatches:
    """The first ``count`` batches of a loader, each fetch labelled DATA_WAIT; what train_one_epoch reads of a
    loader (len, sampler, batch_size) passes through."""

    def __init__(self, loader, count: int) -> None:
        self.loader, self.count = loader, count
        self.sampler, self.batch_size = loader.sampler, loader.batch_size

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        iterator = iter(self.loader)
        for _ in range(self.count):
            with record_function(DATA_WAIT):
                batch = next(iterator)
            yield batch


def conv_kind(event) -> str:
    """dense / pointwise / depthwise from the weight's shape [out, in / groups, kh, kw] among the inputs."""
    shapes = [s for s in event.input_shapes if len(s) == 4]  # forward: input, weight; backward: grad, input, weight
    if "backward" in event.name and len(shapes) >= 3:
        activation, weight = shapes[1], shapes[2]
    elif len(shapes) >= 2:
        activation, weight = shapes[0], shapes[1]
    else:
        return "convolutions"
    if weight[1] == 1 and activation[1] > 1:
        return "convolutions: depthwise"
    if weight[2] == weight[3] == 1:
        return "convolutions: pointwise 1x1"
    return f"convolutions: dense {weight[2]}x{weight[3]}"


def group_of(event) -> str:
    """The group an operator's self time belongs to (its ancestors first: optimizer step, data wait)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step") or parent.name.startswith("Optimizer.zero_grad"):
            return "optimizer"
        if parent.name == DATA_WAIT:
            return "data: loader wait"
        parent = parent.cpu_parent
    if event.name == DATA_WAIT:
        return "data: loader wait"
    if event.name.startswith("Optimizer."):
        return "optimizer"
    if "convolution" in event.name:
        return conv_kind(event)
    for group, pattern in GROUPS:
        if re.search(pattern, event.name):
            return group
    return "other operators"


def profile_steps(job, warmup: int, steps: int) -> tuple[dict[str, float], float]:
    """Self CPU seconds per group over ``steps`` profiled training steps, and their wall seconds."""
    run = build_training_run(job)
    cfg = run.cfg

    def epoch(count: int, index: int) -> None:
        run.train_loader.sampler.set_epoch(index)
        train_one_epoch(run.ddp_model, FirstBatches(run.train_loader, count), run.step_loss, run.optimizer,
                        run.scheduler, run.scaler, cfg, run.preprocessing, job.info, index)

    available = len(run.train_loader)
    if warmup > available or steps > available:
        raise SystemExit(f"error: an epoch has {available} batches; ask for --warmup and --steps within that "
                         "(or use a larger data set or a smaller -b)")
    epoch(warmup, 0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        epoch(steps, 1)
        wall = time.perf_counter() - started
    seconds: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CPU:
            seconds[group_of(event)] += event.self_cpu_time_total / 1e6
    return dict(seconds), wall


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="profiled training steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (allocator, oneDNN kernel choice)")
    args, rest = p.parse_known_args(argv)
    cfg, explicit = parse_config([*rest, "--val_ratio", "0", "--epochs", "2", "--warmup", "0"])
    cfg.log_interval = 10 ** 9  # no host sync for progress inside the profiled steps
    with open_job(cfg, explicit, checkpoint="none") as job:
        seconds, wall = profile_steps(job, args.warmup, args.steps)
        settings = f"amp {job.cfg.amp}, channels_last {job.cfg.channels_last}"
    accounted = sum(seconds.values())
    rows = [[group, f"{1000 * s / args.steps:.2f}", f"{100 * s / wall:.1f}"]
            for group, s in sorted(seconds.items(), key=lambda kv: -kv[1])]
    rows.append(["Python, dispatch, idle (wall - operators)", f"{1000 * max(wall - accounted, 0) / args.steps:.2f}",
                 f"{100 * max(wall - accounted, 0) / wall:.1f}"])
    print(f"\n{cfg.model} at {cfg.image_size[0]}x{cfg.image_size[1]}, batch {cfg.batch_size}, {settings}; "
          f"{args.steps} profiled steps after {args.warmup}, {1000 * wall / args.steps:.1f} ms per step under the "
          f"profiler; {describe_hardware(torch.device('cpu'))}\n")
    print(markdown_table(["group (self CPU time)", "ms per step", "% of wall"], rows))


if __name__ == "__main__":
    main()
