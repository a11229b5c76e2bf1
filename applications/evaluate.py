"""``--evaluation --resume CKPT``: exact metrics on one split, whatever the number of processes."""
from __future__ import annotations

from pathlib import Path

from applications.common import model_from_checkpoint, predict, preprocessing_of, resolve_config, scores_to_probs
from config import Config
from dataloader import EncodedImageDataset, build_loader, build_split_dataset
from utils.distributed import cleanup_distributed, init_distributed
from utils.hardware import choose_amp
from utils.logger import setup_logging
from utils.metrics import classification_report, write_report


def evaluate(cfg: Config, explicit: set[str]) -> dict:
    """Evaluate the checkpoint on ``cfg.split``; rank 0 writes report.json and the confusion matrix."""
    info = init_distributed(cfg.device)
    try:
        log = setup_logging(None, info.is_main)
        if not cfg.resume:
            raise ValueError("--evaluation needs --resume CKPT (a best.pth or last.pth written by training)")
        cfg, ckpt = resolve_config(cfg, explicit)
        cfg.amp = choose_amp(cfg.amp if "amp" in explicit else None, info.device)  # this machine's, not training's
        class_names = ckpt["class_names"]
        dataset = build_split_dataset(cfg.data, cfg.split, image_size=tuple(cfg.image_size),
                                      class_names=class_names, val_ratio=cfg.val_ratio,
                                      seed=cfg.seed)
        if cfg.decode == "device":  # workers only read the files; predict() decodes each batch on the device
            dataset = EncodedImageDataset(dataset)
        loader = build_loader(dataset, batch_size=cfg.batch_size, workers=cfg.workers, train=False, seed=cfg.seed,
                              rank=info.rank, world_size=info.world_size, pin_memory=info.device.type == "cuda")
        model = model_from_checkpoint(ckpt, cfg, info.device)
        _, logits, targets = predict(model, loader, cfg, preprocessing_of(cfg), info.device)
        probs = scores_to_probs(logits, cfg.criterion).cpu().numpy()
        report = classification_report(probs, targets.cpu().numpy(), class_names)
        report.update({"checkpoint": str(cfg.resume), "split": cfg.split, "data": cfg.data,
                       "world_size": info.world_size})
        if info.is_main:
            out_dir = Path(cfg.output) if cfg.output else Path(cfg.resume).parent / f"eval_{cfg.split}"
            paths = write_report(report, class_names, out_dir)
            log.info("%s split of %s: %d images, top-1 %.2f%%, top-5 %.2f%%, macro F1 %.4f", cfg.split, cfg.data,
                     report["samples"], report["top1"], report["top5"], report["macro_f1"])
            log.info("report written to %s", ", ".join(str(p) for p in paths))
        return report
    finally:
        cleanup_distributed()
