#!/bin/bash
# Session 23: the choice ground's leads with intervals (bench_selection.py --baseline), the shipped ensemble of three as baseline
# runs/s20/bundle_l0: a bundle whose heatmap.pt/.json are the shipped heatmap_l0.pt/.json (the second network of bench_selection)
cd "$(dirname "$0")/../../.."
VAL="runs/hml/val/czii-cryo-et-object-identification runs/hml/val_classic/czii-cryo-et-object-identification runs/hml/val2/czii-cryo-et-object-identification runs/hml/val2_classic/czii-cryo-et-object-identification"
LOOKS="runs/hml/val_diffusion/czii-cryo-et-object-identification runs/hml/val_lobes/czii-cryo-et-object-identification runs/fresh/val_diffusion/czii-cryo-et-object-identification runs/fresh/val_lobes/czii-cryo-et-object-identification runs/hml/val_wiener/czii-cryo-et-object-identification runs/fresh/val_wiener/czii-cryo-et-object-identification"
.venv/bin/python benchmarks/bench_selection.py --weights czii_kaggle/models --second runs/s20/bundle_l0 --val $VAL --val-looks $LOOKS \
  --data runs/hml/test_medium/czii-cryo-et-object-identification --solution runs/hml/test_medium/test_solution.csv --label classic-test \
  --cache runs/cache/sel --only "yolo + heatmap + heatmap2" "ensemble logit, floor, relative" "heatmap + heatmap2" "heatmap, floor, relative" "yolo, floor, relative" \
  --baseline "ensemble logit yolo + heatmap + heatmap2, floor, relative" "$@"
