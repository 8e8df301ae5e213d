#!/usr/bin/env bash
# Seed 000: "AudioLDM Integration for ADD-RSC" (cited as "Adaptive Differential Denoising
# for Respiratory Sounds Classification with AudioLDM Augmentation", arXiv 2506.02505):
# text-to-audio crackle / wheeze / both cycles from AudioLDM added to ADD's training data.
#
# Paper (seed 000): no ICBHI number (its before/after class counts are marked "Example");
#   compare with the ADD recipe without synthetic cycles (seed-003-add.sh).
# Settings (seed 000): cvssp/audioldm-s-full-v2, 50 steps, guidance 7.5, 8 s at 16 kHz,
#   its three prompts per class (seed-000-prompts.toml), synthetic_ratio 0.3,
#   max_synthetic_per_class 200, batch size 8, 50 epochs.
#
# Usage: bash examples/seed-000-add-audioldm.sh PATH/TO/ICBHI_final_database [WORK_DIR]
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
DATA=${1:?usage: $0 PATH/TO/ICBHI_final_database [WORK_DIR]}
WORK=${2:-icbhi-run}
SEEDS=${SEEDS:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

$RSCTOOL analyze "$DATA" --name icbhi --split official --val-fraction 0.1 \
    --target-ratio 0.5 --max-synthetic-per-class 200
$RSCTOOL synth --dataset icbhi --backend audioldm --balance \
    --prompts "$HERE/seed-000-prompts.toml" --model cvssp/audioldm-s-full-v2 --steps 50 \
    --guidance 7.5 --seconds 8 --sample-rate 16000 --name audioldm-seed
$RSCTOOL train --dataset icbhi --model add --size base --loss bias-denoising \
    --run add-audioldm --seeds "$SEEDS" --synthetic audioldm-seed --synthetic-ratio 0.3 \
    --max-synthetic-per-class 200 --batch-size 8 --epochs 50
# paper: no number; the seed lists only expected qualitative improvements
$RSCTOOL eval --group add-audioldm --csv "$WORK/add-audioldm.csv"
