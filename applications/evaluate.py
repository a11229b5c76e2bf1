"""``--evaluation --resume CKPT``: exact metrics on one split, whatever the number of processes."""
from __future__ import annotations

from pathlib import Path

from applications.common import (checkpoint_job, model_from_checkpoint, predict_probs, preprocessing_of,
                                 split_dataset_of)
from config import Config
from dataloader import EncodedImageDataset, build_loader
from dataloader.tta import build_tta
from utils.metrics import classification_report, write_report


def evaluate(cfg: Config, explicit: set[str]) -> dict:
    """Evaluate the checkpoint on ``cfg.split``; rank 0 writes report.json and the confusion matrix."""
    missing = "--evaluation needs --resume CKPT (a best.pth or last.pth written by training)"
    with checkpoint_job(cfg, explicit, missing) as (cfg, ckpt, info, log):
        class_names = ckpt["class_names"]
        dataset = split_dataset_of(cfg, cfg.split, class_names)
        if cfg.decode == "device":  # workers only read the files; predict() decodes each batch on the device
            dataset = EncodedImageDataset(dataset)
        loader = build_loader(dataset, batch_size=cfg.batch_size, workers=cfg.workers, train=False, seed=cfg.seed,
                              rank=info.rank, world_size=info.world_size, pin_memory=info.device.type == "cuda")
        model = model_from_checkpoint(ckpt, cfg, info.device)
        tta = build_tta(cfg.tta, image_size=cfg.image_size)
        if tta is not None:
            log.info("test-time augmentation: %s, probabilities averaged", tta.describe())
        _, probs, targets = predict_probs(model, loader, cfg, preprocessing_of(cfg), info.device, tta)
        report = classification_report(probs.cpu().numpy(), targets.cpu().numpy(), class_names)
        report.update({"checkpoint": str(cfg.resume), "split": cfg.split, "data": cfg.data,
                       "world_size": info.world_size, "tta": tta.describe() if tta else None})
        if info.is_main:
            suffix = f"_tta_{'_'.join(tta.groups)}" if tta else ""
            out_dir = Path(cfg.output) if cfg.output else Path(cfg.resume).parent / f"eval_{cfg.split}{suffix}"
            paths = write_report(report, class_names, out_dir)
            log.info("%s split of %s%s: %d images, top-1 %.2f%%, top-5 %.2f%%, macro F1 %.4f", cfg.split, cfg.data,
                     f" with TTA {tta.describe()}" if tta else "", report["samples"], report["top1"], report["top5"],
                     report["macro_f1"])
            log.info("report written to %s", ", ".join(str(p) for p in paths))
        return report
