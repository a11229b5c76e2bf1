#!/usr/bin/env bash
# The fast Fashion-MNIST recipe (z_task_shell/fashion_mnist_fast.yaml: resnet9_half at 28x28, SGD 0.1 + warmup +
# cosine, label smoothing, 10 epochs, RAM cache, AMP and memory format from the hardware), then one evaluation of
# best.pth on the official test split. The race against timm's train.py with the same recipe:
#   python benchmarks/time_to_accuracy.py --data data/fashion-mnist --eval_split test --ours z_task_shell/fashion_mnist_fast.yaml
# Needs the Debian package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh --fashion-mnist
PY=.venv/bin/python
RUN=${RUN:-fashion_mnist_fast}
$PY -m dataloader.prepare fashion-mnist --out data/fashion-mnist
$PY main.py --config z_task_shell/fashion_mnist_fast.yaml --data data/fashion-mnist --name "$RUN" "$@"
$PY main.py --evaluation --resume "checkpoints/$RUN/best.pth" --split test
