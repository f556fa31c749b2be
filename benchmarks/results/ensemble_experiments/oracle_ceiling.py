"""Experiment (session 28): is the ensemble's missing lead on the held-out looks (issue 12: 0.000 over the heatmap
alone at the medium noise) a matter of thresholds that do not carry to those looks, or of ranking?

For each detector of the shipped bundle and each of its ensembles, on the cached candidates of the headline's
sets (bench_ensemble.py --cache runs/cache/s26bf --cache-yolo runs/cache/s26/yolo; 8 runs per look, the classic
test's 4): the score with the shipped thresholds, and with thresholds tuned on the set's own truth (oracle:
tune.tune_thresholds from the detector's or ensemble's shipped aggregate; the ensembles' calibrations and
weights kept). The oracle is each option's ranking ceiling: if the ensemble leads the heatmap alone there by
much more than with the shipped thresholds, its thresholds are what fails to carry; if not, its ranking.

.venv/bin/python benchmarks/results/ensemble_experiments/oracle_ceiling.py

Result (2026-12-04 18:01): held-out looks, shipped / oracle thresholds: heatmap 0.6637 / 0.6785, ensemble of three
0.6647 / 0.6791 (lead +0.001 / +0.001), yolo+heatmap 0.6590 / 0.6751, heatmap_l0 0.6408 / 0.6625, yolo 0.5320 /
0.5657. Training looks: heatmap 0.8790 / 0.8882, ensemble of three 0.8917 / 0.9071 (lead +0.013 / +0.019).
The ensemble's ranking adds nothing on the held-out looks; its thresholds are not what is missing.
"""
import glob
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from czii_kaggle import metric, submission  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.bundle import load_bundle, load_ensembles, load_heatmap_bundle  # noqa: E402
from czii_kaggle.ensemble import combine  # noqa: E402
from czii_kaggle.predict import scored_only  # noqa: E402
from czii_kaggle.tune import tune_thresholds  # noqa: E402

HELD_OUT = ["model-subunits", "filter-anisotropic", "ctf-unflipped"]
MODELS = REPO / "czii_kaggle/models"
CACHES = {"yolo": REPO / "runs/cache/s26/yolo", "heatmap": REPO / "runs/cache/s26bf/heatmap",
          "heatmap_l0": REPO / "runs/cache/s26bf/heatmap_l0"}


def solutions() -> dict[str, Path]:
    out = {"classic-test": REPO / "runs/hml/test_medium/test_solution.csv"}
    for look in [*HELD_OUT, "training-looks"]:
        found = glob.glob(f"{REPO}/runs/bench_detection/{look}/medium/seed*_n8_184x630x630")
        out[look] = Path(found[0]) / "test_solution.csv"
    return out


def main() -> None:
    aggregates = {"yolo": load_bundle(MODELS).aggregate,
                  **{n: load_heatmap_bundle(MODELS, n).aggregate for n in ("heatmap", "heatmap_l0")}}
    ensembles = load_ensembles(MODELS)
    rows = []
    for name, sol in solutions().items():
        truth = submission.read_solution(sol)
        cands = {d: pd.concat([pd.read_csv(f, dtype={"experiment": str}) for f in glob.glob(f"{root}/{name}/*.csv")],
                              ignore_index=True) for d, root in CACHES.items()}
        options = {d: (c, aggregates[d]) for d, c in cands.items()}
        options.update({"+".join(e.detectors): (combine(cands, e), e.aggregate) for e in ensembles})
        for option, (c, agg) in options.items():
            oracle, _ = tune_thresholds(c, truth, agg)
            for how, cfg in [("shipped", agg), ("oracle", oracle)]:
                sub = submission.make_submission(scored_only(select(c, cfg)))
                t = metric.score_table(truth, sub)
                rows.append({"set": name, "option": option, "thresholds": how, "score": metric.score(truth, sub),
                             "beta-galactosidase": t.loc["beta-galactosidase", "f_beta"]})
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df.round(4).to_string())
    held = df[df["set"].isin(HELD_OUT)].groupby(["thresholds", "option"], sort=False)[["score", "beta-galactosidase"]]
    print("\nheld-out looks, mean of 3 sets x 8 runs\n", held.mean().round(4).to_string())
    train = df[df["set"] == "training-looks"].set_index(["thresholds", "option"])[["score", "beta-galactosidase"]]
    print("\ntraining looks (8 runs)\n", train.round(4).to_string())


if __name__ == "__main__":
    main()
