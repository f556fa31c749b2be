#!/bin/bash
# Session 23: agreement-weighted detectors (benchmarks/results/ensemble_experiments/agree_weights.py) for the shipped ensemble of three, on the choice ground (9 training-look
# validation runs + 36 unseen-look runs); candidates cached; thresholds fitted on the 9 as always.
# runs/s20/bundle_l0: a bundle whose heatmap.pt/.json are the shipped heatmap_l0.pt/.json (the second network of bench_selection)
cd "$(dirname "$0")/../../.."
VAL="runs/hml/val/czii-cryo-et-object-identification runs/hml/val_classic/czii-cryo-et-object-identification runs/hml/val2/czii-cryo-et-object-identification runs/hml/val2_classic/czii-cryo-et-object-identification"
LOOKS="runs/hml/val_diffusion/czii-cryo-et-object-identification runs/hml/val_lobes/czii-cryo-et-object-identification runs/fresh/val_diffusion/czii-cryo-et-object-identification runs/fresh/val_lobes/czii-cryo-et-object-identification runs/hml/val_wiener/czii-cryo-et-object-identification runs/fresh/val_wiener/czii-cryo-et-object-identification"
for f in "$@"; do
  echo "=== gamma $f"
  .venv/bin/python benchmarks/results/ensemble_experiments/agree_weights.py $f --weights czii_kaggle/models --second runs/s20/bundle_l0 --val $VAL --val-looks $LOOKS \
    --data runs/hml/test_medium/czii-cryo-et-object-identification --solution runs/hml/test_medium/test_solution.csv --label classic-test \
    --domains model-subunits filter-anisotropic ctf-unflipped training-looks --n-runs 4 --cache runs/cache/sel --no-write \
    --only "yolo + heatmap + heatmap2"
done
echo DONE
