"""Copy a fitted heatmap bundle's files into ``czii_kaggle/models/`` with its stage history.

    .venv/bin/python scripts/ship_heatmap.py --bundle runs/hml/bundle_c \\
        --history benchmarks/results/heatmap_looks/stage_c/heatmap.json

Copies ``heatmap.pt``, ``heatmap.onnx`` and ``ensemble.json`` as they are and ``heatmap.json`` with
``training.history`` taken from the committed stage record (the commands of every stage and of
its data); checks that the ONNX copy is the export of these weights and that the weights stay
under 10 MB. The bundle is made by copying ``czii_kaggle/models/*`` into a folder, putting the
trained ``heatmap.pt`` / ``heatmap.json`` in, ``czii-kaggle export-onnx --detector heatmap`` and
``czii-kaggle tune-ensemble`` (README: the heatmap on random looks).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "czii_kaggle" / "models"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--history", type=Path, required=True, help="a stage record whose training.history to keep")
    a = ap.parse_args(argv)
    doc = json.loads((a.bundle / "heatmap.json").read_text())
    pt = a.bundle / "heatmap.pt"
    if doc.get("onnx", {}).get("source_sha256") != hashlib.sha256(pt.read_bytes()).hexdigest():
        raise SystemExit(f"{a.bundle}/heatmap.onnx is not the export of its heatmap.pt: run export-onnx first")
    if pt.stat().st_size + (a.bundle / "heatmap.onnx").stat().st_size > 10 * 2**20:
        raise SystemExit("heatmap weights over 10 MB")
    doc["training"]["history"] = json.loads(a.history.read_text())["training"]["history"]
    for name in ("heatmap.pt", "heatmap.onnx", "ensemble.json"):
        shutil.copyfile(a.bundle / name, MODELS / (name + ".tmp"))
        (MODELS / (name + ".tmp")).replace(MODELS / name)
    (MODELS / "heatmap.json.tmp").write_text(json.dumps(doc, indent=2) + "\n")
    (MODELS / "heatmap.json.tmp").replace(MODELS / "heatmap.json")
    print(f"shipped {a.bundle} into {MODELS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
