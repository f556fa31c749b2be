"""Per-class thresholds that maximise the competition metric on validation runs.

The metric sums TP / FP / FN over runs *per particle type* and each type's
F-beta depends only on that type's candidates, so every type is tuned on its
own (a candidate's ``share`` comes from the other classes' candidates before any
threshold, so it does not change while they are tuned). For one type and one
``min_support`` / ``min_share`` pair the candidates are filtered and NMS-ed
once (:func:`czii_kaggle.aggregate.nms_3d`); after that a score
threshold only removes the lowest-scored candidates, so every threshold of the
grid is counted at once: a reference is a true positive at threshold ``t`` when
the best candidate within ``0.5 * radius`` (the metric's rule, inclusive) has
``score >= t``.

The chosen setting replaces the configured one only when it is strictly better on
the validation runs, so tuning never scores below the starting config there.

A type's floor (``min_keep``, :class:`czii_kaggle.aggregate.ClassParams`) is carried
over but not counted: thresholds are tuned as if there were none, and the table's
figures are those without it. The floor is a safety net for looks the model never
saw, not a tuning knob: counted, it let the thresholds rise where it already gave the
validation runs their recall, and on the held-out looks those thresholds lost it
(an experiment while the floor was built: held-out ensemble 0.585 counted, 0.617
added after tuning). ``benchmarks/bench_selection.py`` measures each detector and
the ensemble with and without it (``benchmarks/results/selection.md``).

A type's ``ref_rank`` (:class:`czii_kaggle.aggregate.ClassParams`) is carried over too, and
counted: with it the thresholds are tuned on :func:`czii_kaggle.aggregate.relative_scores`,
the scores :func:`czii_kaggle.aggregate.select` thresholds. Validation runs of several
looks score on different scales; relative to each run's own, one threshold fits them all
(``benchmarks/bench_selection.py``).

The same search fits the ensemble (:func:`fit_ensemble`: calibrations, per-class
detector weights, thresholds of the merged candidates). A bundle's detectors are tuned
on runs with picks and the results saved in the bundle (:mod:`czii_kaggle.bundle`):
:func:`tune_bundle` (YOLO, ``czii_config.json``), :func:`tune_heatmap` (a heatmap's ``{name}.json``)
and :func:`tune_ensemble` (two or more detectors: each one's own file and ``ensemble.json``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from . import frames, layout, outputs, picks as picks_io
from .aggregate import EXPERIMENT_GAP_A, AggregateConfig, candidate_share, nms_3d, relative_scores
from .bundle import (CONFIG_FILE, ENSEMBLE_FILE, heatmap_json, load_bundle, load_detectors, load_ensemble,
                     load_heatmap_bundle, parse_detectors, save_aggregate_config, save_ensemble, sources_record,
                     update_json, with_tta)
from .detectors import run_candidates
from .detectors.heatmap import HeatmapDetector
from .ensemble import EnsembleConfig, combine, fit_calibration
from .errors import CziiInputError
from .particles import MATCH_RADIUS_FRACTION, METRIC_BETA, NAMES, get
from .predict import yolo_run_candidates

#: Score thresholds tried by default (the particle score lies in 0..1).
DEFAULT_THRESHOLD_GRID: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 201), 3))
#: Minimum supports (slices) tried by default.
DEFAULT_SUPPORT_GRID: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
#: Minimum class shares tried by default (0: off; see :mod:`czii_kaggle.aggregate`).
DEFAULT_SHARE_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)

TABLE_COLUMNS: tuple[str, ...] = (
    "particle_type", "threshold", "min_support", "min_share", "f_beta", "precision", "recall",
    "tp", "fp", "fn", "default_f_beta",
)  # fmt: skip



def _best_ref_scores(refs: pd.DataFrame, cands: pd.DataFrame, radius_A: float) -> np.ndarray:
    """For each reference point: the highest candidate score within ``0.5 * radius_A`` (-inf if none).

    ``refs`` / ``cands`` hold one particle type; ``experiment, x, y, z`` (Angstrom).
    """
    best = np.full(len(refs), -np.inf)
    if len(refs) == 0 or len(cands) == 0:
        return best
    codes, _ = pd.factorize(pd.concat([refs["experiment"], cands["experiment"]]).astype(str))
    ref_pts = np.column_stack([refs[["x", "y", "z"]].to_numpy(float), codes[: len(refs)] * EXPERIMENT_GAP_A])
    cand_pts = np.column_stack([cands[["x", "y", "z"]].to_numpy(float), codes[len(refs):] * EXPERIMENT_GAP_A])
    pairs = cKDTree(ref_pts).sparse_distance_matrix(
        cKDTree(cand_pts), MATCH_RADIUS_FRACTION * radius_A, output_type="ndarray"
    )
    if len(pairs):
        np.maximum.at(best, pairs["i"], cands["score"].to_numpy(float)[pairs["j"]])
    return best


def sweep_counts(
    refs: pd.DataFrame, cands: pd.DataFrame, radius_A: float, thresholds: np.ndarray
) -> pd.DataFrame:
    """TP / FP / FN of one particle type at every threshold (metric rules, summed over experiments).

    Parameters
    ----------
    refs, cands : DataFrame
        Reference picks and (already support-filtered and NMS-ed) candidates of
        one type; ``experiment, x, y, z`` in Angstrom, ``cands`` also ``score``.
    radius_A : float
        The type's radius in Angstrom.
    thresholds : ndarray (k,) float
        Score thresholds; a candidate is kept when ``score >= threshold``.

    Returns
    -------
    DataFrame
        ``threshold, tp, fp, fn, precision, recall, f_beta`` (``fp`` not
        clipped, as in the metric).
    """
    thresholds = np.asarray(thresholds, dtype=float)
    best = np.sort(_best_ref_scores(refs, cands, radius_A))
    scores = np.sort(cands["score"].to_numpy(float)) if len(cands) else np.zeros(0)
    tp = len(best) - np.searchsorted(best, thresholds, side="left")
    n_cand = len(scores) - np.searchsorted(scores, thresholds, side="left")
    fp = n_cand - tp
    fn = len(best) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        b2 = METRIC_BETA**2
        f_beta = np.where(precision + recall > 0, (1 + b2) * precision * recall / (b2 * precision + recall), 0.0)
    return pd.DataFrame(
        {"threshold": thresholds, "tp": tp, "fp": fp, "fn": fn,
         "precision": precision, "recall": recall, "f_beta": f_beta}
    )  # fmt: skip


def tune_thresholds(
    candidates: pd.DataFrame,
    solution: pd.DataFrame,
    config: AggregateConfig | None = None,
    grid: Sequence[float] = DEFAULT_THRESHOLD_GRID,
    support_grid: Sequence[int] | None = DEFAULT_SUPPORT_GRID,
    share_grid: Sequence[float] | None = DEFAULT_SHARE_GRID,
) -> tuple[AggregateConfig, pd.DataFrame]:
    """Choose each type's ``conf_threshold`` (and ``min_support``, ``min_share``) to maximise its F-beta.

    Parameters
    ----------
    candidates : DataFrame
        ``aggregate(detections, config, apply_thresholds=False)`` of the
        validation runs: ``experiment, particle_type, x, y, z, score, n_slices`` and
        ``share`` (taken as 1 when absent).
    solution : DataFrame
        Ground-truth picks of the same runs: ``experiment, particle_type, x, y, z``
        (Angstrom). Candidates of experiments absent from it are ignored.
    config : AggregateConfig, optional
        Starting config (its geometry and NMS are kept); default ``AggregateConfig()``.
    grid : sequence of float
        Score thresholds to try.
    support_grid : sequence of int, optional
        ``min_support`` values to try; ``None`` keeps the configured one.
    share_grid : sequence of float, optional
        ``min_share`` values to try; ``None`` keeps the configured one. Where several
        settings score the same, the lowest ``min_share`` (then ``min_support``,
        then threshold) is kept.

    Returns
    -------
    config : AggregateConfig
        ``config`` with the chosen thresholds of every type the solution holds.
    table : DataFrame
        One row per tuned type: :data:`TABLE_COLUMNS` (``f_beta``, ``precision``,
        ``recall``, counts at the chosen values; ``default_f_beta`` at the
        starting ones), summed over the validation runs.
    """
    config = AggregateConfig() if config is None else config
    frames.validate(candidates, frames.CANDIDATES, need=("n_slices",))
    frames.validate(solution, frames.SOLUTION)
    experiments = set(solution["experiment"].astype(str))
    candidates = relative_scores(candidates[candidates["experiment"].astype(str).isin(experiments)], config)
    rows = []
    for name in NAMES:
        refs = solution[solution["particle_type"] == name]
        if refs.empty:
            continue
        start = config[name]
        radius_A = get(name).radius_A
        supports = [start.min_support] if support_grid is None else sorted({*support_grid, start.min_support})
        shares = [start.min_share] if share_grid is None else sorted({*share_grid, start.min_share})
        thresholds = np.unique(np.append(np.asarray(grid, dtype=float), start.conf_threshold))
        cls_cands = candidates[candidates["particle_type"] == name]
        cls_share = candidate_share(cls_cands)
        best_row, default_row = None, None
        for q in shares:
            for m in supports:
                kept = nms_3d(cls_cands[(cls_cands["n_slices"].to_numpy() >= m) & (cls_share >= q)], config)
                sweep = sweep_counts(refs, kept, radius_A, thresholds).assign(min_support=m, min_share=q)
                if m == start.min_support and q == start.min_share:
                    default_row = sweep.loc[sweep["threshold"] == start.conf_threshold].iloc[0]
                # The lowest threshold among the best: beta = 4 favours recall on unseen runs.
                top = sweep.loc[sweep["f_beta"].idxmax()]
                if best_row is None or top["f_beta"] > best_row["f_beta"]:
                    best_row = top
        if best_row["f_beta"] <= default_row["f_beta"]:
            best_row = default_row
        config = config.with_params(
            name, conf_threshold=float(best_row["threshold"]), min_support=int(best_row["min_support"]),
            min_share=float(best_row["min_share"]),
        )
        rows.append({"particle_type": name, **best_row.to_dict(), "default_f_beta": float(default_row["f_beta"])})
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return config, table.astype({"min_support": np.int64, "tp": np.int64, "fp": np.int64, "fn": np.int64})


# --------------------------------------------------------------------------- the ensemble


#: Weight of the first detector tried per class by :func:`fit_ensemble` (the second gets 1 - w).
WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def fit_ensemble(candidates: Mapping[str, pd.DataFrame], truth: pd.DataFrame,
                 detectors: tuple[str, ...] = ("yolo", "heatmap"),
                 weight_grid: tuple[float, ...] = WEIGHT_GRID, start: AggregateConfig | None = None,
                 fusion: str = "logit", ref_rank: Mapping[str, int] | None = None
                 ) -> tuple[EnsembleConfig, pd.DataFrame]:
    """Calibrations, per-class detector weights and merged-candidate thresholds fitted on validation runs.

    ``candidates``: each detector's unthresholded candidates of the runs of ``truth``.
    For two detectors every weight of ``weight_grid`` is tried per class (ties: the one
    closest to 0.5), then the thresholds are tuned again with all classes at their chosen
    weights; with more detectors, equal weights. ``start``: the merged candidates' starting selection
    options (its floor, ``min_keep``, is kept; default: the ensemble's defaults); ``fusion``: the
    pooling rule (:data:`czii_kaggle.ensemble.FUSIONS`); ``ref_rank``: calibrate and merge each detector's
    scores relative to its run's ``ref_rank``-th best of the type (:class:`EnsembleConfig`; default
    absolute scores). Returns the config and
    :func:`czii_kaggle.tune.tune_thresholds`' table of the chosen weights (column ``weight``:
    the first detector's).
    """
    start = EnsembleConfig().aggregate if start is None else start
    ref_rank = {n: int(k) for n, k in (ref_rank or {}).items() if k}
    relative = AggregateConfig().with_ref_rank(ref_rank)
    cal = {d: fit_calibration(relative_scores(candidates[d], relative), truth) for d in detectors}
    grid = sorted(weight_grid, key=lambda w: abs(w - 0.5)) if len(detectors) == 2 else [None]
    best: dict[str, tuple] = {}
    for w in grid:
        weights = {} if w is None else {n: (w, 1.0 - w) for n in NAMES}
        config = EnsembleConfig(tuple(detectors), cal, start, weights, fusion, ref_rank)
        agg, table = tune_thresholds(combine(candidates, config), truth, config.aggregate,
                                     support_grid=tuple(range(1, len(detectors) + 1)))
        for _, row in table.iterrows():
            name = row["particle_type"]
            if name not in best or row["f_beta"] > best[name][0]:
                best[name] = (row["f_beta"], agg[name], weights.get(name))
    weights = {name: w for name, (_, _, w) in best.items() if w is not None}
    # A candidate's share depends on the other classes' scores, hence on their weights: tune the
    # thresholds once more with every class at its chosen weight.
    config = EnsembleConfig(tuple(detectors), cal, start, weights, fusion, ref_rank)
    agg, table = tune_thresholds(combine(candidates, config), truth, config.aggregate,
                                 support_grid=tuple(range(1, len(detectors) + 1)))
    table["weight"] = [weights.get(n, (None,))[0] for n in table["particle_type"]]
    return EnsembleConfig(tuple(detectors), cal, agg, weights, fusion, ref_rank), table


# --------------------------------------------------------------------------- a bundle's detectors


def yolo_candidates(root: str | Path, runs: list[str], bundle, devices: list[str] | None = None,
                    progress: bool = False, backend: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every 3D candidate (no threshold applied) of training ``runs`` predicted with the YOLO ``bundle``, and
    the run report; a run that fails stops it (:class:`CziiInputError` naming the root and the runs)."""
    candidates, pred = yolo_run_candidates(root, "train", runs, bundle, backend, progress=progress, devices=devices)
    failed = pred.report[pred.report["status"] != "ok"]
    if len(failed):
        raise CziiInputError(Path(root), f"cannot tune: runs {list(failed['experiment'])} failed "
                                         f"({'; '.join(failed['error'].astype(str))})")
    return candidates, pred.report


def _ranked(config: AggregateConfig, ref_rank: Mapping[str, int] | None) -> AggregateConfig:
    """``config`` with these relative-score ranks (``None``: as it is)."""
    return config if ref_rank is None else config.with_ref_rank(ref_rank)


def tune_bundle(
    root: str | Path, runs: list[str], bundle_dir: str | Path, devices: list[str] | None = None,
    progress: bool = True, tta_views: int | None = None,
    more: list[tuple[str | Path, list[str]]] | None = None, backend: str = "auto",
    ref_rank: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Tune a bundle's YOLO per-class thresholds on training runs with picks; save them in the bundle.

    Predicts ``runs`` of the ``train`` split, keeps every 3D candidate, picks per class the
    threshold and minimum support that maximise the metric against the runs' picks
    (:func:`tune_thresholds`) and writes them into the bundle's ``czii_config.json``
    (:func:`czii_kaggle.bundle.save_aggregate_config`). ``tta_views`` (default: the
    bundle's) is saved with them, so inference runs as tuned. ``more``: further
    ``(root, runs)`` pooled with the first (runs of the same name in two roots stay
    apart). ``backend``: as :func:`czii_kaggle.predict.predict_runs`. ``ref_rank``: tune (and
    save) relative scores with these ranks (:func:`czii_kaggle.aggregate.relative_scores`; 0: absolute);
    default: the bundle's. Returns the per-class table.
    """
    bundle = load_bundle(bundle_dir)
    outputs.check_writable(bundle.weights.parent / CONFIG_FILE)  # before the runs are predicted
    if tta_views is not None:
        bundle = with_tta(bundle, tta_views)
    all_candidates, all_truth = [], []
    for i, (src, src_runs) in enumerate([(root, runs), *(more or [])]):
        candidates, _ = yolo_candidates(src, src_runs, bundle, devices, progress, backend)
        truth = picks_io.read_all_picks(src, src_runs)
        prefix = f"{i}/" if more else ""
        all_candidates.append(candidates.assign(experiment=prefix + candidates["experiment"].astype(str)))
        all_truth.append(truth.assign(experiment=prefix + truth["experiment"].astype(str)))
    config, table = tune_thresholds(pd.concat(all_candidates, ignore_index=True),
                                    pd.concat(all_truth, ignore_index=True), _ranked(bundle.aggregate, ref_rank))
    save_aggregate_config(bundle.weights.parent, config, detect=bundle.detect,
                          tuned_on=sources_record([(root, runs), *(more or [])]))
    return table


def tune_heatmap(sources: list[tuple[str | Path, list[str]]], bundle_dir: str | Path, backend: str = "auto",
                 ref_rank: Mapping[str, int] | None = None, name: str = "heatmap") -> pd.DataFrame:
    """Tune the heatmap detector ``name``'s per-class thresholds (and min shares) on runs with picks;
    save them in the bundle's ``{name}.json``. ``ref_rank``: as :func:`tune_bundle`. Returns
    :func:`tune_thresholds`' table."""
    det = HeatmapDetector(load_heatmap_bundle(bundle_dir, name), backend=backend)
    outputs.check_writable(heatmap_json(det.bundle))  # before the runs are predicted
    cands, truth = [], []
    for i, (root, runs) in enumerate(sources):
        for run in runs:
            c, _ = det.candidates(layout.tomogram_path(root, "train", run), f"{i}/{run}")
            cands.append(c)
        truth.append(picks_io.read_all_picks(root, runs).assign(experiment=lambda d, i=i: f"{i}/" + d["experiment"].astype(str)))
    config, table = tune_thresholds(pd.concat(cands, ignore_index=True), pd.concat(truth, ignore_index=True),
                                    _ranked(det.aggregate, ref_rank), support_grid=None)
    update_json(heatmap_json(det.bundle), {"aggregate": config.to_dict(), "tuned_on": sources_record(sources)})
    return table


def tune_ensemble(sources: list[tuple[str | Path, list[str]]], bundle_dir: str | Path,
                  default: list[str] | None = None, backend: str = "auto",
                  cache: dict[str, Path] | None = None, ref_rank: Mapping[str, int] | None = None,
                  detectors: list[str] | None = None, own: list[str] | None = None
                  ) -> dict[str, pd.DataFrame]:
    """Fit a bundle's detectors and their ensemble on the same runs with picks.

    Runs the ``detectors`` (default: YOLO and the heatmap; any two or more the bundle holds, e.g.
    ``yolo, heatmap, heatmap_l0``) once over ``sources`` (``(root, runs)``, train split) and tunes,
    on the same candidates, the own per-class thresholds of those in ``own`` (default: all; YOLO's in
    ``czii_config.json``, a heatmap's in its ``{name}.json``; each keeps its floor, ``min_keep``),
    so that each detector alone is as well tuned as the ensemble; then calibrates the detectors and
    tunes the merged candidates' thresholds (:func:`fit_ensemble`: for two detectors a weight per
    class, for more equal weights; saved as ``ensemble.json``, with ``default_detectors`` =
    ``default`` when given). ``cache``: as :func:`czii_kaggle.detectors.run_candidates`
    (one sub-folder per source). ``ref_rank``: relative scores with these ranks for each detector
    alone and for each detector's scores in the ensemble (0: absolute); default: as the bundle's files
    have them. Returns the tuning tables ``{detector: ..., "ensemble": ...}`` (of the detectors tuned).
    """
    names = parse_detectors(",".join(detectors or ["yolo", "heatmap"]), bundle_dir)
    own = names if own is None else own
    stray = [n for n in own if n not in names]
    if len(names) < 2 or stray:
        raise CziiInputError(Path(bundle_dir), f"an ensemble needs two or more detectors, not {'+'.join(names)}"
                             if len(names) < 2 else f"--own names {', '.join(stray)}, not among {', '.join(names)}")
    dets = load_detectors(bundle_dir, names, backend)
    files = [Path(bundle_dir) / CONFIG_FILE if d.name == "yolo" else heatmap_json(d.bundle)
             for d in dets if d.name in own]
    for path in (*files, Path(bundle_dir) / ENSEMBLE_FILE):  # before the runs are predicted
        outputs.check_writable(path)
    cands: dict[str, list[pd.DataFrame]] = {d.name: [] for d in dets}
    truth = []
    for i, (root, runs) in enumerate(sources):
        sub_cache = {k: Path(v) / str(i) for k, v in (cache or {}).items()}
        found, report = run_candidates(dets, root, "train", runs, progress=False, cache=sub_cache)
        failed = report[report["status"] != "ok"]
        if len(failed):
            raise CziiInputError(Path(root), f"cannot tune: {'; '.join(failed['error'].astype(str))}")
        for name in cands:
            cands[name].append(found[name].assign(experiment=f"{i}/" + found[name]["experiment"].astype(str)))
        truth.append(picks_io.read_all_picks(root, runs).assign(experiment=lambda d, i=i: f"{i}/" + d["experiment"].astype(str)))
    pooled = {k: pd.concat(v, ignore_index=True) for k, v in cands.items()}
    solution = pd.concat(truth, ignore_index=True)
    tuned_on = sources_record(sources)
    tables = {}
    for det in (d for d in dets if d.name in own):
        if det.name == "yolo":
            config, tables["yolo"] = tune_thresholds(pooled["yolo"], solution, _ranked(det.aggregate, ref_rank))
            save_aggregate_config(det.bundle.weights.parent, config, detect=det.bundle.detect, tuned_on=tuned_on)
        else:
            config, tables[det.name] = tune_thresholds(pooled[det.name], solution, _ranked(det.aggregate, ref_rank),
                                                       support_grid=None)
            update_json(heatmap_json(det.bundle), {"aggregate": config.to_dict(), "tuned_on": tuned_on})
    before = load_ensemble(bundle_dir)  # its floor (min_keep) and relative scores carry over
    config, tables["ensemble"] = fit_ensemble(
        pooled, solution, detectors=tuple(names), start=None if before is None else before.aggregate,
        ref_rank=ref_rank if ref_rank is not None else before.ref_rank if before else None)
    save_ensemble(bundle_dir, config, default_detectors=default, tuned_on=tuned_on)
    return tables
