"""Experiment (session 28): how much signal does each look hold at each noise? A detector-free measure.

For each test set (4 runs) and scored type: the type's mean appearance in that look, learnt from the truth of two
runs (the level-1 subvolumes around its particles averaged, made zero-mean in a sphere of 1.2 radii: a
rotation-averaged class average, with the look's own CTF, wedge and filter in it), correlated with the other two
runs (and the halves swapped); SNR = (mean correlation at the particles - mean at 300 background points per run,
at least 1.5 radii from any pick) / std at those points. The matched filter of the look's own average: the best
linear detector that knows the look, so a measure of what the tomograms hold, not of any network (a non-linear
detector can do better; clutter counts as noise). No network, no threshold.

.venv/bin/python benchmarks/results/ensemble_experiments/look_snr.py

Result (2026-12-04 18:08; the first 4 runs of each of bench_detection's sets, seeds as bench_ensemble's): SNR per type
(apo-ferritin, beta-galactosidase, ribosome, thyroglobulin, virus-like particle)
easy    training-looks 19.0 11.6 33.0 17.9 55.0 | model-subunits 6.8 7.4 19.7 8.7 20.4 | filter-anisotropic 8.1 7.0 22.8 10.7 30.5 | ctf-unflipped 10.9 8.6 21.5 10.8 44.3
medium  training-looks 12.4  9.1 23.1 11.5 40.0 | model-subunits 3.9 3.6  8.2 4.3 11.3 | filter-anisotropic 3.7 3.5  9.7  3.8 12.0 | ctf-unflipped  5.7 4.4 12.6  5.2 21.7
hard    training-looks  5.7  4.3 13.1  6.1 17.3 | model-subunits 1.6 1.2  4.9 1.3  3.7 | filter-anisotropic 1.1 1.1  4.0  1.4  3.4 | ctf-unflipped  2.2 1.7  4.7  1.6  7.9
At the same difficulty the held-out looks hold 2 to 3 times less signal than the training looks: at medium about
what the training looks hold at hard.
"""
import glob
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from czii_kaggle import layout, omezarr, submission  # noqa: E402
from czii_kaggle.particles import BY_NAME, SCORED  # noqa: E402

LOOKS = ["training-looks", "model-subunits", "filter-anisotropic", "ctf-unflipped"]
LEVEL = 1


def load(set_dir: Path) -> list[tuple[np.ndarray, float, pd.DataFrame]]:
    root = set_dir / "czii-cryo-et-object-identification"
    truth = submission.read_solution(set_dir / "test_solution.csv")
    out = []
    for run in layout.list_runs(root, "test")[:4]:
        v, vs = omezarr.read_tomogram(layout.tomogram_path(root, "test", run), level=LEVEL)
        v = (v - v.mean()) / v.std()
        out.append((v.astype(np.float32), vs, truth[truth["experiment"] == run]))
    return out


def vox(picks: pd.DataFrame, vs: float) -> np.ndarray:
    return np.rint(picks[["z", "y", "x"]].to_numpy(float) / vs).astype(int)


def template(runs, name: str, half: int) -> np.ndarray | None:
    cubes = []
    for v, vs, picks in runs:
        for z, y, x in vox(picks[picks["particle_type"] == name], vs):
            if all(half <= c < s - half for c, s in zip((z, y, x), v.shape)):
                cubes.append(v[z - half:z + half + 1, y - half:y + half + 1, x - half:x + half + 1])
    if not cubes:
        return None
    t = np.mean(cubes, axis=0)
    g = np.indices(t.shape) - half
    inside = (g ** 2).sum(0) <= half ** 2
    t = np.where(inside, t - t[inside].mean(), 0.0)
    return (t / np.linalg.norm(t)).astype(np.float32)


def snr(runs_t, runs_m, name: str, rng) -> tuple[float, int]:
    radius_vox = BY_NAME[name].radius_A / runs_m[0][1]
    half = int(math.ceil(1.2 * radius_vox))
    t = template(runs_t, name, half)
    if t is None:
        return float("nan"), 0
    fg, bg = [], []
    for v, vs, picks in runs_m:
        corr = fftconvolve(v, t[::-1, ::-1, ::-1], mode="same")
        shape = np.array(v.shape)
        own = np.clip(vox(picks[picks["particle_type"] == name], vs), 0, shape - 1)
        fg.extend(corr[tuple(own.T)])
        tree = cKDTree(vox(picks, vs)) if len(picks) else None
        pts = rng.integers(0, shape, size=(3000, 3))
        if tree is not None:
            d, _ = tree.query(pts)
            pts = pts[d >= 1.5 * radius_vox]
        bg.extend(corr[tuple(pts[:300].T)])
    bg = np.asarray(bg)
    return (float(np.mean(fg)) - bg.mean()) / bg.std(), len(fg)


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for difficulty in ["easy", "medium", "hard"]:
        for look in LOOKS:
            set_dir = Path(glob.glob(f"{REPO}/runs/bench_detection/{look}/{difficulty}/seed*_n4_184x630x630")[0])
            runs = load(set_dir)
            a, b = runs[:2], runs[2:]
            row = {"difficulty": difficulty, "look": look}
            for name in SCORED:
                s1, n1 = snr(a, b, name, rng)
                s2, n2 = snr(b, a, name, rng)
                row[name] = (s1 * n1 + s2 * n2) / max(n1 + n2, 1)
            rows.append(row)
            print(row, flush=True)
    df = pd.DataFrame(rows).set_index(["difficulty", "look"])
    pd.set_option("display.width", 200)
    print(df.round(2).to_string())


if __name__ == "__main__":
    main()
