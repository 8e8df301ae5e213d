#!/usr/bin/env bash
# A sweep over models x seeds that ends with one comparison table and a CSV.
#
# Every (model, seed) pair is one run of a seed group (`train --seeds`), recorded in the
# project file: re-running the script resumes an interrupted run and skips finished
# ones, so a sweep cut short continues where it stopped. `eval --runs` evaluates every
# run of the sweep on the test split and prints one table with a mean +- std row per
# model; `--csv` writes it (one row per run, fractions in [0, 1]) and `--json` gives the
# same numbers to a script.
#
# Usage: bash examples/sweep.sh [WORK_DIR]                  (default: sweep-run)
#   MODELS="cnn resnet"   models to compare (any of ast grf film tafilm softfilm add cnn
#                         resnet; docs/models.md)
#   SEEDS=3               seeds per model
#   SIZE=small EPOCHS=20  model size and epochs for every model
#   DATA=DIR              an analysed dataset folder to use instead of the demo dataset
#                         (e.g. the real ICBHI_final_database)
#   RSCTOOL=..., RSCTOOL_FAST=1 (smoke test: tiny models, 2 steps, numbers meaningless)
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
WORK=${1:-sweep-run}
MODELS=${MODELS:-cnn resnet}
SEEDS=${SEEDS:-3}
SIZE=${SIZE:-small}
EPOCHS=${EPOCHS:-20}
DATA=${DATA:-$WORK/data}
FAST_ANALYZE="" FAST_TRAIN="" FAST_EVAL=""
if [[ ${RSCTOOL_FAST:-0} == 1 ]]; then  # later options win: these override the recipe's
  SEEDS=2 FAST_ANALYZE="--no-fbank-stats --no-plots" FAST_EVAL="--no-plots"
  FAST_TRAIN="--size tiny --epochs 1 --max-steps 2 --clip-seconds 1"
fi
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

if [[ ! -d $DATA ]]; then
  $RSCTOOL demo-data "$DATA"
fi
$RSCTOOL analyze "$DATA" --name sweep-data --val-fraction 0.2 $FAST_ANALYZE
for model in $MODELS; do
  # runs sweep-MODEL-s0, sweep-MODEL-s1, ...: one seed group per model
  $RSCTOOL train --dataset sweep-data --model "$model" --size "$SIZE" --run "sweep-$model" \
      --seeds "$SEEDS" --epochs "$EPOCHS" --balanced --clip-seconds 4 --num-mel-bins 64 \
      $FAST_TRAIN
done
# the comparison: one row per run and a mean +- std row per model, then as CSV and JSON
$RSCTOOL eval --runs 'sweep-*' --csv "$WORK/sweep.csv" $FAST_EVAL
$RSCTOOL --quiet eval --runs 'sweep-*' --json $FAST_EVAL > "$WORK/sweep.json"
echo "sweep finished: $WORK/sweep.csv (one row per run), $WORK/sweep.json"
