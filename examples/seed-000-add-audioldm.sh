#!/usr/bin/env bash
# Seed 000: "AudioLDM Integration for ADD-RSC" (cited as "Adaptive Differential Denoising
# for Respiratory Sounds Classification with AudioLDM Augmentation", arXiv 2506.02505):
# text-to-audio crackle / wheeze / both cycles from AudioLDM added to ADD's training data.
#
# Paper (seed 000): no ICBHI number (its before/after class counts are marked "Example");
#   compare with the ADD recipe without synthetic cycles (seed-003-add.sh).
# Settings (seed 000): cvssp/audioldm-s-full-v2, 50 steps, guidance 7.5, 8 s at 16 kHz,
#   its three prompts per class (seed-000-prompts.toml); training (seed-000-add-audioldm.toml):
#   synthetic_ratio 0.3, max_synthetic_per_class 200, batch size 8, 50 epochs.
#
# Usage: bash examples/seed-000-add-audioldm.sh PATH/TO/ICBHI_final_database [WORK_DIR]
#        AUDIOLDM_MODEL=HUB_ID|DIR: another AudioLDM pipeline (the default is downloaded
#        from the Hugging Face hub on first use, about 1 GB); SEEDS=N, RSCTOOL=...;
#        RSCTOOL_FAST=1: a smoke test (tiny model, 2 denoising steps, 1 s cycles, numbers
#        meaningless); it needs AUDIOLDM_MODEL=DIR, a local pipeline (the tests save a
#        tiny random one with rsctool.testing.write_tiny_audioldm), and skips the
#        synthesis and the AudioLDM run, saying so, without one.
set -euo pipefail
RSCTOOL=${RSCTOOL:-rsctool}
DATA=${1:?usage: $0 PATH/TO/ICBHI_final_database [WORK_DIR]}
WORK=${2:-icbhi-run}
SEEDS=${SEEDS:-5}
LDM=${AUDIOLDM_MODEL:-cvssp/audioldm-s-full-v2}
HERE=$(cd "$(dirname "$0")" && pwd)
FAST_ANALYZE="" FAST_SYNTH="" FAST_TRAIN="" FAST_EVAL="" SYNTH=1
if [[ ${RSCTOOL_FAST:-0} == 1 ]]; then  # later options win: these override the recipe's
  SEEDS=1 FAST_ANALYZE="--no-fbank-stats --no-plots --max-synthetic-per-class 2"
  FAST_SYNTH="--steps 2 --seconds 1" FAST_EVAL="--no-plots"
  FAST_TRAIN="--size tiny --epochs 1 --max-steps 2 --clip-seconds 1 --num-mel-bins 32"
  if [[ ! -d $LDM ]]; then
    echo "RSCTOOL_FAST: skipping AudioLDM synthesis and the AudioLDM run (no local" \
         "AUDIOLDM_MODEL folder; $LDM would be downloaded)" >&2
    SYNTH=0
  fi
fi
export RSCTOOL_PROJECT="$WORK/rsctool.toml"
mkdir -p "$WORK"

# the synthesis plan: bring each minority class to half the largest, at most 200 each
$RSCTOOL analyze "$DATA" --name icbhi --split official --val-fraction 0.1 \
    --target-ratio 0.5 --max-synthetic-per-class 200 $FAST_ANALYZE
# the baseline without synthetic cycles (seed-003-add.sh; skipped when it already ran)
$RSCTOOL train --dataset icbhi --config "$HERE/seed-003-add.toml" --run add-paper \
    --seeds "$SEEDS" $FAST_TRAIN
runs=('add-paper-s*')
if [[ $SYNTH == 1 ]]; then
  $RSCTOOL synth --dataset icbhi --backend audioldm --balance \
      --prompts "$HERE/seed-000-prompts.toml" --model "$LDM" --steps 50 \
      --guidance 7.5 --seconds 8 --sample-rate 16000 --name audioldm-seed $FAST_SYNTH
  # seed-000-add-audioldm.toml: ADD, bias-denoising loss, batch 8, 50 epochs, the set
  # audioldm-seed at --synthetic-ratio 0.3 and --max-synthetic-per-class 200
  $RSCTOOL train --dataset icbhi --config "$HERE/seed-000-add-audioldm.toml" \
      --run add-audioldm --seeds "$SEEDS" $FAST_TRAIN
  runs+=('add-audioldm-s*')
fi
# paper: no number; the seed lists only expected qualitative improvements
$RSCTOOL eval --runs "${runs[@]}" --csv "$WORK/seed-000.csv" $FAST_EVAL
