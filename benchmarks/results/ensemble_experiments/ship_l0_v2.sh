#!/bin/bash
# Session 25: how the shipped bundle's heatmap_l0 got 2 flipped views (the candidate (b) that passed session 24's
# pre-registered fresh-draw check, selection.md 2026-12-04 03:05 record: +0.00624 over the 1-view default).
# From the bundle as committed before (c534740; its heatmap_l0.json and ensemble.json, the other files unchanged since):
# heatmap_l0.json's config.tta_views 1 -> 2, then heatmap_l0's own thresholds and the
# ensemble of three refitted on the same 9 validation runs as every shipped stage (YOLO's and hn's kept), the count
# floor re-set. Only heatmap_l0.json and ensemble.json change; the ensemble of two stays as an alternative.
# The 9 validation runs are re-made by `fresh3.sh sim` (seeds 5201, 5203, 5204, 5205).
#
# Usage: bash benchmarks/results/ensemble_experiments/ship_l0_v2.sh [OUT]   (default runs/s25/bundle; then copy
#        OUT/heatmap_l0.json and OUT/ensemble.json into czii_kaggle/models; the shipped heatmap_l0.json also has the
#        training.history line that names this script)
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:-runs/s25/bundle}
CLI=.venv/bin/czii-kaggle
D=czii-cryo-et-object-identification
rm -rf "$OUT"; mkdir -p "$(dirname "$OUT")"
cp -r czii_kaggle/models "$OUT"
for f in heatmap_l0.json ensemble.json; do git show c534740:czii_kaggle/models/$f > "$OUT/$f"; done
.venv/bin/python - "$OUT/heatmap_l0.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["config"]["tta_views"] = 2
json.dump(d, open(sys.argv[1], "w"), indent=2)
PY
VAL9="runs/hml/val/$D:TS_sim_5201_0,TS_sim_5201_1,TS_sim_5201_2 runs/hml/val_classic/$D:TS_sim_5203_0 runs/hml/val2/$D:TS_sim_5204_0,TS_sim_5204_1,TS_sim_5204_2 runs/hml/val2_classic/$D:TS_sim_5205_0,TS_sim_5205_1"
$CLI tune-ensemble --weights "$OUT" --data $VAL9 --detectors yolo,heatmap,heatmap_l0 --own heatmap_l0 \
    --default yolo,heatmap,heatmap_l0 --relative 1
$CLI set-floor --weights "$OUT"
