#!/usr/bin/env bash
# A folder dataset trained as ordinal ranking with the GHM loss (seed 004's recipe), on
# the built-in folder demo: tones recorded "at" 0, 45, 90, 135 and 180 degrees, three
# materials, three frequencies (CPU, about a minute).
#
#   data/<angle>_degree/<material>/<material>_<angle>_degree_<freq>hz_<seq>.wav
#
# Usage: bash examples/folder-ranking-ghm.sh [WORK_DIR]      (default: folder-ranking)
#        DATA=DIR WHERE=frequency=1000hz bash examples/folder-ranking-ghm.sh runs it on
#        seed 004's own recordings (DIR in the same layout) instead of the demo.
#        RSCTOOL=... (how to call rsctool), RSCTOOL_FAST=1 (smoke test: 2 epochs).
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
WORK=${1:-${WORK:-folder-ranking}}
EPOCHS=${EPOCHS:-15}
if [[ ${RSCTOOL_FAST:-0} == 1 ]]; then EPOCHS=2; fi
WHERE=${WHERE:-frequency=1000hz,3000hz}
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

# 1. 135 one-second files in the seed's layout (unless DATA is given)
if [ -z "${DATA:-}" ]; then
  DATA="$WORK/data"
  $RSCTOOL demo-data "$DATA" --kind folder
fi
# 2. classes from the first folder level; material, frequency and sequence number from the
#    file names; the 1000 Hz and 3000 Hz files only, split at random (stratified by
#    class, fixed seed)
$RSCTOOL analyze "$DATA" --format folder --name angles \
    --name-pattern '{material}_{class}_{frequency}_{seq}' --where "$WHERE" \
    --split random:0.6:0.2
# 3. a score per file; every in-batch pair of different angles is a ranking example,
#    weighted by the GHM loss (10 bins, alpha 0.75; as the seed's code, the density of
#    each batch alone: --ghm-momentum 0); the score thresholds that turn scores into angle
#    classes are chosen on the validation split
$RSCTOOL train --dataset angles --task ranking --model cnn --size tiny --run angles-ghm \
    --loss ghm --ghm-bins 10 --ghm-alpha 0.75 --ghm-momentum 0 --epochs "$EPOCHS" \
    --lr 3e-3 --batch-size 16 --clip-seconds 1 --num-mel-bins 64 --no-specaugment
# ... and the plain margin ranking loss, for comparison
$RSCTOOL train --dataset angles --task ranking --model cnn --size tiny --run angles-margin \
    --loss margin --epochs "$EPOCHS" --lr 3e-3 --batch-size 16 --clip-seconds 1 \
    --num-mel-bins 64 --no-specaugment
# 4. pairwise accuracy, Spearman and class accuracy on the test split; the GHM bin
#    statistics per epoch, compared across epochs, and over the whole training
$RSCTOOL eval --run angles-ghm --plots all
$RSCTOOL eval --runs angles-ghm angles-margin --no-plots

echo "done: GHM plots in $WORK/.rsctool/runs/angles-ghm/plots/ghm/"
