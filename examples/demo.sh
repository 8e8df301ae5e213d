#!/usr/bin/env bash
# The whole rsctool pipeline on the built-in demo dataset (CPU, a few minutes).
# Usage: bash examples/demo.sh [WORK_DIR]      (default: demo-run)
#        RSCTOOL=...: another rsctool command (e.g. "python -m rsctool");
#        RSCTOOL_FAST=1: a smoke test in seconds (8 patients, a tiny CNN, 2 steps)
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
WORK=${1:-${WORK:-demo-run}}
FAST_DATA="" FAST_TRAIN=""
if [[ ${RSCTOOL_FAST:-0} == 1 ]]; then  # later options win: these override the recipe's
  FAST_DATA="--patients 8"
  FAST_TRAIN="--size tiny --epochs 1 --max-steps 2 --clip-seconds 1"
fi
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

# 1. a small ICBHI-format dataset with learnable crackles and wheezes (24 patients)
$RSCTOOL demo-data "$WORK/data" $FAST_DATA
# 2. manifest, distribution report and plots (re-running is a no-op); a fifth of the
#    train patients become the validation split, chosen so every class is in it
$RSCTOOL analyze "$WORK/data" --name demo --val-fraction 0.2
# 3. a small CNN: 4 s clips, 64 mel bins, class-balanced sampling; the best epoch is
#    chosen on validation only (re-running finishes an interrupted run, else no-op)
$RSCTOOL train --model cnn --size small --run demo-cnn --epochs 40 --balanced \
    --clip-seconds 4 --num-mel-bins 64 --no-specaugment $FAST_TRAIN
# 4. ICBHI Sp / Se / Score on the held-out test patients, plots and predictions
$RSCTOOL eval --run demo-cnn
# 5. a self-describing ONNX model (checked against torch on validation cycles) ...
$RSCTOOL export --run demo-cnn
# 6. ... that labels the cycles of recordings from the command line, without torch
$RSCTOOL predict "$WORK"/data/1*_Al_*.wav --run demo-cnn --format csv --out "$WORK/predictions.csv"
# 7. what the project file now records
$RSCTOOL status

echo "demo finished: project $RSCTOOL_PROJECT, reports and runs in $WORK/.rsctool/"
