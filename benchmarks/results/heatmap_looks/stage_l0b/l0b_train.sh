#!/bin/bash
# stage l0b: stage l0 trained on 27 other runs of the training looks (runs 3-5 of the 7 train_new roots and of
# train; train_classic has only its 3, seen by stage l0 too), 3000 more steps at a lower rate
cd /work/main
D=""
for i in "" 2 3 4 5 6 7; do s=$((6200 + ${i:-1} - 1)); D="$D runs/hml/train_new$i/czii-cryo-et-object-identification:TS_sim_${s}_3,TS_sim_${s}_4,TS_sim_${s}_5"; done
D="$D runs/hml/train/czii-cryo-et-object-identification:TS_sim_5200_3,TS_sim_5200_4,TS_sim_5200_5 runs/hml/train_classic/czii-cryo-et-object-identification:TS_sim_5202_0,TS_sim_5202_1,TS_sim_5202_2"
echo $D
.venv/bin/czii-kaggle train-heatmap --data $D --out runs/s21/hm_l0b --init runs/s20/hm_l0 --look-augment 0.7 \
  --steps 3000 --batch 4 --lr 1e-3 --seed 104 --threads 2 --patch 48 96 96
echo TRAINED
