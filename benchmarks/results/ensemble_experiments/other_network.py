"""Experiment (session 28): does a heatmap network trained on other data err differently enough, on a look
neither network saw, for an ensemble of the two to lead? (oracle_ceiling.py: the shipped detectors rank alike
on the held-out looks, so their ensemble adds nothing there.)

The second network: bench_resolution's 7500-step network (widths 24, 48, 64, from scratch on 12 labelled runs
each of model-subunits and ctf-unflipped; resolution.md 2026-12-04 17:47), one view. Neither it nor the shipped
heatmap saw filter-anisotropic, which is the test here (8 runs); model-subunits and ctf-unflipped are shown for
information (the second network trained on those looks). The ensemble of the two (tune.fit_ensemble: calibrations,
per-class weights, thresholds) is fitted on the training-looks set (8 runs), as is each network's thresholds
beside its shipped ones. The shipped heatmap's candidates from runs/cache/s26bf; the second network's computed and
cached under runs/other_network/<set>/.

.venv/bin/python benchmarks/results/ensemble_experiments/other_network.py

Result (2026-12-04 18:04): on filter-anisotropic (seen by neither network) the shipped heatmap scores 0.7717 with
its shipped thresholds, 0.7526 with thresholds from the training looks; the second network 0.7227; the ensemble
of the two fitted on the training looks 0.7115 (beta-galactosidase 0.410 against the heatmap's 0.574 / 0.604).
Training looks: heatmap 0.8882, ensemble 0.8849. No lead: a network trained apart, on other looks, does not err
differently enough to add to the shipped heatmap on a look neither saw (one look, 8 runs).
"""
import glob
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from czii_kaggle import layout, metric, submission  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.bundle import load_heatmap_bundle  # noqa: E402
from czii_kaggle.detectors.heatmap import HeatmapDetector  # noqa: E402
from czii_kaggle.ensemble import select_ensemble  # noqa: E402
from czii_kaggle.predict import scored_only  # noqa: E402
from czii_kaggle.tune import fit_ensemble, tune_thresholds  # noqa: E402

SETS = ["training-looks", "filter-anisotropic", "model-subunits", "ctf-unflipped"]
SECOND = REPO / "runs/bench_resolution/bundle_level1_c24-48-64_s7500_seed101"


def set_dir(name: str) -> Path:
    return Path(glob.glob(f"{REPO}/runs/bench_detection/{name}/medium/seed*_n8_184x630x630")[0])


def second_candidates(det, name: str) -> pd.DataFrame:
    root = set_dir(name) / "czii-cryo-et-object-identification"
    out = []
    for run in layout.list_runs(root, "test"):
        f = REPO / f"runs/other_network/{name}/{run}.csv"
        if not f.is_file():
            t = time.perf_counter()
            c, _ = det.candidates(layout.tomogram_path(root, "test", run), run)
            f.parent.mkdir(parents=True, exist_ok=True)
            c.to_csv(f, index=False)
            print(f"  {name} {run}: {time.perf_counter() - t:.1f} s", flush=True)
        out.append(pd.read_csv(f, dtype={"experiment": str}))
    return pd.concat(out, ignore_index=True)


def main() -> None:
    shipped = load_heatmap_bundle(REPO / "czii_kaggle/models")
    det = HeatmapDetector(load_heatmap_bundle(SECOND))
    data = {}
    for name in SETS:
        first = pd.concat([pd.read_csv(f, dtype={"experiment": str})
                           for f in glob.glob(f"{REPO}/runs/cache/s26bf/heatmap/{name}/*.csv")], ignore_index=True)
        data[name] = ({"heatmap": first, "second": second_candidates(det, name)},
                      submission.read_solution(set_dir(name) / "test_solution.csv"))
    fit_c, fit_t = data["training-looks"]
    tuned = {"heatmap": tune_thresholds(fit_c["heatmap"], fit_t, shipped.aggregate)[0],
             "second": tune_thresholds(fit_c["second"], fit_t, det.aggregate)[0]}
    ens, _ = fit_ensemble(fit_c, fit_t, detectors=("heatmap", "second"))
    rows = []
    for name, (c, truth) in data.items():
        picks = {"heatmap, shipped thresholds": select(c["heatmap"], shipped.aggregate),
                 "heatmap, thresholds from the training looks": select(c["heatmap"], tuned["heatmap"]),
                 "second network, thresholds from the training looks": select(c["second"], tuned["second"]),
                 "ensemble of the two, fitted on the training looks": select_ensemble(c, ens)}
        for option, p in picks.items():
            sub = submission.make_submission(scored_only(p))
            t = metric.score_table(truth, sub)
            rows.append({"set": name, "option": option, "score": metric.score(truth, sub),
                         "beta-galactosidase": t.loc["beta-galactosidase", "f_beta"],
                         "thyroglobulin": t.loc["thyroglobulin", "f_beta"]})
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).round(4).to_string())
    print("ensemble weights (heatmap's share):", {n: w[0] for n, w in ens.weights.items()})


if __name__ == "__main__":
    main()
