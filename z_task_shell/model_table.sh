#!/usr/bin/env bash
# The main seed's model comparison: its ten models (resnet18, resnet50, shufflenet_v2_x1_0/x2_0, mobilenet_v2,
# mobilenet_v3_small/large, efficientnet_b0/b4, ghostnet) at 224x224 with 6 classes: parameters, MACs/FLOPs (thop)
# and batch-1 CPU latency (eager, TorchScript, ONNX Runtime), plus the accuracy of each trained from scratch on a
# six-class Fashion-MNIST subset (T-shirt, trouser, pullover, dress, coat, sandal; 500 train images per class, the
# official val/test images of those classes) at 32x32 for 10 epochs, the epoch chosen on val, test touched once.
# Writes docs/results/model_table/ (models.md and each run's report.json, summary.csv, train.log, config.yaml).
# About 40 minutes on 2 cores. Needs the Debian package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh --fashion-mnist
PY=.venv/bin/python
DATA=data/fashion-mnist-6cls
$PY -m dataloader.prepare fashion-mnist --out "$DATA" --classes 0 1 2 3 4 5 --train_per_class 500
mkdir -p docs/results/model_table
$PY benchmarks/models.py --seed_table --size 224 --threads 2 --accuracy_data "$DATA" --accuracy_size 32 \
  --accuracy_epochs 10 --results docs/results/model_table --markdown docs/results/model_table/models.md "$@"
