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

import sys

from config import parse_config


def main(argv: list[str] | None = None) -> None:
    cfg, explicit = parse_config(argv)
    jobs = {"--evaluation": cfg.evaluation, "--jit": cfg.jit, "--onnx": cfg.onnx, "--predict": cfg.predict,
            "--average_last / --average": cfg.average_last is not None or cfg.average,
            "--aug_preview": cfg.aug_preview is not None, "--lr_find": cfg.lr_find, "--knowledge": cfg.knowledge,
            "--make_curriculum": cfg.make_curriculum, "--visual_data": cfg.visual_data, "--repeat": cfg.repeat}
    if sum(map(bool, jobs.values())) > 1:
        sys.exit(f"choose one of {', '.join(jobs)}; got {', '.join(k for k, v in jobs.items() if v)}")
    if cfg.tta and not (cfg.evaluation or cfg.predict):
        sys.exit("--tta is test-time augmentation: use it with --evaluation or --predict")
    if isinstance(cfg.resume, list) and not cfg.predict:
        sys.exit(f"--resume got {len(cfg.resume)} files; only --predict takes several (an ensemble)")
    if cfg.int8 and not cfg.onnx:
        sys.exit("--int8 quantises the ONNX export: use it with --onnx --resume CKPT")
    if cfg.evaluation:
        from applications.evaluate import evaluate
        evaluate(cfg, explicit)
    elif cfg.jit:
        from applications.export import export_jit
        export_jit(cfg, explicit)
    elif cfg.onnx:
        from applications.export_onnx import export_onnx
        export_onnx(cfg, explicit)
    elif cfg.predict:
        from applications.predict import predict_submission
        predict_submission(cfg, explicit)
    elif cfg.average_last is not None or cfg.average:
        from applications.average import average_checkpoints
        average_checkpoints(cfg, explicit)
    elif cfg.aug_preview is not None:
        from applications.aug_preview import aug_preview
        aug_preview(cfg, explicit)
    elif cfg.lr_find:
        from applications.lr_find import lr_find
        lr_find(cfg, explicit)
    elif cfg.knowledge:
        from applications.knowledge import dump_knowledge
        dump_knowledge(cfg, explicit)
    elif cfg.make_curriculum:
        from applications.curriculum import make_curriculum
        make_curriculum(cfg, explicit)
    elif cfg.visual_data:
        from applications.visualize import visualize
        visualize(cfg, explicit)
    elif cfg.repeat is not None:
        from applications.repeat import repeat_runs
        repeat_runs(cfg, explicit)
    else:
        from applications.train import train
        train(cfg, explicit)


if __name__ == "__main__":
    main()
