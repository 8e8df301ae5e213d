#!/usr/bin/env bash
# Train on ICBHI, test on SPRSound: a model trained on one dataset scored on another.
#
# Both demo datasets are made here (the ICBHI 2017 layout and the SPRSound layout); point
# ICBHI=... and SPRSOUND=... at the real databases instead. SPRSound is analysed through
# the built-in label map `sprsound-to-icbhi` (crackles -> crackle; wheeze, rhonchi,
# stridor -> wheeze; wheeze+crackle -> both), recorded with the dataset, so the ICBHI
# model's four classes and ICBHI Sp/Se/Score apply to it. `eval --dataset` scores the run
# on SPRSound (the map's name and sha256 go into every output); `eval --runs ... --dataset
# A,B` prints the cross-dataset table (rows: runs and their training sets, columns: test
# sets, cells: Score) and `--csv` writes it. docs/datasets.md#cross-dataset-evaluation.
#
# Usage: bash examples/cross-dataset.sh [WORK_DIR]             (default: cross-run)
#   ICBHI=DIR SPRSOUND=DIR   the real databases instead of the demo datasets
#   MODEL=cnn SIZE=small EPOCHS=20
#   RSCTOOL=..., RSCTOOL_FAST=1 (smoke test: tiny model, 2 steps, numbers meaningless)
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
WORK=${1:-cross-run}
MODEL=${MODEL:-cnn}
SIZE=${SIZE:-small}
EPOCHS=${EPOCHS:-20}
ICBHI=${ICBHI:-$WORK/icbhi-demo}
SPRSOUND=${SPRSOUND:-$WORK/sprsound-demo}
FAST_DATA="" FAST_ANALYZE="" FAST_TRAIN="" FAST_EVAL=""
if [[ ${RSCTOOL_FAST:-0} == 1 ]]; then  # later options win: these override the recipe's
  FAST_DATA="--patients 6" FAST_ANALYZE="--no-fbank-stats --no-plots" FAST_EVAL="--no-plots"
  FAST_TRAIN="--size tiny --epochs 1 --max-steps 2 --clip-seconds 1"
fi
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

if [[ ! -d $ICBHI ]]; then
  $RSCTOOL demo-data "$ICBHI" $FAST_DATA
fi
if [[ ! -d $SPRSOUND ]]; then
  $RSCTOOL demo-data --kind sprsound "$SPRSOUND" $FAST_DATA
fi
$RSCTOOL analyze "$ICBHI" --name icbhi $FAST_ANALYZE
# SPRSound's event types seen as the four ICBHI classes
$RSCTOOL analyze "$SPRSOUND" --name sprsound --map sprsound-to-icbhi $FAST_ANALYZE
$RSCTOOL train --dataset icbhi --model "$MODEL" --size "$SIZE" --run "icbhi-$MODEL" \
    --epochs "$EPOCHS" --balanced --clip-seconds 4 $FAST_TRAIN
# the run on its own test split, then on SPRSound's test split through the map
$RSCTOOL eval --run "icbhi-$MODEL" $FAST_EVAL
$RSCTOOL eval --run "icbhi-$MODEL" --dataset sprsound $FAST_EVAL
# the cross-dataset table: rows = runs (training set), columns = test sets, cells = Score
$RSCTOOL eval --runs 'icbhi-*' --dataset icbhi,sprsound --csv "$WORK/cross-dataset.csv" \
    $FAST_EVAL
echo "cross-dataset table: $WORK/cross-dataset.csv"
