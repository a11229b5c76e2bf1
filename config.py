"""Command-line flags and the plain, typed config every application receives.

The flag names follow the main seed (``--data``, ``--image_size``, ``-b``, ``-j``, ``--criterion``, ``--lr``,
``--warmup``, ``--epochs``, ``--aug``, ``--resume``, ``--jit``, ``--evaluation``). ``Config`` round-trips
through a plain dict so checkpoints load under ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field


@dataclass
class Config:
    # data
    data: str = "data/digits"
    image_size: list[int] = field(default_factory=lambda: [32, 32])
    num_classes: int | None = None
    val_ratio: float = 0.1
    aug: bool = False
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    cache_images: str | None = None
    batch_size: int = 128
    workers: int = 2
    # model
    model: str = "small_cnn"
    pretrained: str | None = None
    prior_bias: float | None = None
    channels_last: bool | None = None
    # optimisation
    criterion: str = "softmax"
    label_smoothing: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "step"
    warmup: int = 1
    epochs: int = 10
    stop_epoch: int | None = None
    amp: bool | None = None
    seed: int = 42
    device: str = "auto"
    # bookkeeping
    checkpoint_dir: str = "checkpoints"
    log_dir: str = "logs"
    name: str | None = None
    log_interval: int = 20
    # applications
    resume: str | None = None
    evaluation: bool = False
    jit: bool = False
    split: str = "test"
    output: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        description="Train, evaluate and export image classifiers (python main.py or torchrun main.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="data root with train/ [val/] [test/] folders or <split>.csv")
    g.add_argument("--image_size", type=int, nargs=2, default=d.image_size, metavar=("H", "W"),
                   help="network input; images are letterboxed (aspect kept, padded with 0)")
    g.add_argument("--num_classes", type=int, default=d.num_classes,
                   help="number of classes; inferred from the data when omitted, checked when given")
    g.add_argument("--val_ratio", type=float, default=d.val_ratio,
                   help="stratified share of train used for validation when there is no val split")
    g.add_argument("--aug", action="store_true", help="random horizontal flip and light affine on train images")
    g.add_argument("--mean", type=float, nargs=3, default=d.mean, help="normalisation mean (RGB, 0..1 scale)")
    g.add_argument("--std", type=float, nargs=3, default=d.std, help="normalisation std (RGB, 0..1 scale)")
    g.add_argument("--cache_images", choices=["ram"], default=d.cache_images,
                   help="decode and letterbox every image once into RAM (small data sets; memory is checked)")
    g.add_argument("-b", "--batch_size", type=int, default=d.batch_size, help="batch size per process")
    g.add_argument("-j", "--workers", type=int, default=d.workers, help="data loading workers per process")
    g = p.add_argument_group("model")
    g.add_argument("--model", "--arch", dest="model", default=d.model,
                   help="our own, any torchvision or timm classification model name")
    g.add_argument("--pretrained", default=d.pretrained, help="local weights file (state dict or our checkpoint)")
    g.add_argument("--prior_bias", type=float, default=d.prior_bias,
                   help="sample-free init: set the final bias so each class starts at this probability")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=d.channels_last,
                   help="channels_last memory format; unset: on for CUDA, measured on the model for CPU")
    g = p.add_argument_group("optimisation")
    g.add_argument("--criterion", default=d.criterion, help="loss: softmax or bce (sigmoid one-vs-all)")
    g.add_argument("--label_smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--optimizer", default=d.optimizer, help="adam, adamw or sgd")
    g.add_argument("--lr", type=float, default=d.lr, help="base learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (Nesterov when > 0)")
    g.add_argument("--weight_decay", type=float, default=d.weight_decay, help="applied to weights, not norms/biases")
    g.add_argument("--lr_schedule", default=d.lr_schedule, help="step (the seed's warmup-step rule) or cosine")
    g.add_argument("--warmup", type=int, default=d.warmup, help="warmup epochs")
    g.add_argument("--epochs", type=int, default=d.epochs, help="total epochs of the schedule")
    g.add_argument("--stop_epoch", type=int, default=d.stop_epoch,
                   help="stop after this many epochs without changing the schedule; continue with --resume")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp,
                   help="autocast: fp16 + GradScaler on CUDA, bf16 on CPU; unset: on for CUDA and bf16-native CPUs")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--checkpoint_dir", default=d.checkpoint_dir, help="runs are saved in CHECKPOINT_DIR/NAME/")
    g.add_argument("--log_dir", default=d.log_dir, help="TensorBoard runs go to LOG_DIR/NAME/")
    g.add_argument("--name", default=d.name, help="run name (default: MODEL-YYYYmmdd-HHMMSS)")
    g.add_argument("--log_interval", type=int, default=d.log_interval, help="steps between progress updates")
    g = p.add_argument_group("applications")
    g.add_argument("--resume", default=d.resume,
                   help="checkpoint: continue training, or the model for --evaluation / --jit")
    g.add_argument("--evaluation", action="store_true", help="evaluate --resume on --split and write a report")
    g.add_argument("--jit", action="store_true", help="export --resume to TorchScript (traced, frozen)")
    g.add_argument("--split", default=d.split, help="split for --evaluation: train, val or test")
    g.add_argument("--output", default=d.output, help="output path (export file or evaluation directory)")
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Names of the options the user actually typed, so a resumed run overrides only those."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if isinstance(action, argparse._StoreTrueAction):
                kwargs["action"] = "store_true"
            elif isinstance(action, argparse.BooleanOptionalAction):
                kwargs["action"] = argparse.BooleanOptionalAction
                probe.add_argument(*action.option_strings[:1], **kwargs)  # adds the --no- form itself
                continue
            else:
                kwargs["nargs"] = action.nargs
            probe.add_argument(*action.option_strings, **kwargs)
    return set(vars(probe.parse_known_args(argv)[0]))


def parse_config(argv: list[str] | None = None) -> tuple[Config, set[str]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    return Config(**vars(args)), explicit_flags(parser, argv)
