#!/usr/bin/env bash
# Seed 004: "audio-angle-classification" - not a respiratory-sound system: it ranks
# sound-source angles from spectrograms with a SimpleCNN, trained with a standard (margin
# ranking) loss or a GHM loss (--ghm-bins 10 --ghm-alpha 0.75). rsctool takes from it the
# small CNN / ResNet baselines, the GHM loss, folder datasets and the ranking task; here
# on ICBHI (classification), and, given the seed's angle data, its own ranking recipe.
#
# Paper (seed 004, on its angle data, not ICBHI): SimpleCNN with the standard loss 85 %
#   accuracy, with GHM 91 % accuracy. No ICBHI number exists to compare with.
# The seed does not define --ghm-alpha; it is read as rsctool's GHM exponent alpha.
#
# Usage: bash examples/seed-004-cnn-ghm.sh PATH/TO/ICBHI_final_database [WORK_DIR]
#        ANGLES=PATH/TO/angle/data bash examples/seed-004-cnn-ghm.sh ...   (also ranking;
#        data/<angle>_degree/<material>/<material>_<angle>_degree_<freq>_<seq>.wav)
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
DATA=${1:?usage: $0 PATH/TO/ICBHI_final_database [WORK_DIR]}
WORK=${2:-icbhi-run}
SEEDS=${SEEDS:-5}
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

$RSCTOOL analyze "$DATA" --name icbhi --split official --val-fraction 0.1
$RSCTOOL train --dataset icbhi --model cnn --size base --run cnn-ce --seeds "$SEEDS"
$RSCTOOL train --dataset icbhi --model cnn --size base --run cnn-ghm --seeds "$SEEDS" \
    --loss ghm --ghm-bins 10 --ghm-alpha 0.75
$RSCTOOL train --dataset icbhi --model resnet --size base --run resnet-ghm --seeds "$SEEDS" \
    --loss ghm --ghm-bins 10 --ghm-alpha 0.75
# paper (angle data): CE 85 % -> GHM 91 % accuracy
for g in cnn-ce cnn-ghm resnet-ghm; do
  $RSCTOOL eval --group "$g" --csv "$WORK/$g.csv"
done

# The seed's own task: angles ranked from the 1000 Hz recordings of one material
# (python train.py --frequency 1000hz --material plastic --loss-type standard|ghm).
if [ -n "${ANGLES:-}" ]; then
  MATERIAL=${MATERIAL:-plastic}
  $RSCTOOL analyze "$ANGLES" --format folder --name angles \
      --name-pattern '{material}_{class}_{frequency}_{seq}' \
      --where frequency=1000hz --where "material=$MATERIAL"
  $RSCTOOL train --dataset angles --task ranking --model cnn --size small \
      --run angles-margin --seeds "$SEEDS" --loss margin
  $RSCTOOL train --dataset angles --task ranking --model cnn --size small \
      --run angles-ghm --seeds "$SEEDS" --loss ghm --ghm-bins 10 --ghm-alpha 0.75
  $RSCTOOL eval --group angles-margin --csv "$WORK/angles-margin.csv"
  $RSCTOOL eval --group angles-ghm --csv "$WORK/angles-ghm.csv" --plots all
fi
