#!/usr/bin/env bash
# K-fold self-distillation (seed 004): train K models, each on K-1 folds of train; let each write the class
# probabilities of its held-out fold (out-of-fold knowledge); merge them into DATA/distill_kfold.txt; train the final
# model on all of train with those soft labels mixed 2:8 with the labels (--distill_alpha 0.2 --distill_T 1); evaluate
# on test. The fold scores go to checkpoints/RUN/cv_report.md (mean, std, 95% interval).
# Usage: DATA=data/fashion-mnist-10k K=5 RUN=kfold bash z_task_shell/kfold_self_distill.sh [training flags...]
# (default: the embedded digits set, small_cnn). Flags after the script name go to every training run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
PY=.venv/bin/python
DATA=${DATA:-data/digits}
K=${K:-5}
RUN=${RUN:-kfold_self_distill}
ALPHA=${ALPHA:-0.2}
if [ "$DATA" = data/digits ]; then
  $PY -m dataloader.prepare digits --out data/digits
fi
TRAIN=(--data "$DATA" --model small_cnn --aug basic --optimizer adam --lr 0.003 --lr_schedule cosine --warmup 1
       --epochs 8 -b 128 -j 1 --cache_images ram --seed 0 "$@")
OOF=()
for ((fold = 0; fold < K; fold++)); do
  $PY main.py "${TRAIN[@]}" --kfold "$K" --fold "$fold" --name "$RUN/fold$fold"
  $PY main.py --knowledge val --resume "checkpoints/$RUN/fold$fold/best.pth" --output "checkpoints/$RUN/oof_fold$fold.txt"
  OOF+=("checkpoints/$RUN/oof_fold$fold.txt")
done
$PY -m utils.cv_report checkpoints/"$RUN"/fold* --out "checkpoints/$RUN/cv_report.md"
$PY -m dataloader.knowledge merge "$DATA/distill_kfold.txt" "${OOF[@]}"
$PY main.py "${TRAIN[@]}" --distill --distill_alpha "$ALPHA" --distill_T 1 --name "$RUN/final"
$PY main.py --evaluation --resume "checkpoints/$RUN/final/best.pth" --split test
echo "out-of-fold knowledge: $DATA/distill_kfold.txt (move it away before other --distill runs on $DATA)"
