#!/usr/bin/env bash
# Fashion-MNIST recipe: small_cnn at 28x28, flip + light affine, Adam with warmup + cosine; the fast defaults
# (AMP and memory format chosen from the hardware) and decoded images cached in RAM (60k x 28x28x3 = 0.14 GiB).
# Measured on a 2-core AVX2 CPU: see README "Results". Needs the Debian package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh --fashion-mnist
PY=.venv/bin/python
RUN=${RUN:-fashion_mnist_small_cnn}
$PY -m dataloader.prepare fashion-mnist --out data/fashion-mnist
$PY main.py --data data/fashion-mnist --model small_cnn --image_size 28 28 --aug --cache_images ram \
  --optimizer adam --lr 0.003 --weight_decay 0.0001 --lr_schedule cosine --warmup 1 --epochs 12 -b 128 -j 1 \
  --name "$RUN" "$@"
$PY main.py --evaluation --resume "checkpoints/$RUN/best.pth" --split test
