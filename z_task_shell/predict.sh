#!/usr/bin/env bash
# A submission file: every image under IMAGES classified by an ensemble (one or more checkpoints or exports in
# MODELS) with test-time augmentation, written as filename,label plus one probability column per class. Trains
# nothing. Defaults fit the quickstart run; crop TTA, not flip, because a mirrored digit is another digit.
#   MODELS="checkpoints/a/best.pth checkpoints/b/best.torchscript.pt" WEIGHTS="2 1" IMAGES=data/my_set/test \
#     TTA=flip OUT=submission.csv bash z_task_shell/predict.sh
# Further arguments go to main.py (e.g. -j 4); under torchrun the same flags predict each image once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh
PY=.venv/bin/python
RUN=${RUN:-quickstart}
read -r -a models <<< "${MODELS:-checkpoints/$RUN/best.pth}"
IMAGES=${IMAGES:-data/digits/test}
OUT=${OUT:-checkpoints/$RUN/submission.csv}
weights=()
if [ -n "${WEIGHTS:-}" ]; then read -r -a w <<< "$WEIGHTS"; weights=(--ensemble_weights "${w[@]}"); fi
$PY main.py --predict "$IMAGES" --resume "${models[@]}" "${weights[@]}" --tta "${TTA:-crop}" --probabilities \
  --output "$OUT" "$@"
