#!/usr/bin/env bash
# Create .venv and install requirements.txt (plus pytest with --test). Idempotent: pip runs again only when
# the wanted package list changed. The other scripts call it first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
test_extra=("pytest==9.2.0" "tritonclient[http]==2.73.0")
extra=()
if [ "${1:-}" = "--test" ]; then extra=("${test_extra[@]}"); fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$( (cat requirements.txt; echo "${extra[@]:-}") | sha256sum | cut -c1-16)"
# an install with the test extras holds everything the plain one does
superset=".venv/.installed-$( (cat requirements.txt; echo "${test_extra[@]}") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] && [ ! -f "$superset" ]; then
  echo "installing requirements into .venv (first run only; torch is large)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt "${extra[@]}"
  touch "$stamp"
fi
