#!/usr/bin/env bash
# The newcomer's command: install, prepare the embedded digits data set, train under torchrun with 2 CPU
# processes, evaluate the best checkpoint on the test split, export TorchScript and classify a test image.
# 15 epochs of the seed's warmup-step schedule; no --aug, because a mirrored digit is another digit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
PY=.venv/bin/python
RUN=${RUN:-quickstart}
$PY -m dataloader.prepare digits --out data/digits
OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc_per_node 2 main.py --data data/digits --model small_cnn \
  --image_size 32 32 --epochs 15 --warmup 1 --lr 0.003 -b 32 -j 1 --name "$RUN" --device cpu
$PY main.py --evaluation --resume "checkpoints/$RUN/best.pth" --split test --device cpu
$PY main.py --jit --resume "checkpoints/$RUN/best.pth"
# sed reads to the end of the list: head would exit early, sort could die of SIGPIPE, and pipefail stops the script
image=$(find data/digits/test -name '*.png' | sort | sed -n 1p)
$PY demos/classifier.py "checkpoints/$RUN/best.torchscript.pt" "$image" --topk 3
cat <<DONE

Done. Where things went:
  log and per-epoch summary   checkpoints/$RUN/train.log, checkpoints/$RUN/summary.csv
  TensorBoard                 logs/$RUN   (.venv/bin/tensorboard --logdir logs)
  checkpoints                 checkpoints/$RUN/best.pth, checkpoints/$RUN/last.pth
  evaluation report           checkpoints/$RUN/eval_test/report.json, confusion_matrix.{csv,png}
  exported model              checkpoints/$RUN/best.torchscript.pt
DONE
