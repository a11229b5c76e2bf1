"""Load local pretrained weights into a model, tolerating wrappers and a head of another size.

Nothing is ever downloaded: weights are files under pretrained/ (see pretrained/README.md), read with
`torch.load(..., weights_only=True)` so a file cannot run code when loaded.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping

import torch
from torch import nn


from utils.errors import DataError

logger = logging.getLogger(__name__)

# Keys under which our checkpoints (and most training scripts) keep the model's state dict.
_STATE_DICT_KEYS = ("model", "state_dict")
# Prefixes added by DistributedDataParallel / DataParallel ("module.") and by wrappers holding `self.model`.
_WRAPPER_PREFIXES = ("module.", "model.")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a raw state dict or of a checkpoint dict holding one under "model" or "state_dict"."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Pretrained weights not found: {os.fspath(path)!r}. Put the weights file under pretrained/ "
            "(see pretrained/README.md); nothing is downloaded here."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure gets the same advice
        raise DataError(
            f"Could not load {os.fspath(path)!r} with weights_only=True ({err}). Re-save it as a plain state dict: "
            "torch.save(model.state_dict(), path)."
        ) from err
    if not isinstance(obj, Mapping):
        raise DataError(f"{os.fspath(path)!r} holds a {type(obj).__name__}, expected a state dict or checkpoint dict.")
    if isinstance(obj.get("base"), Mapping):  # our LoRA checkpoint: adapters and head only (utils/checkpoint.py)
        raise DataError(f"{os.fspath(path)!r} is a LoRA checkpoint holding adapters and head only, not whole weights; "
                        "export it merged (--jit/--onnx) or continue it with --resume")
    for key in _STATE_DICT_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state_dict = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state_dict:
        raise DataError(f"No tensors in {os.fspath(path)!r}; top-level keys: {sorted(obj)[:10]}.")
    return state_dict


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove `module.` / `model.` prefixes (repeatedly) when every key has one and the model's keys do not."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict) and not all(k.startswith(prefix) for k in model_keys):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> dict[str, list]:
    """Load the weights at `path` into `model` (non-strict) and report what happened.

    Tensors whose shape differs from the model's (e.g. a 1000-class head into a 7-class model) are skipped with a
    warning naming key and shapes. Returns {"loaded": [keys], "skipped": [(key, file_shape, model_shape)],
    "missing_keys": [keys left at their initial values], "unexpected_keys": [keys of the file the model lacks]}.
    """
    model_state = model.state_dict()
    state_dict = strip_wrapper_prefixes(read_state_dict(path), set(model_state))
    skipped = [
        (k, tuple(v.shape), tuple(model_state[k].shape))
        for k, v in state_dict.items()
        if k in model_state and v.shape != model_state[k].shape
    ]
    if skipped:
        details = ", ".join(f"{k}: file {fs} vs model {ms}" for k, fs, ms in skipped)
        warnings.warn(f"Skipped {len(skipped)} tensor(s) of {os.fspath(path)!r} with mismatched shapes: {details}")
    for key, _, _ in skipped:
        del state_dict[key]
    loaded = [k for k in state_dict if k in model_state]
    if not loaded:
        raise ValueError(
            f"No tensor of {os.fspath(path)!r} matches {type(model).__name__}: wrong architecture? "
            f"File keys start {list(state_dict)[:3]}, model keys start {list(model_state)[:3]}."
        )
    result = model.load_state_dict(state_dict, strict=False)
    report = {
        "loaded": loaded,
        "skipped": skipped,
        "missing_keys": list(result.missing_keys),
        "unexpected_keys": list(result.unexpected_keys),
    }
    logger.info("Loaded %d/%d tensors from %s", len(loaded), len(model_state), os.fspath(path))
    if report["missing_keys"]:
        logger.warning("Missing keys (left at initial values): %s", report["missing_keys"])
    if report["unexpected_keys"]:
        logger.warning("Unexpected keys in %s (ignored): %s", os.fspath(path), report["unexpected_keys"])
    return report
