#!/bin/bash
# Session 26: bfloat16 on the CPU for both heatmap networks, an equivalence check (the rule in docs/EXPERIMENTS.md,
# "bfloat16 on the CPU", committed before any figure): the ensemble of three, its thresholds and ensemble as shipped,
# with the networks in float32 (as shipped) and in bfloat16 (`--precision bfloat16`).
#
#   scores: the headline's sets (classic test 4 runs, seed 90211; the three held-out looks and the training looks,
#           8 runs each), float32 then bfloat16; YOLO's candidates shared (runs/cache/s26/yolo), each precision's
#           heatmap candidates in a cache of its own (runs/cache/s26 float32, runs/cache/s26bf bfloat16). The
#           seconds in these two records come partly from the caches: the timing is the next part's.
#   timing: the 4 classic runs, no cache, float32, bfloat16, bfloat16, float32 (ABBA), nothing else running; each
#           record has the machine's pace.
#
# Usage: bash benchmarks/results/ensemble_experiments/bf16.sh [scores|timing|all]   (default all; logs in runs/bf16/)
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=.venv/bin/python
mkdir -p runs/bf16
CLASSIC=(--data runs/hml/test_medium/czii-cryo-et-object-identification --solution runs/hml/test_medium/test_solution.csv
         --label classic-test)
[ -d runs/hml/test_medium ] || $PY -m czii_kaggle simulate --out runs/hml/test_medium --n-train 0 --n-test 4 \
  --difficulty medium --seed 90211
what=${1:-all}
if [ "$what" = scores ] || [ "$what" = all ]; then
  for precision in float32 bfloat16; do
    cache=runs/cache/s26; [ $precision = bfloat16 ] && cache=runs/cache/s26bf
    $PY benchmarks/bench_ensemble.py --weights czii_kaggle/models "${CLASSIC[@]}" \
      --domains model-subunits filter-anisotropic ctf-unflipped training-looks --n-runs 8 \
      --cache-yolo runs/cache/s26/yolo --cache $cache --precision $precision --no-memory --n-boot 1000 \
      --work runs/bf16/work_$precision 2>&1 | grep -v "ONNX\|^$" > runs/bf16/scores_$precision.log
  done
fi
if [ "$what" = timing ] || [ "$what" = all ]; then
  i=0
  for precision in float32 bfloat16 bfloat16 float32; do
    i=$((i + 1))
    $PY benchmarks/bench_ensemble.py --weights czii_kaggle/models "${CLASSIC[@]}" --precision $precision \
      --n-boot 200 --work runs/bf16/timing_$i 2>&1 | grep -v "ONNX\|^$" > runs/bf16/timing_${i}_$precision.log
  done
fi
