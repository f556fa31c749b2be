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
Use :func:`czii_kaggle.aggregate.save_config` / ``load_config`` to keep the result.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from . import frames
from .aggregate import EXPERIMENT_GAP_A, AggregateConfig, candidate_share, nms_3d
from .particles import MATCH_RADIUS_FRACTION, METRIC_BETA, NAMES, get

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
    candidates = candidates[candidates["experiment"].astype(str).isin(experiments)]
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
