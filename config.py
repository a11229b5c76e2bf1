"""Command-line flags, --config YAML files and the plain, typed config every application receives.

The flag names follow the main seed (``--data``, ``--image_size``, ``-b``, ``-j``, ``--criterion``, ``--lr``,
``--warmup``, ``--epochs``, ``--aug``, ``--resume``, ``--jit``, ``--evaluation``). ``Config`` round-trips
through a plain dict so checkpoints load under ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Config:
    # data
    data: str = "data/digits"
    image_size: list[int] = field(default_factory=lambda: [32, 32])
    resize_mode: str = "letterbox"  # or "crop": random resized crop in training, centre crop in evaluation
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    crop_pct: float = 0.875
    num_classes: int | None = None
    val_ratio: float = 0.1
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    cache_images: str | None = None
    decode: str = "loader"  # "device": workers read bytes, the training process decodes (dataloader/gpu_decode.py)
    batch_size: int = 128
    workers: int = 2
    extra_train: str | None = None  # another labelled set (folder or CSV) added to train, e.g. GAN-made images
    extra_weight: float = 1.0
    # model
    model: str = "small_cnn"
    pretrained: str | None = None
    prior_bias: float | str | None = None  # P, 'freq' or a CSV file of class,prior
    channels_last: bool | None = None
    head: str | None = None  # None: cosine for margin losses, else linear; training stores the resolved value
    dropout: float | None = None
    pooling: str = "avg"
    bn_momentum: float | None = None
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
    # losses (criterions/)
    focal_gamma: float = 2.0
    arc_margin: float = 0.5
    arc_scale: float = 30.0
    weighted_loss: str | None = None  # None: off; "auto": inverse class frequencies; else a weights file
    ghm_loss: bool = False
    ghm_bins: int = 10
    ghm_momentum: float = 0.0
    ohm_loss: bool = False
    ohm_ratio: float = 0.7
    threshold_loss: bool = False
    loss_threshold: float = 0.9
    # augmentation and sampling (dataloader/)
    aug: str | None = None
    erasing_p: float = 0.5
    erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])
    erasing_ratio: list[float] = field(default_factory=lambda: [0.3, 1 / 0.3])
    erasing_value: str = "random"
    cutout_holes: int = 1
    cutout_length: int | None = None
    gridmask_p: float = 0.5
    gridmask_d: list[int] | None = None
    gridmask_ratio: list[float] = field(default_factory=lambda: [0.4, 0.6])
    gridmask_rotate: float = 7.0
    crop_padding: int = 4
    vflip_p: float = 0.5
    mixup: float | None = None
    cutmix: float | None = None
    ricap: float | None = None
    mix_prob: float = 1.0
    mix_probs: list[float] | None = None
    multi_scale: bool = False
    multi_scale_sizes: list[int] | None = None
    progressive_size: int | None = None
    progressive_epochs: list[int] | None = None
    balance: bool = False
    aug_preview: int | None = None
    # optimizer extras and schedules (optim/)
    lookahead: bool = False
    lookahead_k: int = 6
    lookahead_alpha: float = 0.5
    lr_scale_batch: int | None = None
    backbone_lr_scale: float = 1.0
    freeze: int = 0
    # fine-tuning part of a pretrained model (models/lora.py): stages or LoRA adapters
    freeze_stages: int | None = None
    lora: int | None = None
    lora_alpha: float | None = None  # None: 2 x rank; training stores the resolved value
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # None: the model family's default; training stores the resolved names
    restart_epochs: int = 10
    restart_mult: float = 2.0
    restart_decay: float = 1.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0
    lr_steps: list[float] = field(default_factory=list)
    plateau_patience: int = 2
    lr_find: bool = False
    lr_find_start: float = 1e-7
    lr_find_end: float = 10.0
    lr_find_steps: int = 100
    # training tricks (applications/train.py)
    accum_steps: int = 1
    clip_grad: float | None = None
    sync_bn: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    swa: bool = False
    swa_epochs: int = 5
    swa_lr: float | None = None
    l1: float = 0.0
    l2: float = 0.0
    patience: int | None = None
    monitor: str = "top1"
    compile: bool = False
    # bookkeeping
    checkpoint_dir: str = "checkpoints"
    log_dir: str = "logs"
    name: str | None = None
    log_interval: int = 20
    keep_epochs: int = 0
    # applications
    resume: str | list[str] | None = None
    evaluation: bool = False
    ood_data: str | None = None  # --evaluation: images of no trained class (a folder or CSV list), for OOD AUROC
    calibrate: bool = False
    reject_coverage: float = 0.95
    conformal_alpha: float = 0.1
    answer: str = "top"  # --predict: top, unknown or set (utils/calibration.py)
    jit: bool = False
    split: str = "test"
    output: str | None = None
    tta: str | None = None
    predict: str | None = None
    ensemble_weights: list[float] | None = None
    probabilities: bool = False
    average_last: int | None = None
    average: list[str] | None = None
    update_bn: bool = False
    onnx: bool = False
    int8: bool = False
    export: str | None = None  # "pt2" (AOTInductor) or "openvino"
    # knowledge, distillation, K-fold, curriculum, CAM (issue 7)
    kfold: int | None = None
    fold: int = 0
    repeat: int | None = None
    knowledge: str | None = None
    distill: bool = False
    distill_alpha: float = 0.5
    distill_T: float = 4.0
    teacher: str | None = None
    teacher_ckpt: str | None = None
    make_curriculum: bool = False
    curriculum_thresholds: list[float] = field(default_factory=lambda: [0.9, 0.5])
    curriculum_weights: list[float] = field(default_factory=lambda: [1.0, 0.7, 0.4])
    curriculum_learning: bool = False
    curriculum_pacing: list[int] | None = None
    visual_data: str | None = None
    # semi-supervised learning (issue 16): mean teacher (a training recipe) and pseudo-labelling rounds (a job)
    mean_teacher: bool = False
    unlabeled: str | None = None
    unlabeled_batch_size: int | None = None  # None: --batch_size
    consistency_weight: float = 10.0
    consistency_rampup: float = 5.0
    mean_teacher_decay: float = 0.99
    pseudo_label: str | None = None
    pseudo_threshold: float = 0.95
    pseudo_rounds: int = 1
    pseudo_targets: str = "hard"
    pseudo_weight: float = 1.0
    visual_method: str = "grad-cam"
    target_layer: str | None = None
    visual_limit: int = 64
    # the HTTP inference service (serving/)
    serve: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_body_mb: float = 16.0
    topk: int = 5
    threads: int | None = None
    # a class-conditional DCGAN and its images (issue 16: applications/gan.py, applications/gan_generate.py)
    gan: bool = False
    gan_image_size: int = 32
    gan_latent: int = 100
    gan_width: int = 64
    gan_epochs: int = 25
    gan_lr: float = 2e-4
    gan_diversity: float = 1.0
    gan_generate: int | None = None
    # the dataset audit (issue 19: applications/audit.py)
    audit: bool = False
    audit_fix: bool = False
    audit_skip_labels: bool = False
    audit_phash_threshold: int = 4
    audit_pixel_tolerance: float = 4.0
    audit_top: int = 60
    # how to run (never taken from a checkpoint)
    debug: bool = False
    config: str | None = None
    print_config: bool = False
    save_every_minutes: float | None = None
    save_every_steps: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        if isinstance(values.get("aug"), bool):  # checkpoints from before --aug took names
            values = {**values, "aug": "basic" if values["aug"] else None}
        return cls(**{k: v for k, v in values.items() if k in known})


# --- flags -----------------------------------------------------------------------------------------------------
# One function per group of flags, next to the group's fields above in spirit: the recipe (what is trained) first,
# then each job. A flag added to a job's group is a runtime flag (never taken from a checkpoint) and is refused
# unless its job is chosen; nothing else needs to know about it.


class FlagError(ValueError):
    """A bad command line (argparse's complaints included); main.py prints it as one error line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits; we want one line, no usage
        raise FlagError(f"{message} (python main.py --help lists the flags)")


@dataclass(frozen=True)
class JobGroup:
    """The flags of one job, named ``name``; any of its ``selectors`` chooses it (none: options of any job)."""

    title: str
    name: str | None
    selectors: tuple[str, ...]
    dests: tuple[str, ...]

    def chosen_by(self, cfg: "Config") -> bool:
        return any(getattr(cfg, dest) is not None and getattr(cfg, dest) is not False for dest in self.selectors)

    @property
    def flag(self) -> str:
        return " / ".join(_flag_name(dest) for dest in self.selectors)


def _prior_bias(text: str) -> float | str:
    """--prior_bias: a probability, 'freq', or a file path (read when the model is built)."""
    try:
        value = float(text)
    except ValueError:
        return text
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a probability in (0, 1), 'freq' or a CSV file, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


# The seeds' spellings, accepted and stored as the names this project uses (README: "Seed spellings").
SEED_SPELLINGS = {
    "model": {"mobilenetv3_small": "mobilenet_v3_small", "mobilenetv3_large": "mobilenet_v3_large",
              "efficientnet-b0": "efficientnet_b0", "efficientnet-b4": "efficientnet_b4",
              "ghostnet": "ghostnet_100"},
    "criterion": {"sigmoid": "bce"},
}


def _spelling(flag: str):
    """An argparse type that turns the seeds' spelling of a --model or --criterion name into ours."""
    def convert(text: str) -> str:
        return SEED_SPELLINGS[flag].get(text, text)
    convert.__name__ = flag
    return convert


def _data_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="data root with train/ [val/] [test/] folders or <split>.csv")
    g.add_argument("--image_size", type=_positive_int, nargs=2, default=d.image_size, metavar=("H", "W"),
                   help="network input; images are fitted to it as --resize_mode says")
    g.add_argument("--resize_mode", choices=["letterbox", "crop"], default=d.resize_mode,
                   help="letterbox: keep the aspect ratio and pad with 0 (the default); crop: torchvision's recipe, "
                        "a random resized crop (--crop_scale, --crop_ratio) in training and a centre crop of "
                        "--crop_pct in evaluation. Stored in the checkpoint and every export")
    g.add_argument("--crop_scale", type=float, nargs=2, default=d.crop_scale, metavar=("MIN", "MAX"),
                   help="--resize_mode crop, training: the crop's share of the image's area")
    g.add_argument("--crop_ratio", type=float, nargs=2, default=d.crop_ratio, metavar=("MIN", "MAX"),
                   help="--resize_mode crop, training: the crop's aspect ratio range (width / height)")
    g.add_argument("--crop_pct", type=float, default=d.crop_pct, metavar="P",
                   help="--resize_mode crop, evaluation: resize so that the input is the centre P of the short "
                        "side (timm's crop_pct; 1 keeps the whole short side)")
    g.add_argument("--num_classes", type=_positive_int, default=d.num_classes,
                   help="number of classes; inferred from the data when omitted, checked when given")
    g.add_argument("--val_ratio", type=_ratio, default=d.val_ratio,
                   help="stratified share of train used for validation when there is no val split; 0 trains on all "
                        "of train without validation (best.pth = the last weights, EMA when --ema)")
    g.add_argument("--mean", type=float, nargs=3, default=d.mean, help="normalisation mean (RGB, 0..1 scale)")
    g.add_argument("--std", type=float, nargs=3, default=d.std, help="normalisation std (RGB, 0..1 scale)")
    g.add_argument("--cache_images", choices=["ram"], default=d.cache_images,
                   help="decode and letterbox every image once into RAM (small data sets; memory is checked)")
    g.add_argument("-b", "--batch_size", type=_positive_int, default=d.batch_size, help="batch size per process")
    g.add_argument("--kfold", type=int, default=d.kfold, metavar="K",
                   help="train on K-1 folds of a stratified K-fold split of train (fixed by --seed) and validate on "
                        "fold --fold; a val/ folder is not used")
    g.add_argument("--fold", type=int, default=d.fold, metavar="I", help="with --kfold: the held-out fold, 0..K-1")
    g.add_argument("--extra_train", default=d.extra_train, metavar="DIR_OR_CSV",
                   help="add another labelled set to the train split (val and test stay as they are): a folder of "
                        "class folders, or a CSV 'filename,label' (paths relative to the CSV's folder); its class "
                        "names must be classes of --data. E.g. DATA/gen_dataset/RUN from --gan_generate")
    g.add_argument("--extra_weight", type=_non_negative_float, default=d.extra_weight, metavar="W",
                   help="loss weight of each --extra_train image (the main set's images weigh 1)")


def _model_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "--arch", dest="model", default=d.model, type=_spelling("model"),
                   help="our own, any torchvision or timm classification model name (the main seed's "
                        "mobilenetv3_small/large and efficientnet-b0/b4 mean torchvision's mobilenet_v3_small/large "
                        "and efficientnet_b0/b4)")
    g.add_argument("--pretrained", default=d.pretrained, help="local weights file (state dict or our checkpoint)")
    g.add_argument("--prior_bias", type=_prior_bias, default=d.prior_bias, metavar="P|freq|FILE",
                   help="sample-free init (for bce): set the final bias so each class starts at sigmoid probability "
                        "P; 'freq': each class at its share of the train split; FILE: a CSV 'class,prior' raising "
                        "the classes it lists (the others keep their initial bias)")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=d.channels_last,
                   help="channels_last memory format; unset: on for CUDA; on a CPU measured once for this model, "
                        "input size and AMP, and cached (~/.cache/image-classifier/speed_choices.json)")
    g.add_argument("--head", choices=["linear", "cosine"], default=d.head,
                   help="classifier: linear, or cosine (outputs arc_scale * cos(theta), no bias); unset: cosine for "
                        "the margin losses (arcface, amsoftmax), linear otherwise")
    g.add_argument("--dropout", type=float, default=d.dropout, metavar="P",
                   help="dropout probability right before the classifier (timm: drop_rate); unset: model's default")
    g.add_argument("--pooling", choices=["avg", "avgmax"], default=d.pooling,
                   help="global pooling: avg, or avgmax (average and max pooling concatenated, classifier input x2)")
    g.add_argument("--bn_momentum", type=float, default=d.bn_momentum, metavar="M",
                   help="momentum of every BatchNorm's running statistics (PyTorch's default is 0.1); unset: the "
                        "model's own (torchvision's MobileNetV3 uses 0.01, too slow for runs of a few thousand steps)")


def _optimisation_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--criterion", default=d.criterion, type=_spelling("criterion"),
                   help="loss: softmax, bce (sigmoid one-vs-all; the seed's name 'sigmoid' means bce), focal, "
                        "arcface or amsoftmax (README: Losses); "
                        "every loss also takes mixup/cutmix soft targets")
    g.add_argument("--label_smoothing", type=float, default=d.label_smoothing,
                   help="targets become y (1 - eps) + eps / C, for every loss")
    g.add_argument("--optimizer", default=d.optimizer,
                   help="sgd (Nesterov), adam, adamw, radam, nadam (torch); lamb, adabelief, novograd, muon (timm); "
                        "ranger (RAdam + Lookahead); adabound (optim/adabound.py)")
    g.add_argument("--lr", type=float, default=d.lr, help="base learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD and Muon momentum (Nesterov when > 0)")
    g.add_argument("--weight_decay", type=float, default=d.weight_decay, help="applied to weights, not norms/biases")
    g.add_argument("--epochs", type=_positive_int, default=d.epochs, help="total epochs of the schedule")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp,
                   help="autocast: fp16 + GradScaler on CUDA, bf16 on CPU; unset: on for CUDA and bf16-native CPUs")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--lookahead", action="store_true",
                   help="wrap the optimizer in Lookahead (timm): slow weights follow the fast ones every k steps")
    g.add_argument("--lookahead_k", type=int, default=d.lookahead_k,
                   help="Lookahead: fast steps between slow-weight updates (also used by ranger)")
    g.add_argument("--lookahead_alpha", type=float, default=d.lookahead_alpha,
                   help="Lookahead: fraction of the way the slow weights move to the fast ones (also used by ranger)")
    g.add_argument("--lr_scale_batch", type=_positive_int, default=d.lr_scale_batch, metavar="REF",
                   help="linear scaling: lr x global batch / REF, global batch = batch_size x world size x "
                        "accum_steps (unset: lr as given)")
    g.add_argument("--backbone_lr_scale", type=float, default=d.backbone_lr_scale,
                   help="discriminative lr: everything but the final classifier trains at lr x this factor")
    g.add_argument("--freeze", type=_non_negative_int, default=d.freeze, metavar="N",
                   help="train only the final classifier for the first N epochs (backbone BatchNorm stats frozen "
                        "too), then everything")


def _finetuning_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("fine-tuning part of a --pretrained model (whole-backbone freezing: --freeze)")
    g.add_argument("--freeze_stages", type=_positive_int, default=d.freeze_stages, metavar="K",
                   help="freeze the stem and the first K stages (layer1.., timm's stages/blocks, features) for the "
                        "whole run, their BatchNorm statistics included; the deeper stages and the head train")
    g.add_argument("--lora", type=_positive_int, default=d.lora, metavar="R",
                   help="LoRA (peft): freeze the --pretrained model and train rank-R adapters plus the whole head; "
                        "checkpoints hold only those, exports merge them into the weights")
    g.add_argument("--lora_alpha", type=_positive_float, default=d.lora_alpha, metavar="A",
                   help="LoRA scaling: the update is B A x A / R (unset: 2 x R)")
    g.add_argument("--lora_dropout", type=_ratio, default=d.lora_dropout, metavar="P",
                   help="dropout on the adapters' input")
    g.add_argument("--lora_targets", nargs="+", default=d.lora_targets, metavar="PATTERN",
                   help="layers to adapt, fnmatch patterns over module names (e.g. 'layer4.*' '*.qkv'); unset: "
                        "attention qkv for transformers (timm ViT), every Conv2d and Linear but the head for CNNs")


def _schedule_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("learning-rate schedule")
    g.add_argument("--lr_schedule", default=d.lr_schedule,
                   help="step (the seed's warmup-step rule), cosine, sgdr (warm restarts), onecycle, multistep "
                        "or plateau (ReduceLROnPlateau on val loss); all warm up linearly over --warmup epochs")
    g.add_argument("--warmup", type=_non_negative_int, default=d.warmup,
                   help="warmup epochs; a warmup not shorter than --epochs is clipped to --epochs - 1 with a "
                        "warning, so --epochs 1 trains at the full lr")
    g.add_argument("--restart_epochs", type=_positive_int, default=d.restart_epochs,
                   help="sgdr: length of the first cosine cycle in epochs (after warmup)")
    g.add_argument("--restart_mult", type=float, default=d.restart_mult,
                   help="sgdr: each cycle is this many times longer than the previous one")
    g.add_argument("--restart_decay", type=float, default=d.restart_decay,
                   help="sgdr: each cycle's peak lr is this many times the previous peak")
    g.add_argument("--milestones", type=int, nargs="+", default=d.milestones, metavar="EPOCH",
                   help="multistep: epochs at whose start the lr is multiplied by --gamma")
    g.add_argument("--gamma", type=float, default=d.gamma, help="multistep and plateau: lr multiplier per drop")
    g.add_argument("--min_lr", type=float, default=d.min_lr,
                   help="cosine and sgdr: the lr they end each cycle at (the seeds use 1e-6); default 0")
    g.add_argument("--lr_steps", type=float, nargs="+", default=d.lr_steps, metavar="LR",
                   help="multistep: the lr of each stage instead of --gamma drops, one more than --milestones "
                        "(e.g. --lr_steps 5e-4 1e-4 1e-5 1e-6 --milestones 10 20 30)")
    g.add_argument("--plateau_patience", type=int, default=d.plateau_patience,
                   help="plateau: epochs without a val loss improvement tolerated before the lr drops")


def _loss_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("losses")
    g.add_argument("--focal_gamma", type=float, default=d.focal_gamma,
                   help="--criterion focal: loss -(1 - p_t)^gamma log p_t; 0 is cross-entropy")
    g.add_argument("--arc_margin", type=float, default=d.arc_margin,
                   help="margin m of --criterion arcface (angle, radians; 0.5 is typical) and amsoftmax (cosine; "
                        "0.35 is typical)")
    g.add_argument("--arc_scale", type=float, default=d.arc_scale,
                   help="scale s of the cosine head's logits s * cos(theta), used by the margin losses")
    g.add_argument("--weighted_loss", nargs="?", const="auto", default=d.weighted_loss, metavar="FILE",
                   help="class-weighted loss; bare flag: inverse training-set class frequencies (mean 1); FILE: "
                        "one weight per line in class order, or class_name,weight lines")
    g.add_argument("--ghm_loss", action="store_true",
                   help="GHM-C: weight samples (bce: elements) by the inverse density of their gradient norm")
    g.add_argument("--ghm_bins", type=_positive_int, default=d.ghm_bins,
                   help="--ghm_loss: number of gradient-norm bins")
    g.add_argument("--ghm_momentum", type=float, default=d.ghm_momentum,
                   help="--ghm_loss: moving-average momentum of the bin counts (0: this batch only)")
    g.add_argument("--ohm_loss", action="store_true",
                   help="online hard example mining: only the hardest --ohm_ratio of each batch (by loss) counts")
    g.add_argument("--ohm_ratio", type=float, default=d.ohm_ratio, help="--ohm_loss: share of the batch kept")
    g.add_argument("--threshold_loss", action="store_true",
                   help="predictions already beyond --loss_threshold confidence contribute zero loss (softmax: "
                        "p_target > t; bce: positives p > t, negatives p < 1 - t)")
    g.add_argument("--loss_threshold", type=float, default=d.loss_threshold, help="--threshold_loss: confidence t")


def _augmentation_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("augmentation and sampling")
    g.add_argument("--aug", nargs="?", const="basic", default=d.aug, metavar="NAME[,NAME...]",
                   help="per-image train augmentations, applied in the order given: basic (flip + light affine; "
                        "what a bare --aug means), flipcrop (flip + shift by up to --crop_padding px), altflipcrop "
                        "(flipcrop whose flip alternates by epoch), autoaugment, "
                        "randaugment, trivialaugment, myaugment, erasing, gridmask, vflip, cutout")
    g.add_argument("--erasing_p", type=_ratio, default=d.erasing_p, metavar="P", help="erasing: probability per image")
    g.add_argument("--erasing_scale", type=float, nargs=2, default=d.erasing_scale, metavar=("MIN", "MAX"),
                   help="erasing: share of the image the rectangle covers")
    g.add_argument("--erasing_ratio", type=float, nargs=2, default=d.erasing_ratio, metavar=("MIN", "MAX"),
                   help="erasing: the rectangle's aspect ratio range (drawn log-uniform)")
    g.add_argument("--erasing_value", default=d.erasing_value, metavar="random|0-255",
                   help="erasing: uniform noise (random) or this grey level")
    g.add_argument("--crop_padding", type=_non_negative_int, default=d.crop_padding, metavar="PX",
                   help="flipcrop, altflipcrop: the largest shift in pixels (pad by PX, crop back at a random offset)")
    g.add_argument("--cutout_holes", type=_positive_int, default=d.cutout_holes, help="cutout: squares per image")
    g.add_argument("--cutout_length", type=_positive_int, default=d.cutout_length, metavar="PX",
                   help="cutout: the squares' side in pixels (default half the short side; seed 002: 16 at 32 px)")
    g.add_argument("--gridmask_p", type=_ratio, default=d.gridmask_p, metavar="P", help="gridmask: probability")
    g.add_argument("--gridmask_d", type=_positive_int, nargs=2, default=d.gridmask_d, metavar=("D1", "D2"),
                   help="gridmask: grid period range in pixels (seed 004: 96 224 at 224 px); default 10-50%% of "
                        "the short side")
    g.add_argument("--gridmask_ratio", type=float, nargs=2, default=d.gridmask_ratio, metavar=("MIN", "MAX"),
                   help="gridmask: each dropped square's side as a share of the period")
    g.add_argument("--gridmask_rotate", type=float, default=d.gridmask_rotate, metavar="DEG",
                   help="gridmask: the grid turns by up to this many degrees")
    g.add_argument("--vflip_p", type=_ratio, default=d.vflip_p, metavar="P", help="vflip: probability per image")
    g.add_argument("--mixup", type=float, nargs="?", const=0.8, default=d.mixup, metavar="ALPHA",
                   help="mixup batches on the device, lam ~ Beta(ALPHA, ALPHA) (bare flag: 0.8)")
    g.add_argument("--cutmix", type=float, nargs="?", const=1.0, default=d.cutmix, metavar="ALPHA",
                   help="CutMix batches on the device, pasted area share ~ Beta(ALPHA, ALPHA) (bare flag: 1.0)")
    g.add_argument("--ricap", type=float, nargs="?", const=0.3, default=d.ricap, metavar="BETA",
                   help="RICAP: tile each image from 4 crops, boundary ~ Beta(BETA, BETA) (bare flag: 0.3)")
    g.add_argument("--mix_prob", type=float, default=d.mix_prob,
                   help="probability that a batch is mixed; with several mixes, one is picked per batch")
    g.add_argument("--mix_probs", type=float, nargs="+", default=d.mix_probs, metavar="P",
                   help="instead of --mix_prob: one probability per mix set, in the order --mixup, --cutmix, --ricap "
                        "(seed 004: CutMix and Mixup each with its own p); a batch gets at most one; sum <= 1")
    g.add_argument("--multi_scale", action="store_true",
                   help="resize each train batch on the device to a size chosen per step (the same on every rank)")
    g.add_argument("--multi_scale_sizes", type=_positive_int, nargs="+", default=d.multi_scale_sizes, metavar="S",
                   help="square sides for --multi_scale (long side for non-square inputs); default: the image "
                        "size x 0.75, 0.875, 1, 1.125, 1.25, rounded")
    g.add_argument("--progressive_size", type=_positive_int, default=d.progressive_size, metavar="S",
                   help="progressive resizing: train batches are resized on the device to side S (long side for "
                        "non-square inputs) in the first epochs, growing to --image_size; cheaper early epochs")
    g.add_argument("--progressive_epochs", type=_positive_int, nargs=2, default=d.progressive_epochs,
                   metavar=("FIRST", "LAST"),
                   help="--progressive_size: grow from S after epoch FIRST to --image_size at epoch LAST (1-based; "
                        "default 1 and EPOCHS - EPOCHS // 4: the last quarter at full size)")
    g.add_argument("--balance", action="store_true",
                   help="class-balanced sampling: each epoch draws len(train) samples, classes equally likely")


def _tricks_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("training tricks")
    g.add_argument("--accum_steps", type=_positive_int, default=d.accum_steps,
                   help="accumulate gradients over this many batches per optimizer step (effective batch x N)")
    g.add_argument("--clip_grad", type=float, default=d.clip_grad, help="clip the global gradient norm to this value")
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across processes under DDP")
    g.add_argument("--ema", action="store_true", help="keep an exponential moving average of the weights, "
                   "validated alongside the model; best.pth takes the better of the two")
    g.add_argument("--ema_decay", type=float, default=d.ema_decay, help="EMA decay per optimizer step")
    g.add_argument("--swa", action="store_true",
                   help="stochastic weight averaging over the last --swa_epochs epochs, then a BN statistics update")
    g.add_argument("--swa_epochs", type=_positive_int, default=d.swa_epochs, help="epochs at the end averaged by --swa")
    g.add_argument("--swa_lr", type=float, default=d.swa_lr,
                   help="constant lr during the SWA epochs (default: the schedule continues)")
    g.add_argument("--l1", type=float, default=d.l1, help="L1 penalty on weights (not norms/biases) added to the loss")
    g.add_argument("--l2", type=float, default=d.l2,
                   help="L2 penalty on weights (not norms/biases) added to the loss (unlike --weight_decay, "
                        "it goes through the optimizer's adaptive scaling)")
    g.add_argument("--patience", type=_positive_int, default=d.patience,
                   help="early stopping: stop when the --monitor metric has not improved for this many epochs")
    g.add_argument("--monitor", choices=("top1", "macro_f1", "auroc", "loss"), default=d.monitor,
                   help="the val metric that chooses best.pth (and early stopping): top-1 (default), macro F1, "
                        "macro AUROC (one-vs-rest) or the lowest loss; pick the competition's metric")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (falls back to eager with a warning where unsupported)")


def _distillation_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("distillation and curriculum (training with a teacher or per-image weights)")
    g.add_argument("--distill", action="store_true",
                   help="train with the teacher probabilities of every DATA/distill*.txt (averaged): loss = "
                        "alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * criterion(labels)")
    g.add_argument("--distill_alpha", type=float, default=d.distill_alpha,
                   help="weight of the teacher term (0: plain training; 0.2 with --distill_T 1 mixes soft and hard "
                        "labels 2:8, seed 004's self-distillation)")
    g.add_argument("--distill_T", type=float, default=d.distill_T, help="distillation temperature T")
    g.add_argument("--teacher", default=d.teacher, metavar="MODEL",
                   help="online distillation: the teacher's architecture (a model name); with --teacher_ckpt")
    g.add_argument("--teacher_ckpt", default=d.teacher_ckpt, metavar="PATH",
                   help="online distillation: the teacher's weights (our checkpoint or a state dict); the teacher "
                        "runs in eval mode on every training batch, unwrapped (no DDP)")
    g.add_argument("--curriculum_learning", action="store_true",
                   help="weight each training image's loss by its weight in DATA/curriculum.txt")
    g.add_argument("--curriculum_pacing", type=int, nargs="+", default=d.curriculum_pacing, metavar="EPOCH",
                   help="with --curriculum_learning: the epoch (0-based) at which each stage after the first "
                        "enters; before it the stage's images have weight 0")
    g.add_argument("--curriculum_thresholds", type=float, nargs="+", default=d.curriculum_thresholds,
                   metavar="P", help="--make_curriculum: descending true-class probabilities: stage 0 (easiest) has "
                                     "p >= the first, stage 1 p >= the second, ..., the last stage the rest")
    g.add_argument("--curriculum_weights", type=float, nargs="+", default=d.curriculum_weights, metavar="W",
                   help="--make_curriculum: loss weight of each stage, one more than --curriculum_thresholds")


def _semi_supervised_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("mean teacher (semi-supervised: unlabelled images in training)")
    g.add_argument("--mean_teacher", action="store_true",
                   help="train with an EMA teacher of the model (kept as the run's EMA, validated with it) and a "
                        "consistency loss on --unlabeled images: MSE of student and teacher softmax on two "
                        "augmentations (the run's --aug, else basic) of each image")
    g.add_argument("--unlabeled", default=d.unlabeled, metavar="DIR_OR_CSV",
                   help="unlabelled images of --mean_teacher: a folder (nested folders allowed) or a CSV list")
    g.add_argument("--unlabeled_batch_size", type=_positive_int, default=d.unlabeled_batch_size, metavar="N",
                   help="unlabelled images per step and process (default: --batch_size)")
    g.add_argument("--consistency_weight", type=float, default=d.consistency_weight,
                   help="weight of the consistency term once ramped up")
    g.add_argument("--consistency_rampup", type=float, default=d.consistency_rampup, metavar="EPOCHS",
                   help="epochs of the sigmoid ramp-up exp(-5 (1 - t)^2) of the consistency weight (0: none)")
    g.add_argument("--mean_teacher_decay", type=float, default=d.mean_teacher_decay,
                   help="the teacher's EMA decay per optimizer step (instead of --ema_decay)")


def _bookkeeping_flags(p: argparse.ArgumentParser, d: Config) -> None:
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--checkpoint_dir", default=d.checkpoint_dir, help="runs are saved in CHECKPOINT_DIR/NAME/")
    g.add_argument("--log_dir", default=d.log_dir, help="TensorBoard runs go to LOG_DIR/NAME/")
    g.add_argument("--name", default=d.name, help="run name (default: MODEL-YYYYmmdd-HHMMSS)")
    g.add_argument("--log_interval", type=_positive_int, default=d.log_interval,
                   help="steps between progress updates")
    g.add_argument("--keep_epochs", type=_non_negative_int, default=d.keep_epochs, metavar="K",
                   help="also keep the checkpoints of the last K epochs as epoch_NNN.pth (for --average_last)")


RECIPE_GROUPS = (_data_flags, _model_flags, _optimisation_flags, _finetuning_flags, _schedule_flags, _loss_flags,
                 _augmentation_flags, _tricks_flags, _distillation_flags, _semi_supervised_flags, _bookkeeping_flags)


# --- how to run, and the jobs: runtime flags, never taken from a checkpoint ----------------------------------------


def _running_flags(g) -> None:
    d = Config()
    g.add_argument("--resume", nargs="+", default=d.resume, metavar="CKPT",
                   help="checkpoint: continue training, or the model of a job below; --predict takes several "
                        "(checkpoints or exported .pt / .onnx files) and averages their probabilities. 'auto' with "
                        "--name NAME: continue CHECKPOINT_DIR/NAME/last.pth when it exists, else start the run (a "
                        "finished run does nothing): the way to launch on clusters that stop and restart jobs")
    g.add_argument("--output", default=d.output, help="output path of a job (export file, report folder, ...)")
    g.add_argument("--split", default=d.split, help="split for --evaluation (and --onnx --int8 scoring): train, val "
                                                    "or test")
    g.add_argument("--tta", nargs="?", const="flip", default=d.tta, metavar="GROUP[,GROUP...]",
                   help="--evaluation / --predict: test-time augmentation, class probabilities averaged over the "
                        "views: flip (mirror, 2 views; what a bare --tta means), crop (5 crops shifted by 1/16 of "
                        "the side), scale (0.875x, 1x, 1.125x); groups multiply")
    g.add_argument("--ensemble_weights", type=float, nargs="+", default=d.ensemble_weights, metavar="W",
                   help="--predict / --evaluation with several --resume models: one weight per model for the "
                        "probability average (default: equal)")
    g.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    g.add_argument("-j", "--workers", type=_non_negative_int, default=d.workers,
                   help="data loading workers per process")
    g.add_argument("--decode", choices=["loader", "device"], default=d.decode,
                   help="where images are decoded: loader (OpenCV in the loader workers) or device (workers only read "
                        "the files; the training process decodes each batch's JPEGs on --device, batched nvjpeg on "
                        "CUDA, and letterboxes them there; other formats still decode in the workers). device "
                        "supports --aug basic only and not --cache_images")
    g.add_argument("--stop_epoch", type=_positive_int, default=d.stop_epoch,
                   help="stop after this many epochs without changing the schedule; continue with --resume")
    g.add_argument("--save_every_minutes", type=_positive_float, default=d.save_every_minutes, metavar="M",
                   help="training: also write last.pth in the middle of an epoch every M minutes (rank 0's clock "
                        "decides for all ranks); resuming from it is bit-identical to a run never stopped")
    g.add_argument("--save_every_steps", type=_positive_int, default=d.save_every_steps, metavar="N",
                   help="training: also write last.pth in the middle of an epoch every N optimizer steps")
    g.add_argument("--config", default=d.config, metavar="FILE.yaml",
                   help="defaults from a YAML file (keys are flag names, e.g. a run's config.yaml); flags typed on "
                        "the command line win")
    g.add_argument("--print_config", action="store_true",
                   help="print the resolved config (defaults, --config, a --resume checkpoint's recipe, typed flags) "
                        "as YAML and exit")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its one line")


def _evaluation_flags(g) -> None:
    d = Config()
    g.add_argument("--evaluation", action="store_true", help="evaluate --resume on --split and write a report")
    g.add_argument("--ood_data", default=d.ood_data, metavar="DIR_OR_CSV",
                   help="images of classes the model was not trained on (a folder, nested allowed, or a CSV list): "
                        "the report adds how well the top calibrated probability tells them from --split (OOD "
                        "AUROC) and, for a calibrated model, the share of them answered unknown")


def _calibrate_flags(g) -> None:
    d = Config()
    g.add_argument("--calibrate", action="store_true",
                   help="fit temperature scaling, a reject threshold and conformal prediction sets on the val split "
                        "and store them in the checkpoint (and so in every later export): of --resume CKPT, or, "
                        "without --resume, of the run it trains first")
    g.add_argument("--reject_coverage", type=_probability, default=d.reject_coverage, metavar="C",
                   help="the reject threshold answers 'unknown' for all but this share of val images (lowest top "
                        "calibrated probability first)")
    g.add_argument("--conformal_alpha", type=_probability, default=d.conformal_alpha, metavar="A",
                   help="conformal prediction sets cover the true class of a new image with probability >= 1 - A")


def _export_flags(g) -> None:
    g.add_argument("--jit", action="store_true", help="export --resume to TorchScript (traced, frozen)")


def _onnx_flags(g) -> None:
    g.add_argument("--onnx", action="store_true",
                   help="export --resume to ONNX (dynamic batch, class names and preprocessing as metadata) and "
                        "check it with ONNX Runtime on real images")
    g.add_argument("--int8", action="store_true",
                   help="also write a dynamically quantised int8 model and report its val accuracy")


def _export_more_flags(g) -> None:
    d = Config()
    g.add_argument("--export", choices=("pt2", "openvino"), default=d.export,
                   help="export --resume for another runtime and check it on real images: pt2 (torch.export with a "
                        "dynamic batch, compiled by AOTInductor into a .pt2 package; needs a C++ compiler) or "
                        "openvino (the ONNX export, written first when missing or older than the checkpoint, as "
                        "OpenVINO IR .xml/.bin); both carry the class names and preprocessing")


def _predict_flags(g) -> None:
    d = Config()
    g.add_argument("--predict", default=d.predict, metavar="DIR_OR_CSV",
                   help="write a submission CSV (filename,label) for the images of a folder or a CSV list, with "
                        "--resume CKPT [CKPT ...] (an ensemble), optional --tta and --probabilities")
    g.add_argument("--probabilities", action="store_true",
                   help="add one probability column per class to the submission CSV")
    g.add_argument("--answer", default=d.answer, choices=["top", "unknown", "set"],
                   help="the label column: top (the most likely class), unknown (that class, or 'unknown' below the "
                        "threshold --calibrate fitted) or set (the conformal set, classes joined by '|')")


def _average_flags(g) -> None:
    d = Config()
    g.add_argument("--average_last", type=int, default=d.average_last, metavar="K",
                   help="average the weights of the last K epoch checkpoints of the run of --resume (written with "
                        "--keep_epochs) into one checkpoint")
    g.add_argument("--average", nargs="+", default=d.average, metavar="CKPT",
                   help="average the weights of these checkpoints (same model) into one checkpoint")
    g.add_argument("--update_bn", action="store_true",
                   help="recompute BatchNorm statistics of the average on the training split")


def _aug_preview_flags(g) -> None:
    g.add_argument("--aug_preview", type=int, default=None, metavar="N",
                   help="write a PNG grid of N augmented train samples (with mixes and multi-scale when set) to "
                        "--output or CHECKPOINT_DIR/NAME/aug_preview.png and exit without training")


def _lr_find_flags(g) -> None:
    d = Config()
    g.add_argument("--lr_find", action="store_true",
                   help="lr finder: exponential lr sweep on the train data, writes lr_find.png/.csv to --output "
                        "(default CHECKPOINT_DIR/NAME/), prints the suggested lr; trains and saves no model")
    g.add_argument("--lr_find_start", type=float, default=d.lr_find_start, help="first lr of the sweep")
    g.add_argument("--lr_find_end", type=float, default=d.lr_find_end, help="last lr of the sweep")
    g.add_argument("--lr_find_steps", type=int, default=d.lr_find_steps,
                   help="iterations of the sweep (it stops early once the loss exceeds 4x its minimum)")


def _knowledge_flags(g) -> None:
    g.add_argument("--knowledge", default=None, choices=["train", "val", "test"],
                   help="predict this split with the teacher --resume and write its class probabilities to "
                        "DATA/distill.txt (or --output) and the one-hot labels to label.txt beside it")


def _curriculum_flags(g) -> None:
    g.add_argument("--make_curriculum", action="store_true",
                   help="score every training image with --resume (probability of its true class), assign stages by "
                        "--curriculum_thresholds and write DATA/curriculum.txt (or --output)")


def _pseudo_label_flags(g) -> None:
    d = Config()
    g.add_argument("--pseudo_label", default=d.pseudo_label, metavar="DIR_OR_CSV",
                   help="train, label these unlabelled images (a folder, nested allowed, or a CSV list) with the "
                        "model, add those at least --pseudo_threshold sure to train and train again, "
                        "--pseudo_rounds times; NAME/roundR/ holds each round's run, NAME/pseudo_labels.csv the labels")
    g.add_argument("--pseudo_threshold", type=float, default=d.pseudo_threshold, metavar="P",
                   help="keep an image when its top class probability is >= P")
    g.add_argument("--pseudo_rounds", type=_positive_int, default=d.pseudo_rounds, metavar="K",
                   help="labelling and retraining rounds (each round relabels every image with the latest model)")
    g.add_argument("--pseudo_targets", default=d.pseudo_targets, choices=["hard", "soft"],
                   help="hard: the top class; soft: the model's class probabilities as the target")
    g.add_argument("--pseudo_weight", type=float, default=d.pseudo_weight, metavar="W",
                   help="loss weight of a pseudo-labelled image (a labelled one weighs 1)")


def _visual_flags(g) -> None:
    d = Config()
    g.add_argument("--visual_data", default=d.visual_data, metavar="DIR_OR_SPLIT",
                   help="draw class activation maps of --resume for a split (train/val/test) or a folder of images")
    g.add_argument("--visual_method", default=d.visual_method, choices=["cam", "grad-cam", "grad-cam++", "grad-camm++"],
                   help="cam (feature maps weighted by the classifier), grad-cam or grad-cam++ (grad-camm++ is the "
                        "main seed's spelling of grad-cam++)")
    g.add_argument("--target_layer", default=d.target_layer, metavar="MODULE",
                   help="module whose feature map is explained (default: the last one with a spatial map)")
    g.add_argument("--visual_limit", type=_positive_int, default=d.visual_limit, metavar="N",
                   help="at most N images (the first N of the split or folder)")


def _serve_flags(g) -> None:
    d = Config()
    g.add_argument("--serve", default=d.serve, metavar="MODEL_OR_DEPLOY_JSON",
                   help="serve an exported model (TorchScript, ONNX, AOTInductor or OpenVINO file, or a deploy.json "
                        "naming one) over HTTP: Open Inference Protocol v2 under /v2, POST /predict, GET /metrics, a "
                        "web page at /")
    g.add_argument("--host", default=d.host, help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=_non_negative_int, default=d.port, help="TCP port (0: any free port)")
    g.add_argument("--max_batch_size", type=_positive_int, default=d.max_batch_size, metavar="N",
                   help="dynamic batching: at most N images per model call (1: no batching)")
    g.add_argument("--max_wait_ms", type=float, default=d.max_wait_ms, metavar="MS",
                   help="dynamic batching: how long the first request of a batch waits for others to join it")
    g.add_argument("--max_queue", type=_positive_int, default=d.max_queue, metavar="N",
                   help="requests allowed to wait for the model; one more is answered 503")
    g.add_argument("--max_body_mb", type=_positive_float, default=d.max_body_mb, metavar="MB",
                   help="largest request body; a larger one is answered 413")
    g.add_argument("--topk", type=_positive_int, default=d.topk, metavar="K",
                   help="classes per image in POST /predict answers (?topk=K per request)")
    g.add_argument("--threads", type=_positive_int, default=d.threads, metavar="T",
                   help="threads of one model call: torch's (TorchScript, AOTInductor) or the runtime's intra-op "
                        "threads (ONNX Runtime, OpenVINO); unset: a deploy.json's, else all cores but one (the "
                        "other serves HTTP)")


def _repeat_flags(g) -> None:
    g.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="train N runs with seeds --seed .. --seed+N-1 (NAME/seedS) and write a mean / std / 95%% "
                        "confidence interval report of their test and val top-1")


def _gan_flags(g) -> None:
    d = Config()
    g.add_argument("--gan", action="store_true",
                   help="train a class-conditional DCGAN on the train split of --data (DDP under torchrun like "
                        "training; -b per process); writes generator.pth and discriminator.pth to "
                        "CHECKPOINT_DIR/NAME/ every epoch, --resume RUN/generator.pth continues")
    g.add_argument("--gan_image_size", type=_positive_int, default=d.gan_image_size, metavar="S",
                   help="square side of the generated images, S0 x 2^k with S0 in 3..8 (28, 32, 64, ...); train "
                        "images are letterboxed to it. Grayscale or RGB follows the data")
    g.add_argument("--gan_latent", type=_positive_int, default=d.gan_latent, metavar="Z",
                   help="noise dimensions of the generator (the label embedding has as many)")
    g.add_argument("--gan_width", type=_positive_int, default=d.gan_width, metavar="W",
                   help="channels of the discriminator's first and the generator's last layer (doubling per scale)")
    g.add_argument("--gan_epochs", type=_positive_int, default=d.gan_epochs, help="epochs of GAN training")
    g.add_argument("--gan_lr", type=_positive_float, default=d.gan_lr,
                   help="Adam lr of generator and discriminator (betas 0.5, 0.999 as in DCGAN)")
    g.add_argument("--gan_diversity", type=_non_negative_float, default=d.gan_diversity, metavar="L",
                   help="weight of the mode-seeking term (MSGAN) in the generator's loss: two noise vectors of one "
                        "class must give different images; 0 turns it off")


def _gan_generate_flags(g) -> None:
    g.add_argument("--gan_generate", type=_positive_int, default=None, metavar="N",
                   help="with --resume RUN/generator.pth: write N images per class to DATA/gen_dataset/RUN/<class>/ "
                        "(or --output DIR), their list labels.csv and grid.png (one row per class)")


def _audit_flags(g) -> None:
    d = Config()
    g.add_argument("--audit", action="store_true",
                   help="audit the data set of --data and write CHECKPOINT_DIR/NAME/audit/ (or --output DIR): "
                        "index.html, CSV files of exact and near duplicates within and across splits, likely label "
                        "errors, class balance, image sizes and modes, unreadable files. Label errors come from "
                        "out-of-fold probabilities: --resume the K checkpoints of a --kfold K training, or it trains "
                        "K folds of the recipe the flags give (--kfold default 5, --epochs default 3, --model) in "
                        "CHECKPOINT_DIR/NAME/foldI")
    g.add_argument("--audit_fix", action="store_true",
                   help="also write AUDIT/cleaned/{train,val,test}.csv, a data root for --data without the train "
                        "copies of val/test images, extra exact copies within train and flagged labels, and "
                        "held_out.csv saying why; the data's own files are never moved or deleted")
    g.add_argument("--audit_skip_labels", action="store_true",
                   help="skip the label-error part (no model is trained or loaded): duplicates and statistics only")
    g.add_argument("--audit_phash_threshold", type=_non_negative_int, default=d.audit_phash_threshold, metavar="H",
                   help="near duplicates: images whose 64-bit perceptual hashes (DCT pHash of the grey image) "
                        "differ in at most H bits ...")
    g.add_argument("--audit_pixel_tolerance", type=_non_negative_float, default=d.audit_pixel_tolerance,
                   metavar="T", help="... and 16x16 grey thumbnails, each minus its mean, at most T grey levels "
                                     "(of 255) apart on average")
    g.add_argument("--audit_top", type=_positive_int, default=d.audit_top, metavar="N",
                   help="images shown in the page per list (pairs across splits, within a split, label errors); "
                        "the CSV files hold all")


# (title, job name, the flags that choose the job, the function adding its flags); main.py maps names to applications
JOB_GROUPS = (
    ("running (any job)", None, (), _running_flags),
    ("evaluate: --evaluation --resume CKPT", "evaluate", ("evaluation",), _evaluation_flags),
    ("calibrate: --calibrate [--resume CKPT]", "calibrate", ("calibrate",), _calibrate_flags),
    ("export to TorchScript: --jit --resume CKPT", "export_jit", ("jit",), _export_flags),
    ("export to ONNX: --onnx --resume CKPT", "export_onnx", ("onnx",), _onnx_flags),
    ("export for AOTInductor or OpenVINO: --export {pt2,openvino} --resume CKPT", "export_more", ("export",),
     _export_more_flags),
    ("predict: --predict DIR_OR_CSV --resume CKPT [CKPT ...]", "predict", ("predict",), _predict_flags),
    ("average weights: --average A B ... | --average_last K --resume RUN/last.pth", "average",
     ("average", "average_last"), _average_flags),
    ("preview augmentations: --aug_preview N", "aug_preview", ("aug_preview",), _aug_preview_flags),
    ("lr finder: --lr_find", "lr_find", ("lr_find",), _lr_find_flags),
    ("teacher knowledge: --knowledge SPLIT --resume TEACHER", "knowledge", ("knowledge",), _knowledge_flags),
    ("curriculum: --make_curriculum --resume CKPT", "curriculum", ("make_curriculum",), _curriculum_flags),
    ("pseudo-labelling: --pseudo_label DIR_OR_CSV", "pseudo_label", ("pseudo_label",), _pseudo_label_flags),
    ("class activation maps: --visual_data SPLIT_OR_DIR --resume CKPT", "visualize", ("visual_data",),
     _visual_flags),
    ("repeat with seeds: --repeat N", "repeat", ("repeat",), _repeat_flags),
    ("serve: --serve MODEL_OR_DEPLOY_JSON", "serve", ("serve",), _serve_flags),
    ("class-conditional DCGAN: --gan", "gan", ("gan",), _gan_flags),
    ("generated images: --gan_generate N --resume GENERATOR", "gan_generate", ("gan_generate",),
     _gan_generate_flags),
    ("dataset audit: --audit --data DATA [--resume FOLD_CKPT ...]", "audit", ("audit",), _audit_flags),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser: recipe groups, then one group per job (``--help`` lists them in that order)."""
    return parser_and_jobs()[0]


def parser_and_jobs() -> tuple[argparse.ArgumentParser, list[JobGroup]]:
    """The parser and the jobs' flag groups."""
    d = Config()
    p = _Parser(description="Train, evaluate and export image classifiers (python main.py or torchrun main.py). "
                            "Without a job flag, main.py trains.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add in RECIPE_GROUPS:
        add(p, d)
    jobs = []
    for title, name, selectors, add in JOB_GROUPS:
        g = p.add_argument_group(title)
        add(g)
        jobs.append(JobGroup(title, name, selectors, tuple(a.dest for a in g._group_actions)))
    return p, jobs


_JOBS = parser_and_jobs()[1]
# Options that describe how to run, not what was trained: on resume they come from the command line.
RUNTIME_FLAGS = frozenset(dest for job in _JOBS for dest in job.dests)
# What a run's config.yaml leaves out: the choice of job and its inputs, which --config must not turn on, and the
# run's name (the folder it sits in), so that --config FILE starts a new run instead of writing over that one.
NOT_IN_CONFIG_YAML = (RUNTIME_FLAGS - {"device", "workers", "decode"}) | {"stop_epoch", "name"}
# Options shared by some jobs but not all: each names the jobs it serves (checked by check_job_flags).
SHARED_FLAGS = {"tta": ("evaluate", "predict"), "ensemble_weights": ("evaluate", "predict"),
                "split": ("evaluate", "export_onnx", "export_jit"),
                "save_every_minutes": (None, "repeat"), "save_every_steps": (None, "repeat")}  # None: training


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


def given(cfg: Config, explicit: set[str], name: str, default=None):
    """The value of option NAME if the user typed it, else DEFAULT (a job's own default, or None for
    'not asked': a checkpoint's or the machine's choice then applies)."""
    return getattr(cfg, name) if name in explicit else default


def read_config_yaml(path: str, parser: argparse.ArgumentParser) -> dict:
    """Flag defaults from a YAML mapping of flag names (a run's config.yaml works); unknown keys are refused."""
    import difflib

    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise FlagError(f"--config {path}: no such file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise FlagError(f"--config {path}: not a readable YAML file ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise FlagError(f"--config {path}: expected a mapping of flag names to values, got {type(values).__name__}")
    known = {a.dest for a in parser._actions if a.option_strings} - {"help", "config", "print_config"}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise FlagError(f"--config {path}: unknown key {key!r}{hint}")
    return values


def write_config_yaml(cfg: Config, path: str | Path) -> None:
    """The resolved config as YAML (readable by --config), written atomically."""
    from utils.checkpoint import atomic_write

    text = config_yaml(cfg).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(text))


def config_yaml(cfg: Config) -> str:
    import yaml

    values = {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_CONFIG_YAML}
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=None, width=120)


def parse_config(argv: list[str] | None = None) -> tuple[Config, set[str]]:
    """The config from defaults, --config FILE.yaml and the typed flags; and the names of the flags set explicitly
    (typed or in the YAML file), which a resumed run takes over the checkpoint's values."""
    parser, jobs = parser_and_jobs()
    args = parser.parse_args(argv)
    explicit = explicit_flags(parser, argv)
    if args.config:
        values = read_config_yaml(args.config, parser)
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
        explicit |= set(values)
    if isinstance(args.resume, list) and len(args.resume) == 1:
        args.resume = args.resume[0]  # one checkpoint, as every job but --predict takes
    cfg = Config(**vars(args))
    check_job_flags(cfg, explicit, jobs)
    return cfg, explicit


def chosen_jobs(cfg: Config, jobs: list[JobGroup] | None = None) -> list[JobGroup]:
    """The jobs the flags choose (none: training)."""
    jobs = jobs if jobs is not None else _JOBS
    return [job for job in jobs if job.name and job.chosen_by(cfg)]


def check_job_flags(cfg: Config, explicit: set[str], jobs: list[JobGroup]) -> None:
    """At most one job; a job's own flags only with it; --resume with several files only for --predict."""
    chosen = chosen_jobs(cfg, jobs)
    if len(chosen) > 1:
        raise FlagError(f"choose one job; got {', '.join(job.flag for job in chosen)}")
    names = {job.name for job in chosen} or {None}
    for job in jobs:
        if job.name is None or job.name in names:
            continue
        for dest in sorted(set(job.dests) & explicit):
            raise FlagError(f"{_flag_name(dest)} belongs to {job.flag}; add {job.flag} or drop {_flag_name(dest)}")
    label = {job.name: job.flag if job.name else "training" for job in jobs}
    for dest, owners in SHARED_FLAGS.items():
        if dest in explicit and not names & set(owners):
            raise FlagError(f"{_flag_name(dest)} is used by {' and '.join(label[o] for o in owners)} only")
    if isinstance(cfg.resume, list) and names not in ({"predict"}, {"evaluate"}, {"audit"}):
        raise FlagError(f"--resume got {len(cfg.resume)} files; only --predict and --evaluation take several (an "
                        "ensemble), and --audit (the folds of a --kfold training)")


def _flag_name(dest: str) -> str:
    return "--" + dest
