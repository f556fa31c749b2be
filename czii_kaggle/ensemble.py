"""The ensemble: candidates of several detectors merged per class into one scored set.

0. **Relative scores** (optional, ``ref_rank``): each detector's score of a candidate becomes
   ``s / (s + ref)``, ``ref`` its run's ``ref_rank``-th best score of the type
   (:func:`czii_kaggle.aggregate.relative_scores`), so that a look which lowers one
   detector's scores on a whole tomogram does not lower them against the calibration.
1. **Calibrate** each detector's scores per class: a logistic fit of "this candidate
   lies within the metric's match radius of a pick of its class" on the logit of its
   score, on validation runs (:func:`fit_calibration`). Scores of different detectors
   (YOLO's slice-support score, the heatmap's peak probability) become comparable
   probabilities.
2. **Merge** (:func:`combine`): per (run, class), the candidates of all detectors are
   grouped greedily, best calibrated score first: a seed takes every candidate within
   ``0.5 * radius`` (the metric's match radius). A group's score pools each detector's
   best calibrated score in it (``fusion``): ``"logit"`` (the default since the
   ensemble was refitted with it) is the sigmoid of the *weighted mean of their
   logits* (log-linear pooling; a detector that has none there counts as 1e-4, so a
   lone detection is kept only where the fit gives its detector all the weight);
   ``"mean"`` (the first ensemble's rule, kept for ``ensemble.json`` files without a
   ``fusion`` key) is their weighted mean (0 for a detector that has none);
   ``"noisy_or"`` is ``1 - prod((1 - p_d) ** w_d)``, log-linear pooling of the "no
   particle here" probabilities: a detector with none there costs nothing, so a lone
   detection keeps ``1 - (1 - p) ** w`` (meant for looks where one detector fails;
   measured in ``benchmarks/bench_selection.py``, not the default). On the
   held-out-look runs log-linear pooling scored 0.632 against 0.625 for the mean,
   and 0.877 against 0.847 on the classic test (ensemble.md, 2026-12-01). A group's
   centre is the score-weighted mean of those best members;
   ``n_slices`` is the number of detectors that agree (so ``min_support = 2`` means
   "both").
3. **Select**: per class, the detector weights (a grid from one detector alone to
   the other alone), threshold, minimum agreement and minimum share that maximise the
   metric on validation runs (:func:`czii_kaggle.tune.fit_ensemble`), then 3D NMS
   (:func:`czii_kaggle.aggregate.select`). A class where one detector is useless
   falls back to the other one alone.

The fitted :class:`EnsembleConfig` is saved as ``ensemble.json`` in the bundle (:mod:`czii_kaggle.bundle`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.special import expit

from . import frames
from .aggregate import (EXPERIMENT_GAP_A, AggregateConfig, ClassParams, _greedy_seeds, _neighbour_lists,
                        _scaled_points, class_share, empty_candidates, relative_scores, select)
from .particles import MATCH_RADIUS_FRACTION, NAMES, PARTICLES



#: Pooling rules of :func:`combine`.
FUSIONS: tuple[str, ...] = ("logit", "mean", "noisy_or")


def _default_aggregate() -> AggregateConfig:
    return AggregateConfig({p.name: ClassParams(min_support=1, conf_threshold=0.2) for p in PARTICLES})


@dataclass(frozen=True)
class EnsembleConfig:
    """Detectors, their per-class calibrations ``{detector: {class: (a, b)}}`` (calibrated
    ``p = sigmoid(a * logit(score) + b)``), per-class detector weights ``{class: (w, ...)}``
    (one per detector, summing to 1; equal where absent), the selection options of
    merged candidates, the pooling rule ``fusion`` (:data:`FUSIONS`, see the module docstring) and
    ``ref_rank`` ``{class: k}``: each detector's scores of those classes are made relative to the
    run's own k-th best of the type before calibration (:func:`czii_kaggle.aggregate.relative_scores`;
    absent or 0: absolute scores)."""

    detectors: tuple[str, ...] = ("yolo", "heatmap")
    calibration: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)
    aggregate: AggregateConfig = field(default_factory=_default_aggregate)
    weights: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    fusion: str = "logit"
    ref_rank: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        self.relative()  # checks the types and ranks

    def relative(self) -> AggregateConfig:
        """The selection options whose ``ref_rank`` are this ensemble's (for :func:`relative_scores`)."""
        return AggregateConfig().with_ref_rank(self.ref_rank)

    def class_weights(self, name: str) -> np.ndarray:
        w = self.weights.get(name)
        return np.full(len(self.detectors), 1.0 / len(self.detectors)) if w is None else np.asarray(w, dtype=float)

    def to_dict(self) -> dict:
        return {"detectors": list(self.detectors),
                "calibration": {d: {c: list(ab) for c, ab in cal.items()} for d, cal in self.calibration.items()},
                "weights": {c: list(w) for c, w in self.weights.items()},
                "aggregate": self.aggregate.to_dict(), "fusion": self.fusion,
                "ref_rank": {c: int(k) for c, k in self.ref_rank.items() if k}}

    @classmethod
    def from_dict(cls, d: Mapping) -> EnsembleConfig:
        cal = {det: {c: (float(ab[0]), float(ab[1])) for c, ab in v.items()} for det, v in dict(d.get("calibration", {})).items()}
        agg = AggregateConfig.from_dict(d["aggregate"]) if "aggregate" in d else _default_aggregate()
        detectors = tuple(d.get("detectors", ("yolo", "heatmap")))
        weights = {c: tuple(float(x) for x in w) for c, w in dict(d.get("weights", {})).items()}
        bad = [c for c, w in weights.items() if len(w) != len(detectors) or c not in NAMES]
        if bad:
            raise ValueError(f"weights of {bad} do not name a particle type with one weight per detector")
        ref_rank = {c: int(k) for c, k in dict(d.get("ref_rank", {})).items()}
        return cls(detectors, cal, agg, weights, str(d.get("fusion", "mean")), ref_rank)  # files before the key: the mean


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> tuple[float, float]:
    """``(a, b)`` of ``P(y=1) = sigmoid(a * x + b)`` by Newton's method (small L2 on ``a``).

    With no positive or no negative example the identity ``(1, 0)`` is returned.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(y) == 0 or y.min() == y.max():
        return 1.0, 0.0
    w = np.array([1.0, 0.0])
    X = np.column_stack([x, np.ones_like(x)])
    reg = np.diag([l2 * len(y), 1e-9])
    for _ in range(iters):
        p = expit(X @ w)
        grad = X.T @ (p - y) + reg @ w
        hess = (X * (p * (1 - p))[:, None]).T @ X + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), float(w[1])


def is_true_positive(cands: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Per candidate: a pick of its class and run lies within the match radius."""
    out = np.zeros(len(cands), dtype=bool)
    if cands.empty or truth.empty:
        return out
    codes, _ = pd.factorize(pd.concat([cands["experiment"], truth["experiment"]]).astype(str))
    cc, tc = codes[:len(cands)], codes[len(cands):]
    for name in NAMES:
        cm = (cands["particle_type"] == name).to_numpy()
        tm = (truth["particle_type"] == name).to_numpy()
        if not cm.any() or not tm.any():
            continue
        reach = PARTICLES[NAMES.index(name)].radius_A * MATCH_RADIUS_FRACTION
        cp = np.column_stack([cands.loc[cm, ["x", "y", "z"]].to_numpy(float), cc[cm] * EXPERIMENT_GAP_A])
        tp = np.column_stack([truth.loc[tm, ["x", "y", "z"]].to_numpy(float), tc[tm] * EXPERIMENT_GAP_A])
        d, _ = cKDTree(tp).query(cp, distance_upper_bound=reach + 1e-9)
        out[np.flatnonzero(cm)] = np.isfinite(d)
    return out


def fit_calibration(cands: pd.DataFrame, truth: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per class ``(a, b)`` of one detector's candidates against the picks of the same runs."""
    tp = is_true_positive(cands, truth)
    out = {}
    for name in NAMES:
        m = (cands["particle_type"] == name).to_numpy()
        out[name] = fit_logistic(_logit(cands.loc[m, "score"].to_numpy(float)), tp[m])
    return out


def calibrate(cands: pd.DataFrame, calibration: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """Calibrated probabilities of one detector's candidates (identity for a class with no fit)."""
    a = cands["particle_type"].map(lambda n: calibration.get(n, (1.0, 0.0))[0]).to_numpy(float)
    b = cands["particle_type"].map(lambda n: calibration.get(n, (1.0, 0.0))[1]).to_numpy(float)
    return 1.0 / (1.0 + np.exp(-(a * _logit(cands["score"].to_numpy(float)) + b)))


def combine(candidates: Mapping[str, pd.DataFrame], config: EnsembleConfig) -> pd.DataFrame:
    """Merged candidates (:data:`czii_kaggle.aggregate.CANDIDATE_COLUMNS`, ``n_slices`` = detectors
    agreeing) of the detectors in ``config.detectors``; unthresholded (see the module docstring)."""
    missing = [d for d in config.detectors if d not in candidates]
    if missing:
        raise ValueError(f"no candidates of detectors {missing}")
    parts, relative = [], config.relative()
    for k, det in enumerate(config.detectors):
        c = frames.validate(candidates[det], frames.CANDIDATES, what=f"candidates of detector {det}")
        if len(c):
            parts.append(pd.DataFrame({"experiment": c["experiment"].astype(str).to_numpy(),
                                       "particle_type": c["particle_type"].to_numpy(),
                                       "x": c["x"].to_numpy(float), "y": c["y"].to_numpy(float),
                                       "z": c["z"].to_numpy(float),
                                       "p": calibrate(relative_scores(c, relative), config.calibration.get(det, {})),
                                       "det": k}))
    if not parts:
        return empty_candidates()
    df = pd.concat(parts, ignore_index=True)
    exp_codes, exp_names = pd.factorize(df["experiment"], sort=True)
    cls = pd.Categorical(df["particle_type"], categories=list(NAMES)).codes.astype(np.int64)
    group = exp_codes.astype(np.int64) * len(NAMES) + cls
    reach = (np.array([p.radius_A for p in PARTICLES]) * MATCH_RADIUS_FRACTION)[cls]
    x, y, z, p, det = (df[c].to_numpy() for c in ("x", "y", "z", "p", "det"))
    pts = _scaled_points(x, y, z, group, reach, reach)
    indptr, nbr, _ = _neighbour_lists(pts)
    label, _ = _greedy_seeds(np.argsort(-p, kind="stable"), indptr, nbr)
    n_det, n_lab = len(config.detectors), int(label.max()) + 1
    best = np.zeros((n_lab, n_det))
    np.maximum.at(best, (label, det), p)
    # the best member of each detector in each group gives the group's position
    is_best = p == best[label, det]
    w = np.where(is_best, p, 0.0)
    wsum = np.bincount(label, weights=w, minlength=n_lab)
    safe = np.where(wsum > 0, wsum, 1.0)
    cx, cy, cz = (np.bincount(label, weights=w * v, minlength=n_lab) / safe for v in (x, y, z))
    lab_group = np.zeros(n_lab, dtype=np.int64)
    lab_group[label] = group
    lab_cls, lab_exp = lab_group % len(NAMES), lab_group // len(NAMES)
    class_w = np.stack([config.class_weights(n) for n in NAMES])[lab_cls]  # (groups, detectors)
    if config.fusion == "logit":
        score = 1.0 / (1.0 + np.exp(-(_logit(best) * class_w).sum(axis=1)))  # none there: 0, clipped to 1e-4
    elif config.fusion == "noisy_or":  # none there: a factor 1, no penalty
        score = 1.0 - np.exp((np.log1p(-np.clip(best, 0.0, 1 - 1e-6)) * class_w).sum(axis=1))
    else:
        score = (best * class_w).sum(axis=1)
    out = pd.DataFrame({
        "experiment": np.asarray(exp_names, dtype=object)[lab_exp],
        "particle_type": np.asarray(NAMES, dtype=object)[lab_cls],
        "x": cx, "y": cy, "z": cz, "score": score,
        "n_slices": (best > 0).sum(axis=1).astype(np.int64),
        "share": class_share(np.column_stack([cx, cy, cz]), lab_exp, lab_cls, score),
    })
    out = out.sort_values(["experiment", "particle_type", "score"], ascending=[True, True, False], kind="stable")
    return out.reset_index(drop=True)


def select_ensemble(candidates: Mapping[str, pd.DataFrame], config: EnsembleConfig) -> pd.DataFrame:
    """Merged candidates after the ensemble's thresholds and NMS."""
    return select(combine(candidates, config), config.aggregate)
