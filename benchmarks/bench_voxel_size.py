"""Tomograms at other voxel sizes: the shipped bundle on the same sample simulated at several voxel sizes.

Kaggle's tomograms are at 10.012 A per voxel, as is every shipped model's training data; the CryoET Data
Portal and labs' own tomograms come at many others (7.84, 13.48, ...). Each detector reads a tomogram at the
voxel size it was trained at (``preprocess.read_at_voxel_size``: the nearest finer zarr level, resampled onto
its grid, positions kept in Angstrom). For each ``--voxel-sizes`` value this simulates ``--n-runs`` test runs of
the same physical field of view as Kaggle's (184 x 630 x 630 voxels of 10.012 A; the same seeds, so the same
particle layouts in Angstrom) and scores per type, on the same runs:

- the bundle's default detectors (the ensemble), each reading at its own voxel size (the default);
- YOLO alone, at its voxel size;
- YOLO alone reading the tomogram as it comes (``PreprocessConfig.voxel_size_A = None``: what every run did
  before resampling existed; the heatmap networks then refused such tomograms).

The noise is set per physical volume, not per voxel (``SimConfig.noise_scale = (10.012 / size) ** 1.5``,
the simulator's denoise sigma scaled to stay the same in Angstrom), so the sample and its signal are about
the same at every voxel size; the rendering still differs (finer voxels resolve more), so rows of different
voxel sizes compare roughly, and the two YOLO rows of one voxel size exactly.

    .venv/bin/python benchmarks/bench_voxel_size.py --voxel-sizes 7.84 10.012444537618887 13.48 --n-runs 2

Prints the table and appends it, with the command, date and machine, to ``benchmarks/results/voxel_size.md``.
All simulated: no real voxels.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from czii_kaggle import outputs, workflow  # noqa: E402
from czii_kaggle.layout import KAGGLE_VOXEL_SIZE_A  # noqa: E402
from czii_kaggle.predict import load_bundle  # noqa: E402
from czii_kaggle.simulate import FULL_SHAPE_VOX, SimConfig, simulate_dataset  # noqa: E402

from bench_ensemble import fmt, score_rows, submission_of  # noqa: E402
from machine import append_result, describe as describe_machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "voxel_size.md"


def sim_config(voxel_size_A: float, difficulty: str, look: str) -> SimConfig:
    """Kaggle's field of view at ``voxel_size_A``, with the noise and denoise of 10.012 A per physical volume."""
    ratio = KAGGLE_VOXEL_SIZE_A / voxel_size_A
    shape = tuple(int(round(n * KAGGLE_VOXEL_SIZE_A / voxel_size_A)) for n in FULL_SHAPE_VOX)
    base = SimConfig()
    return SimConfig(shape_vox=shape, voxel_size_A=voxel_size_A, difficulty=difficulty, look=look,
                     noise_scale=ratio**1.5, denoise_sigma_vox=base.denoise_sigma_vox * ratio)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voxel-sizes", type=float, nargs="+", default=[7.84, KAGGLE_VOXEL_SIZE_A, 13.48])
    ap.add_argument("--n-runs", type=int, default=2)
    ap.add_argument("--difficulty", default="medium")
    ap.add_argument("--look", default="classic")
    ap.add_argument("--seed", type=int, default=94100)
    ap.add_argument("--weights", type=Path, help="bundle folder (default: the shipped one)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_voxel_size")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    bundle = load_bundle(a.weights) if a.weights else load_bundle()
    as_it_comes = dataclasses.replace(bundle, preprocess=dataclasses.replace(bundle.preprocess, voxel_size_A=None))
    options = {"default detectors (each at its voxel size)": (a.weights, None),
               "YOLO alone, at its voxel size": (bundle, "yolo"),
               "YOLO alone, the tomogram as it comes": (as_it_comes, "yolo")}
    rows = []
    for size in a.voxel_sizes:
        out = a.work / f"vs_{size:.3f}"
        if not (out / "test_solution.csv").is_file():
            simulate_dataset(out, n_train=0, n_test=a.n_runs, config=sim_config(size, a.difficulty, a.look),
                             seed=a.seed, overwrite=True)
        root = out / "czii-cryo-et-object-identification"
        truth = pd.read_csv(out / "test_solution.csv", dtype={"experiment": str})
        for i, (name, (weights, detectors)) in enumerate(options.items()):
            cache = out / f"picks_{i}.csv"  # kept, so a re-run scores without predicting again
            if cache.is_file():
                picks, seconds, failed = pd.read_csv(cache, dtype={"experiment": str}), float("nan"), 0
            else:
                t1 = time.perf_counter()
                pred = workflow.predict_bundle(root, "test", bundle=weights, detectors=detectors, progress=False)
                seconds = (time.perf_counter() - t1) / a.n_runs
                picks, failed = pred.picks, int((pred.report["status"] != "ok").sum())
                with outputs.atomic_path(cache) as tmp:
                    picks.to_csv(tmp, index=False)
            (scores,), _ = score_rows(f"{size:.3f}", {name: submission_of(picks)}, truth)
            rows.append({"voxel size (A)": round(size, 3), "detectors": name,
                         **{k: v for k, v in scores.items() if k not in ("set", "detector")},
                         "s per tomogram": seconds, "failed runs": failed})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    print(fmt(df))
    text = "\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- command: `python benchmarks/bench_voxel_size.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- machine: {describe_machine()}",
        f"- {a.n_runs} test runs per voxel size, Kaggle's field of view, look `{a.look}`, difficulty {a.difficulty}, "
        f"seed {a.seed}, the noise per physical volume; bundle `{a.weights or 'czii_kaggle/models'}`; "
        f"{time.perf_counter() - t0:.0f} s in all (the seconds include simulating nothing, reading and resampling); "
        "all simulated, no real voxels",
        "",
        fmt(df),
    ])
    if not a.no_write:
        append_result(RESULTS, "Tomograms at other voxel sizes", text)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
