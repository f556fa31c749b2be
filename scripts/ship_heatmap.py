"""Copy a fitted heatmap bundle's files into ``czii_kaggle/models/`` with its stage history.

    .venv/bin/python scripts/ship_heatmap.py --bundle runs/hml/bundle_c \\
        --history benchmarks/results/heatmap_looks/stage_c/heatmap.json

Copies ``heatmap.pt``, ``heatmap.onnx`` and ``ensemble.json`` as they are, ``heatmap.json`` with
``training.history`` taken from the committed stage record (the commands of every stage and of
its data), and YOLO's thresholds (``aggregate``, ``tuned_on`` of ``czii_config.json``: since
``tune-ensemble`` tunes them on the same runs) when the bundle's ``model.pt`` is the shipped one;
checks that the ONNX copy is the export of these weights and that the weights stay under 10 MB.
The bundle is made by copying ``czii_kaggle/models/*`` into a folder, putting the trained
``heatmap.pt`` / ``heatmap.json`` in, ``czii-kaggle export-onnx --detector heatmap`` and
``czii-kaggle tune-ensemble`` (docs/EXPERIMENTS.md: the heatmap network's stages).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from czii_kaggle import outputs  # noqa: E402
from czii_kaggle.bundle import (CONFIG_FILE, DEFAULT_BUNDLE, ENSEMBLE_FILE, HEATMAP_CONFIG_FILE,  # noqa: E402
                                HEATMAP_ONNX_FILE, HEATMAP_WEIGHTS_FILE, MODEL_FILE, file_sha256, read_json,
                                update_json)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--history", type=Path, required=True, help="a stage record whose training.history to keep")
    a = ap.parse_args(argv)
    doc = read_json(a.bundle / HEATMAP_CONFIG_FILE)
    pt = a.bundle / HEATMAP_WEIGHTS_FILE
    if doc.get("onnx", {}).get("source_sha256") != file_sha256(pt):
        raise SystemExit(f"{a.bundle}/{HEATMAP_ONNX_FILE} is not the export of its {HEATMAP_WEIGHTS_FILE}: "
                         "run export-onnx first")
    if pt.stat().st_size + (a.bundle / HEATMAP_ONNX_FILE).stat().st_size > 10 * 2**20:
        raise SystemExit("heatmap weights over 10 MB")
    training = dict(doc["training"], history=json.loads(a.history.read_text())["training"]["history"])
    yolo = read_json(a.bundle / CONFIG_FILE)
    if file_sha256(a.bundle / MODEL_FILE) != file_sha256(DEFAULT_BUNDLE / MODEL_FILE):
        raise SystemExit(f"{a.bundle}/{MODEL_FILE} is not the shipped YOLO model: its thresholds cannot be shipped")
    for name in (HEATMAP_WEIGHTS_FILE, HEATMAP_ONNX_FILE, ENSEMBLE_FILE, HEATMAP_CONFIG_FILE):
        outputs.copy_file(a.bundle / name, DEFAULT_BUNDLE / name)  # atomic
    update_json(DEFAULT_BUNDLE / HEATMAP_CONFIG_FILE, {"training": training})
    update_json(DEFAULT_BUNDLE / CONFIG_FILE, {k: yolo[k] for k in ("aggregate", "tuned_on") if k in yolo})
    print(f"shipped {a.bundle} into {DEFAULT_BUNDLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
