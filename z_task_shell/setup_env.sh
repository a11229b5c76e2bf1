#!/usr/bin/env bash
# Create .venv and install requirements.txt (plus pytest with --test; with --fashion-mnist also Debian's Fashion-MNIST
# package). Idempotent: pip runs again only when the wanted package list changed. The other scripts call it first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
test_extra=("pytest==9.2.0" "tritonclient[http]==2.73.0")
extra=()
fashion_mnist=0
for option in "$@"; do
  case "$option" in
    --test) extra=("${test_extra[@]}") ;;
    --fashion-mnist) fashion_mnist=1 ;;
    *) echo "error: z_task_shell/setup_env.sh: unknown option '$option'; use --test and/or --fashion-mnist" >&2
       exit 2 ;;
  esac
done
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
# --fashion-mnist: the benchmark data set, Debian's dataset-fashion-mnist (gzipped IDX files under
# /usr/share/datasets/fashion-mnist), installed when missing and this is root; otherwise dataloader.prepare says what
# to install
if [ "$fashion_mnist" = 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
