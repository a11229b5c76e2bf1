"""Fixtures shared by several test modules."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def speed_cache(tmp_path_factory):
    """Measured speed verdicts (utils/hardware.py) go to a folder of this session, inherited by subprocesses."""
    folder = tmp_path_factory.mktemp("speed_cache")
    previous = os.environ.get("CLASSIFIER_CACHE_DIR")
    os.environ["CLASSIFIER_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CLASSIFIER_CACHE_DIR", None)
    else:
        os.environ["CLASSIFIER_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory) -> Path:
    """sklearn digits prepared as PNG class folders with --limit 40 (a few images per class); tests only read it."""
    out = tmp_path_factory.mktemp("data") / "digits"
    subprocess.run([sys.executable, "-m", "dataloader.prepare", "digits", "--out", str(out), "--limit", "40"],
                   cwd=REPO, check=True, timeout=120, capture_output=True)
    return out


@pytest.fixture()
def recorded(monkeypatch) -> dict:
    """The model's state when training wraps it (start of the run) and when each epoch's validation starts
    (tests/test_freeze.py, tests/test_lora.py)."""
    import engine.training as train_app
    from torch import nn

    records: dict = {"wrapped": [], "epochs": []}

    def snapshot(model: nn.Module) -> dict:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return state

    wrap_ddp, validate = train_app.wrap_ddp, train_app.validate
    monkeypatch.setattr(train_app, "wrap_ddp", lambda model, info: records["wrapped"].append(snapshot(model))
                        or wrap_ddp(model, info))
    monkeypatch.setattr(train_app, "validate", lambda model, *a, **k: records["epochs"].append(snapshot(model))
                        or validate(model, *a, **k))
    return records
