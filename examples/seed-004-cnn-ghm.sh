#!/usr/bin/env bash
# Seed 004: "audio-angle-classification" - not a respiratory-sound system: it ranks
# sound-source angles from spectrograms with a SimpleCNN, trained with a standard (margin
# ranking) loss or a GHM loss (--ghm-bins 10 --ghm-alpha 0.75). rsctool takes from it the
# small CNN / ResNet baselines, the GHM loss, folder datasets and the ranking task; here
# on ICBHI (classification). The seed's own recipe (angles ranked with margin vs GHM,
# frequency filtered) is examples/folder-ranking-ghm.sh (DATA=PATH/TO/angle/data for the
# seed's recordings instead of the generated demo).
#
# Paper (seed 004, on its angle data, not ICBHI): SimpleCNN with the standard loss 85 %
#   accuracy, with GHM 91 % accuracy. No ICBHI number exists to compare with.
# The seed does not define --ghm-alpha; it is read as rsctool's GHM exponent alpha.
#
# Usage: bash examples/seed-004-cnn-ghm.sh PATH/TO/ICBHI_final_database [WORK_DIR]
#        SEEDS=N, RSCTOOL=..., RSCTOOL_FAST=1 (smoke test): as in seed-003-add.sh
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
DATA=${1:?usage: $0 PATH/TO/ICBHI_final_database [WORK_DIR]}
WORK=${2:-icbhi-run}
SEEDS=${SEEDS:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
FAST_ANALYZE="" FAST_TRAIN="" FAST_EVAL=""
if [[ ${RSCTOOL_FAST:-0} == 1 ]]; then  # later options win: these override the recipe's
  SEEDS=1 FAST_ANALYZE="--no-fbank-stats --no-plots" FAST_EVAL="--no-plots"
  FAST_TRAIN="--size tiny --epochs 1 --max-steps 2 --clip-seconds 1 --num-mel-bins 32"
fi
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

$RSCTOOL analyze "$DATA" --name icbhi --split official --val-fraction 0.1 $FAST_ANALYZE
$RSCTOOL train --dataset icbhi --model cnn --size base --run cnn-ce --seeds "$SEEDS" $FAST_TRAIN
# seed-004-ghm.toml: --model cnn --size base --loss ghm --set loss.bins=10
#   --set loss.alpha=0.75
$RSCTOOL train --dataset icbhi --config "$HERE/seed-004-ghm.toml" --run cnn-ghm \
    --seeds "$SEEDS" $FAST_TRAIN
$RSCTOOL train --dataset icbhi --config "$HERE/seed-004-ghm.toml" --model resnet \
    --run resnet-ghm --seeds "$SEEDS" $FAST_TRAIN
# paper (angle data): CE 85 % -> GHM 91 % accuracy; one table and CSV with all three
$RSCTOOL eval --runs 'cnn-ce-*' 'cnn-ghm-*' 'resnet-ghm-*' --csv "$WORK/cnn-ghm.csv" $FAST_EVAL
