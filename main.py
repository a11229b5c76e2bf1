"""Entry point: parse flags and dispatch to one application.

    python main.py --data data/digits                       # train (a world of one)
    torchrun --nproc_per_node 2 main.py --data data/digits  # train with DDP
    python main.py --evaluation --resume checkpoints/RUN/best.pth
    python main.py --jit --resume checkpoints/RUN/best.pth
"""
from __future__ import annotations

import sys

from config import parse_config


def main(argv: list[str] | None = None) -> None:
    cfg, explicit = parse_config(argv)
    if cfg.evaluation and cfg.jit:
        sys.exit("choose one of --evaluation and --jit")
    if cfg.evaluation:
        from applications.evaluate import evaluate
        evaluate(cfg, explicit)
    elif cfg.jit:
        from applications.export import export_jit
        export_jit(cfg, explicit)
    else:
        from applications.train import train
        train(cfg, explicit)


if __name__ == "__main__":
    main()
