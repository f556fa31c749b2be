"""How much signal each look leaves, per type and difficulty: a measure with no detector in it.

For each test set (``bench_ensemble.py``'s sets: ``--data`` and ``--domains``, the same runs and folders, at each
``--difficulties``): :func:`czii_kaggle.simulate.class_average_snr` on the runs' zarr level ``--level`` (the
matched filter of the look's own class average, learnt on half the runs and measured on the other half, halves
swapped). It tells a look that holds less signal at a difficulty from one a detector reads badly: where the
held-out looks hold what the training looks hold at a higher difficulty, a score gap there is the signal's, not
the detector's (docs/EXPERIMENTS.md, "How much signal the looks hold").

    .venv/bin/python benchmarks/bench_look_signal.py \\
        --domains training-looks model-subunits filter-anisotropic ctf-unflipped --n-runs 4 \\
        --difficulties easy medium hard

Sets not on disk are simulated (as ``bench_detection.py``). Prints the table and appends it, with the command,
date and machine, to ``benchmarks/results/look_signal.md``. All simulated: no real voxels.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from czii_kaggle import layout, omezarr  # noqa: E402
from czii_kaggle.particles import SCORED  # noqa: E402
from czii_kaggle.simulate import class_average_snr  # noqa: E402

from bench_ensemble import add_test_set_args, fmt, test_sets  # noqa: E402
from machine import append_result, describe as describe_machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "look_signal.md"


def set_signal(root: Path, truth: pd.DataFrame, level: int) -> pd.DataFrame:
    """:func:`class_average_snr` of every test run of ``root`` (level ``level``)."""
    volumes, picks, vs = [], [], None
    for run in layout.list_runs(root, "test"):
        v, vs = omezarr.read_tomogram(layout.tomogram_path(root, "test", run), level=level)
        volumes.append(v)
        picks.append(truth[truth["experiment"] == run])
    return class_average_snr(volumes, picks, vs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_test_set_args(ap)
    ap.add_argument("--difficulties", nargs="+", default=None, help="default: --difficulty alone")
    ap.add_argument("--level", type=int, default=1, help="zarr level read (1: about 20 A per voxel)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    rows, t0 = [], time.perf_counter()
    for difficulty in a.difficulties or [a.difficulty]:
        b = copy.copy(a)
        b.difficulty = difficulty
        for name, root, truth in test_sets(b):
            snr = set_signal(root, truth, a.level)["snr"]
            rows.append({"difficulty": difficulty, "set": name, **{t: snr.get(t) for t in SCORED}})
            print(rows[-1], flush=True)
    table = fmt(pd.DataFrame(rows), "{:.1f}")
    print(table)
    text = "\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- command: `python benchmarks/bench_look_signal.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- machine: {describe_machine()}",
        f"- matched-filter SNR of each look's own class average (`simulate.class_average_snr`, zarr level {a.level}; "
        f"the runs of each set split in halves, each half's class average measured on the other); {a.n_runs} runs "
        f"per --domains set; {time.perf_counter() - t0:.0f} s; all simulated, no real voxels",
        "",
        table,
    ])
    if not a.no_write:
        append_result(RESULTS, "How much signal each look leaves", text)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
