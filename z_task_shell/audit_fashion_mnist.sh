#!/usr/bin/env bash
# The dataset audit on Fashion-MNIST (README "Dataset audit"): (1) the real data (54k train / 6k val / 10k test):
# duplicates within and across splits, likely label errors from 5 folds of small_cnn, the cleaned root; (2) a copy
# with 5% of the train labels flipped and 50 train images copied into test, audited the same way, and the recall of
# the flips in the top k (k = the number of flips) and of the copies. Each audit writes
# $CK/$RUN/{real,corrupted}/audit/ (index.html, CSV files, summary.json; CK defaults to checkpoints), the recall
# goes to $CK/$RUN/corrupted/audit/recall.json. Trains 2 x K folds: about an hour on 2 CPU cores.
#   RUN=audit_fmnist K=5 EPOCHS=4 bash z_task_shell/audit_fashion_mnist.sh [flags for both audits...]
# DATA=another/folder-layout/root audits that instead (e.g. a small subset to check the script).
# Needs the Debian package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=${RUN:-audit_fmnist}
CK=${CK:-checkpoints}
DATA=${DATA:-data/fashion-mnist}
CORRUPTED=${CORRUPTED:-data/fashion-mnist-corrupted}
if [ "$DATA" = data/fashion-mnist ]; then
  bash z_task_shell/setup_env.sh --fashion-mnist
  $PY -m dataloader.prepare fashion-mnist --out data/fashion-mnist
else
  bash z_task_shell/setup_env.sh
fi
FOLDS=(--model small_cnn --image_size 28 28 --kfold "${K:-5}" --epochs "${EPOCHS:-4}" --optimizer adam --lr 0.003
       --lr_schedule cosine --warmup 1 -b 128 -j 1 --cache_images ram --seed 0 --checkpoint_dir "$CK")
$PY main.py --audit --data "$DATA" "${FOLDS[@]}" --audit_fix --name "$RUN/real" "$@"
if [ ! -f "$CORRUPTED/corruption.csv" ]; then
  rm -rf "$CORRUPTED"
  $PY -m benchmarks.audit_recall corrupt --data "$DATA" --out "$CORRUPTED" --flip 0.05 --copies 50 --seed 0
fi
$PY main.py --audit --data "$CORRUPTED" "${FOLDS[@]}" --name "$RUN/corrupted" "$@"
$PY -m benchmarks.audit_recall score --truth "$CORRUPTED/corruption.csv" --audit "$CK/$RUN/corrupted/audit" \
  | tee "$CK/$RUN/corrupted/audit/recall.json"
