#!/usr/bin/env bash
# The README's "training strategy" tables, measured on Fashion-MNIST with a fixed short budget: small_cnn at 28x28,
# 10,000 training images (class-balanced subset), the full 6,000 val and official 10,000 test images, 8 epochs of
# Adam 3e-3 with 1 warmup epoch + cosine, -b 128. Each run is evaluated on test; the tables go to
# docs/results/strategy_losses.md and docs/results/strategy_augmentation.md.
# Usage: bash z_task_shell/strategy_tables.sh [losses|augmentation|all]   (about 2-3 minutes per run on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh --fashion-mnist
PY=.venv/bin/python
WHICH=${1:-all}
DATA=data/fashion-mnist-10k
$PY -m dataloader.prepare fashion-mnist --out "$DATA" --limit 10000
mkdir -p docs/results

run() {  # run NAME FLAGS...: train, then evaluate best.pth on the official test split
  local name=$1; shift
  if [ ! -f "checkpoints/$name/eval_test/report.json" ]; then
    rm -rf "checkpoints/$name" "logs/$name"
    OMP_NUM_THREADS=1 $PY main.py --data "$DATA" --model small_cnn --image_size 28 28 --cache_images ram \
      --optimizer adam --lr 0.003 --lr_schedule cosine --warmup 1 --epochs 8 -b 128 -j 1 --seed 0 \
      --name "$name" "$@"
    $PY main.py --evaluation --resume "checkpoints/$name/best.pth" --split test
  fi
}

if [ "$WHICH" = losses ] || [ "$WHICH" = all ]; then
  run strategy_loss_softmax --aug
  run strategy_loss_label_smoothing --aug --label_smoothing 0.1
  run strategy_loss_bce --aug --criterion bce
  run strategy_loss_focal --aug --criterion focal --focal_gamma 2
  run strategy_loss_ghm_bce --aug --criterion bce --ghm_loss
  run strategy_loss_ghm_bce_30bins_momentum --aug --criterion bce --ghm_loss --ghm_bins 30 --ghm_momentum 0.75
  run strategy_loss_ohm_bce --aug --criterion bce --ohm_loss --ohm_ratio 0.7
  run strategy_loss_weighted_bce --aug --criterion bce --weighted_loss
  run strategy_loss_threshold_bce --aug --criterion bce --threshold_loss
  $PY -m utils.results_table checkpoints/strategy_loss_softmax checkpoints/strategy_loss_label_smoothing \
    checkpoints/strategy_loss_bce checkpoints/strategy_loss_focal checkpoints/strategy_loss_ghm_bce \
    checkpoints/strategy_loss_ghm_bce_30bins_momentum checkpoints/strategy_loss_ohm_bce \
    checkpoints/strategy_loss_weighted_bce checkpoints/strategy_loss_threshold_bce \
    --strip strategy_loss_ | tee docs/results/strategy_losses.md
fi

if [ "$WHICH" = augmentation ] || [ "$WHICH" = all ]; then
  run strategy_aug_none
  run strategy_aug_basic --aug basic
  run strategy_aug_myaugment --aug myaugment  # the main seed's default for a bare --aug
  run strategy_aug_autoaugment --aug basic,autoaugment
  run strategy_aug_mixup --aug basic --mixup 0.2
  run strategy_aug_cutmix --aug basic --cutmix 1.0
  run strategy_aug_erasing --aug basic,erasing
  run strategy_aug_multi_scale --aug basic --multi_scale
  $PY -m utils.results_table checkpoints/strategy_aug_none checkpoints/strategy_aug_basic \
    checkpoints/strategy_aug_myaugment checkpoints/strategy_aug_autoaugment checkpoints/strategy_aug_mixup \
    checkpoints/strategy_aug_cutmix \
    checkpoints/strategy_aug_erasing checkpoints/strategy_aug_multi_scale \
    --strip strategy_aug_ | tee docs/results/strategy_augmentation.md
fi
