#!/usr/bin/env bash
# Export a checkpoint to ONNX (dynamic batch, class names and preprocessing inside) and its int8 twin, each
# checked against the eager model and scored on the val split, then classify IMAGE with the fp32 file through
# ONNX Runtime and time it at batch 1. Trains nothing.
#   CKPT=checkpoints/my_run/best.pth IMAGE=photo.jpg bash z_task_shell/onnx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
PY=.venv/bin/python
RUN=${RUN:-quickstart}
CKPT=${CKPT:-checkpoints/$RUN/best.pth}
MODEL=${CKPT%.pth}.onnx
$PY main.py --onnx --int8 --resume "$CKPT" "$@"
IMAGE=${IMAGE:-$(find data/digits/test -name '*.png' | sort | sed -n 1p)}
$PY demos/classifier.py "$MODEL" "$IMAGE" --topk 3
$PY demos/classifier.py "$MODEL" "$IMAGE" --benchmark 200 --threads 1
