#!/usr/bin/env bash
# Our best Fashion-MNIST recipe within 2 hours on a 2-core CPU: ResNet-9 at half width (1.6 M parameters) at 28x28
# on all 60,000 training images (--val_ratio 0: no val split, the final model is the last EMA), flip + light affine +
# random erasing, SGD (Nesterov) 0.1 with 1 warmup epoch and cosine, weight decay 5e-4, label smoothing 0.1, EMA of
# the weights, 48 epochs. best.pth (the last EMA weights) is evaluated once on the official test set,
# plain and with flip test-time augmentation; the log, per-epoch summary and reports go to
# docs/results/fashion_mnist_best/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
PY=.venv/bin/python
RUN=${RUN:-fashion_mnist_best}
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
$PY -m dataloader.prepare fashion-mnist --out data/fashion-mnist-full --val_ratio 0  # 60k train, 10k test, no val
$PY main.py --data data/fashion-mnist-full --val_ratio 0 --model resnet9_half --image_size 28 28 \
  --aug basic,erasing --cache_images ram --optimizer sgd --lr 0.1 --momentum 0.9 --weight_decay 5e-4 \
  --lr_schedule cosine --warmup 1 --epochs 48 -b 128 -j 1 --label_smoothing 0.1 --ema --ema_decay 0.999 --seed 0 \
  --name "$RUN" "$@"
$PY main.py --evaluation --resume "checkpoints/$RUN/best.pth" --split test
$PY main.py --evaluation --resume "checkpoints/$RUN/best.pth" --split test --tta flip  # the image and its mirror
mkdir -p docs/results/fashion_mnist_best
cp "checkpoints/$RUN/train.log" "checkpoints/$RUN/summary.csv" "checkpoints/$RUN/eval_test/report.json" \
  "checkpoints/$RUN/eval_test/confusion_matrix.csv" docs/results/fashion_mnist_best/
cp "checkpoints/$RUN/eval_test_tta_flip/report.json" docs/results/fashion_mnist_best/report_tta_flip.json
