#!/usr/bin/env bash
# Training on several machines: run this on every node with the same settings; torchrun's c10d rendezvous on
# MASTER_ADDR:MASTER_PORT (a host all nodes reach; the first launcher to arrive hosts the store) forms the group,
# ranks are assigned at the rendezvous, and MAX_RESTARTS lets the group restart after a worker fails (with
# --resume auto each restart continues from the last mid-epoch checkpoint). Arguments go to main.py.
#   on each of 2 machines:  NNODES=2 NPROC=8 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 RUN=r50 \
#     bash z_task_shell/ddp_multinode.sh --data /shared/data --model resnet50 -b 64 --save_every_minutes 10
# Checkpoints go to --checkpoint_dir, which every node must see (a shared file system) for --resume auto.
# On CPU nodes set OMP_NUM_THREADS to the cores per process. NCCL/GLOO_SOCKET_IFNAME pick the network interface.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
: "${MASTER_ADDR:?set MASTER_ADDR to the host of the rendezvous (reachable from every node)}"
RUN=${RUN:-multinode}
exec .venv/bin/torchrun --nnodes "${NNODES:-2}" --nproc_per_node "${NPROC:-1}" --rdzv_backend c10d \
  --rdzv_endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id "${RDZV_ID:-$RUN}" \
  --max-restarts "${MAX_RESTARTS:-0}" main.py --name "$RUN" --resume auto "$@"
