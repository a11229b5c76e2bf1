"""Bare training-step time of several models at one input size: forward, loss, backward and an optimizer step on
a fixed random batch; no loader, no augmentation, no validation.

    python benchmarks/train_step.py --models airbench_m airbench_m_whiten airbench_m_whiten3 --size 28 --batch 128
    python benchmarks/train_step.py --models airbench_m --optimizers sgd muon

Every model runs with every optimizer of ``--optimizers`` (registry names, built as the train job builds them:
weight decay off norms and biases). The pairs take turns, ``--rounds`` times ``--steps`` steps each, so a host whose
speed drifts (a shared VM) slows all of them alike. A pair's figure is the median step of its fastest round, and
its ratio is the first pair's step time over its own (above 1: faster than the first). Models initialised from
data (the whitening stems) are fitted to the random batch first: their frozen stems need no backward, and that is
part of what is measured. AMP and channels_last are chosen per model from the hardware as the train job chooses
them, unless set by flag.
GFLOP/s counts thop's forward multiply-adds x 2 x 3 (forward and backward) per image.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table  # noqa: E402
from engine.device import amp_dtype  # noqa: E402
from models import build_model  # noqa: E402
from models.complexity import count_macs  # noqa: E402
from optim import build_optimizer, param_groups  # noqa: E402
from utils.hardware import choose_amp, choose_channels_last, describe_hardware  # noqa: E402


class Stepper:
    """One model's training step on a fixed batch, with its own optimizer."""

    def __init__(self, name: str, optimizer: str, args, device: torch.device) -> None:
        torch.manual_seed(0)
        model = build_model(name, num_classes=args.classes).to(device)
        shape = (args.batch, 3, args.size, args.size)
        self.images = torch.randn(shape, device=device)
        self.targets = torch.randint(0, args.classes, (args.batch,), device=device)
        if getattr(model, "init_images", 0):
            model.init_from_images(self.images)
        self.amp = choose_amp(args.amp, device)
        self.dtype = amp_dtype(device) if self.amp else None  # as the train job's autocast
        self.channels_last, _ = choose_channels_last(args.channels_last, model, shape, device, self.dtype,
                                                     model_name=name)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.name, self.model, self.device = name, model.train(), device
        self.optimizer_name = optimizer
        self.label = name if len(args.optimizers) == 1 else f"{name} + {optimizer}"
        self.optimizer = build_optimizer(param_groups(model, 5e-4), optimizer, lr=0.01, weight_decay=5e-4,
                                         momentum=0.9)
        self.macs = count_macs(model, (args.size, args.size))

    def step(self) -> float:
        started = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
            loss = F.cross_entropy(self.model(self.images).float(), self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started


def measure(steppers: list[Stepper], rounds: int, steps: int, warmup: int) -> dict[str, float]:
    """Median step seconds of each model's fastest round, the models taking turns round by round."""
    for stepper in steppers:  # oneDNN primitive creation and allocation
        for _ in range(warmup):
            stepper.step()
    best: dict[str, float] = {}
    for _ in range(rounds):
        for stepper in steppers:
            times = sorted(stepper.step() for _ in range(steps))
            median = times[len(times) // 2]
            best[stepper.label] = min(best.get(stepper.label, median), median)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="registry or library names; ratios are against the first")
    p.add_argument("--optimizers", nargs="+", default=["sgd"], metavar="NAME",
                   help="--optimizer names, each run with every model (default: sgd, Nesterov momentum 0.9)")
    p.add_argument("--size", type=int, default=28, help="square input size")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="turns per model")
    p.add_argument("--steps", type=int, default=10, help="timed steps per turn")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="unset: from the hardware")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="unset: the train job's probe (cached)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = p.parse_args(argv)
    if min(args.rounds, args.steps, args.batch, args.size) < 1 or args.warmup < 0:
        p.error("--rounds, --steps, --batch and --size must be >= 1 and --warmup >= 0")
    for flag, names in (("--models", args.models), ("--optimizers", args.optimizers)):
        if len(set(names)) != len(names):
            p.error(f"{flag} names one twice: {names}")
    device = torch.device(args.device)
    machine, hardware = environment(processes=1, workers=0), describe_hardware(device)
    print(machine)
    print(hardware)
    try:
        steppers = [Stepper(name, optimizer, args, device) for name in args.models for optimizer in args.optimizers]
    except ValueError as error:  # an unknown model or optimizer: the registry's message names the closest ones
        p.error(str(error))
    seconds = measure(steppers, args.rounds, args.steps, args.warmup)
    first = seconds[steppers[0].label]
    rows, figures = [], []
    for s in steppers:
        step = seconds[s.label]
        rate = args.batch / step
        gflops = 6 * s.macs * rate / 1e9
        figures.append({"model": s.name, "optimizer": s.optimizer_name, "macs_per_image": s.macs, "amp": s.amp,
                        "channels_last": s.channels_last, "step_ms": 1e3 * step, "images_per_s": rate,
                        "train_gflops": gflops, "ratio": first / step})
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[s.dtype]
        rows.append([s.label, f"{s.macs / 1e6:.1f}", precision, "yes" if s.channels_last else "no",
                     f"{1e3 * step:.1f}", f"{rate:.0f}", f"{gflops:.1f}", f"{first / step:.2f}"])
    print(f"training step, batch {args.batch} at {args.size}x{args.size}, median of the fastest of {args.rounds} "
          f"turns of {args.steps} steps")
    print(markdown_table(["model", "M multiply-adds / image", "precision", "channels_last", "ms / step", "images/s",
                          "GFLOP/s", f"speed vs {steppers[0].label}"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "environment": machine, "hardware": hardware,
                                               "models": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
