#!/bin/bash
# Session 23: stage l0 with 2 flipped views (runs/s23/bundle_l0_v2: runs/s20/bundle_l0 with tta_views 2) on the choice ground and the test sets
# runs/s23/bundle_l0_v2: a copy of runs/s20/bundle_l0 (the shipped heatmap_l0 as heatmap.pt/.json) with "tta_views": 2 in heatmap.json
cd "$(dirname "$0")/../../.."
VAL="runs/hml/val/czii-cryo-et-object-identification runs/hml/val_classic/czii-cryo-et-object-identification runs/hml/val2/czii-cryo-et-object-identification runs/hml/val2_classic/czii-cryo-et-object-identification"
LOOKS="runs/hml/val_diffusion/czii-cryo-et-object-identification runs/hml/val_lobes/czii-cryo-et-object-identification runs/fresh/val_diffusion/czii-cryo-et-object-identification runs/fresh/val_lobes/czii-cryo-et-object-identification runs/hml/val_wiener/czii-cryo-et-object-identification runs/fresh/val_wiener/czii-cryo-et-object-identification"
.venv/bin/python benchmarks/bench_selection.py --weights czii_kaggle/models --second runs/s23/bundle_l0_v2 --val $VAL --val-looks $LOOKS \
  --data runs/hml/test_medium/czii-cryo-et-object-identification --solution runs/hml/test_medium/test_solution.csv --label classic-test \
  --domains model-subunits filter-anisotropic ctf-unflipped training-looks --n-runs 8 --cache runs/cache/sel --only "yolo + heatmap + heatmap2" "heatmap + heatmap2" "second heatmap" \
  "$@"
