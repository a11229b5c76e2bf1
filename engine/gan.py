"""A class-conditional DCGAN run (``--gan``) and sampling from its generator (``--gan_generate``).

Training reads the train split as classifier training does (the same dataset and sharded loader, DDP under
torchrun), letterboxed to --gan_image_size and scaled to [-1, 1], with one channel when the data is grayscale. Each
step trains the discriminator on the batch's real images and as many generated ones (one forward over both, so DDP
sees one forward per backward), then the generator against it: the non-saturating loss plus --gan_diversity times
MSGAN's mode-seeking term, for which the generated batch is drawn in pairs of one class (``paired_labels``). The noise
of epoch e on rank r comes from a generator seeded with (seed, e, r) and the loader's order from (seed, e), so a
resumed run repeats an uninterrupted one bit for bit without storing RNG states.

After every epoch rank 0 writes discriminator.pth, then generator.pth (utils/checkpoint.py's format, written
atomically; ``weights`` names the network, ``preprocessing`` the image side, channels and value range) and
samples.png (one row per class, the same noise every epoch).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from config import Config
from dataloader import build_datasets
from engine.components import loader_for
from engine.job import Job, default_run_name, run_dir, seed_everything
from models.dcgan import ConditionalDiscriminator, ConditionalGenerator, start_size
from utils.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from utils.distributed import DistInfo, reduce_sum, wrap_ddp
from utils.errors import DataError, UsageError
from utils.logger import RunRecorder

GENERATOR, DISCRIMINATOR = "generator.pth", "discriminator.pth"
ARCHITECTURE = ("gan_image_size", "gan_latent", "gan_width")  # what a resumed run cannot change
GRID_COLUMNS = 10
BETAS = (0.5, 0.999)  # DCGAN's Adam betas


def check_gan_recipe(cfg: Config) -> None:
    """The GAN flags a run cannot start with."""
    try:
        start_size(cfg.gan_image_size)
    except ValueError as error:
        raise UsageError(f"--gan_image_size: {error}") from None
    if cfg.batch_size < 2:
        raise UsageError(f"--gan needs -b >= 2 (the generator's BatchNorm), got {cfg.batch_size}")


def generator_path(resume: str, cfg: Config) -> str | None:
    """The generator.pth that --resume names: itself, the generator next to a discriminator.pth, or for 'auto'
    CHECKPOINT_DIR/NAME/generator.pth when it exists (None: start the run)."""
    if resume == "auto":
        if not cfg.name:
            raise UsageError("--resume auto needs --name NAME (it continues CHECKPOINT_DIR/NAME/generator.pth)")
        path = run_dir(cfg) / GENERATOR
        return str(path) if path.is_file() else None
    path = Path(resume)
    return str(path.with_name(GENERATOR)) if path.name == DISCRIMINATOR else resume


def resume_gan_config(cfg: Config, ckpt: Checkpoint, explicit: set[str]) -> None:
    """A resumed GAN keeps its architecture and lr (job flags, so open_job took the command line's defaults);
    typed architecture flags must agree with the checkpoint. --gan_epochs may grow."""
    if ckpt.weights != "generator":
        raise UsageError(f"--resume {cfg.resume} holds {ckpt.weights} weights, not a generator; pass RUN/{GENERATOR} "
                         "written by --gan")
    trained = Config.from_dict(ckpt.config)
    for key in (*ARCHITECTURE, "gan_lr", "gan_diversity", "gan_epochs"):
        if key not in explicit:
            setattr(cfg, key, getattr(trained, key))
        elif key in ARCHITECTURE and getattr(cfg, key) != getattr(trained, key):
            raise UsageError(f"--{key} {getattr(cfg, key)} but {cfg.resume} was trained with "
                             f"{getattr(trained, key)}; drop --{key} to continue it")


def image_channels(dataset, probe: int = 64) -> int:
    """1 when ``probe`` evenly spread images of ``dataset`` are all gray (R = G = B), else 3."""
    for index in range(0, len(dataset), max(1, len(dataset) // probe)):
        image = dataset[index][0]
        if not (torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])):
            return 3
    return 1


def to_gan_input(images: torch.Tensor, channels: int, device: torch.device) -> torch.Tensor:
    """uint8 NCHW RGB batch -> float in [-1, 1] with ``channels`` channels (1: the gray value)."""
    return images[:, :channels].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def to_uint8(fake: torch.Tensor) -> np.ndarray:
    """Generated NCHW images in [-1, 1] -> uint8 NHWC (C = 1 or 3)."""
    pixels = ((fake.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def build_networks(cfg: Config, num_classes: int, channels: int) -> tuple[ConditionalGenerator,
                                                                          ConditionalDiscriminator]:
    side = cfg.gan_image_size
    generator = ConditionalGenerator(num_classes=num_classes, latent=cfg.gan_latent, channels=channels,
                                     image_size=side, width=cfg.gan_width)
    discriminator = ConditionalDiscriminator(num_classes=num_classes, channels=channels, image_size=side,
                                             width=cfg.gan_width)
    return generator, discriminator


@dataclass
class GanRun:
    """Everything a GAN run trains with, built once by ``build_gan_run``."""

    cfg: Config
    info: DistInfo
    class_names: list[str]
    channels: int
    loader: object
    generator: ConditionalGenerator
    discriminator: ConditionalDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ddp_generator: torch.nn.Module | None = None
    ddp_discriminator: torch.nn.Module | None = None
    start_epoch: int = 0
    metrics: dict | None = None

    @property
    def out_dir(self) -> Path:
        return run_dir(self.cfg)


def build_gan_run(job: Job) -> GanRun:
    """Data, networks, optimizers and (with --resume) their state. Nothing is written yet."""
    cfg, info = job.cfg, job.info
    check_gan_recipe(cfg)
    if cfg.name is None:
        cfg.name = default_run_name(dataclasses.replace(cfg, model="dcgan"))
    seed_everything(cfg.seed)
    side = cfg.gan_image_size
    dataset = build_datasets(cfg.data, image_size=(side, side), aug=None, val_ratio=0.0, seed=cfg.seed).train
    channels = int(job.ckpt.preprocessing["channels"]) if job.ckpt is not None else image_channels(dataset)
    generator, discriminator = (net.to(info.device) for net in build_networks(cfg, len(dataset.class_names),
                                                                                channels))
    run = GanRun(cfg, info, dataset.class_names, channels, loader_for(dataset, cfg, info, train=True),
                 generator, discriminator,
                 opt_g=torch.optim.Adam(generator.parameters(), lr=cfg.gan_lr, betas=BETAS),
                 opt_d=torch.optim.Adam(discriminator.parameters(), lr=cfg.gan_lr, betas=BETAS))
    if job.ckpt is not None:
        restore_gan_state(run, job.ckpt)
        job.log.info("resumed %s after epoch %d", cfg.resume, run.start_epoch)
    run.ddp_generator, run.ddp_discriminator = wrap_ddp(generator, info), wrap_ddp(discriminator, info)
    job.log.info("GAN run %s: %d classes, %d train images at %dx%d, %d channel(s), latent %d, width %d, world size "
                 "%d on %s", cfg.name, len(run.class_names), len(dataset), side, side, channels, cfg.gan_latent,
                 cfg.gan_width, info.world_size, info.device)
    return run


def restore_gan_state(run: GanRun, ckpt: Checkpoint) -> None:
    """Both networks and optimizers from generator.pth and the discriminator.pth beside it."""
    path = Path(run.cfg.resume).with_name(DISCRIMINATOR)
    other = load_checkpoint(path, flag="--resume's discriminator")
    if other.weights != "discriminator" or other.epoch != ckpt.epoch:
        raise DataError(f"{path} is not the discriminator of {run.cfg.resume} (epoch {other.epoch + 1} vs "
                        f"{ckpt.epoch + 1}); resume from a run folder written by one --gan run")
    if list(ckpt.class_names) != list(run.class_names):
        raise DataError(f"{run.cfg.resume} was trained on classes {ckpt.class_names[:5]}..., --data "
                        f"{run.cfg.data} has {run.class_names[:5]}...; resume on the same data")
    if ckpt.world_size is not None and ckpt.world_size != run.info.world_size:
        raise UsageError(f"--resume {run.cfg.resume} was trained by {ckpt.world_size} process(es), this run has "
                         f"{run.info.world_size}; resume with {ckpt.world_size} (the batches would change)")
    run.generator.load_state_dict(ckpt.model)
    run.discriminator.load_state_dict(other.model)
    run.opt_g.load_state_dict(ckpt.optimizer)
    run.opt_d.load_state_dict(other.optimizer)
    run.start_epoch, run.metrics = ckpt.epoch + 1, ckpt.metrics


def fit_gan(run: GanRun, log) -> dict:
    """Train to --gan_epochs, saving both checkpoints and samples.png after each epoch; the last epoch's metrics."""
    cfg, info = run.cfg, run.info
    recorder = RunRecorder(cfg.log_dir + "/" + cfg.name, run.out_dir / "summary.csv", info.is_main)
    metrics = run.metrics or {}
    try:
        for epoch in range(run.start_epoch, cfg.gan_epochs):
            metrics = gan_epoch(run, epoch)
            if info.is_main:
                save_gan(run, epoch, metrics)
                write_png(run.out_dir / "samples.png", class_grid(
                    sample_grid(run.generator, len(run.class_names), cfg.seed, info.device), run.class_names))
            recorder.epoch_row(metrics)
            recorder.scalars({f"gan/{k}": v for k, v in metrics.items() if k not in ("epoch", "seconds")}, epoch)
            log.info("epoch %d/%d  D loss %.4f  G loss %.4f  D(real) %.3f  D(fake) %.3f  %.1fs", epoch + 1,
                     cfg.gan_epochs, metrics["d_loss"], metrics["g_loss"], metrics["d_real"], metrics["d_fake"],
                     metrics["seconds"])
    finally:
        recorder.close()
    log.info("%s and %s in %s; images: --gan_generate N --resume %s", GENERATOR, DISCRIMINATOR, run.out_dir,
             run.out_dir / GENERATOR)
    return metrics


def noise_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def paired_labels(labels: torch.Tensor) -> torch.Tensor:
    """The labels the generator draws a batch for: the first half of the real batch's labels, twice (and the odd
    one out), so that images i and i + n/2 share a class and differ only in their noise (``mode_seeking_loss``)."""
    half = labels.shape[0] // 2
    paired = labels.clone()
    paired[half:2 * half] = labels[:half]
    return paired


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSGAN's term (Mao et al. 2019): 1 / (mean |G(z1, y) - G(z2, y)| / mean |z1 - z2|) over the pairs of
    ``paired_labels``. Large when two noise vectors give the same image: a conditional generator that ignores its
    noise and draws one image per class (what it did on 100 Fashion-MNIST images per class without this) pays."""
    half = fake.shape[0] // 2
    if half == 0:
        return fake.new_zeros(())
    images = (fake[:half] - fake[half:2 * half]).abs().flatten(1).mean(dim=1)
    noise = (z[:half] - z[half:2 * half]).abs().mean(dim=1)
    return 1.0 / ((images / noise).mean() + 1e-5)


def gan_epoch(run: GanRun, epoch: int) -> dict:
    """One pass over this rank's shard: a discriminator step, then a generator step, per batch. Returns the mean
    losses and mean discriminator probabilities on real and generated images over all ranks."""
    cfg, info, device = run.cfg, run.info, run.info.device
    run.loader.sampler.set_epoch(epoch)
    noise = torch.Generator().manual_seed(noise_seed(cfg.seed, epoch, info.rank))
    run.generator.train()
    run.discriminator.train()
    started, sums, seen = time.time(), torch.zeros(4, dtype=torch.float64, device=device), 0
    for images, real_labels, _ in run.loader:
        real, real_labels = to_gan_input(images, run.channels, device), real_labels.to(device)
        n = real.shape[0]
        labels, z = paired_labels(real_labels), torch.randn(n, cfg.gan_latent, generator=noise).to(device)
        fake = run.ddp_generator(z, labels)
        scores = run.ddp_discriminator(torch.cat([real, fake.detach()]), torch.cat([real_labels, labels]))
        is_real = torch.cat([torch.ones(n, device=device), torch.zeros(n, device=device)])
        d_loss = F.binary_cross_entropy_with_logits(scores, is_real)
        run.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        run.opt_d.step()
        g_scores = run.ddp_discriminator(fake, labels)
        g_loss = F.binary_cross_entropy_with_logits(g_scores, torch.ones_like(g_scores))
        objective = g_loss + cfg.gan_diversity * mode_seeking_loss(fake, z) if cfg.gan_diversity else g_loss
        run.opt_g.zero_grad(set_to_none=True)
        objective.backward()  # also fills the discriminator's gradients, cleared before its next step
        run.opt_g.step()
        with torch.no_grad():
            probs = torch.sigmoid(scores.detach())
            sums += torch.stack([d_loss.detach() * n, g_loss.detach() * n, probs[:n].sum(), probs[n:].sum()]).double()
        seen += n
    d_loss, g_loss, d_real, d_fake, total = reduce_sum([*sums.tolist(), seen], device)
    if not math.isfinite(d_loss + g_loss):
        raise UsageError(f"GAN losses became non-finite in epoch {epoch + 1}; lower --gan_lr")
    return {"epoch": epoch, "d_loss": d_loss / total, "g_loss": g_loss / total, "d_real": d_real / total,
            "d_fake": d_fake / total, "seconds": round(time.time() - started, 2)}


def save_gan(run: GanRun, epoch: int, metrics: dict) -> None:
    """discriminator.pth, then generator.pth (a resume checks that both hold the same epoch)."""
    side = run.cfg.gan_image_size
    common = {"config": run.cfg.to_dict(), "class_names": run.class_names, "epoch": epoch, "metrics": metrics,
              "preprocessing": {"image_size": [side, side], "channels": run.channels, "range": [-1.0, 1.0]},
              "world_size": run.info.world_size}
    save_checkpoint(Checkpoint(model=run.discriminator.state_dict(), optimizer=run.opt_d.state_dict(),
                               weights="discriminator", **common), run.out_dir / DISCRIMINATOR)
    save_checkpoint(Checkpoint(model=run.generator.state_dict(), optimizer=run.opt_g.state_dict(),
                               weights="generator", **common), run.out_dir / GENERATOR)


def generator_from_checkpoint(ckpt: Checkpoint, path: str, device: torch.device) -> ConditionalGenerator:
    """The trained generator of a generator.pth, in eval mode on ``device``."""
    if ckpt.weights != "generator":
        raise UsageError(f"--resume {path} holds {ckpt.weights} weights, not a generator; pass RUN/{GENERATOR} "
                         "written by --gan")
    generator, _ = build_networks(Config.from_dict(ckpt.config), len(ckpt.class_names),
                                  int(ckpt.preprocessing["channels"]))
    generator.load_state_dict(ckpt.model)
    return generator.to(device).eval()


@torch.no_grad()
def generate(generator: ConditionalGenerator, labels: torch.Tensor, z: torch.Tensor,
             batch_size: int = 256) -> np.ndarray:
    """uint8 NHWC images of ``labels`` from noise ``z`` (eval mode: each image depends on its own z only)."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    parts = [to_uint8(generator(z[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)))
             for i in range(0, len(labels), batch_size)]
    generator.train(was_training)
    return np.concatenate(parts)


def sample_grid(generator: ConditionalGenerator, num_classes: int, seed: int, device: torch.device,
                columns: int = GRID_COLUMNS) -> np.ndarray:
    """(classes, columns, H, W, C) images: the same ``columns`` noise vectors for every class."""
    z = torch.randn(columns, generator.latent, generator=torch.Generator().manual_seed(seed))
    images = [generate(generator, torch.full((columns,), c, dtype=torch.long), z) for c in range(num_classes)]
    return np.stack(images)


def class_grid(images: np.ndarray, class_names: list[str], tile: int = 56, label_width: int = 110) -> np.ndarray:
    """A white canvas (gray for 1-channel images, else RGB): one row per class (its name on the left), ``images[c]``
    enlarged to ``tile`` pixels."""
    rows, cols = images.shape[:2]
    gap = 2
    canvas = np.full((rows * (tile + gap) + gap, label_width + cols * (tile + gap) + gap, 3), 255, np.uint8)
    for r in range(rows):
        top = gap + r * (tile + gap)
        cv2.putText(canvas, class_names[r][:14], (4, top + tile // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0),
                    1, cv2.LINE_AA)
        for c in range(cols):
            image = cv2.resize(images[r, c], (tile, tile), interpolation=cv2.INTER_NEAREST)
            left = label_width + gap + c * (tile + gap)
            canvas[top:top + tile, left:left + tile] = image[..., None] if image.ndim == 2 else image
    return canvas[..., 0].copy() if images.shape[-1] == 1 else canvas  # a gray GAN's grid is a gray PNG


def write_png(path: str | Path, image: np.ndarray) -> None:
    """An RGB or gray uint8 image as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    if not cv2.imwrite(str(path), pixels):
        raise UsageError(f"could not write {path}; check that its folder is writable")


def write_generated_set(generator: ConditionalGenerator, class_names: list[str], per_class: int, out: Path,
                        seed: int) -> dict:
    """``per_class`` images of every class as OUT/<class>/<class>_NNNNN.png, OUT/labels.csv (filename,label,
    relative to OUT) written last, and OUT/grid.png (one row per class). Returns what was written."""
    noise = torch.Generator().manual_seed(seed)
    rows = [("filename", "label")]
    for label, name in enumerate(class_names):
        z = torch.randn(per_class, generator.latent, generator=noise)
        images = generate(generator, torch.full((per_class,), label, dtype=torch.long), z)
        (out / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            file = f"{name}/{name}_{i:05d}.png"
            write_png(out / file, image[..., 0] if image.shape[2] == 1 else image)
            rows.append((file, name))
    grid = class_grid(sample_grid(generator, len(class_names), seed, next(generator.parameters()).device,
                                  min(per_class, GRID_COLUMNS)), class_names)
    write_png(out / "grid.png", grid)
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return {"folder": str(out), "csv": str(out / "labels.csv"), "grid": str(out / "grid.png"),
            "per_class": per_class, "classes": len(class_names)}
