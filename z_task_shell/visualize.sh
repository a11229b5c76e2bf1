#!/usr/bin/env bash
# Class activation maps of a trained model: the first LIMIT images of SPLIT (train, val, test, or a folder of
# images), each with its heat map, plus index.html (a contact sheet: predicted and true class, wrong ones framed)
# and results.csv, in OUT (default: beside the checkpoint, cam_METHOD_SPLIT/). Trains nothing.
#   CKPT=checkpoints/my_run/best.pth SPLIT=val METHOD=grad-cam++ LIMIT=64 bash z_task_shell/visualize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
PY=.venv/bin/python
RUN=${RUN:-quickstart}
CKPT=${CKPT:-checkpoints/$RUN/best.pth}
out=()
if [ -n "${OUT:-}" ]; then out=(--output "$OUT"); fi
$PY main.py --visual_data "${SPLIT:-test}" --resume "$CKPT" --visual_method "${METHOD:-grad-cam}" \
  --visual_limit "${LIMIT:-32}" "${out[@]}" "$@"
