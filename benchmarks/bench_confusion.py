"""Where each type's particles go: the heatmap detector's candidates around every true particle.

For every true particle of a scored type in each test set (``--data``/``--solution`` and the
``--domains`` sets of ``bench_ensemble.py``: the same runs, seeds and folders), the heatmap
detector's unthresholded candidates (computed once, kept under ``--cache`` as
``bench_selection.py`` keeps them) within half the particle's radius are looked up:

- **own peak**: a candidate of the particle's own type is there at all;
- **in floor**: that candidate is among the run's best ``min_keep`` of its type (the count floor:
  kept whatever the threshold);
- **median rank**: of that candidate among the run's candidates of its type (0: the best);
- **other higher**: a candidate of another type scores higher there (the network calls it
  something else), and which types do so most.

It says whether a type is lost because the network sees nothing (own peak low), because it
ranks the particle below the run's false peaks (rank high, in floor low), or because it takes it
for another type (other higher). The shipped bundle's figures are in ``benchmarks/results/confusion.md``.

    .venv/bin/python benchmarks/bench_confusion.py --weights czii_kaggle/models \\
        --data runs/hml/test_medium/czii-cryo-et-object-identification --solution runs/hml/test_medium/test_solution.csv \\
        --label classic-test --domains model-subunits filter-anisotropic ctf-unflipped --n-runs 4 --cache runs/cache/sel
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import append_result, describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from bench_ensemble import add_test_set_args, fmt, test_sets  # noqa: E402
from bench_selection import candidates  # noqa: E402
from czii_kaggle.bundle import load_detectors  # noqa: E402
from czii_kaggle.particles import NAMES, PARTICLES, SCORED  # noqa: E402
from czii_kaggle.recipe import load_recipe  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "confusion.md"
RADIUS_A = {p.name: p.radius_A for p in PARTICLES}


def best_near(cands: pd.DataFrame, xyz_A: np.ndarray, radius_A: float) -> dict[str, np.ndarray]:
    """Per type, the best candidate score within ``radius_A`` of each point (0 where none)."""
    out = {}
    for name in NAMES:
        c = cands[cands["particle_type"] == name]
        best = np.zeros(len(xyz_A))
        if len(c) and len(xyz_A):
            score = c["score"].to_numpy(float)
            for i, near in enumerate(cKDTree(c[["x", "y", "z"]].to_numpy(float)).query_ball_point(xyz_A, radius_A)):
                best[i] = score[near].max() if near else 0.0
        out[name] = best
    return out


def particle_rows(cands: pd.DataFrame, truth: pd.DataFrame, floor: dict[str, int]) -> list[dict]:
    """One row per true particle of a scored type in one run (see the module docstring)."""
    rows = []
    for name in SCORED:
        t = truth[truth["particle_type"] == name]
        if not len(t):
            continue
        near = best_near(cands, t[["x", "y", "z"]].to_numpy(float), 0.5 * RADIUS_A[name])
        own_all = np.sort(cands.loc[cands["particle_type"] == name, "score"].to_numpy(float))[::-1]
        others = [n for n in NAMES if n != name]
        for i in range(len(t)):
            own = near[name][i]
            rival = max(others, key=lambda n: near[n][i])
            rank = int(np.sum(own_all > own)) if own > 0 else -1
            rows.append({"particle_type": name, "own_peak": own > 0, "rank": rank,
                         "in_floor": 0 <= rank < floor.get(name, 0),
                         "other_higher": near[rival][i] > own, "rival": rival if near[rival][i] > own else ""})
    return rows


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (set_name, name), g in df.groupby(["set", "particle_type"], sort=False):
        rivals = g.loc[g["other_higher"], "rival"].value_counts()
        found = g["rank"] >= 0
        out.append({"set": set_name, "particle_type": name, "particles": len(g),
                    "own peak": g["own_peak"].mean(), "in floor": g["in_floor"].mean(),
                    "median rank": float(g.loc[found, "rank"].median()) if found.any() else np.nan,
                    "other higher": g["other_higher"].mean(),
                    "taken for": ", ".join(f"{k} {v}" for k, v in rivals.head(3).items())})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True, help="bundle folder with the heatmap detector")
    add_test_set_args(ap)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench_selection",
                    help="candidates kept per detector weights (sha256) and set, shared with bench_selection.py")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)

    dets = load_detectors(a.weights, ["heatmap"])
    floor = load_recipe().tuning.min_keep()
    rows = []
    for set_name, root, truth in test_sets(a):
        found = candidates(dets, set_name, root, "test", a.cache, a.weights)["heatmap"]
        for run, t in truth.groupby("experiment"):
            c = found[found["experiment"] == run]
            rows += [dict(r, set=set_name, experiment=run) for r in particle_rows(c, t, floor)]
    table = summarise(pd.DataFrame(rows))
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_confusion.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine()}\n"
        f"- bundle `{a.weights}`, heatmap detector (its own views and adaptation); floor (min_keep per run): "
        f"{floor}; all simulated, no real voxels",
        "**Around every true particle** (within half its radius; shares of the particles): own peak: a candidate "
        "of its type is there; in floor: it is among the run's best min_keep of that type; median rank: among "
        "the run's candidates of that type (0 = best); other higher: another type's candidate scores higher "
        "there (taken for: the commonest such types, counts):\n\n" + fmt(table, "{:.2f}"),
    ])
    print(text)
    if not a.no_write:
        append_result(RESULTS, "Where each type's particles go (heatmap detector)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
