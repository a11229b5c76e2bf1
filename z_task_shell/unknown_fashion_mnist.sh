#!/usr/bin/env bash
# "Unknown" answers on Fashion-MNIST: classes 8 (Bag) and 9 (Ankle boot) are held out of training, so their 2,000 test
# images show nothing the model knows. The fast recipe (fashion_mnist_fast.yaml) trains on the other eight classes;
# test is evaluated before and after --calibrate (temperature, threshold for 95% val coverage, conformal sets at
# alpha 0.1), each time with the held-out images as --ood_data. Needs the Debian package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh --fashion-mnist
PY=.venv/bin/python
RUN=${RUN:-fashion_mnist_unknown}
$PY -m dataloader.prepare fashion-mnist --out data/fashion-mnist-8cls --classes 0 1 2 3 4 5 6 7
$PY -m dataloader.prepare fashion-mnist --out data/fashion-mnist-heldout --classes 8 9
$PY main.py --config z_task_shell/fashion_mnist_fast.yaml --data data/fashion-mnist-8cls --name "$RUN" "$@"
CKPT=checkpoints/$RUN/best.pth
$PY main.py --evaluation --resume "$CKPT" --split test --ood_data data/fashion-mnist-heldout/test \
  --output "checkpoints/$RUN/eval_test_uncalibrated"
$PY main.py --calibrate --resume "$CKPT" --reject_coverage 0.95 --conformal_alpha 0.1
$PY main.py --evaluation --resume "$CKPT" --split test --ood_data data/fashion-mnist-heldout/test
OUT=docs/results/unknown
mkdir -p "$OUT"
cp "checkpoints/$RUN/train.log" "checkpoints/$RUN/summary.csv" "$OUT/"
cp "checkpoints/$RUN/eval_test_uncalibrated/report.json" "$OUT/report_test_uncalibrated.json"
cp "checkpoints/$RUN/eval_test/report.json" "$OUT/report_test.json"
cp "checkpoints/$RUN/eval_test/reliability_diagram.png" "$OUT/reliability_test.png"
cp "checkpoints/$RUN/eval_test_uncalibrated/reliability_diagram.png" "$OUT/reliability_test_uncalibrated.png"
cp "checkpoints/$RUN/calibration/report.json" "$OUT/calibration.json"
