#!/bin/bash
# stage l0b: its bundle (statistics re-estimated on stage l0's 18 runs, adaptation 0.5), then the choice ground
# (bench_selection, as session 20's l0_choice.sh) and the fresh draw (as runs/fresh2/confirm.sh), heatmap2 = l0b
set -e
cd /work/main
rm -rf runs/s21/tmp_l0b runs/s21/bundle_l0b && mkdir runs/s21/tmp_l0b
cp czii_kaggle/models/model.pt czii_kaggle/models/model.onnx czii_kaggle/models/czii_config.json runs/s21/hm_l0b/heatmap.pt runs/s21/hm_l0b/heatmap.json runs/s21/tmp_l0b/
.venv/bin/czii-kaggle recalibrate-heatmap --weights runs/s21/tmp_l0b --data runs/hml/train_new/czii-cryo-et-object-identification:TS_sim_6200_0,TS_sim_6200_1 runs/hml/train_new2/czii-cryo-et-object-identification:TS_sim_6201_0,TS_sim_6201_1 runs/hml/train_new3/czii-cryo-et-object-identification:TS_sim_6202_0,TS_sim_6202_1 runs/hml/train_new4/czii-cryo-et-object-identification:TS_sim_6203_0,TS_sim_6203_1 runs/hml/train_new5/czii-cryo-et-object-identification:TS_sim_6204_0,TS_sim_6204_1 runs/hml/train_new6/czii-cryo-et-object-identification:TS_sim_6205_0,TS_sim_6205_1 runs/hml/train_new7/czii-cryo-et-object-identification:TS_sim_6206_0,TS_sim_6206_1 runs/hml/train/czii-cryo-et-object-identification:TS_sim_5200_0,TS_sim_5200_1 runs/hml/train_classic/czii-cryo-et-object-identification:TS_sim_5202_0,TS_sim_5202_1 --out runs/s21/bundle_l0b --bn-adapt 0.5
sed 's|runs/s20/bundle_l0|runs/s21/bundle_l0b|' runs/s20/l0_choice.sh | sed 's|--only "second heatmap" heatmap2 "ensemble logit, floor, relative"|--only "second heatmap" heatmap2|' > runs/s21/l0b_choice.sh
bash runs/s21/l0b_choice.sh
echo CHOICE_DONE
