"""Subprocess helpers for tests that run the product as a user does (python main.py, torchrun)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # every subprocess is bounded, so a hung collective fails the test instead of the CI run


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` in the repository with one thread per process; fail with its output when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}"
    return proc


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    """main.py under torchrun --standalone (a free port) with `nproc` CPU processes."""
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "main.py", *args])
