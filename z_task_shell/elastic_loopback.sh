#!/usr/bin/env bash
# Elastic training end to end on one machine: two launchers ("nodes", 1 CPU process each) meet through torchrun's
# c10d rendezvous on loopback. The training process of node 2 is killed (kill -9) in the middle of the run: both
# launchers restart their workers (--max-restarts), which continue from the latest checkpoint (--resume auto, written
# every 5 steps), and the run ends with the weights of a run that was never stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
PY=.venv/bin/python
DATA=${DATA:-data/digits}
[ -d "$DATA/train" ] || $PY -m dataloader.prepare digits --out "$DATA"
RECIPE=(--data "$DATA" --model small_cnn --image_size 32 32 --epochs 6 --lr 0.003 -b 16 -j 0 --device cpu
        --no-channels_last --save_every_steps 5 --resume auto)
node() {  # RUN: one launcher of the 2-node run RUN
  exec env OMP_NUM_THREADS=1 .venv/bin/torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d \
    --rdzv_endpoint 127.0.0.1:29631 --rdzv_id "$1" --max-restarts 3 main.py "${RECIPE[@]}" --name "$1"
}
rm -rf checkpoints/elastic_full checkpoints/elastic_cut
node elastic_full > /dev/null & sleep 1; node elastic_full > /dev/null & wait
node elastic_cut & first=$!; sleep 1; node elastic_cut & second=$!
until [ -f checkpoints/elastic_cut/last.pth ]; do sleep 0.2; done
sleep 1
worker=$(pgrep -P "$second")
echo "killing the training process of node 2 (pid $worker) at $(date +%T)"
kill -9 "$worker"
wait "$first" "$second"
$PY -m utils.checkpoint same checkpoints/elastic_full/last.pth checkpoints/elastic_cut/last.pth
