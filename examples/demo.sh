#!/usr/bin/env bash
# The whole rsctool pipeline on the built-in demo dataset (CPU, a few minutes).
# Usage: bash examples/demo.sh [WORK_DIR]      (default: demo-run)
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
WORK=${1:-${WORK:-demo-run}}
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

# 1. a small ICBHI-format dataset with learnable crackles and wheezes (24 patients)
$RSCTOOL demo-data "$WORK/data"
# 2. manifest, distribution report and plots (re-running is a no-op); a fifth of the
#    train patients become the validation split, chosen so every class is in it
$RSCTOOL analyze "$WORK/data" --name demo --val-fraction 0.2
# 3. a small CNN: 4 s clips, 64 mel bins, class-balanced sampling; the best epoch is
#    chosen on validation only (re-running finishes an interrupted run, else no-op)
$RSCTOOL train --model cnn --size small --run demo-cnn --epochs 40 --balanced \
    --clip-seconds 4 --num-mel-bins 64 --no-specaugment
# 4. ICBHI Sp / Se / Score on the held-out test patients, plots and predictions
$RSCTOOL eval --run demo-cnn
# 5. a self-describing ONNX model (checked against torch on validation cycles) ...
$RSCTOOL export --run demo-cnn
# 6. ... that labels the cycles of recordings from the command line, without torch
$RSCTOOL predict "$WORK"/data/1*_Al_*.wav --run demo-cnn --format csv --out "$WORK/predictions.csv"
# 7. what the project file now records
$RSCTOOL status

echo "demo finished: project $RSCTOOL_PROJECT, reports and runs in $WORK/.rsctool/"
