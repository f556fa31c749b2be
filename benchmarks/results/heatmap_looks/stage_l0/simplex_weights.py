"""Experiment (session 21): the ensemble of three with per-class weights fitted on a simplex grid (steps of 0.25,
ties: the most even) instead of equal weights; run through bench_selection with its fit_ensemble replaced."""
import itertools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
import numpy as np  # noqa: E402
import bench_selection  # noqa: E402
from czii_kaggle import tune  # noqa: E402
from czii_kaggle.aggregate import AggregateConfig, relative_scores  # noqa: E402
from czii_kaggle.ensemble import EnsembleConfig, combine, fit_calibration  # noqa: E402
from czii_kaggle.particles import NAMES  # noqa: E402

original = tune.fit_ensemble


def simplex_fit(candidates, truth, detectors=("yolo", "heatmap"), weight_grid=tune.WEIGHT_GRID, start=None,
                fusion="logit", ref_rank=None):
    if len(detectors) < 3:
        return original(candidates, truth, detectors, weight_grid, start, fusion, ref_rank)
    start = EnsembleConfig().aggregate if start is None else start
    ref_rank = {n: int(k) for n, k in (ref_rank or {}).items() if k}
    relative = AggregateConfig().with_ref_rank(ref_rank)
    cal = {d: fit_calibration(relative_scores(candidates[d], relative), truth) for d in detectors}
    steps = [i / 4 for i in range(5)]
    grid = [w for w in itertools.product(steps, repeat=len(detectors)) if abs(sum(w) - 1) < 1e-9]
    grid.sort(key=lambda w: np.var(w))
    support = tuple(range(1, len(detectors) + 1))
    best = {}
    for w in grid:
        weights = {n: w for n in NAMES}
        config = EnsembleConfig(tuple(detectors), cal, start, weights, fusion, ref_rank)
        agg, table = tune.tune_thresholds(combine(candidates, config), truth, config.aggregate, support_grid=support)
        for _, row in table.iterrows():
            name = row["particle_type"]
            if name not in best or row["f_beta"] > best[name][0]:
                best[name] = (row["f_beta"], w)
    weights = {name: w for name, (_, w) in best.items()}
    print("simplex weights:", {n: w for n, w in weights.items()}, flush=True)
    config = EnsembleConfig(tuple(detectors), cal, start, weights, fusion, ref_rank)
    agg, table = tune.tune_thresholds(combine(candidates, config), truth, config.aggregate, support_grid=support)
    return EnsembleConfig(tuple(detectors), cal, agg, weights, fusion, ref_rank), table


bench_selection.fit_ensemble = simplex_fit
sys.exit(bench_selection.main(sys.argv[1:]))
