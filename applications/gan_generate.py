"""``--gan_generate N --resume RUN/generator.pth``: a labelled image set drawn from a trained conditional generator.

    python main.py --gan_generate 1000 --resume checkpoints/RUN/generator.pth
    python main.py --data data/fmnist --extra_train data/fmnist/gen_dataset/RUN --extra_weight 0.5   # train with it

Writes N images per class to DATA/gen_dataset/RUN/<class>/ (DATA and RUN of the GAN's training; --output DIR
elsewhere), their list labels.csv (filename,label relative to that folder; --extra_train takes the folder or the
CSV) and grid.png, one row per class. The noise is drawn from --seed, so the same command writes the same images. One
process writes everything (under torchrun the other ranks wait).
"""
from __future__ import annotations

from pathlib import Path

from config import Config
from engine.gan import generator_from_checkpoint, write_generated_set
from engine.job import open_job
from utils.checkpoint import load_checkpoint
from utils.distributed import barrier
from utils.errors import UsageError


def check(cfg: Config) -> None:
    if not cfg.resume or cfg.resume == "auto":
        raise UsageError("--gan_generate N needs --resume RUN/generator.pth (written by --gan)")


def run(cfg: Config, explicit: set[str]) -> dict:
    """Write the set (rank 0); returns what was written."""
    with open_job(cfg, explicit, checkpoint="none") as job:  # the generator's config is not a classifier's recipe
        ckpt = load_checkpoint(cfg.resume)
        generator = generator_from_checkpoint(ckpt, cfg.resume, job.info.device)
        trained = Config.from_dict(ckpt.config)
        out = Path(cfg.output) if cfg.output else Path(trained.data) / "gen_dataset" / trained.name
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"{out} already exists and is not empty; remove it or pass --output DIR")
        barrier()  # every rank has looked before rank 0 writes
        written = {}
        if job.info.is_main:
            written = write_generated_set(generator, ckpt.class_names, cfg.gan_generate, out, cfg.seed)
            job.log.info("wrote %d images per class of %d classes (generator %s, epoch %d) to %s, list %s, grid %s",
                         cfg.gan_generate, len(ckpt.class_names), cfg.resume, ckpt.epoch + 1, out, written["csv"],
                         written["grid"])
        barrier()
        return written
