#!/usr/bin/env bash
# The CamVid recipe sweep of docs/training.md ("Choosing the recipe on a held-out drive"):
# every row trains on CamVid train+val minus drive 0001TP and is scored on 0001TP (62 images,
# a drive no row trains on), last-step weights (--export last: nothing selected on 0001TP).
#
#   bash bench/camvid_recipe_sweep.sh ROW [ROW...]   # e.g. A-base; `all` runs every row
#
# Each row: /tmp/camvid-sweep/ROW (checkpoint), ROW.log, and ROW.heldout.{none,flip}.json
# (`python -m segdemo evaluate` on 0001TP without / with flip TTA, fp32 as the app runs).
# Rows run bf16 autocast, one torch thread each (two rows side by side on the 2-core VM).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/camvid}
OUT=${OUT:-/tmp/camvid-sweep}
HELD=0001TP
mkdir -p "$OUT"

BASE=(--model upernet-resnet-s --image-size 240 320 --crop-size 192 256 --scale-range 0.75 1.75
      --class-weights enet --max-steps 800)
declare -A ROWS=(
  [A-base]=""                                                       # session 1's recipe, 800 steps
  [A-seed1]="--seed 1"                                              # A again: what a seed changes
  [B-noweights]="--class-weights none"
  [C-strongaug]="--scale-range 0.5 2.0 --jitter 0.4 0.4 0.4 0.1"
  [C2-strongcolour]="--jitter 0.5 0.5 0.5 0.1"                      # colour only, A's scales
  [D-segformer]="--model segformer-b0"                              # fast decoder (the default)
  [E-ema]="--ema-decay 0.999"
  [F-native]="--image-size 360 480 --crop-size 288 384"               # 2.7x the step time
  [F2-native-small-crops]="--image-size 360 480"                    # A's crops, native input
  [G-long]="--max-steps 4000 --ema-decay 0.999"                     # the shipped recipe
  [G2-long-colour]="--max-steps 4000 --ema-decay 0.999 --jitter 0.5 0.5 0.5 0.1"
  [H-8000-colour]="--max-steps 8000 --ema-decay 0.999 --jitter 0.5 0.5 0.5 0.1 --eval-every 500"
  # H with brightness/contrast jitter 0.7 (factors 0.3-1.7) and channels-last (1.17x per step)
  [I-8000-bright]="--max-steps 8000 --ema-decay 0.999 --jitter 0.7 0.7 0.5 0.1 --eval-every 500 --channels-last"
  # stage 2 on row I's output (run I first): 1600 steps at the native 360x480, 288x384 crops
  [J-native-ft]="--model $OUT/I-8000-bright --image-size 360 480 --crop-size 288 384 --max-steps 1600 --lr 5e-4 --warmup-steps 50 --ema-decay 0.999 --jitter 0.7 0.7 0.5 0.1 --eval-every 400 --channels-last"
)

run_row() {
  local name=$1
  if [ "$name" = J-native-ft ] && [ ! -f "$OUT/I-8000-bright/training_config.json" ]; then
    echo "J-native-ft continues row I: run I-8000-bright first (into $OUT)" >&2; exit 2
  fi
  # later flags override BASE's (argparse keeps the last value)
  # shellcheck disable=SC2086
  ACCELERATE_MIXED_PRECISION=bf16 OMP_NUM_THREADS=1 python train/run.py \
    --data-dir "$DATA" --ignore-index 11 --palette camvid \
    --val-groups "$HELD" --export last --eval-every 200 --log-every 20 --num-workers 1 \
    --batch-size 8 --lr 2e-3 --weight-decay 0.01 --scheduler poly --warmup-steps 100 --seed 0 \
    "${BASE[@]}" ${ROWS[$name]} --output-dir "$OUT/$name" > "$OUT/$name.log" 2>&1
  for tta in none flip; do
    local flags=()
    [ "$tta" = flip ] && flags=(--tta flip)
    OMP_NUM_THREADS=1 python -m segdemo evaluate --model "$OUT/$name" --data-dir "$DATA" \
      --val-groups "$HELD" --ignore-index 11 --out "$OUT/$name.heldout.$tta.json" "${flags[@]}" > /dev/null
    python -c "import json; r = json.load(open('$OUT/$name.heldout.$tta.json')); \
print('$name', 'tta=$tta', 'held-out $HELD mIoU %.4f' % r['mean_iou'])"
  done
}

rows=("$@")
[ "${rows[0]:-all}" = all ] && rows=(A-base A-seed1 B-noweights C-strongaug C2-strongcolour D-segformer E-ema F-native F2-native-small-crops G-long G2-long-colour H-8000-colour I-8000-bright J-native-ft)
for name in "${rows[@]}"; do
  [ -n "${ROWS[$name]+x}" ] || { echo "unknown row $name (rows: ${!ROWS[*]})" >&2; exit 2; }
  run_row "$name"
done
