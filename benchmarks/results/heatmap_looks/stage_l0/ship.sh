# How stage l0 was shipped in session 21 (czii_kaggle/models/heatmap_l0.*, ensemble.json), after the fresh-draw
# check (selection.md 2026-12-03 16:40). runs/s20/bundle_l0 = the shipped bundle with stage l0's heatmap.pt /
# heatmap.json / heatmap.onnx (statistics re-estimated on stage hn's 18 runs, adaptation 0.5): docs/EXPERIMENTS.md, stage l0.
set -e
rm -rf runs/s21/bundle3 && cp -r czii_kaggle/models runs/s21/bundle3
C=".venv/bin/czii-kaggle"
$C add-heatmap --source runs/s20/bundle_l0 --weights runs/s21/bundle3 --name heatmap_l0
V="runs/hml/val/czii-cryo-et-object-identification runs/hml/val_classic/czii-cryo-et-object-identification runs/hml/val2/czii-cryo-et-object-identification runs/hml/val2_classic/czii-cryo-et-object-identification"
$C tune-ensemble --weights runs/s21/bundle3 --data $V --detectors yolo,heatmap,heatmap_l0 --own heatmap_l0 \
   --default yolo,heatmap,heatmap_l0 --relative 1
$C set-floor --weights runs/s21/bundle3
# (session 21 ran the three commands above before save_ensemble kept an ensemble of another set; it then put the
#  shipped yolo + heatmap ensemble back as an alternative: with today's code tune-ensemble does that itself)
cp runs/s21/bundle3/heatmap_l0.pt runs/s21/bundle3/heatmap_l0.onnx runs/s21/bundle3/heatmap_l0.json \
   runs/s21/bundle3/ensemble.json czii_kaggle/models/
