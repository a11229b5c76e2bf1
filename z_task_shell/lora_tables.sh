#!/usr/bin/env bash
# The README's fine-tuning table (issue 16, LoRA / PEFT): resnet18 at 28x28 pretrained by this project on the
# Fashion-MNIST classes 0-4 (nothing is downloaded), then fine-tuned on classes 5-9 with 50 and 500 labelled images
# per class: full fine-tune, linear probe (--freeze for every epoch), frozen stages (--freeze_stages 3) and LoRA at
# ranks 4 and 16. The lr of each method is chosen on val at 50 images per class (two or three values each, the
# "sweep" rows; best val top-1 decides) and reused at 500; best.pth is the best val epoch. Every run is evaluated
# on the official test images of classes 5-9 (5,000). Raw reports, summaries and logs go to docs/results/lora/.
# Usage: bash z_task_shell/lora_tables.sh   (about 35 minutes on 2 busy cores, one thread)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=docs/results/lora
mkdir -p "$OUT"
$PY -m dataloader.prepare fashion-mnist --out data/fmnist_0to4 --classes 0 1 2 3 4
$PY -m dataloader.prepare fashion-mnist --out data/fmnist_5to9_n50 --classes 5 6 7 8 9 --train_per_class 50 \
  --val_ratio 0.05
$PY -m dataloader.prepare fashion-mnist --out data/fmnist_5to9_n500 --classes 5 6 7 8 9 --train_per_class 500 \
  --val_ratio 0.05
OMP_NUM_THREADS=1 $PY -c "import os, torch; print('cpu capability', torch.backends.cpu.get_cpu_capability(), \
'| torch threads', torch.get_num_threads(), '| cores', os.cpu_count(), '| load average', os.getloadavg())" \
  | tee "$OUT/environment.txt"

run() {  # run NAME FLAGS...: train (unless evaluated already), evaluate best.pth on test, keep the raw files
  local name=$1; shift
  if [ ! -f "checkpoints/$name/eval_test/report.json" ]; then
    rm -rf "checkpoints/$name" "logs/$name"
    OMP_NUM_THREADS=1 $PY main.py --model resnet18 --image_size 28 28 --cache_images ram --optimizer adam \
      --lr_schedule cosine --warmup 1 -j 1 --seed 0 --aug basic --name "$name" "$@"
    OMP_NUM_THREADS=1 $PY main.py --evaluation --resume "checkpoints/$name/best.pth" --split test -j 1
  fi
  mkdir -p "$OUT/$name"
  cp "checkpoints/$name/eval_test/report.json" "checkpoints/$name/summary.csv" "checkpoints/$name/train.log" \
    "$OUT/$name/"
}

# the base model: classes 0-4, 3 epochs
run lora_pretrain --data data/fmnist_0to4 --lr 0.001 --epochs 3 -b 128
BASE=checkpoints/lora_pretrain/best.pth
N50=(--data data/fmnist_5to9_n50 --pretrained "$BASE" --epochs 10 -b 32)
N500=(--data data/fmnist_5to9_n500 --pretrained "$BASE" --epochs 5 -b 32)

# 50 images per class: two or three lrs per method (the sweep; a third where the best of two was the highest)
run lora_n50_full_lr3e-4 "${N50[@]}" --lr 0.0003
run lora_n50_full_lr1e-3 "${N50[@]}" --lr 0.001
run lora_n50_full_lr3e-3 "${N50[@]}" --lr 0.003
run lora_n50_linear_lr3e-3 "${N50[@]}" --freeze 10 --lr 0.003
run lora_n50_linear_lr1e-2 "${N50[@]}" --freeze 10 --lr 0.01
run lora_n50_linear_lr3e-2 "${N50[@]}" --freeze 10 --lr 0.03
run lora_n50_stages3_lr1e-3 "${N50[@]}" --freeze_stages 3 --lr 0.001
run lora_n50_stages3_lr3e-3 "${N50[@]}" --freeze_stages 3 --lr 0.003
run lora_n50_lora4_lr1e-3 "${N50[@]}" --lora 4 --lr 0.001
run lora_n50_lora4_lr3e-3 "${N50[@]}" --lora 4 --lr 0.003
run lora_n50_lora4_lr1e-2 "${N50[@]}" --lora 4 --lr 0.01
run lora_n50_lora16_lr1e-3 "${N50[@]}" --lora 16 --lr 0.001
run lora_n50_lora16_lr3e-3 "${N50[@]}" --lora 16 --lr 0.003
run lora_n50_lora16_lr1e-2 "${N50[@]}" --lora 16 --lr 0.01
$PY -m utils.results_table checkpoints/lora_n50_* --strip lora_n50_ --parameters | tee "$OUT/sweep_n50.md"

# 500 images per class: each method at its lr chosen on val above (best val top-1 of sweep_n50.md)
run lora_n500_full "${N500[@]}" --lr 0.003
run lora_n500_linear "${N500[@]}" --freeze 5 --lr 0.03
run lora_n500_stages3 "${N500[@]}" --freeze_stages 3 --lr 0.001
run lora_n500_lora4 "${N500[@]}" --lora 4 --lr 0.01
run lora_n500_lora16 "${N500[@]}" --lora 16 --lr 0.003
$PY -m utils.results_table checkpoints/lora_n50_full_lr3e-3 checkpoints/lora_n50_linear_lr3e-2 \
  checkpoints/lora_n50_stages3_lr1e-3 checkpoints/lora_n50_lora4_lr1e-2 checkpoints/lora_n50_lora16_lr3e-3 \
  checkpoints/lora_n500_full checkpoints/lora_n500_linear checkpoints/lora_n500_stages3 checkpoints/lora_n500_lora4 \
  checkpoints/lora_n500_lora16 --strip lora_ --parameters | tee "$OUT/table.md"
