"""Entry point: parse flags and dispatch to one application.

    python main.py --data data/digits                       # train (a world of one)
    torchrun --nproc_per_node 2 main.py --data data/digits  # train with DDP
    python main.py --evaluation --resume checkpoints/RUN/best.pth
    python main.py --jit --resume checkpoints/RUN/best.pth
    python main.py --aug_preview 16 --aug randaugment --cutmix  # PNG of augmented train samples, no training
    python main.py --lr_find --data data/digits --optimizer sgd  # lr sweep: lr_find.png/.csv, suggested lr
"""
from __future__ import annotations

import sys

from config import parse_config


def main(argv: list[str] | None = None) -> None:
    cfg, explicit = parse_config(argv)
    if sum(map(bool, (cfg.evaluation, cfg.jit, cfg.aug_preview is not None, cfg.lr_find))) > 1:
        sys.exit("choose one of --evaluation, --jit, --aug_preview and --lr_find")
    if cfg.tta and not cfg.evaluation:
        sys.exit("--tta is test-time augmentation: use it with --evaluation --resume CKPT")
    if cfg.evaluation:
        from applications.evaluate import evaluate
        evaluate(cfg, explicit)
    elif cfg.jit:
        from applications.export import export_jit
        export_jit(cfg, explicit)
    elif cfg.aug_preview is not None:
        from applications.aug_preview import aug_preview
        aug_preview(cfg, explicit)
    elif cfg.lr_find:
        from applications.lr_find import lr_find
        lr_find(cfg, explicit)
    else:
        from applications.train import train
        train(cfg, explicit)


if __name__ == "__main__":
    main()
