"""Learning from unlabelled images (seed 000's competition tricks): pseudo-labels and mean teacher.

Pseudo-labels (``--pseudo_label``, applications/pseudo_label.py runs the rounds): a trained model predicts every
unlabelled image (all-gathered under torchrun, each image once), the images whose top probability reaches the
threshold join the training set with that class (or, soft, with all the probabilities) and a weight, and the
model is trained again.

Mean teacher (``--mean_teacher --unlabeled DIR_OR_CSV``; Tarvainen & Valpola, 2017): the teacher is an EMA of the
student's weights (the run's EMA, validated and saved as with ``--ema``). Each training step the student also sees
one augmented view of an unlabelled batch, the teacher another view of the same images, and the mean squared
difference of their softmax probabilities, weighted by ``--consistency_weight`` times a sigmoid ramp-up, joins the
loss. Under DDP the unlabelled loader is sharded like the labelled one, the student runs once per step on the
labelled and unlabelled images together (one forward, one gradient all-reduce), and the teacher is updated from the
identical student weights on every rank; its BatchNorm statistics, which each rank's last forward moves, are
broadcast from rank 0 after every update, so the teacher is the same network on every rank.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from config import Config
from dataloader import EncodedImageDataset, Preprocessing, normalize_on_device
from dataloader.unlabelled import TwoViews, unlabelled_dataset
from engine.components import fitting_of, loader_for, train_crop_of
from engine.device import autocast, to_device_uint8
from engine.inference import predict_probs
from utils.distributed import DistInfo, broadcast_buffers, is_dist


# ------------------------------------------------------------------------------------------------- pseudo-labels

@dataclass
class PseudoLabels:
    """The unlabelled images one round kept: files, their names as the input lists them, class indices, top
    probabilities, all class probabilities (N, C) and the round (1-based)."""

    files: list[str]
    names: list[str]
    labels: np.ndarray
    confidence: np.ndarray
    probs: np.ndarray
    round: int
    seen: int  # unlabelled images predicted

    def samples(self) -> list[tuple[str, int]]:
        return list(zip(self.files, self.labels.tolist()))

    def rows(self, class_names: list[str]) -> list[tuple[str, str, float, int]]:
        """Rows of the pseudo-label file (dataloader/unlabelled.py)."""
        return [(name, class_names[label], float(conf), self.round)
                for name, label, conf in zip(self.names, self.labels.tolist(), self.confidence.tolist())]


def select_confident(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Positions of the rows whose top probability is at least ``threshold``."""
    return torch.nonzero(probs.max(dim=1).values >= threshold).flatten()


def label_unlabelled(model: torch.nn.Module, source: str, class_names: list[str], cfg: Config,
                     preprocessing: Preprocessing, info: DistInfo, *, threshold: float, round_: int) -> PseudoLabels:
    """Predict every image of ``source`` (a folder or CSV list) with ``model``, each once whatever the process count,
    and keep those whose top probability reaches ``threshold``. Identical on every rank."""
    dataset, names = unlabelled_dataset(source, class_names, image_size=tuple(cfg.image_size), flag="--pseudo_label",
                                        **fitting_of(cfg))
    files = [path for path, _ in dataset.samples]
    if cfg.decode == "device":  # workers only read the files; the prediction loop decodes on the device
        dataset = EncodedImageDataset(dataset)
    indices, probs, _ = predict_probs(model, loader_for(dataset, cfg, info), cfg, preprocessing, info.device)
    assert indices.numel() == len(files), f"{indices.numel()} predictions for {len(files)} unlabelled images"
    keep = select_confident(probs, threshold)
    chosen = indices[keep].cpu().numpy()
    kept = probs[keep].cpu().numpy()
    return PseudoLabels(files=[files[i] for i in chosen], names=[names[i] for i in chosen],
                        labels=kept.argmax(1) if len(kept) else np.zeros(0, dtype=np.int64),
                        confidence=kept.max(1) if len(kept) else np.zeros(0, dtype=np.float32),
                        probs=kept, round=round_, seen=len(files))


# --------------------------------------------------------------------------------------------------- mean teacher

def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = current / length`` clipped to [0, 1] (Laine & Aila, 2017): 1 from
    ``length`` on; a length of 0 means no ramp-up."""
    if length <= 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the softmax probabilities (over the batch and the classes); no gradient reaches
    the teacher."""
    return F.mse_loss(student_logits.float().softmax(dim=1), teacher_logits.detach().float().softmax(dim=1))


class MeanTeacher:
    """The unlabelled batches and the consistency term of one run; ``teacher`` is the run's EMA
    (a torch.optim.swa_utils.AveragedModel of the student)."""

    def __init__(self, loader, teacher, *, weight: float, rampup_epochs: float, preprocessing: Preprocessing,
                 cfg: Config, device: torch.device) -> None:
        self.loader, self.teacher, self.weight, self.rampup_epochs = loader, teacher, weight, rampup_epochs
        self.preprocessing, self.cfg, self.device = preprocessing, cfg, device
        self.epoch, self.passes, self.batches = -1, 0, None

    def next_views(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next unlabelled batch of this rank's shard as two normalised views (student's, teacher's). The
        loader starts over, reshuffled, when it runs out; each epoch starts a fixed order of its own."""
        if epoch != self.epoch:
            self.epoch, self.passes, self.batches = epoch, 0, None
        batch = next(self.batches, None) if self.batches is not None else None
        if batch is None:
            self.loader.sampler.set_epoch(epoch * 1000 + self.passes)  # 1000 passes of the unlabelled set per epoch
            self.passes += 1
            self.batches = iter(self.loader)
            batch = next(self.batches)
        view_a, view_b, _ = batch
        return self._normalise(view_a), self._normalise(view_b)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        # a fresh tensor: to_model_input's CPU buffer (one per shape) holds the labelled batch of this step
        return normalize_on_device(to_device_uint8(images, self.device), self.preprocessing.mean,
                                   self.preprocessing.std, channels_last=bool(self.cfg.channels_last))

    def consistency(self, student_logits: torch.Tensor, teacher_view: torch.Tensor, progress: float) -> torch.Tensor:
        """``weight * ramp-up(progress in epochs) * consistency_loss`` of the student's logits on its view and the
        teacher's (eval mode, no gradient) on the other view."""
        module = self.teacher.module
        module.eval()
        with torch.no_grad(), autocast(self.cfg, self.device):
            teacher_logits = module(teacher_view)
        ramp = self.weight * sigmoid_rampup(progress, self.rampup_epochs)
        return ramp * consistency_loss(student_logits, teacher_logits)

    def after_update(self) -> None:
        """After the teacher's EMA step: rank 0's BatchNorm statistics for every rank (see the module docstring)."""
        if is_dist():
            broadcast_buffers(self.teacher.module)


def mean_teacher_from_config(cfg: Config, class_names: list[str], info: DistInfo, teacher,
                             preprocessing: Preprocessing) -> MeanTeacher | None:
    """The run's MeanTeacher for --mean_teacher (None without); the unlabelled images take the run's --aug (basic
    when none is set: two views need an augmentation)."""
    if not cfg.mean_teacher:
        if cfg.unlabeled:
            raise ValueError("--unlabeled is the unlabelled set of --mean_teacher (--pseudo_label takes its own); "
                             "add --mean_teacher or drop --unlabeled")
        return None
    if not cfg.unlabeled:
        raise ValueError("--mean_teacher needs unlabelled images: --unlabeled DIR_OR_CSV (a folder or a CSV list)")
    if cfg.multi_scale or cfg.progressive_size:
        raise ValueError("--mean_teacher runs labelled and unlabelled images in one batch at --image_size; "
                         f"drop {'--multi_scale' if cfg.multi_scale else '--progressive_size'}")
    dataset, _ = unlabelled_dataset(cfg.unlabeled, class_names, image_size=tuple(cfg.image_size), flag="--unlabeled",
                                    aug=cfg.aug or "basic", seed=cfg.seed, train_crop=train_crop_of(cfg),
                                    **fitting_of(cfg))
    loader = loader_for(TwoViews(dataset), cfg, info, train=True, batch_size=cfg.unlabeled_batch_size)
    return MeanTeacher(loader, teacher, weight=cfg.consistency_weight, rampup_epochs=cfg.consistency_rampup,
                       preprocessing=preprocessing, cfg=cfg, device=info.device)


def state_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (parameters and buffers, in order): equal networks, equal checksums."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
