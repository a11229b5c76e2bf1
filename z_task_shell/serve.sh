#!/usr/bin/env bash
# Serve the quickstart model over HTTP. Trains nothing (run z_task_shell/quickstart.sh first): exports
# checkpoints/$RUN/best.pth to TorchScript when there is no export yet or the checkpoint is newer, then runs
# python main.py --serve on it. Further arguments go to main.py, e.g. --port 8080 --max_batch_size 32. Open
# http://127.0.0.1:8000/ for the page; Ctrl-C or SIGTERM stops it after answering the requests in flight.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
PY=.venv/bin/python
RUN=${RUN:-quickstart}
CKPT="checkpoints/$RUN/best.pth"
MODEL="checkpoints/$RUN/best.torchscript.pt"
if [ ! -f "$CKPT" ] && [ ! -f "$MODEL" ]; then
  echo "error: $CKPT not found; train it first: bash z_task_shell/quickstart.sh" >&2
  exit 1
fi
if [ ! -f "$MODEL" ] || [ "$CKPT" -nt "$MODEL" ]; then
  $PY main.py --jit --resume "$CKPT"
fi
exec $PY main.py --serve "$MODEL" "$@"
