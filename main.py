"""Entry point: parse flags, dispatch to one application, and turn a user's mistake into one line.

    python main.py --data data/digits                       # train (a world of one)
    torchrun --nproc_per_node 2 main.py --data data/digits  # train with DDP
    python main.py --config recipe.yaml --epochs 30          # defaults from a YAML file, typed flags win
    python main.py --evaluation --resume checkpoints/RUN/best.pth
    python main.py --calibrate --resume checkpoints/RUN/best.pth  # temperature, "unknown" threshold, conformal sets
    python main.py --jit --resume checkpoints/RUN/best.pth
    python main.py --onnx --resume checkpoints/RUN/best.pth [--int8]    # ONNX + ONNX Runtime parity check
    python main.py --predict data/test_images --resume a.pth b.pth --tta  # submission.csv (ensemble, TTA)
    python main.py --average_last 4 --resume checkpoints/RUN/last.pth    # mean of the last 4 epoch checkpoints
    python main.py --aug_preview 16 --aug randaugment --cutmix  # PNG of augmented train samples, no training
    python main.py --lr_find --data data/digits --optimizer sgd  # lr sweep: lr_find.png/.csv, suggested lr
    python main.py --knowledge train --resume teacher/best.pth   # DATA/distill.txt (+ label.txt) for --distill
    python main.py --make_curriculum --resume RUN/best.pth       # DATA/curriculum.txt for --curriculum_learning
    python main.py --visual_data val --resume RUN/best.pth --visual_method grad-cam   # CAM overlays + index.html
    python main.py --data DATA --pseudo_label UNLABELLED --pseudo_threshold 0.95 --pseudo_rounds 3
    python main.py --data DATA --mean_teacher --unlabeled UNLABELLED --consistency_weight 10
    python main.py --data data/digits --repeat 3                 # 3 seeds: mean, std, 95% confidence interval
    python main.py --print_config --resume RUN/best.pth          # the resolved config as YAML
    python main.py --gan --data data/fmnist --gan_image_size 28  # class-conditional DCGAN: RUN/generator.pth
    python main.py --gan_generate 1000 --resume RUN/generator.pth  # DATA/gen_dataset/RUN/<class>/, labels.csv
    python main.py --data data/fmnist --extra_train data/fmnist/gen_dataset/RUN --extra_weight 0.5
    python main.py --audit --data DATA [--audit_fix]              # duplicates, leakage, label errors: NAME/audit/

Each application module has ``check(cfg)`` (its cross-flag rules, before any work) and ``run(cfg, explicit)``.
"""
from __future__ import annotations

import importlib
import sys

from config import Config, FlagError, chosen_jobs, config_yaml, parse_config
from utils.errors import DATA_EXIT, USAGE_EXIT, DataError

APPLICATIONS = {  # job name (config.JOB_GROUPS) -> module; imported only when chosen
    None: "applications.train",
    "evaluate": "applications.evaluate",
    "calibrate": "applications.calibrate",
    "export_jit": "applications.export",
    "export_onnx": "applications.export_onnx",
    "export_more": "applications.export_more",
    "predict": "applications.predict",
    "average": "applications.average",
    "aug_preview": "applications.aug_preview",
    "lr_find": "applications.lr_find",
    "knowledge": "applications.knowledge",
    "curriculum": "applications.curriculum",
    "visualize": "applications.visualize",
    "pseudo_label": "applications.pseudo_label",
    "repeat": "applications.repeat",
    "serve": "applications.serve",
    "gan": "applications.gan",
    "gan_generate": "applications.gan_generate",
    "audit": "applications.audit",
}


def run(cfg: Config, explicit: set[str]) -> object:
    """Run the job the flags choose (training without one)."""
    jobs = chosen_jobs(cfg)
    application = importlib.import_module(APPLICATIONS[jobs[0].name if jobs else None])
    application.check(cfg)
    return application.run(cfg, explicit)


def print_config(cfg: Config, explicit: set[str]) -> None:
    if cfg.resume and isinstance(cfg.resume, str):
        from engine.job import resolve_config

        cfg, _ = resolve_config(cfg, explicit)
    print(config_yaml(cfg), end="")


def exit_code(error: BaseException) -> int | None:
    """The exit code of a user's mistake, or None for an error that is a bug (it keeps its traceback)."""
    from dataloader.preprocess import ImageDecodeError

    if isinstance(error, (DataError, ImageDecodeError)):
        return DATA_EXIT
    if isinstance(error, (FlagError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                          ImportError)):
        return USAGE_EXIT
    return None


def run_command(argv: list[str] | None = None) -> object:
    """Parse ``argv`` and run it; errors propagate (what tests and other Python callers use)."""
    cfg, explicit = parse_config(argv)
    if cfg.print_config:
        return print_config(cfg, explicit)
    return run(cfg, explicit)


def main(argv: list[str] | None = None) -> None:
    """The command line: ``run_command``, with a user's mistake printed as one ``error: ...`` line."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        run_command(argv)
    except Exception as error:  # noqa: BLE001 - a user's mistake becomes one line; a bug keeps its traceback
        code = exit_code(error)
        if code is None or debug:
            raise
        from utils.logger import record_failure

        record_failure(error)  # the run's log (when it has one) keeps the traceback
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
