"""Which ensemble fit generalises: each weight grid fitted on validation runs, scored on test runs.

Uses cached candidates (``bench_ensemble.py --work`` writes the test runs'
``candidates_{yolo,heatmap}.csv``; the validation runs' are cached per run under
``--cache``), so it costs seconds. Prints a markdown table and appends it, with the
command and machine, to ``benchmarks/results/ensemble.md``.

    .venv/bin/python benchmarks/ensemble_weights.py --weights runs/hm/bundle \\
        --val runs/hm/val/czii-cryo-et-object-identification:TS_sim_4246_0,TS_sim_4246_1,TS_sim_4246_2 \\
        --test-work runs/hm/bench --solution runs/hm/test_medium/test_solution.csv
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ensemble import RESULTS, fmt  # noqa: E402
from machine import describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from czii_kaggle import metric, picks as picks_io, submission  # noqa: E402
from czii_kaggle.bundle import load_detectors  # noqa: E402
from czii_kaggle.detectors import run_candidates  # noqa: E402
from czii_kaggle.ensemble import select_ensemble  # noqa: E402
from czii_kaggle.predict import scored_only  # noqa: E402
from czii_kaggle.tune import fit_ensemble  # noqa: E402

GRIDS = [("per-class weight 0, 0.25 .. 1 (the default fit)", (0.0, 0.25, 0.5, 0.75, 1.0)),
         ("equal weights", (0.5,)), ("YOLO 0.75", (0.75,)), ("YOLO 0.5 .. 1", (0.5, 0.75, 1.0)),
         ("YOLO alone, ensemble thresholds", (1.0,))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--val", required=True, help="ROOT:RUN,RUN (train split, with picks)")
    ap.add_argument("--test-work", type=Path, required=True, help="bench_ensemble.py --work of the test runs")
    ap.add_argument("--solution", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "ensemble_weights_cache")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    root, _, runs = a.val.partition(":")
    runs = runs.split(",")
    dets = load_detectors(a.weights, ["yolo", "heatmap"])
    val, _ = run_candidates(dets, root, "train", runs, progress=False,
                            cache={d.name: a.cache / d.name for d in dets})
    truth_v = picks_io.read_all_picks(root, runs)
    test = {n: pd.read_csv(a.test_work / f"candidates_{n}.csv", dtype={"experiment": str}) for n in ("yolo", "heatmap")}
    truth_t = submission.read_solution(a.solution)
    rows = []
    for label, grid in GRIDS:
        cfg, _ = fit_ensemble(val, truth_v, weight_grid=grid)
        sub_t = submission.make_submission(scored_only(select_ensemble(test, cfg)))
        sub_v = submission.make_submission(scored_only(select_ensemble(val, cfg)))
        table = metric.score_table(truth_t, sub_t)
        rows.append({"weights tried": label, "val score (fitted on)": metric.score(truth_v, sub_v),
                     "test score": metric.score(truth_t, sub_t), **{n: float(table.loc[n, "f_beta"]) for n in table.index}})
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}: ensemble weight grids, fitted on {len(runs)} validation runs",
        f"- command: `python benchmarks/ensemble_weights.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine()}\n- simulated data (no real voxels)",
        fmt(pd.DataFrame(rows)),
    ])
    print(text)
    if not a.no_write:
        with RESULTS.open("a") as f:
            f.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
