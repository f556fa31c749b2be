"""Experiment (session 29): does template matching with the look's own class averages add to the heatmap network
when labelled runs of the look are at hand (Kaggle's case: 7 real runs of the test look)?

``look_template.py`` scores the template detector alone well below the networks (0.504 against 0.665 on the held-out
looks), but it reads the look with knowledge no network has, so its errors may differ (issue 12: the shipped
detectors rank the same noise high). For each held-out set (8 runs at medium), two folds of 4 runs: on one fold
the heatmap's thresholds are tuned (the shipped network, from its shipped aggregate) and the ensemble heatmap +
template is fitted (``tune.fit_ensemble``: calibration, per-type weights, thresholds), both scored on the other
fold; the two folds' picks pooled. The heatmap's candidates are those ``noise_mix.py`` kept for the shipped network;
the template detector's, ``look_template.py --save runs/look_template`` (templates from the other 7 runs).

**Rule, written before any figure**: a lever if the ensemble leads the heatmap (both given the look's labelled runs
the same way) by 0.02 or more on the held-out mean.

.venv/bin/python benchmarks/results/ensemble_experiments/template_ensemble.py

Result (2026-12-04 19:40): held-out mean, heatmap with thresholds from the other fold 0.658 (shipped thresholds
0.663), heatmap + template fitted on the other fold **0.638** (-0.020): model-subunits 0.616 / 0.616,
filter-anisotropic 0.761 / 0.700, ctf-unflipped 0.596 / 0.597. The ensemble gains on apo-ferritin (0.613 against
0.603) and loses on ribosome (0.912 against 0.951), thyroglobulin and the virus-like particle. Not a lever.

All simulated: no real voxels.
"""
from __future__ import annotations

import glob
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_adapt import scores  # noqa: E402
from bench_ensemble import fmt  # noqa: E402
from bench_selection import weights_tag  # noqa: E402
from czii_kaggle import submission  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.bundle import load_heatmap_bundle  # noqa: E402
from czii_kaggle.ensemble import select_ensemble  # noqa: E402
from czii_kaggle.particles import SCORED  # noqa: E402
from czii_kaggle.tune import fit_ensemble, tune_thresholds  # noqa: E402

SETS = ["model-subunits", "filter-anisotropic", "ctf-unflipped"]
MODELS = REPO / "czii_kaggle" / "models"


def main() -> int:
    shipped = load_heatmap_bundle(MODELS)
    heat_dir = REPO / "runs" / "noise_mix" / "cache" / weights_tag(MODELS, "heatmap")
    rows = []
    for name in SETS:
        [sol] = glob.glob(f"{REPO}/runs/bench_detection/{name}/medium/seed*_n8_184x630x630/test_solution.csv")
        truth = submission.read_solution(sol)
        cands = {"heatmap": pd.concat([pd.read_csv(f, dtype={"experiment": str})
                                       for f in glob.glob(f"{heat_dir}/{name}/*.csv")], ignore_index=True),
                 "template": pd.read_csv(REPO / "runs/look_template/none" / f"{name}.csv", dtype={"experiment": str})}
        runs = sorted(truth["experiment"].unique())
        folds = [runs[:4], runs[4:]]
        picked = {"heatmap, shipped thresholds": [select(cands["heatmap"], shipped.aggregate)],
                  "heatmap, thresholds from the other fold": [], "heatmap + template, fitted on the other fold": []}
        for fit, test in (folds, folds[::-1]):
            fit_c = {d: c[c["experiment"].isin(fit)] for d, c in cands.items()}
            test_c = {d: c[c["experiment"].isin(test)] for d, c in cands.items()}
            fit_t = truth[truth["experiment"].isin(fit)]
            cfg, _ = tune_thresholds(fit_c["heatmap"], fit_t, shipped.aggregate)
            picked["heatmap, thresholds from the other fold"].append(select(test_c["heatmap"], cfg))
            ens, _ = fit_ensemble(fit_c, fit_t, detectors=("heatmap", "template"))
            picked["heatmap + template, fitted on the other fold"].append(select_ensemble(test_c, ens))
        for option, parts in picked.items():
            rows.append({"set": name, "option": option, **scores(pd.concat(parts, ignore_index=True), truth)})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    mean = df.groupby("option", sort=False)[["score", *SCORED]].mean().reset_index()
    print(fmt(pd.concat([df, mean.assign(set="mean of the held-out looks")], ignore_index=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
