#!/usr/bin/env bash
# The README's distillation and curriculum table on Fashion-MNIST, with the strategy tables' short budget: a small_cnn
# student at 28x28 on the class-balanced 10,000-image subset, 8 epochs of Adam 3e-3 + cosine, evaluated on the
# official test set. Rows: the student alone; a stronger teacher (resnet9_half, 20 epochs of SGD) and the student
# distilled from it (offline knowledge, alpha 0.5, T 4); K-fold self-distillation (5 folds, 2:8); curriculum learning
# from the student's own scores. Writes docs/results/distillation.md. About 25 minutes on 2 cores; SEEDS=3 adds the
# three-seed rows (below).
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh --fashion-mnist
PY=.venv/bin/python
DATA=data/fashion-mnist-10k
$PY -m dataloader.prepare fashion-mnist --out "$DATA" --limit 10000
rm -f "$DATA"/distill*.txt "$DATA/label.txt" "$DATA/curriculum.txt"  # knowledge of an earlier run
STUDENT=(--data "$DATA" --model small_cnn --image_size 28 28 --aug basic --optimizer adam --lr 0.003
         --lr_schedule cosine --warmup 1 --epochs 8 -b 128 -j 1 --cache_images ram --seed 0)
evaluate() { $PY main.py --evaluation --resume "checkpoints/$1/best.pth" --split test; }

$PY main.py "${STUDENT[@]}" --name distill_student_alone && evaluate distill_student_alone
$PY main.py --data "$DATA" --model resnet9_half --image_size 28 28 --aug basic,erasing --optimizer sgd --lr 0.1 \
  --weight_decay 5e-4 --lr_schedule cosine --warmup 1 --epochs 20 -b 128 -j 1 --cache_images ram --label_smoothing 0.1 \
  --ema --ema_decay 0.99 --seed 0 --name distill_teacher && evaluate distill_teacher
$PY main.py --knowledge train --resume checkpoints/distill_teacher/best.pth  # DATA/distill.txt
$PY main.py "${STUDENT[@]}" --distill --distill_alpha 0.5 --distill_T 4 --name distill_student_kd \
  && evaluate distill_student_kd
rm -f "$DATA/distill.txt"
DATA=$DATA RUN=distill_kfold bash z_task_shell/kfold_self_distill.sh --image_size 28 28
rm -f "$DATA/distill_kfold.txt"
$PY main.py --make_curriculum --resume checkpoints/distill_student_alone/best.pth  # DATA/curriculum.txt
$PY main.py "${STUDENT[@]}" --curriculum_learning --name distill_student_curriculum \
  && evaluate distill_student_curriculum
$PY main.py "${STUDENT[@]}" --curriculum_learning --curriculum_pacing 2 4 --name distill_student_curriculum_paced \
  && evaluate distill_student_curriculum_paced
mkdir -p docs/results
$PY -m utils.results_table checkpoints/distill_student_alone checkpoints/distill_teacher checkpoints/distill_student_kd \
  checkpoints/distill_kfold/final checkpoints/distill_student_curriculum checkpoints/distill_student_curriculum_paced \
  | tee docs/results/distillation.md
cat checkpoints/distill_kfold/cv_report.md | tee -a docs/results/distillation.md

# SEEDS=3: the student alone, distilled and with the curriculum again over SEEDS seeds (--repeat), same teacher and
# curriculum file, into docs/results/distillation_3_seeds.md (about 12 more minutes for 3)
SEEDS=${SEEDS:-1}
if [ "$SEEDS" -gt 1 ]; then
  mv "$DATA/curriculum.txt" "$DATA/curriculum.keep"  # nothing else reads it, but keep the data root as plain runs see it
  $PY main.py "${STUDENT[@]}" --repeat "$SEEDS" --name x3_student_alone
  $PY main.py --knowledge train --resume checkpoints/distill_teacher/best.pth
  $PY main.py "${STUDENT[@]}" --distill --distill_alpha 0.5 --distill_T 4 --repeat "$SEEDS" --name x3_student_kd
  rm -f "$DATA/distill.txt" "$DATA/label.txt"
  mv "$DATA/curriculum.keep" "$DATA/curriculum.txt"
  $PY main.py "${STUDENT[@]}" --curriculum_learning --repeat "$SEEDS" --name x3_student_curriculum
  { echo "# $SEEDS seeds (--repeat $SEEDS), same budget as docs/results/distillation.md"
    for run in x3_student_alone x3_student_kd x3_student_curriculum; do
      printf '\n## %s\n\n' "$run"; cat "checkpoints/$run/repeat.md"
    done; } > docs/results/distillation_3_seeds.md
fi
