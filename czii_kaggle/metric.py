"""The competition metric: per-type F-beta over matched particle centres.

Mirrors the Kaggle metric of "CZII - CryoET Object Identification"
(``kaggle.com/code/metric/czi-cryoet-84969``, whose ``compute_metrics`` and
``score`` are reproduced verbatim in several public repositories). What that
code does, and so what this module does:

* submission rows of experiments that are not in the solution are dropped
  first; only then is an unknown ``particle_type`` in the submission an error;
* for each (experiment, particle type) a reference point is a true positive
  when at least one candidate lies within ``MATCH_RADIUS_FRACTION * radius_A``
  (distance ``<=``, inclusive); ``tp`` counts distinct reference points,
  ``fp = n_candidates - tp`` and ``fn = n_references - tp``. ``fp`` is **not**
  clipped: one candidate within range of two references gives ``tp = 2``,
  ``fp = -1`` (Kaggle's comment calls this "extremely rare"; it needs two
  references of one type closer than one radius);
* counts are summed over experiments per type; ``precision = tp / (tp + fp)``
  (0 when ``tp + fp == 0``), ``recall = tp / (tp + fn)`` (0 when
  ``tp + fn == 0``), F-beta is 0 when ``precision + recall == 0``;
* the score is ``sum(weight * f_beta) / sum(all weights)``: Kaggle divides by
  the sum of *all* weights (7) even when a type is absent from the solution,
  so an absent type scores 0. An empty solution scores 0.0;
* a solution holding the same ``(experiment, x, y, z)`` twice is rejected
  (Kaggle asserts this).

One difference that cannot change a score: Kaggle skips candidates of a type
the solution does not hold at all; :func:`score_table` counts them as false
positives of that type (its F-beta is 0 either way).

All coordinates are in Angstrom.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from . import frames, particles
from .errors import CziiInputError
from .particles import MATCH_RADIUS_FRACTION, METRIC_BETA

# The metric reads a solution's and a submission's picks columns (czii_kaggle.frames.PICKS_COLUMNS);
# extra columns are ignored.
_XYZ = ["x", "y", "z"]


def _as_points(xyz_A, name: str) -> np.ndarray:
    arr = np.asarray(xyz_A, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 3)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite coordinates")
    return arr


def match_counts(ref_xyz_A, cand_xyz_A, radius_A: float) -> tuple[int, int, int]:
    """True/false positives and false negatives of one experiment and particle type.

    Parameters
    ----------
    ref_xyz_A : array_like, shape (n_ref, 3), float
        Reference (ground-truth) centres in Angstrom; ``(0, 3)`` or ``[]`` for none.
    cand_xyz_A : array_like, shape (n_cand, 3), float
        Candidate (submitted) centres in Angstrom, same axis order as ``ref_xyz_A``.
    radius_A : float
        Particle radius in Angstrom; a candidate matches a reference within
        ``MATCH_RADIUS_FRACTION * radius_A`` (inclusive).

    Returns
    -------
    tp, fp, fn : int
        ``tp`` distinct references with a candidate in range,
        ``fp = n_cand - tp`` (may be negative, as in Kaggle's code, when one
        candidate covers two references), ``fn = n_ref - tp``.
    """
    ref = _as_points(ref_xyz_A, "ref_xyz_A")
    cand = _as_points(cand_xyz_A, "cand_xyz_A")
    n_ref, n_cand = len(ref), len(cand)
    if n_ref == 0 or n_cand == 0:
        return 0, n_cand, n_ref
    n_in_range = cKDTree(cand).query_ball_point(
        ref, r=MATCH_RADIUS_FRACTION * float(radius_A), return_length=True
    )
    tp = int(np.count_nonzero(n_in_range))
    return tp, n_cand - tp, n_ref - tp


def _groups(df: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """``(experiment, particle_type) -> (n, 3)`` float64 Angstrom points."""
    if df.empty:
        return {}
    keys = [df["experiment"].astype(str), df["particle_type"].astype(str)]
    xyz = df[_XYZ].to_numpy(dtype=np.float64)
    return {k: xyz[idx] for k, idx in df.groupby(keys, sort=False).indices.items()}


def _run_counts(solution: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, scored type) counts: columns experiment, particle_type, tp, fp, fn."""
    solution = frames.validate(solution, frames.SOLUTION)
    experiments = sorted(set(solution["experiment"]))
    if isinstance(submission, pd.DataFrame) and "experiment" in submission.columns:
        submission = submission[submission["experiment"].astype(str).isin(experiments)]
    submission = frames.validate(submission, frames.PICKS, what="submission")
    dup = solution.duplicated(subset=["experiment", *_XYZ])
    if dup.any():
        raise CziiInputError(None, f"solution repeats {int(dup.sum())} (experiment, x, y, z) point(s) "
                                   f"({frames.rows_text(dup)}); the Kaggle metric rejects such a solution")
    refs, cands = _groups(solution), _groups(submission)
    empty = np.empty((0, 3))
    rows = []
    for experiment in experiments:
        for name in particles.SCORED:
            key = (experiment, name)
            tp, fp, fn = match_counts(
                refs.get(key, empty), cands.get(key, empty), particles.get(name).radius_A
            )
            rows.append((experiment, name, tp, fp, fn))
    return pd.DataFrame(rows, columns=["experiment", "particle_type", "tp", "fp", "fn"]).astype(
        {"tp": np.int64, "fp": np.int64, "fn": np.int64}
    )


def _f_beta(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, f_beta)`` of count arrays of any (equal) shape, with the metric's zero rules."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        b2 = float(beta) ** 2
        f_beta = np.where(precision + recall > 0, (1 + b2) * precision * recall / (b2 * precision + recall), 0.0)
    return precision, recall, f_beta


def _table_from_counts(counts: pd.DataFrame, beta: float) -> pd.DataFrame:
    """Per-type table from counts indexed by particle_type (tp, fp, fn)."""
    counts = counts.reindex(list(particles.SCORED), fill_value=0)
    tp = counts["tp"].to_numpy(np.int64)
    fp = counts["fp"].to_numpy(np.int64)
    fn = counts["fn"].to_numpy(np.int64)
    precision, recall, f_beta = _f_beta(tp, fp, fn, beta)
    table = pd.DataFrame(
        {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": precision,
            "recall": recall,
            "f_beta": f_beta,
            "weight": np.array([particles.get(n).weight for n in particles.SCORED], np.int64),
        },
        index=pd.Index(list(particles.SCORED), name="particle_type"),
    )
    return table


def _score_from_table(table: pd.DataFrame) -> float:
    total_weight = sum(p.weight for p in particles.PARTICLES)
    return float((table["weight"] * table["f_beta"]).sum() / total_weight)


def score_table(
    solution: pd.DataFrame, submission: pd.DataFrame, beta: float = METRIC_BETA
) -> pd.DataFrame:
    """Per-type counts, precision, recall and F-beta, summed over the solution's experiments.

    Parameters
    ----------
    solution, submission : pandas.DataFrame
        Columns ``experiment, particle_type, x, y, z`` (Angstrom); others are ignored.
        Submission rows of experiments not in ``solution`` are ignored.
    beta : float
        F-beta's beta (the competition uses 4).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``particle_type`` (every scored type, particle table order);
        columns ``tp, fp, fn`` (int64), ``precision, recall, f_beta`` (float64),
        ``weight`` (int64). Unscored types (beta-amylase) are left out.

    Raises
    ------
    ValueError
        Missing columns, an unknown ``particle_type``, non-finite coordinates, or a
        solution that repeats an ``(experiment, x, y, z)`` point.
    """
    counts = _run_counts(solution, submission)
    return _table_from_counts(counts.groupby("particle_type")[["tp", "fp", "fn"]].sum(), beta)


def score(solution: pd.DataFrame, submission: pd.DataFrame, beta: float = METRIC_BETA) -> float:
    """The competition score: ``sum(weight * f_beta) / sum(weights)``, in [0, 1].

    See :func:`score_table` for the inputs and errors.
    """
    return _score_from_table(score_table(solution, submission, beta=beta))


def score_runs(
    solution: pd.DataFrame, submission: pd.DataFrame, beta: float = METRIC_BETA
) -> pd.DataFrame:
    """The score of each experiment of ``solution`` on its own.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``experiment`` (sorted); column ``score`` then one F-beta
        column per scored type (named after the type). A run that lacks a type
        scores 0 for it, as the whole-solution metric does.
    """
    counts = _run_counts(solution, submission)
    rows = {}
    for experiment, run in counts.groupby("experiment", sort=True):
        table = _table_from_counts(run.set_index("particle_type")[["tp", "fp", "fn"]], beta)
        rows[experiment] = {"score": _score_from_table(table), **table["f_beta"].to_dict()}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["score", *particles.SCORED])
    out.index.name = "experiment"
    return out.astype(np.float64)


def bootstrap_scores(
    solution: pd.DataFrame, submissions: Mapping[str, pd.DataFrame], n_boot: int = 2000, seed: int = 0,
    beta: float = METRIC_BETA,
) -> pd.DataFrame:
    """The score of each of ``submissions`` on ``n_boot`` resamples of the solution's experiments.

    Each resample draws as many experiments as the solution holds, with replacement, and scores
    every submission on that same draw (the counts of an experiment drawn twice count twice), so
    differences between two columns are paired: their spread says how much of a lead the runs
    themselves could make. Use quantiles of a column, or of a difference of two, as an interval.

    Parameters
    ----------
    solution : pandas.DataFrame
        As :func:`score_table`; at least one experiment.
    submissions : mapping of str to pandas.DataFrame
        Named submissions, as :func:`score_table`'s ``submission``.
    n_boot, seed : int
        Resamples, and the seed of their draw (the same seed, the same draws).

    Returns
    -------
    pandas.DataFrame
        ``n_boot`` rows, one column per submission (its name): the score on each resample.
    """
    experiments = sorted(set(frames.validate(solution, frames.SOLUTION)["experiment"]))
    if not experiments:
        raise ValueError("bootstrap_scores needs a solution with at least one experiment")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, not {n_boot}")
    draws = np.random.default_rng(seed).integers(0, len(experiments), (n_boot, len(experiments)))
    times = np.stack([np.bincount(row, minlength=len(experiments)) for row in draws]).astype(np.int64)  # (boot, runs)
    weights = np.array([particles.get(n).weight for n in particles.SCORED], np.float64)
    total_weight = sum(p.weight for p in particles.PARTICLES)
    out = {}
    for name, sub in submissions.items():
        counts = _run_counts(solution, sub).set_index(["experiment", "particle_type"])
        cube = np.stack([counts[c].unstack("particle_type").reindex(index=experiments, columns=list(particles.SCORED))
                         .to_numpy(np.int64) for c in ("tp", "fp", "fn")], axis=-1)  # (runs, types, 3)
        tp, fp, fn = np.moveaxis(np.einsum("br,rtc->btc", times, cube), -1, 0)
        f_beta = _f_beta(tp, fp, fn, beta)[2]
        out[name] = (f_beta * weights).sum(axis=1) / total_weight
    return pd.DataFrame(out, columns=list(submissions))


def _best_within(xyz: np.ndarray, score: np.ndarray, ref: np.ndarray, reach: float) -> np.ndarray:
    """Per point of ``ref``, the best ``score`` of the points ``xyz`` within ``reach`` (-inf where none)."""
    best = np.full(len(ref), -np.inf)
    if len(xyz) and len(ref):
        for i, near in enumerate(cKDTree(xyz).query_ball_point(ref, reach)):
            if near:
                best[i] = score[near].max()
    return best


#: Columns of :func:`candidate_audit`'s table.
AUDIT_COLUMNS = ["particle_type", "particles", "found", "found_2r", "offset_A", "found_any_type", "other_higher",
                 "in_top", "top", "top_on_self", "top_on_other", "top_on_nothing"]


def candidate_audit(solution: pd.DataFrame, candidates: pd.DataFrame, top_factor: float = 3.0) -> pd.DataFrame:
    """Where a detector's losses lie, per scored type: in finding, in placing or in ranking.

    ``candidates`` are a detector's scored candidates before any threshold (picks columns and
    ``score``). Per scored type, summed over the solution's experiments (fractions of its particles
    or of its top candidates):

    * ``found``: particles with a candidate of their type within the metric's match radius
      (``MATCH_RADIUS_FRACTION * radius_A``), whatever its score: what any threshold can reach;
    * ``found_2r``: the same within twice that radius (the rest of it lost to placing), and
      ``offset_A``: the median distance from those particles to their nearest such candidate;
    * ``found_any_type``: with a candidate of any type within the match radius (the rest of
      ``found_any_type - found`` lost to the type's label), and ``other_higher``: with a candidate of
      another type within the match radius that outscores every candidate of their own type there (the
      detector takes them for something else);
    * ``in_top``: particles matched by the ``ceil(top_factor * n)`` best-scored candidates of their
      type in their experiment (``n``: its particles of the type), a threshold that keeps about
      ``top_factor`` candidates per particle; ``found - in_top`` is lost to ranking;
    * ``top``: those top candidates counted, and the shares of them whose centre lies on a particle
      of their own type (within the match radius), else inside another particle of the solution
      (within that particle's radius), else on nothing the solution holds.

    Returns
    -------
    pandas.DataFrame
        :data:`AUDIT_COLUMNS`, one row per scored type (``particles`` and ``top`` counts, the rest
        fractions; NaN where there is nothing to divide by).
    """
    solution = frames.validate(solution, frames.SOLUTION)
    cands = frames.validate(candidates, frames.CANDIDATES, what="candidates")
    if top_factor <= 0:
        raise ValueError(f"top_factor must be positive, not {top_factor}")
    experiments = sorted(set(solution["experiment"].astype(str)))
    refs, by_type = _groups(solution), {}
    cands = cands[cands["experiment"].astype(str).isin(experiments)]
    for key, idx in cands.groupby([cands["experiment"].astype(str), cands["particle_type"].astype(str)],
                                  sort=False).indices.items():
        rows = cands.iloc[idx]
        order = np.argsort(-rows["score"].to_numpy(np.float64), kind="stable")
        by_type[key] = (rows[_XYZ].to_numpy(np.float64)[order], rows["score"].to_numpy(np.float64)[order])
    empty = np.empty((0, 3))
    none = (empty, np.empty(0))
    every = {e: cKDTree(np.concatenate([p for (e2, _), (p, _) in by_type.items() if e2 == e]))
             for e in {e for e, _ in by_type}}  # each experiment's candidates of every type
    out = []
    for name in particles.SCORED:
        reach = MATCH_RADIUS_FRACTION * particles.get(name).radius_A
        n = found = found2 = found_any = rival = in_top = top = on_self = on_other = 0
        offsets = []
        for experiment in experiments:
            ref = refs.get((experiment, name), empty)
            mine, mine_score = by_type.get((experiment, name), none)
            k = int(np.ceil(top_factor * len(ref)))
            top_xyz = mine[:k]
            n += len(ref)
            top += len(top_xyz)
            if len(ref) and len(mine):
                d = cKDTree(mine).query(ref)[0]
                found += int((d <= reach).sum())
                found2 += int((d <= 2 * reach).sum())
                offsets.append(d[d <= 2 * reach])
            if len(ref) and experiment in every:
                found_any += int((every[experiment].query(ref)[0] <= reach).sum())
                others = [_best_within(pts, sc, ref, reach) for (e, other), (pts, sc) in by_type.items()
                          if e == experiment and other != name]
                if others:
                    rival += int((np.max(others, axis=0) > _best_within(mine, mine_score, ref, reach)).sum())
            if len(ref) and len(top_xyz):
                in_top += int((cKDTree(top_xyz).query(ref)[0] <= reach).sum())
            if len(top_xyz):
                hit_self = (cKDTree(ref).query(top_xyz)[0] <= reach) if len(ref) else np.zeros(len(top_xyz), bool)
                inside = np.zeros(len(top_xyz), bool)
                for (e, other), pts in refs.items():
                    if e == experiment and other != name:
                        inside |= cKDTree(pts).query(top_xyz)[0] <= particles.get(other).radius_A
                on_self += int(hit_self.sum())
                on_other += int((inside & ~hit_self).sum())

        def share(x: int, of: int) -> float:
            return x / of if of else float("nan")
        out.append({"particle_type": name, "particles": n, "found": share(found, n), "found_2r": share(found2, n),
                    "offset_A": float(np.median(np.concatenate(offsets))) if found2 else float("nan"),
                    "found_any_type": share(found_any, n), "other_higher": share(rival, n),
                    "in_top": share(in_top, n), "top": top,
                    "top_on_self": share(on_self, top), "top_on_other": share(on_other, top),
                    "top_on_nothing": share(top - on_self - on_other, top)})
    return pd.DataFrame(out, columns=AUDIT_COLUMNS)
