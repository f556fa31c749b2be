"""Experiment (session 28): does the shipped heatmap network rank held-out-look particles better when its
peaks are scored on a smoothed probability map? (candidates.md: on the held-out looks 62% of the
beta-galactosidase top candidates lie on nothing; sharp noise peaks against broad particle blobs.)

Variants of the peak step only (same network, same maps): `raw` (as shipped: the maximum of the map),
`g<f>`: each class's map smoothed by a Gaussian of sigma f x its radius (grid voxels) before peaks and
scores. Thresholds of every variant tuned the same way (tune.tune_thresholds from the shipped heatmap's
aggregate) on the training-looks set, applied to the held-out looks and the classic test; `oracle`: tuned on
the set itself (the ranking's ceiling). Candidates cached under runs/peak_scoring/<variant>/<set>/.

.venv/bin/python benchmarks/results/ensemble_experiments/peak_scoring.py [--variants raw g0.15 g0.3]

Result (2026-12-04 17:03, 8 runs per set): held-out looks, thresholds from the training looks / oracle:
raw 0.6414 / 0.6785 (beta-galactosidase 0.372 / 0.444), g0.15 0.6514 / 0.6811, g0.3 0.6425 / 0.6793, g0.5 0.5887 /
0.6405; with the shipped thresholds raw 0.6637. Not a lever (docs/EXPERIMENTS.md).
"""
import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from czii_kaggle import layout, metric, submission  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.bundle import load_detectors  # noqa: E402
from czii_kaggle.detectors.heatmap import heatmap_candidates, read_input  # noqa: E402
from czii_kaggle.particles import NAMES, PARTICLES  # noqa: E402
from czii_kaggle.predict import scored_only  # noqa: E402
from czii_kaggle.tune import tune_thresholds  # noqa: E402

HELD_OUT = ["model-subunits", "filter-anisotropic", "ctf-unflipped"]


def sets() -> dict[str, Path]:
    out = {"classic-test": REPO / "runs/hml/test_medium"}
    for look in [*HELD_OUT, "training-looks"]:
        out[look] = Path(glob.glob(f"{REPO}/runs/bench_detection/{look}/medium/seed*_n8_184x630x630")[0])
    return out


def smooth(prob: np.ndarray, frac: float, grid_A: float) -> np.ndarray:
    if frac <= 0:
        return prob
    out = np.empty_like(prob)
    for c, name in enumerate(NAMES):
        sigma = frac * PARTICLES[c].radius_A / grid_A
        out[c] = ndimage.gaussian_filter(prob[c], sigma, mode="constant")
    return out


def variant_frac(v: str) -> float:
    return 0.0 if v == "raw" else float(v[1:])


def candidates(det, variants, name, path) -> dict[str, pd.DataFrame]:
    cache = {v: REPO / f"runs/peak_scoring/{v}/{name}" for v in variants}
    out = {v: [] for v in variants}
    root = path / "czii-cryo-et-object-identification"
    for run in layout.list_runs(root, "test"):
        todo = [v for v in variants if not (cache[v] / f"{run}.csv").is_file()]
        if todo:
            t = time.perf_counter()
            zarr = layout.tomogram_path(root, "test", run)
            volume, vs = read_input(zarr, det.bundle.config)
            prob, _ = det.probabilities(volume, zarr)
            assert list(det.bundle.config.classes) == list(NAMES)
            for v in todo:
                c = heatmap_candidates(smooth(prob, variant_frac(v), vs * 2), vs, run, det.bundle.config)
                cache[v].mkdir(parents=True, exist_ok=True)
                c.to_csv(cache[v] / f"{run}.csv", index=False)
            print(f"  {name} {run}: {time.perf_counter() - t:.1f} s", flush=True)
        for v in variants:
            out[v].append(pd.read_csv(cache[v] / f"{run}.csv", dtype={"experiment": str}))
    return {v: pd.concat(c, ignore_index=True) for v, c in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["raw", "g0.15", "g0.3", "g0.5"])
    args = ap.parse_args()
    det = load_detectors(REPO / "czii_kaggle/models", ["heatmap"])[0]
    data = {}
    for name, path in sets().items():
        data[name] = (candidates(det, args.variants, name, path), submission.read_solution(path / "test_solution.csv"))
    tune_set = "training-looks"
    rows = []
    for v in args.variants:
        tuned, _ = tune_thresholds(data[tune_set][0][v], data[tune_set][1], det.aggregate)
        for name, (cands, truth) in data.items():
            oracle, _ = tune_thresholds(cands[v], truth, det.aggregate)
            for how, cfg in [("tuned on training looks", tuned), ("oracle", oracle),
                             ("shipped thresholds", det.aggregate)]:
                sub = submission.make_submission(scored_only(select(cands[v], cfg)))
                t = metric.score_table(truth, sub)
                rows.append({"variant": v, "thresholds": how, "set": name, "score": metric.score(truth, sub),
                             **{n: t.loc[n, "f_beta"] for n in ("beta-galactosidase", "thyroglobulin")}})
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df.round(4).to_string())
    held = df[df["set"].isin(HELD_OUT)].groupby(["thresholds", "variant"], sort=False)[
        ["score", "beta-galactosidase", "thyroglobulin"]].mean()
    print("\nheld-out looks, mean of 3 sets x 8 runs\n", held.round(4).to_string())


if __name__ == "__main__":
    main()
