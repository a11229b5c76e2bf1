"""Entry point: parse flags and dispatch to one application.

    python main.py --data data/digits                       # train (a world of one)
    torchrun --nproc_per_node 2 main.py --data data/digits  # train with DDP
    python main.py --evaluation --resume checkpoints/RUN/best.pth
    python main.py --jit --resume checkpoints/RUN/best.pth
    python main.py --onnx --resume checkpoints/RUN/best.pth [--int8]    # ONNX + ONNX Runtime parity check
    python main.py --predict data/test_images --resume a.pth b.pth --tta  # submission.csv (ensemble, TTA)
    python main.py --average_last 4 --resume checkpoints/RUN/last.pth    # mean of the last 4 epoch checkpoints
    python main.py --aug_preview 16 --aug randaugment --cutmix  # PNG of augmented train samples, no training
    python main.py --lr_find --data data/digits --optimizer sgd  # lr sweep: lr_find.png/.csv, suggested lr
    python main.py --knowledge train --resume teacher/best.pth   # DATA/distill.txt (+ label.txt) for --distill
    python main.py --make_curriculum --resume RUN/best.pth       # DATA/curriculum.txt for --curriculum_learning
    python main.py --visual_data val --resume RUN/best.pth --visual_method grad-cam   # CAM overlays + index.html
    python main.py --data data/digits --repeat 3                 # 3 seeds: mean, std, 95% confidence interval
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import NamedTuple

from config import Config, parse_config


class Application(NamedTuple):
    flag: str  # as the user types it, for the error when two are chosen
    chosen: Callable[[Config], object]
    module: str
    function: str  # module.function(cfg, explicit) runs it


APPLICATIONS = [  # without any of these, main.py trains (applications.train.train)
    Application("--evaluation", lambda c: c.evaluation, "applications.evaluate", "evaluate"),
    Application("--jit", lambda c: c.jit, "applications.export", "export_jit"),
    Application("--onnx", lambda c: c.onnx, "applications.export_onnx", "export_onnx"),
    Application("--predict", lambda c: c.predict, "applications.predict", "predict_submission"),
    Application("--average_last / --average", lambda c: c.average_last is not None or c.average,
                "applications.average", "average_checkpoints"),
    Application("--aug_preview", lambda c: c.aug_preview is not None, "applications.aug_preview", "aug_preview"),
    Application("--lr_find", lambda c: c.lr_find, "applications.lr_find", "lr_find"),
    Application("--knowledge", lambda c: c.knowledge, "applications.knowledge", "dump_knowledge"),
    Application("--make_curriculum", lambda c: c.make_curriculum, "applications.curriculum", "make_curriculum"),
    Application("--visual_data", lambda c: c.visual_data, "applications.visualize", "visualize"),
    Application("--repeat", lambda c: c.repeat is not None, "applications.repeat", "repeat_runs"),
]
TRAIN = Application("(training)", lambda c: True, "applications.train", "train")


def main(argv: list[str] | None = None) -> None:
    cfg, explicit = parse_config(argv)
    chosen = [app for app in APPLICATIONS if app.chosen(cfg)]
    if len(chosen) > 1:
        sys.exit(f"choose one of {', '.join(app.flag for app in APPLICATIONS)}; got "
                 f"{', '.join(app.flag for app in chosen)}")
    if cfg.tta and not (cfg.evaluation or cfg.predict):
        sys.exit("--tta is test-time augmentation: use it with --evaluation or --predict")
    if isinstance(cfg.resume, list) and not cfg.predict:
        sys.exit(f"--resume got {len(cfg.resume)} files; only --predict takes several (an ensemble)")
    if cfg.int8 and not cfg.onnx:
        sys.exit("--int8 quantises the ONNX export: use it with --onnx --resume CKPT")
    app = chosen[0] if chosen else TRAIN
    getattr(importlib.import_module(app.module), app.function)(cfg, explicit)  # imported only when chosen


if __name__ == "__main__":
    main()
