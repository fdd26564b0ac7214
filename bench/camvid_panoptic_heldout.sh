#!/usr/bin/env bash
# Issue 11's comparison on a held-out drive: the panoptic model and its baseline, both scored
# on CamVid drive 0001TP (62 frames), which neither they nor the backbone they start from
# trained on, with last-step weights (--export last: nothing selected on 0001TP).
#
#   BACKBONE=/tmp/camvid-sweep/I-8000-bright bash bench/camvid_panoptic_heldout.sh [STEPS]
#
# BACKBONE: a semantic CamVid model trained with --val-groups 0001TP (a row of
# bench/camvid_recipe_sweep.sh). Writes OUT/baseline.json (the backbone's semantic
# predictions split by the converter's rules, bench/panoptic_baseline.py), OUT/model/ (the
# panoptic run; rerunning the script resumes it from its newest state), OUT/train.log and
# OUT/model.json (`python -m segdemo evaluate --task panoptic --val-groups 0001TP`).
#
# FROM: continue a finished run of this script (its OUT/model) instead of starting from
# BACKBONE (still needed for the baseline); EXTRA's flags override the ones below, e.g. a
# second stage at CamVid's native size:
#   FROM=/tmp/camvid-panoptic-heldout/model OUT=/tmp/camvid-panoptic-heldout-native \
#     EXTRA="--image-size 360 480 --crop-size 288 384 --lr 1e-4 --eval-every 300" \
#     BACKBONE=... bash bench/camvid_panoptic_heldout.sh 600
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/camvid}
PAN=${PAN:-/tmp/camvid-panoptic}
OUT=${OUT:-/tmp/camvid-panoptic-heldout}
HELD=0001TP
STEPS=${1:-1800}
BACKBONE=${BACKBONE:?set BACKBONE to a semantic model trained with --val-groups $HELD}
mkdir -p "$OUT"
if [ -n "${FROM:-}" ]; then
  START=(--model "$FROM")
else
  START=(--model mask2former-resnet-s --init-backbone-from "$BACKBONE")
fi

if [ ! -d "$PAN" ]; then
  python -m segdemo convert semantic-to-panoptic --data-dir "$DATA" \
    --things car,pedestrian,bicyclist --ignore-index 11 --min-area 64 --out "$PAN"
fi
if [ ! -f "$OUT/baseline.json" ]; then
  python bench/panoptic_baseline.py --model "$BACKBONE" --data-dir "$PAN" --val-groups "$HELD" \
    --out "$OUT/baseline.json" > /dev/null
fi
ACCELERATE_MIXED_PRECISION=${MIXED_PRECISION:-no} python train/run.py --task panoptic \
  "${START[@]}" --data-dir "$PAN" \
  --val-groups "$HELD" --export last --output-dir "$OUT/model" --palette camvid \
  --max-steps "$STEPS" --lr 3e-4 --weight-decay 0.05 --warmup-steps 50 --image-size 288 384 \
  --crop-size 192 256 --scale-range 0.75 1.75 --eval-every 450 --save-every 45 \
  --log-every 10 --num-workers 1 ${EXTRA:-} > "$OUT/train.log" 2>&1
python -m segdemo evaluate --task panoptic --model "$OUT/model" --data-dir "$PAN" \
  --val-groups "$HELD" --out "$OUT/model.json" > /dev/null
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("baseline", "model"):
    r = json.load(open(f"{out}/{name}.json"))
    print(f"{name:9s} PQ {r['pq']:.3f}  things {r['pq_things']:.3f}  stuff {r['pq_stuff']:.3f}")
PY
