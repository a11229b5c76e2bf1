"""The checkpoint format (its only reader and writer), atomic writes, and RNG state as plain types.

A checkpoint is a ``Checkpoint``; on disk it is a plain dict of tensors and Python types (the config as a dict,
RNG states as tensors and lists), so it loads under ``torch.load(weights_only=True)``. Checkpoints written before
this class existed have the same keys and load through ``Checkpoint.from_dict``.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch

from utils.errors import DataError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file in the same folder, fsync, ``os.replace`` it onto ``path`` and fsync the
    folder: a crash never leaves a half-written file behind, and the previous one stays intact. The file gets the
    mode a plain ``open()`` gives (0o666 less the umask), like every other output, not mkstemp's 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created the way open() creates files, so the kernel applies the umask (and any default ACL). Reading the umask
    # instead takes os.umask(0) and back, which changes it for every thread meanwhile. 64 random bits name the file;
    # O_EXCL never reuses an existing one.
    tmp = path.parent / f".{path.name}.{os.urandom(8).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # The rename itself is durable only once the folder is synced. Windows cannot open a folder and some file systems
    # refuse to fsync one; there the rename is left to the operating system.
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def save_checkpoint(ckpt: "Checkpoint", path: str | Path) -> None:
    """Write a checkpoint atomically (see atomic_write) as a plain dict of tensors and Python types."""
    atomic_write(path, lambda handle: serialise(ckpt, handle))


def serialise(ckpt: "Checkpoint", handle: BinaryIO) -> None:
    """The checkpoint's bytes, written to ``handle`` (a file, or memory to time the serialisation alone)."""
    torch.save(ckpt.to_dict(), handle)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


EPOCH_CHECKPOINT = re.compile(r"^epoch_(\d+)\.pth$")


def epoch_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``epoch_NNN.pth`` files of a run (written with --keep_epochs), oldest epoch first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).iterdir() if (m := EPOCH_CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def keep_epoch_checkpoint(last_path: str | Path, epoch: int, keep: int) -> Path:
    """Copy ``last.pth`` (just written for 0-based ``epoch``) to ``epoch_NNN.pth`` atomically and delete the
    epoch copies older than the newest ``keep``. A copy of the file is cheaper than serialising the state again."""
    last_path = Path(last_path)
    target = last_path.with_name(f"epoch_{epoch + 1:03d}.pth")
    with open(last_path, "rb") as source:
        atomic_write(target, lambda handle: shutil.copyfileobj(source, handle))
    for old in epoch_checkpoints(last_path.parent)[:-keep]:
        old.unlink()
    return target


def capture_rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


@dataclass
class Checkpoint:
    """What a training run (or an average of runs) leaves behind.

    ``model`` holds the weights to predict with; ``train_model`` the weights training continues from when they
    differ (best.pth chosen from the EMA, SWA, averaged weights). ``weights`` says which ``model`` holds.
    The training state (optimizer ... rng) is None in checkpoints that cannot be resumed.

    A LoRA run (``--lora``) stores its adapter compactly: ``model`` / ``train_model`` hold only what training
    changes, the adapters' ``*.lora_A.default.weight`` / ``*.lora_B.default.weight`` tensors (peft's names) and the
    whole head, and ``base`` names the frozen rest: ``{"path": absolute path, "sha256": hex}`` of the --pretrained
    file, which loading checks (engine/components.py rebuilds base + adapters and merges them). The optimizer state
    covers the trained tensors only. ``base`` is None for every other checkpoint, which holds the whole model.
    """

    config: dict
    class_names: list[str]
    preprocessing: dict
    model: dict
    train_model: dict | None = None
    weights: str = "model"
    epoch: int = -1  # 0-based epoch the state was saved after
    best_top1: float = -1.0  # val top-1 of the best epoch
    best_epoch: int = -1
    best_score: float | None = None  # the --monitor metric there, higher is better (-loss); None: before --monitor
    metrics: dict = field(default_factory=dict)
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    criterion: dict = field(default_factory=dict)  # GHM's running bin counts
    ema: dict | None = None
    swa: dict | None = None
    rng: dict | None = None
    averaged_from: list[str] | None = None
    bn_updated: bool = False
    batches_done: int = 0  # > 0: saved in the middle of epoch ``epoch + 1`` after this many of its batches
    partial: dict | None = None  # that epoch's loss and accuracy sums so far (over all ranks)
    world_size: int | None = None  # processes that trained it (None: written before this was recorded)
    rng_per_rank: list | None = None  # every rank's RNG state, in rank order (``rng`` is rank 0's)
    base: dict | None = None  # LoRA: the base weights file {"path", "sha256"}; ``model`` holds adapters and head
    calibration: dict | None = None  # --calibrate's record: temperature, threshold, quantile (utils/calibration.py)

    @property
    def resume_weights(self) -> dict:
        """The weights a resumed run continues training from."""
        return self.train_model if self.train_model is not None else self.model

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict, path: str | Path = "checkpoint") -> "Checkpoint":
        """A checkpoint from a loaded dict; older files lack some keys, which take their defaults."""
        if not isinstance(state, dict) or "model" not in state or "config" not in state:
            raise CheckpointError(f"{path} is not a checkpoint of this project (no 'model'/'config' entries); to "
                                  "initialise from plain weights use --pretrained")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in state.items() if k in known}
        values.setdefault("class_names", [str(i) for i in range(_output_size(state["model"]))])
        values.setdefault("preprocessing", {})
        if "best_epoch" not in state and "epoch" in state:
            values["best_epoch"] = state["epoch"]
        if values.get("criterion") is None:
            values["criterion"] = {}
        return cls(**values)

    def replace(self, **changes) -> "Checkpoint":
        return Checkpoint(**{**self.to_dict(), **changes})


class CheckpointError(DataError):
    """A --resume file that is not (a complete) one of our checkpoints."""


def _output_size(weights: dict) -> int:
    last = [v for k, v in weights.items() if k.endswith("weight") and v.ndim == 2]
    return int(last[-1].shape[0]) if last else 0


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    flag: str = "--resume") -> Checkpoint:
    """Load one of our checkpoints safely; errors name the file and the flag it came from and say what to do."""
    path = Path(path)
    if path.is_dir():
        found = [p.name for p in sorted(path.glob("*.pth"))][:5]
        raise FileNotFoundError(f"{flag} {path} is a folder; pass a checkpoint file in it "
                                f"({', '.join(found) if found else 'it holds no .pth file'})")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist; pass a .pth file written by training "
                                "(CHECKPOINT_DIR/RUN/best.pth or last.pth)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{flag} {path} cannot be read as a checkpoint ({first[:160]}); pass a complete .pth "
                              "file written by this project's training (for plain weights use --pretrained)") from exc
    return Checkpoint.from_dict(state, path)


def compare_weights(first: str | Path, second: str | Path) -> list[str]:
    """Names of the weight tensors (and EMA/SWA tensors) that differ between two checkpoints; [] when identical."""
    a, b = load_checkpoint(first), load_checkpoint(second)
    differ = []
    for part in ("model", "ema", "swa"):
        x, y = getattr(a, part) or {}, getattr(b, part) or {}
        if x.keys() != y.keys():
            differ.append(f"{part}: different entries")
            continue
        differ += [f"{part}.{k}" for k in x if isinstance(x[k], torch.Tensor) and not torch.equal(x[k], y[k])]
    return differ


def main(argv: list[str] | None = None) -> int:
    """``python -m utils.checkpoint same A.pth B.pth``: exit 0 when the two hold bit-identical weights."""
    import argparse

    parser = argparse.ArgumentParser(description="Compare the weights of two checkpoints bit for bit.")
    parser.add_argument("command", choices=["same"])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args(argv)
    try:
        differ = compare_weights(args.first, args.second)
    except (OSError, CheckpointError) as error:
        print(f"error: {error}")
        return 2
    if differ:
        print(f"{len(differ)} tensors differ between {args.first} and {args.second}, e.g. {differ[:3]}")
        return 1
    print(f"same weights: {args.first} and {args.second} are bit-identical")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
