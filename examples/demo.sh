#!/usr/bin/env bash
# The whole rsctool pipeline on the built-in demo dataset (CPU, a few minutes).
# Usage: bash examples/demo.sh [WORK_DIR]      (default: demo-run)
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
WORK=${1:-${WORK:-demo-run}}
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

# 1. a small ICBHI-format dataset with learnable crackles and wheezes
$RSCTOOL demo-data "$WORK/data"
# 2. manifest, distribution report and plots (re-running is a no-op)
$RSCTOOL analyze "$WORK/data" --name demo
# 3. what the project file now records
$RSCTOOL status

echo "demo finished: project $RSCTOOL_PROJECT, report in $WORK/.rsctool/reports/"
