#!/usr/bin/env bash
# The README's GAN table (issue 16): Fashion-MNIST with 100 real images per class, a small_cnn trained without and
# with 1,000 images per class drawn from a class-conditional DCGAN that saw only those 1,000 real images; 3 seeds each
# (--repeat), evaluated on the full official test set (10,000). The two arms get the same budget in optimizer steps
# (real only: 30 epochs of 1,000 images = 450 steps; with generated: 3 epochs of 11,000 = 513 steps). Then the share
# of generated images that a small_cnn trained on all 54,000 Fashion-MNIST train images (3 epochs) puts in the class
# they were drawn for. Raw files go to docs/results/gan/. About an hour on 2 cores shared with other work
# (GAN 14 min, real-only arm 22 min, with-generated arm ~12 min, judge 22 min), OMP_NUM_THREADS=1 per process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh --fashion-mnist
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SEEDS=${SEEDS:-3}
OUT=docs/results/gan
$PY -m dataloader.prepare fashion-mnist --out data/fashion-mnist                    # 54,000 / 6,000 / 10,000
$PY -m dataloader.prepare fashion-mnist --out data/fmnist100 --limit 1000           # 100 per class in each split
[ -L data/fmnist100/test ] || { mv data/fmnist100/test data/fmnist100/test_1000
                                ln -s "$PWD/data/fashion-mnist/test" data/fmnist100/test; }  # test on all 10,000

# 1. the GAN on the 1,000 real train images, and 1,000 generated images per class
$PY main.py --gan --data data/fmnist100 --gan_image_size 28 --gan_epochs 60 -b 32 -j 1 --seed 0 --name fmnist100_gan
rm -rf data/fmnist100/gen_dataset/fmnist100_gan
$PY main.py --gan_generate 1000 --resume checkpoints/fmnist100_gan/generator.pth     # DATA/gen_dataset/RUN/

# 2. the classifier without and with the generated images (same recipe, same step budget)
SMALL_CNN=(--data data/fmnist100 --model small_cnn --image_size 28 28 --aug --cache_images ram --optimizer adam
           --lr 0.003 --weight_decay 0.0001 --lr_schedule cosine --warmup 1 -b 64 -j 0 --seed 0)
CLASSIFIER=("${SMALL_CNN[@]}" --repeat "$SEEDS")
$PY main.py "${CLASSIFIER[@]}" --epochs 30 --name fmnist100_real_only
$PY main.py "${CLASSIFIER[@]}" --epochs 3 --extra_train data/fmnist100/gen_dataset/fmnist100_gan --extra_weight 1 \
  --name fmnist100_with_gan
$PY main.py "${CLASSIFIER[@]}" --epochs 3 --extra_train data/fmnist100/gen_dataset/fmnist100_gan --extra_weight 0.3 \
  --name fmnist100_with_gan_w03
# the real images' exposure of the first row (30 epochs, 5,130 steps: 10x the budget), seed 0 only
$PY main.py "${SMALL_CNN[@]}" --epochs 30 --extra_train data/fmnist100/gen_dataset/fmnist100_gan --extra_weight 1 \
  --name fmnist100_with_gan_30ep
$PY main.py --evaluation --resume checkpoints/fmnist100_with_gan_30ep/best.pth --split test \
  --output "$OUT/fmnist100_with_gan_30ep/eval_test"

# 3. label quality: a small_cnn on all of Fashion-MNIST train judges the generated images (their folder as test split)
$PY main.py --data data/fashion-mnist --model small_cnn --image_size 28 28 --aug --cache_images ram --optimizer adam \
  --lr 0.003 --weight_decay 0.0001 --lr_schedule cosine --warmup 1 --epochs 3 -b 128 -j 1 --seed 0 \
  --name fmnist_judge_small_cnn
$PY main.py --evaluation --resume checkpoints/fmnist_judge_small_cnn/best.pth --split test \
  --output "$OUT/judge_on_real_test"
mkdir -p data/fmnist100_gen_eval
ln -sfn "$PWD/data/fmnist100/train" data/fmnist100_gen_eval/train
ln -sfn "$PWD/data/fmnist100/gen_dataset/fmnist100_gan" data/fmnist100_gen_eval/test
$PY main.py --evaluation --resume checkpoints/fmnist_judge_small_cnn/best.pth --data data/fmnist100_gen_eval \
  --split test --output "$OUT/judge_on_generated"

# raw files
mkdir -p "$OUT"
cp checkpoints/fmnist100_with_gan_30ep/summary.csv "$OUT/fmnist100_with_gan_30ep/"
cp checkpoints/fmnist100_gan/summary.csv "$OUT/gan_summary.csv"
cp checkpoints/fmnist100_gan/gan.log "$OUT/gan.log"
cp data/fmnist100/gen_dataset/fmnist100_gan/grid.png "$OUT/grid.png"
for run in fmnist100_real_only fmnist100_with_gan fmnist100_with_gan_w03; do
  mkdir -p "$OUT/$run"
  cp "checkpoints/$run/repeat.md" "checkpoints/$run/repeat.json" "$OUT/$run/"
  for seed_dir in checkpoints/$run/seed*; do
    mkdir -p "$OUT/$run/$(basename "$seed_dir")"
    cp "$seed_dir/summary.csv" "$seed_dir/eval_test/report.json" "$OUT/$run/$(basename "$seed_dir")/"
  done
done
