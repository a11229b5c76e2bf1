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
