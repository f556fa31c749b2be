#!/usr/bin/env bash
# Create .venv/ and install czii_kaggle with its detector and test extras.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
# The install takes about 7 GiB (torch with its CUDA libraries); say so before pip fails half-way.
NEED_MB=${CZII_SETUP_NEED_MB:-7500}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import torch, ultralytics' 2>/dev/null; then
  FREE_MB=$(df -Pm . | awk 'NR==2 {print $4}')
  if [ -n "$FREE_MB" ] && [ "$FREE_MB" -lt "$NEED_MB" ]; then
    echo "[setup] error: $(pwd): ${FREE_MB} MB free on this disk, the install needs about ${NEED_MB} MB (set CZII_SETUP_NEED_MB to override)" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "[setup] installing torch 2.14.1 / torchvision 0.29.1, czii_kaggle and its extras"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "[setup] done: $(.venv/bin/python -c 'import czii_kaggle, torch, ultralytics, zarr; print("czii_kaggle", czii_kaggle.__version__, "torch", torch.__version__, "ultralytics", ultralytics.__version__, "zarr", zarr.__version__)')"
