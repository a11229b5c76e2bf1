"""``--gan``: train a class-conditional DCGAN on the train split (engine/gan.py does the work).

    python main.py --gan --data data/fmnist --gan_image_size 28 --gan_epochs 50 -b 64
    torchrun --nproc_per_node 2 main.py --gan --data data/fmnist --gan_image_size 28
    python main.py --gan --resume checkpoints/RUN/generator.pth --gan_epochs 80   # continue (to 80 epochs)

The run folder CHECKPOINT_DIR/NAME/ receives generator.pth, discriminator.pth, samples.png, summary.csv and gan.log;
``--gan_generate N --resume RUN/generator.pth`` then writes a labelled image set for ``--extra_train``.
"""
from __future__ import annotations

from config import Config
from engine.gan import build_gan_run, check_gan_recipe, fit_gan, generator_path, resume_gan_config
from engine.job import open_job


def check(cfg: Config) -> None:
    check_gan_recipe(cfg)


def run(cfg: Config, explicit: set[str]) -> dict:
    """Train (or continue) the GAN; returns the last epoch's losses (on every rank)."""
    if cfg.resume:
        cfg.resume = generator_path(cfg.resume, cfg)
    with open_job(cfg, explicit) as job:
        if job.ckpt is not None:
            resume_gan_config(job.cfg, job.ckpt, explicit)
            if job.ckpt.epoch + 1 >= job.cfg.gan_epochs:
                job.log.info("GAN run %s already holds epoch %d of %d; nothing to do (raise --gan_epochs to train "
                             "longer)", job.cfg.name, job.ckpt.epoch + 1, job.cfg.gan_epochs)
                return job.ckpt.metrics
        run = build_gan_run(job)
        job.start_run_folder(run.out_dir, "gan.log")
        return fit_gan(run, job.log)
