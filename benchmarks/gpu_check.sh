#!/usr/bin/env bash
# The GPU checks of issues 11 and 12 in one call, for a lent GPU machine (the `device` tool's `run`;
# docs/DETECTORS.md: "On a GPU"). Nothing here is needed without one; CI never runs it.
#
# On that machine (its own Python 3.12 with torch and CUDA; no internet): the run-time packages its image
# lacks come as wheels in .whl/ (the offline archive's: zarr, numcodecs, asciitree, ultralytics and
# theirs; build_wheels.sh --python-version 3.12), installed with --no-deps into /tmp/site; polars, which
# Kaggle's image has and that one lacks, is stood in for by a module whose read_csv fails (Ultralytics'
# trainer reads its results.csv with it inside a try). Then, each part bounded by a timeout and logged:
#   1. the classic test runs (simulate --seed 90211, 4 runs, as the CPU records), with the sha256 of
#      each run's level 0, to show they are the runs the CPU records scored;
#   2. bench_ensemble.py on them (--warmup: one untimed run of each detector first): score per
#      detector, seconds per full tomogram by stage, peak memory (RSS and GPU);
#   3. czii-kaggle predict end to end on the same runs (the bundle's default ensemble), timed, scored;
#   4. bench_finetune.py --device cuda:0: YOLO's fine-tuning step and each heatmap network's step
#      measured on the GPU, the T4 estimate of the recipe's plan from them;
#   5. (not in the default: a call of its own; 8.5 minutes on an H200 in session 28, its bounds of
#      45 + 480 + 45 s within one 600 s device call) the train notebook end to end on the GPU
#      (benchmarks/exec_notebook.py: its cells as a script, no Jupyter there) on 3 full-size random-look
#      training runs with heatmaps (3 folds of 2 epochs, 50 heatmap steps, 2 simulated runs), then the
#      inference notebook with the bundle it wrote, on a test run of the same look, scored.
# Results: $OUT/gpu_check.log and the bench records (benchmarks/results/{ensemble,finetune}.md as
# appended there; part 5's FINETUNE.json) under $OUT. Usage (repo root): bash benchmarks/gpu_check.sh [PARTS],
# e.g. 12 for parts 1 and 2 only (default 1234), 5 for part 5.
set -u
PARTS=${1:-1234}
want() { [[ $PARTS == *$1* ]]; }
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
T0=$(date +%s)
part() { echo "=== $(( $(date +%s) - T0 )) s: $*"; }
PY=${PYTHON:-python3}
DATA=/tmp/test_medium

part install
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
mkdir -p /tmp/stand_in/polars
cat > /tmp/stand_in/polars/__init__.py <<'EOF'
"""Stand-in for polars on a machine without it (Kaggle's image has it): reading fails, as Ultralytics allows."""


def read_csv(*args, **kwargs):
    raise RuntimeError("polars is not installed here (stand-in)")
EOF
export PYTHONPATH=/tmp/site:$PWD:/tmp/stand_in
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY - <<'EOF'
import platform, numpy, torch, zarr, ultralytics, czii_kaggle
from czii_kaggle.runtime import plan_devices
print(f"Python {platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}, zarr {zarr.__version__}, "
      f"ultralytics {ultralytics.__version__}; {plan_devices()}")
EOF

if want 1; then
  part "1. simulate the classic test runs"
  timeout 90 $PY -m czii_kaggle simulate --out $DATA --n-train 0 --n-test 4 --difficulty medium --seed 90211 \
    >/dev/null 2>&1 || echo "simulate failed"
  $PY - <<EOF
import glob, hashlib, zarr
for p in sorted(glob.glob("$DATA/**/denoised.zarr", recursive=True)):
    a = zarr.open(p, mode="r")["0"][:]
    print("level 0 sha256", p.split("/")[-3], hashlib.sha256(a.tobytes()).hexdigest()[:16])
EOF
fi

if want 2; then
  part "2. bench_ensemble on the GPU"
  timeout 200 $PY benchmarks/bench_ensemble.py --weights czii_kaggle/models \
    --data $DATA/czii-cryo-et-object-identification --solution $DATA/test_solution.csv --label classic-test \
    --warmup --n-boot 200 --work /tmp/bench_ensemble || echo "bench_ensemble failed or timed out"
fi

if want 3; then
  part "3. czii-kaggle predict end to end"
  s=$(date +%s.%N)
  if timeout 100 $PY -m czii_kaggle predict --data $DATA/czii-cryo-et-object-identification --out /tmp/submission.csv; then
    echo "predict: 4 runs in $($PY -c "import time; print(round(time.time() - $s, 1))") s wall (start-up included)"
    $PY -m czii_kaggle score --solution $DATA/test_solution.csv --submission /tmp/submission.csv
  else
    echo "predict failed or timed out"
  fi
fi

if want 4; then
  part "4. bench_finetune on the GPU"
  timeout 200 $PY benchmarks/bench_finetune.py --device cuda:0 --workers 3 --n-runs 6 --epochs 3 --heatmap-runs 2 \
    --heatmap-steps 25 --work /tmp/bench_finetune 2>&1 | grep -v "━\|──"
  echo "bench_finetune exit ${PIPESTATUS[0]}"
fi

if want 5; then
  part "5. the train notebook end to end on the GPU, then the inference notebook with its bundle"
  FT=/tmp/ft_data
  timeout 45 $PY -m czii_kaggle simulate --out $FT --n-train 3 --n-test 1 --seed 26 --look random \
    >/dev/null 2>&1 || echo "simulate failed"
  timeout 480 $PY benchmarks/exec_notebook.py notebooks/train.ipynb --cwd /tmp \
    -p data_root="'$FT/czii-cryo-et-object-identification'" -p k_folds=3 -p fold_epochs=2 -p final_epochs=2 \
    -p n_sim_runs=2 -p sim_val_runs=1 -p workers=3 -p heatmap_steps=50 \
    -p work_dir="'/tmp/ft_work'" -p out_dir="'/tmp/ft_bundle'" 2>&1 | grep -v "━\|──"
  echo "train notebook exit ${PIPESTATUS[0]}"
  cp /tmp/ft_bundle/FINETUNE.json "$OUT/" 2>/dev/null
  timeout 45 $PY benchmarks/exec_notebook.py notebooks/inference.ipynb --cwd /tmp \
    -p data_root="'$FT/czii-cryo-et-object-identification'" -p weights="'/tmp/ft_bundle'" \
    -p out_csv="'/tmp/ft_submission.csv'" && \
    $PY -m czii_kaggle score --solution $FT/test_solution.csv --submission /tmp/ft_submission.csv
fi

part done
cp benchmarks/results/ensemble.md benchmarks/results/finetune.md "$OUT/" 2>/dev/null
