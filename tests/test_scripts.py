"""The shell scripts (z_task_shell/*.sh, .ci/run) parse, stop at the first failing command, and never pipe into an
early-exiting reader: under pipefail, `sort | head -n 1` can fail at random when head exits before sort has
written everything (SIGPIPE, exit 141), which once stopped the quickstart after training."""
from __future__ import annotations

import re
import subprocess

import pytest

from helpers import REPO

SCRIPTS = sorted((REPO / "z_task_shell").glob("*.sh")) + [REPO / ".ci" / "run"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_parses_fails_fast_and_does_not_pipe_into_head(script):
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    assert "set -euo pipefail" in text, f"{script.name}: add `set -euo pipefail` so a failing step stops the script"
    code = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments may mention the pattern
    assert not re.search(r"\|\s*head\b", code), f"{script.name}: piping into head can SIGPIPE the writer"
