"""Selection rules side by side on the same candidates: the count floor and the ensemble's pooling.

Each detector of a bundle (YOLO and the heatmap) runs once over the validation runs and the
test sets of ``bench_ensemble.py`` (``--data``/``--solution`` and ``--domains``: the same runs,
seeds and folders); their unthresholded candidates are kept under ``--cache`` and reused. Then,
for every variant, thresholds (and for the ensemble its calibration and weights) are fitted on
the validation runs and they and every test set are scored with the competition metric (the
validation score is in-sample: the ground on which to choose a variant, the test sets say how
the choice holds up):

- each detector alone, with and without the count floor (``min_keep``, the recipe's
  ``tuning.count_floor``; thresholds tuned without it either way, see :mod:`czii_kaggle.tune`);
- the ensemble with each pooling rule (:data:`czii_kaggle.ensemble.FUSIONS`), with and
  without the floor;
- with the floor, thresholds on **relative scores** (``ref_rank``, the recipe's
  ``tuning.relative_scores``: each detector's scores against its run's own k-th best of the
  type, :func:`czii_kaggle.aggregate.relative_scores`), and for the ensemble also relative
  scores taken after merging instead;
- with ``--second BUNDLE`` (another heatmap network, e.g. a stage of
  ``benchmarks/results/heatmap_looks`` put in a copy of the bundle), with the floor and relative
  scores: that network alone, the two networks' probability maps averaged (``--second-views``
  flipped views each, so that 2 costs what the shipped 4 views cost) and then peaks as usual, and
  the ensemble of it with YOLO, with the bundle's own heatmap network, and with both (three
  detectors, equal weights).

    .venv/bin/python benchmarks/bench_selection.py --weights czii_kaggle/models \\
        --val runs/hml/val/czii-cryo-et-object-identification runs/hml/val_classic/czii-cryo-et-object-identification \\
        --data runs/hml/test_medium/czii-cryo-et-object-identification --solution runs/hml/test_medium/test_solution.csv \\
        --label classic-test --domains model-subunits filter-anisotropic ctf-unflipped

Appends the table, with the command, date and machine, to ``benchmarks/results/selection.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import append_result, describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from bench_ensemble import add_test_set_args, fmt, held_out_sets, lead, test_sets  # noqa: E402
from czii_kaggle import layout, metric, picks, submission  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.bundle import HEATMAP_WEIGHTS_FILE, MODEL_FILE, file_sha256, load_detectors, load_heatmap_bundle  # noqa: E402
from czii_kaggle.detectors import run_candidates  # noqa: E402
from czii_kaggle.detectors.heatmap import heatmap_candidates, read_input  # noqa: E402
from czii_kaggle.ensemble import FUSIONS, EnsembleConfig, select_ensemble  # noqa: E402
from czii_kaggle.particles import NAMES, SCORED  # noqa: E402
from czii_kaggle.predict import scored_only  # noqa: E402
from czii_kaggle.recipe import load_recipe  # noqa: E402
from czii_kaggle.tune import fit_ensemble, tune_thresholds  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "selection.md"


def weights_tag(bundle_dir: Path, name: str) -> str:
    """``{detector}-{sha256 of its weights, 12 digits}``: the cache folder of that detector's candidates;
    for the heatmap with its options that change candidates where they differ from the stages'
    (``-bn0.5``, ``-whiten_zxy``, ``-v8``: views other than the 4 every stage since j ran)."""
    tag = f"{name}-{file_sha256(bundle_dir / (MODEL_FILE if name == 'yolo' else HEATMAP_WEIGHTS_FILE))[:12]}"
    if name == "heatmap":
        config = load_heatmap_bundle(bundle_dir).config
        tag += f"-bn{config.bn_adapt:g}" if config.bn_adapt else ""
        tag += f"-{config.spectral}" if config.spectral != "none" else ""
        tag += f"-v{config.tta_views}" if config.tta_views != 4 else ""
    return tag


class MapAverage:
    """Several heatmap detectors as one: their probability maps (each with its own test-time
    batch-norm adaptation and ``views`` flipped views) averaged, then peaks as usual."""

    name = "heatmap"

    def __init__(self, bundle_dirs: list[Path], views: int):
        self.dets = [load_detectors(b, ["heatmap"], backend="torch", tta_views=views)[0] for b in bundle_dirs]
        levels = {d.bundle.config.level for d in self.dets}
        if len(levels) > 1:
            raise SystemExit(f"--second: the networks read different zarr levels {sorted(levels)}: their maps do not align")
        self.tag = "avg-" + "-".join(weights_tag(b, "heatmap") for b in bundle_dirs) + f"-v{views}"

    def candidates(self, zarr_path, experiment: str):
        inputs, probs = {}, []  # each distinct input (clip, spectral step) read once
        for det in self.dets:
            config = det.bundle.config
            key = (tuple(config.clip_percentiles), config.spectral)
            if key not in inputs:
                inputs[key] = read_input(zarr_path, config)
            volume, voxel_size_A = inputs[key]
            probs.append(det.probabilities(volume, zarr_path)[0])
        return heatmap_candidates(np.mean(probs, axis=0), voxel_size_A, experiment, self.dets[0].bundle.config), {}


def candidates(dets, name: str, root: Path, split: str, cache: Path, bundle_dir: Path,
               runs: list[str] | None = None, tags: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """Each detector's unthresholded candidates of ``runs`` (default: all of ``split``), kept under
    ``cache`` per weights (:func:`weights_tag`, or ``tags[detector]``) and set ``name``; a failed run stops it."""
    runs = layout.list_runs(root, split) if runs is None else runs
    tags = tags or {}
    found, report = run_candidates(dets, root, split, runs, progress=False,
                                   cache={d.name: cache / tags.get(d.name, weights_tag(bundle_dir, d.name)) / name
                                          for d in dets})
    bad = report[report["status"] != "ok"]
    if len(bad):
        raise SystemExit(f"{name}: {'; '.join(bad['error'].astype(str))}")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True, help="bundle folder with both detectors")
    ap.add_argument("--val", type=Path, nargs="+", required=True, help="Kaggle-layout roots of validation runs (train split, picks)")
    ap.add_argument("--val-looks", type=Path, nargs="*", default=[],
                    help="roots of validation runs of a look no network trained on (e.g. filter=diffusion): scored "
                         "in their own column, out of sample unless --fit-val-looks")
    ap.add_argument("--fit-val-looks", action="store_true",
                    help="fit thresholds, calibration and weights on --val and --val-looks together")
    add_test_set_args(ap)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench_selection",
                    help="candidates kept per detector weights (sha256) and set, reused when there")
    ap.add_argument("--relative", type=float, default=None, metavar="FACTOR",
                    help="the relative variants' ref_rank: FACTOR x the real runs' mean picks (default: the recipe's)")
    ap.add_argument("--floor", type=float, default=None, metavar="FACTOR",
                    help="the floor variants' min_keep: FACTOR x the real runs' mean picks (default: the recipe's)")
    ap.add_argument("--only", nargs="+", metavar="TEXT",
                    help="fit and score only the variants whose name contains one of these (e.g. 'ensemble logit, floor, relative')")
    ap.add_argument("--second", type=Path, help="a bundle folder with another heatmap network: adds its variants")
    ap.add_argument("--second-views", type=int, default=2, choices=(1, 2, 3, 4, 8, 16),
                    help="flipped views of each network in the map average (default 2)")
    ap.add_argument("--baseline", metavar="VARIANT",
                    help="a variant's full name (e.g. the shipped one): every other variant's lead over it on the choice "
                         "ground, with its 95%% interval over runs (paired bootstrap of the validation runs; needs --val-looks)")
    ap.add_argument("--n-boot", type=int, default=2000, help="resamples for --baseline's intervals")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if a.baseline and not a.val_looks:
        raise SystemExit("--baseline needs --val-looks: the choice ground is the mean of the two validations")

    dets = load_detectors(a.weights, ["yolo", "heatmap"])
    # (key in the candidate tables, detectors, bundle, cache tags)
    sources = [(None, dets, a.weights, {})]
    avg_label = f"heatmap maps averaged with the second's ({a.second_views} views each), floor, relative"
    if a.second is not None:
        sources.append(("heatmap2", load_detectors(a.second, ["heatmap"]), a.second, {}))
        if not a.only or any(o in avg_label for o in a.only):  # the map average's candidates only where asked
            average = MapAverage([a.weights, a.second], a.second_views)
            sources.append(("heatmap avg", [average], a.weights, {"heatmap": average.tag}))

    def all_candidates(name: str, root: Path, split: str) -> dict[str, pd.DataFrame]:
        out = {}
        for key, ds, bundle_dir, tags in sources:
            found = candidates(ds, name, root, split, a.cache, bundle_dir, tags=tags)
            out.update(found if key is None else {key: found["heatmap"]})
        return out

    def validation(roots: list[Path], prefix: str, tag: str) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
        """Candidates and picks of validation roots (cache set ``{prefix}{i}``), experiments prefixed ``{tag}{i}/``."""
        cands, truth = {}, []
        for i, root in enumerate(roots):
            for k, v in all_candidates(f"{prefix}{i}", root, "train").items():
                cands.setdefault(k, []).append(v.assign(experiment=f"{tag}{i}/" + v["experiment"].astype(str)))
            t = picks.read_all_picks(root, layout.list_pick_runs(root))
            truth.append(t.assign(experiment=f"{tag}{i}/" + t["experiment"].astype(str)))
        return {k: pd.concat(v, ignore_index=True) for k, v in cands.items()}, pd.concat(truth, ignore_index=True)

    val_c, val_t = validation(a.val, "val", "")
    looks_c, looks_t = validation(a.val_looks, "vallooks", "L") if a.val_looks else ({}, None)
    if a.fit_val_looks and not a.val_looks:
        raise SystemExit("--fit-val-looks needs --val-looks")
    # what everything is fitted on: the validation runs, with --fit-val-looks those of the unseen look too
    fit_c = {k: pd.concat([v, looks_c[k]], ignore_index=True) for k, v in val_c.items()} if a.fit_val_looks else val_c
    fit_t = pd.concat([val_t, looks_t], ignore_index=True) if a.fit_val_looks else val_t
    sets = [(name, all_candidates(name, root, "test"), truth) for name, root, truth in test_sets(a)]
    held = held_out_sets(a, [name for name, _, _ in sets])

    tuning = load_recipe().tuning
    floor, ranks = tuning.min_keep(a.floor), tuning.ref_rank(a.relative)
    no_floor = absolute = {n: 0 for n in NAMES}
    # each variant's fit, run only for the variants --only keeps: name -> () -> (candidates -> picks)
    fits = {}

    def add_detector(name, label, agg, **kw):
        def fit():
            cfg, _ = tune_thresholds(fit_c[name], fit_t, agg, **kw)
            return lambda c: select(c[name], cfg)
        fits[label] = fit

    def add_ensemble(label, **kw):
        def fit():
            ens, _ = fit_ensemble(fit_c, fit_t, **kw)
            return lambda c: select_ensemble(c, ens)
        fits[label] = fit

    levels = (("no floor", no_floor, absolute), ("floor", floor, absolute), ("floor, relative", floor, ranks))
    for det in dets:
        for tag, mk, rr in levels:
            add_detector(det.name, f"{det.name}, {tag}", det.aggregate.with_floor(mk).with_ref_rank(rr),
                         **({"support_grid": None} if det.name == "heatmap" else {}))
    for fusion in FUSIONS:
        for tag, mk, rr in levels:
            add_ensemble(f"ensemble {fusion}, {tag}", start=EnsembleConfig().aggregate.with_floor(mk), fusion=fusion,
                         ref_rank=rr)
    # relative scores of the merged candidates instead of each detector's (one more place they could go)
    add_ensemble("ensemble logit, floor, relative after merging",
                 start=EnsembleConfig().aggregate.with_floor(floor).with_ref_rank(ranks))
    if a.second is not None:
        heatmap = dets[1].aggregate.with_floor(floor).with_ref_rank(ranks)
        for key, label in (("heatmap2", "second heatmap, floor, relative"), ("heatmap avg", avg_label)):
            add_detector(key, label, heatmap, support_grid=None)
        for pair in (("yolo", "heatmap2"), ("heatmap", "heatmap2"), ("yolo", "heatmap", "heatmap2")):
            # three detectors: equal weights (fit_ensemble's weight grid is for pairs)
            add_ensemble(f"ensemble logit {' + '.join(pair)}, floor, relative", detectors=pair,
                         start=EnsembleConfig().aggregate.with_floor(floor), ref_rank=ranks)
    chosen = [v for v in fits if not a.only or any(o in v for o in a.only)]
    if not chosen:
        raise SystemExit(f"--only {a.only}: no variant matches; the variants are: {'; '.join(fits)}")
    if a.baseline and a.baseline not in chosen:
        if a.baseline not in fits:
            raise SystemExit(f"--baseline {a.baseline!r} is no variant; the variants are: {'; '.join(fits)}")
        chosen.append(a.baseline)
    selectors = {v: fits[v]() for v in chosen}

    rows, val_subs, looks_subs = [], {}, {}
    for variant, pick in selectors.items():
        row, per = {"variant": variant}, {}
        # The runs everything was fitted on (in-sample): the score a choice between variants may use.
        val_subs[variant] = submission.make_submission(scored_only(pick(val_c)))
        row["validation"] = metric.score(val_t, val_subs[variant])
        if a.val_looks:  # a look no network trained on; in sample only with --fit-val-looks
            sub = looks_subs[variant] = submission.make_submission(scored_only(pick(looks_c)))
            table = metric.score_table(looks_t, sub)
            row["unseen-look validation"] = metric.score(looks_t, sub)
            # the ground of a choice by the rule of docs/EXPERIMENTS.md: the two validations' mean (4 digits: ties are 0.005)
            row["choice (mean of the validations)"] = f"{(row['validation'] + row['unseen-look validation']) / 2:.4f}"
            for n in ("beta-galactosidase", "thyroglobulin"):
                row[f"unseen-look val {n}"] = float(table.loc[n, "f_beta"]) if n in table.index else np.nan
            if len(a.val_looks) > 1:  # each look's runs on their own too (experiments prefixed L{i}/)
                for i in range(len(a.val_looks)):
                    mine = looks_t["experiment"].str.startswith(f"L{i}/")
                    part = sub[sub["experiment"].str.startswith(f"L{i}/")]
                    row[f"unseen-look validation {i}"] = metric.score(looks_t[mine], part)
        for name, cands, truth in sets:
            sub = submission.make_submission(scored_only(pick(cands)))
            table = metric.score_table(truth, sub)
            row[name] = metric.score(truth, sub)
            per[name] = {n: float(table.loc[n, "f_beta"]) for n in SCORED if n in table.index}
        if held:
            row["held-out mean"] = float(np.mean([row[h] for h in held]))
            for n in SCORED:
                row[f"held {n}"] = float(np.mean([per[h].get(n, np.nan) for h in held]))
        if a.data is not None:
            for n in SCORED:
                row[f"{a.label} {n}"] = per[a.label].get(n, np.nan)
        rows.append(row)
        print(variant, {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items() if k != "variant"},
              flush=True)

    leads = []
    if a.baseline:  # the choice ground's two validations resampled apart, each variant on the same draws
        choice = (metric.bootstrap_scores(val_t, val_subs, a.n_boot, seed=0)
                  + metric.bootstrap_scores(looks_t, looks_subs, a.n_boot, seed=1)) / 2
        leads = [{"variant": v, **lead(choice[v] - choice[a.baseline])} for v in selectors if v != a.baseline]
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_selection.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine()}\n"
        f"- bundle `{a.weights}`" + (f"; second heatmap network `{a.second}` (heatmap2)" if a.second else "")
        + "; validation runs (thresholds, calibration, weights): "
        f"{', '.join(map(str, a.val))} ({val_t['experiment'].nunique()} runs)"
        + (f"; validation runs of an unseen look ({'fitted on with the others' if a.fit_val_looks else 'not fitted on'}): "
           f"{', '.join(map(str, a.val_looks))} ({looks_t['experiment'].nunique()} runs)" if a.val_looks else "")
        + "; test sets: "
        f"{', '.join(f'{n} ({t.experiment.nunique()} runs)' for n, _, t in sets)}; "
        f"floor (min_keep per run): {floor}; relative scores (ref_rank): {ranks}; all simulated, no real voxels",
        "**Score** (competition metric; validation: the runs of the training looks everything was fitted on, the only fair "
        "ground for a choice between variants; unseen-look validation: runs of a look no network trained on, "
        "the ground for a choice by generalisation (in sample only with --fit-val-looks); "
        "held-out mean: the sets other than the given one and the training looks):\n\n"
        + fmt(pd.DataFrame(rows)),
        *([f"**Lead over `{a.baseline}` on the choice ground** (mean of the two validations), with its 95% interval "
           f"over runs (each validation's runs resampled with replacement {a.n_boot} times, apart; every variant on "
           "the same draws):\n\n" + fmt(pd.DataFrame(leads), "{:.4f}")] if leads else []),
    ])
    print(text)
    if not a.no_write:
        append_result(RESULTS, "Selection-rule benchmark results", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
