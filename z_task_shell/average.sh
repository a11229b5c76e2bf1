#!/usr/bin/env bash
# Checkpoint averaging (seed 004): the mean of the last K epoch checkpoints of a run that kept them (train it
# with --keep_epochs K), BatchNorm statistics recomputed on the training split, then evaluated on test. Writes
# checkpoints/RUN/average_lastK.pth and its report (eval_test/ beside it is the plain run's).
#   RUN=my_run K=4 bash z_task_shell/average.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
PY=.venv/bin/python
RUN=${RUN:-quickstart}
RUN_DIR=${RUN_DIR:-checkpoints/$RUN}
K=${K:-4}
$PY main.py --average_last "$K" --resume "$RUN_DIR/last.pth" --update_bn "$@"
$PY main.py --evaluation --resume "$RUN_DIR/average_last$K.pth" --split test --output "$RUN_DIR/eval_test_average_last$K"
