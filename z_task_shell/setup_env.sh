#!/usr/bin/env bash
# Create .venv and install requirements.txt (plus test tools with --test). Idempotent: reinstalls only when
# requirements.txt changed. Source it or run it; the other scripts call it first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
want="$(cat requirements.txt; [ "${1:-}" = "--test" ] && echo pytest)"
stamp=.venv/.installed-$(echo "$want" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  [ "${1:-}" = "--test" ] && .venv/bin/python -m pip install -q "pytest>=8,<10"
  touch "$stamp"
fi
