"""Which ensemble fit generalises: each weight grid fitted on validation runs, scored on test runs.

Uses cached candidates (``bench_ensemble.py --work`` writes the test runs'
``candidates_{yolo,heatmap}.csv``; the validation runs' are cached per run under
``--cache``), so it costs seconds. Prints a markdown table and appends it, with the
command and machine, to ``benchmarks/results/ensemble.md``.

    .venv/bin/python benchmarks/ensemble_weights.py --weights runs/hm/bundle \\
        --val runs/hm/val/czii-cryo-et-object-identification:TS_sim_4246_0,TS_sim_4246_1,TS_sim_4246_2 \\
        --test-work runs/hm/bench --solution runs/hm/test_medium/test_solution.csv

``--val`` takes several ``ROOT:RUN,RUN`` sources (pooled, as ``tune-ensemble`` pools them);
``--test-set NAME=SOLUTION`` adds a further test set of ``bench_ensemble.py --domains``
(its ``candidates_{yolo,heatmap}_NAME.csv`` in ``--test-work``); ``--cache-yolo``: the YOLO
cache of ``tune-ensemble --cache-yolo`` (one sub-folder per source), so only the heatmap runs.
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
    ap.add_argument("--val", required=True, nargs="+", help="ROOT:RUN,RUN (train split, with picks)")
    ap.add_argument("--test-work", type=Path, required=True, help="bench_ensemble.py --work of the test runs")
    ap.add_argument("--solution", type=Path, required=True)
    ap.add_argument("--test-set", nargs="*", default=[], metavar="NAME=SOLUTION", help="further test sets")
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "ensemble_weights_cache")
    ap.add_argument("--cache-yolo", type=Path, help="YOLO candidates cache of tune-ensemble (sub-folder per source)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    dets = load_detectors(a.weights, ["yolo", "heatmap"])
    found: dict[str, list] = {d.name: [] for d in dets}
    truths, n_runs = [], 0
    for i, item in enumerate(a.val):
        root, _, runs = item.partition(":")
        runs = runs.split(",")
        n_runs += len(runs)
        cache = {d.name: a.cache / d.name / str(i) for d in dets}
        if a.cache_yolo:
            cache["yolo"] = a.cache_yolo / str(i)
        cands, _ = run_candidates(dets, root, "train", runs, progress=False, cache=cache)
        for n, c in cands.items():
            found[n].append(c.assign(experiment=f"{i}/" + c["experiment"].astype(str)))
        truths.append(picks_io.read_all_picks(root, runs).assign(experiment=lambda d, i=i: f"{i}/" + d["experiment"].astype(str)))
    val = {n: pd.concat(v, ignore_index=True) for n, v in found.items()}
    truth_v = pd.concat(truths, ignore_index=True)
    sets = [("", a.solution)] + [tuple(t.split("=", 1)) for t in a.test_set]
    tests = {name: ({n: pd.read_csv(a.test_work / f"candidates_{n}{'_' + name if name else ''}.csv",
                                    dtype={"experiment": str}) for n in ("yolo", "heatmap")},
                    submission.read_solution(Path(sol))) for name, sol in sets}
    rows = []
    for label, grid in GRIDS:
        cfg, _ = fit_ensemble(val, truth_v, weight_grid=grid)
        sub_v = submission.make_submission(scored_only(select_ensemble(val, cfg)))
        row = {"weights tried": label, "val score (fitted on)": metric.score(truth_v, sub_v)}
        for name, (test, truth_t) in tests.items():
            sub_t = submission.make_submission(scored_only(select_ensemble(test, cfg)))
            row[f"test score {name or 'given'}"] = metric.score(truth_t, sub_t)
            if not name:
                table = metric.score_table(truth_t, sub_t)
                row.update({n: float(table.loc[n, "f_beta"]) for n in table.index})
        rows.append(row)
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}: ensemble weight grids, fitted on {n_runs} validation runs",
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
