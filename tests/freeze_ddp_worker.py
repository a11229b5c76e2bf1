"""Run main.py's training under torchrun and record, on every rank, digests of the backbone and head weights.

    torchrun --standalone --nproc_per_node 2 tests/freeze_ddp_worker.py OUT_DIR -- MAIN_PY_FLAGS...

Writes OUT_DIR/rank{R}.json with a digest each time the model is wrapped for DDP and after each epoch (taken
when validation starts). tests/test_freeze.py compares the ranks: after ``--freeze`` ends, parameters whose
gradients DDP did not all-reduce would differ between ranks.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

import engine.training as train_app
import main as entry
from models.heads import find_classifier_name


def digests(model: torch.nn.Module) -> dict:
    """sha256 of the backbone's and the head's parameters, and whether the backbone requires grad."""
    head = find_classifier_name(model)
    parts = {"backbone": hashlib.sha256(), "head": hashlib.sha256()}
    for name, param in sorted(model.named_parameters()):
        part = "head" if name.startswith(head + ".") else "backbone"
        parts[part].update(name.encode())
        parts[part].update(param.detach().cpu().contiguous().numpy().tobytes())
    trainable = all(p.requires_grad for n, p in model.named_parameters() if not n.startswith(head + "."))
    return {"backbone": parts["backbone"].hexdigest(), "head": parts["head"].hexdigest(),
            "backbone_trainable": trainable}


def main() -> None:
    out, argv = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]
    records: dict[str, list] = {"wrapped": [], "epochs": []}
    wrap_ddp, validate = train_app.wrap_ddp, train_app.validate

    def recording_wrap_ddp(model, info):
        records["wrapped"].append(digests(model))
        return wrap_ddp(model, info)

    def recording_validate(model, *args, **kwargs):
        records["epochs"].append(digests(model))
        return validate(model, *args, **kwargs)

    train_app.wrap_ddp, train_app.validate = recording_wrap_ddp, recording_validate
    entry.run_command(argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
