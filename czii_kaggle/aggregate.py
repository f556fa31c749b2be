"""Per-slice YOLO boxes -> 3D particles.

The 2.5D detector sees one z slice at a time, so one particle shows up as a
short column of boxes on neighbouring slices (more for a large particle, fewer
for a small one, with gaps where the detector missed it). This module turns
those boxes into one 3D point per particle:

1. **Cluster** the detections of one class in one run. Distances are measured
   in a per-class ellipsoid: ``xy_fraction * radius`` across and
   ``z_fraction * radius`` along z (all in Angstrom, radii from
   :mod:`czii_kaggle.particles`). Each detection gets a vote density (the
   confidence of its neighbours inside its ellipsoid, weighted ``1 - d**2``
   with ``d`` the scaled distance, so a column peaks at its middle). Then a
   greedy, peak-seeded assignment: the densest unassigned detection seeds a
   particle and takes every unassigned detection inside *its own* ellipsoid;
   repeat. A cluster can therefore never reach further than one ellipsoid from
   its seed, so it cannot chain two neighbouring particles together the way
   single-linkage connected components do. (Measured against alternatives in
   ``benchmarks/bench_postprocess.py``-style runs on the real layouts: quick-shift
   (link to the densest neighbour) scored the same on average but merged some
   ribosome neighbours; merging fragments or a mean-shift step before the
   assignment gained < 0.003 and was dropped.)
2. **Centre** = confidence-weighted mean of the cluster's box centres.
   **Score** = sum over the distinct slices of the cluster of the best
   confidence on that slice, divided by the number of slices the particle's
   full diameter spans (``1 + 2 * radius / slice_step``), clipped to 1. It is
   the confidence-weighted fraction of the particle's diameter the detector
   saw: one confident box is a low score for a ribosome (31 slices) and a
   higher one for an apo-ferritin (13 slices); a second box on the same slice
   adds nothing. ``n_slices`` = number of distinct slices.
   **Share** = ``score / (score + s_other)``, with ``s_other`` the best
   score of a candidate of *another* class within the metric's match radius
   (``0.5 * radius`` of the candidate's class): 1 when no other class claims
   the spot, about 0.5 when another class scores as high there. On simulated
   runs most beta-galactosidase false positives sit on thyroglobulin particles
   with a share under 0.4, while true ones mostly score above 0.75.
3. **Select** (:func:`select`): per class keep candidates with
   ``n_slices >= min_support``, ``score >= conf_threshold`` and
   ``share >= min_share``, then a 3D non-maximum suppression: of two kept
   candidates closer than ``nms_fraction * radius`` only the higher score stays.
   With a floor (``min_keep``) a run also keeps its best ``min_keep`` candidates
   of the type whatever their score.
   Every class's ``share`` is computed from all candidates before any
   threshold, so the classes can still be tuned one by one.

:func:`aggregate` with ``apply_thresholds=False`` stops after step 2 so that
:mod:`czii_kaggle.tune` can choose the thresholds; ``select(aggregate(d,
apply_thresholds=False))`` equals ``aggregate(d)``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.spatial import cKDTree

from . import frames, outputs
from .errors import CziiInputError
from .frames import CANDIDATE_COLUMNS, DETECTION_COLUMNS  # noqa: F401  (re-exported)
from .particles import MATCH_RADIUS_FRACTION, NAMES, PARTICLES, Particle

#: Experiments lie this far apart (Angstrom) along a 4th k-d tree axis, so that one tree
#: serves all of them and no two points of different experiments are ever near.
EXPERIMENT_GAP_A = 1.0e6

# Scaled gap between two (run, class) groups in the joint k-d tree: larger than
# any linking / NMS radius (1 in scaled units), so groups never meet.
_GROUP_GAP = 4.0


@dataclass(frozen=True)
class ClassParams:
    """Aggregation options for one particle type.

    Attributes
    ----------
    xy_fraction : float
        x-y half-axis of the linking ellipsoid, as a fraction of the radius.
        0.7 beat 0.5 and 0.3 on synthetic detections with a few voxels of
        centre jitter (small particles suffer most from a tight value).
    z_fraction : float
        z half-axis of the linking ellipsoid, as a fraction of the radius. It
        must cover the slices the detector fires on above and below the centre
        (1.2: a detector that fires out to the full radius still gives one
        cluster). With 0.7 / 1.2 the closest real same-type pairs (bar an
        apo-ferritin pair 30 A apart, which one point matches anyway) are more
        than 1.5 ellipsoid units apart.
    min_support : int
        Minimum number of distinct slices a particle needs.
    conf_threshold : float
        Minimum particle ``score`` (0..1, see the module docstring).
    nms_fraction : float
        3D NMS distance as a fraction of the radius. The closest real pairs of
        one type are about 1.5 radii apart, so keep it below ~1.4.
    min_share : float
        Minimum ``share`` (0..1, see the module docstring): drop a candidate that
        another class outscores at the same spot by more than ``(1 - min_share) /
        min_share`` times. 0 (off) unless tuning finds a value that scores higher.
    min_keep : int
        A floor per run: the best ``min_keep`` candidates of the type that pass
        ``min_support`` and ``min_share`` (after NMS) are kept whatever their score.
        For tomograms whose scores run lower than the validation runs' (a look the
        model never saw), where a fixed threshold loses recall. 0: off. The shipped
        bundles set it to the mean picks per run of the real training runs
        (recipe ``tuning.count_floor``, ``czii-kaggle set-floor``).
    ref_rank : int
        Relative scores (:func:`relative_scores`): before any threshold, each
        candidate's ``score`` becomes ``s / (s + ref)``, with ``ref`` the score of
        the run's ``ref_rank``-th best candidate of the type (its worst when it
        has fewer), so ``conf_threshold`` is a score relative to the run's own
        best, 0.5 at the ``ref_rank``-th. A tomogram of a look the model never
        saw shifts all its scores; this asks the same of every run. 0: off
        (absolute scores). The shipped bundles set it to the count floor's
        per-run counts (recipe ``tuning.relative_scores``).
    """

    xy_fraction: float = 0.7
    z_fraction: float = 1.2
    min_support: int = 2
    conf_threshold: float = 0.05
    nms_fraction: float = 1.0
    min_share: float = 0.0
    min_keep: int = 0
    ref_rank: int = 0

    def __post_init__(self) -> None:
        for name in ("xy_fraction", "z_fraction", "nms_fraction"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if int(self.min_support) != self.min_support or self.min_support < 1:
            raise ValueError(f"min_support must be an integer >= 1, not {self.min_support!r}")
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"min_share must be in 0..1, not {self.min_share!r}")
        if int(self.min_keep) != self.min_keep or self.min_keep < 0:
            raise ValueError(f"min_keep must be an integer >= 0, not {self.min_keep!r}")
        if int(self.ref_rank) != self.ref_rank or self.ref_rank < 0:
            raise ValueError(f"ref_rank must be an integer >= 0, not {self.ref_rank!r}")


def default_class_params(particle: Particle) -> ClassParams:
    """Starting options for one type: geometry as radius fractions, thresholds by difficulty.

    Hard types (beta-galactosidase, thyroglobulin, beta-amylase) get a lower
    threshold: the metric's beta = 4 rewards recall. :func:`czii_kaggle.tune.tune_thresholds`
    replaces the thresholds with ones measured on validation runs.
    """
    return ClassParams(conf_threshold=0.08 if particle.difficulty == "easy" else 0.04)


def _default_params() -> dict[str, ClassParams]:
    return {p.name: default_class_params(p) for p in PARTICLES}


@dataclass(frozen=True)
class AggregateConfig:
    """Options of :func:`aggregate` / :func:`select`: one :class:`ClassParams` per particle type.

    Save it beside the trained weights (:func:`save_config`) so inference reuses
    the thresholds chosen on validation runs.
    """

    params: Mapping[str, ClassParams] = field(default_factory=_default_params)

    def __post_init__(self) -> None:
        missing = [n for n in NAMES if n not in self.params]
        unknown = [n for n in self.params if n not in NAMES]
        if missing or unknown:
            raise ValueError(
                f"AggregateConfig needs exactly the six particle types; missing {missing}, unknown {unknown}"
            )

    def __getitem__(self, name: str) -> ClassParams:
        return self.params[name]

    def with_params(self, name: str, **changes) -> AggregateConfig:
        """A copy with ``changes`` (ClassParams fields) applied to type ``name``."""
        new = dict(self.params)
        new[name] = replace(self.params[name], **changes)
        return AggregateConfig(new)

    def with_floor(self, min_keep: Mapping[str, int]) -> AggregateConfig:
        """A copy with each type's ``min_keep`` from ``min_keep`` (types absent keep theirs; 0: off)."""
        return self._with_each("min_keep", min_keep, "count floor")

    def with_ref_rank(self, ref_rank: Mapping[str, int]) -> AggregateConfig:
        """A copy with each type's ``ref_rank`` from ``ref_rank`` (types absent keep theirs; 0: off)."""
        return self._with_each("ref_rank", ref_rank, "relative scores")

    def _with_each(self, name: str, values: Mapping[str, int], what: str) -> AggregateConfig:
        unknown = [n for n in values if n not in NAMES]
        if unknown:
            raise ValueError(f"unknown particle type(s) {unknown} in {what}")
        return AggregateConfig({**self.params, **{n: replace(self.params[n], **{name: int(k)}) for n, k in values.items()}})

    def to_dict(self) -> dict:
        """JSON-ready ``{"params": {name: {field: value}}}``."""
        return {"params": {n: asdict(self.params[n]) for n in NAMES}}

    @classmethod
    def from_dict(cls, d: Mapping) -> AggregateConfig:
        """Inverse of :meth:`to_dict`; types absent from ``d`` keep their defaults."""
        params = _default_params()
        for name, values in dict(d.get("params", {})).items():
            if name not in params:
                raise ValueError(f"unknown particle type {name!r} in aggregate config")
            params[name] = ClassParams(**values)
        return cls(params)


def save_config(config: AggregateConfig, path: str | Path) -> Path:
    """Write ``config`` as JSON to ``path``; returns the path."""
    return outputs.write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")


def load_config(path: str | Path) -> AggregateConfig:
    """Read a config written by :func:`save_config`; :class:`CziiInputError` when malformed."""
    path = Path(path)
    try:
        return AggregateConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CziiInputError(path, "aggregate config file not found") from None
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as e:
        raise CziiInputError(path, f"not a valid aggregate config: {e}") from None


def empty_candidates() -> pd.DataFrame:
    """An empty frame with :data:`CANDIDATE_COLUMNS`."""
    return frames.empty(frames.CANDIDATES)


def infer_slice_step_A(z_A: np.ndarray) -> float | None:
    """The slice spacing (Angstrom): the most common gap between consecutive distinct ``z_A`` values.

    Returns ``None`` when fewer than two distinct slices are present. Pass the
    voxel size explicitly where it is known; this is for detections alone.
    """
    u = np.unique(np.round(np.asarray(z_A, dtype=float), 3))
    gaps = np.round(np.diff(u), 2)
    gaps = gaps[gaps > 0]
    if not gaps.size:
        return None
    values, counts = np.unique(gaps, return_counts=True)
    step = float(values[np.argmax(counts)])  # the smallest of the most common gaps
    # Refine over the whole span, (max - min) / number of steps, when it is a whole number of steps.
    n_steps = (u[-1] - u[0]) / step
    if abs(n_steps - round(n_steps)) < 0.05:
        step = float((u[-1] - u[0]) / round(n_steps))
    return step


def _neighbour_lists(points: np.ndarray, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric neighbour lists (incl. self) of ``points`` (n, k) within ``radius``.

    Returns ``(indptr, indices, dist)``: CSR rows, neighbours of point ``i`` are
    ``indices[indptr[i]:indptr[i + 1]]`` at distances ``dist[...]``.
    """
    n = len(points)
    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)  # faster to build, same answers
    pairs = tree.query_pairs(radius, output_type="ndarray")
    i = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(n)])
    j = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(n)])
    # COO -> CSR groups the pairs by row in linear time (no argsort of the pair list).
    csr = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    indptr, indices = csr.indptr, csr.indices
    row = np.repeat(np.arange(n), np.diff(indptr))
    dist = np.sqrt(((points[row] - points[indices]) ** 2).sum(axis=1))
    return indptr, indices, dist


def _greedy_seeds(
    order: np.ndarray, indptr: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy peak-seeded assignment over a neighbour graph, without a Python loop over points.

    The result equals the sequential rule "walk ``order``; an unassigned point
    becomes a seed and takes all its unassigned neighbours": the seeds are the
    lexicographically-first maximal independent set in ``order``, found in
    parallel rounds (each round, every remaining point that outranks all its
    remaining neighbours is a seed; seeds and their neighbours leave), and every
    other point joins its best-ranked neighbouring seed. A handful of rounds
    suffice on detection columns (3 on 100,000 synthetic detections).

    Parameters
    ----------
    order : ndarray (n,) int
        Point indices, best first.
    indptr, indices : ndarray
        CSR neighbour lists (each point lists itself), from :func:`_neighbour_lists`.

    Returns
    -------
    label : ndarray (n,) int64
        Group of every point, 0..n_groups-1, numbered in seed order.
    is_seed : ndarray (n,) bool
    """
    n = len(order)
    prio = np.empty(n, dtype=np.int64)
    prio[order] = np.arange(n, 0, -1)  # higher = earlier in ``order``
    row = np.repeat(np.arange(n), np.diff(indptr))
    r, c = row, indices
    alive = np.ones(n, dtype=bool)
    is_seed = np.zeros(n, dtype=bool)
    while alive.any():
        live = alive[r] & alive[c]
        r, c = r[live], c[live]
        best = np.zeros(n, dtype=np.int64)
        np.maximum.at(best, r, prio[c])
        new = alive & (best == prio)
        is_seed |= new
        taken = np.zeros(n, dtype=bool)
        taken[c[new[r]]] = True
        alive &= ~taken
    # Every point joins the best-ranked seed among its neighbours (itself if a seed).
    to_seed = is_seed[indices]
    best_seed = np.zeros(n, dtype=np.int64)
    np.maximum.at(best_seed, row[to_seed], prio[indices[to_seed]])
    seed_rank = n - best_seed  # position of the seed in ``order``
    _, label = np.unique(seed_rank, return_inverse=True)
    return label.astype(np.int64), is_seed


def _scaled_points(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, group: np.ndarray, xy_scale: np.ndarray, z_scale: np.ndarray
) -> np.ndarray:
    """(n, 3) points in which the linking / NMS ellipsoid of every point is the unit ball.

    Coordinates (Angstrom) are divided by per-point scales (Angstrom); each
    (run, class) ``group`` is then shifted along x past the previous one, so one
    k-d tree serves all groups and no two groups are ever within distance 1.
    """
    sx = x / xy_scale
    shift = (sx.max() - sx.min() + _GROUP_GAP) if len(sx) else 0.0
    return np.column_stack([sx + group * shift, y / xy_scale, z / z_scale])


def aggregate(
    detections: pd.DataFrame,
    config: AggregateConfig | None = None,
    apply_thresholds: bool = True,
    slice_step_A: float | None = None,
) -> pd.DataFrame:
    """Merge per-slice detections into 3D particles.

    Parameters
    ----------
    detections : DataFrame
        Columns ``experiment, z, x, y, w, h, confidence, class_id``; ``z, x, y``
        are box centres in Angstrom (``z = slice_index * voxel_size_A``),
        ``confidence`` in 0..1, ``class_id`` the index in ``particles.PARTICLES``.
    config : AggregateConfig, optional
        Per-class options; defaults to ``AggregateConfig()``.
    apply_thresholds : bool
        When False, return every candidate with its score (no min support, no
        threshold, no NMS) for :mod:`czii_kaggle.tune`; then :func:`select`.
    slice_step_A : float, optional
        Slice spacing in Angstrom (the tomogram's voxel size). Inferred from
        the detections' z when None (:func:`infer_slice_step_A`); when it
        cannot be inferred (all detections on one slice) every candidate has
        one slice and its score is its best confidence.

    Returns
    -------
    DataFrame
        ``experiment, particle_type, x, y, z, score, n_slices, share`` (Angstrom;
        ``score`` and ``share`` float in 0..1; ``n_slices`` int), sorted by
        experiment, particle type and decreasing score.
    """
    config = AggregateConfig() if config is None else config
    frames.validate(detections, frames.DETECTIONS)
    if detections.empty:
        return empty_candidates()

    exp_codes, exp_names = pd.factorize(detections["experiment"], sort=True)
    cls = detections["class_id"].to_numpy().astype(np.int64)
    x = detections["x"].to_numpy(dtype=float)
    y = detections["y"].to_numpy(dtype=float)
    z = detections["z"].to_numpy(dtype=float)
    conf = detections["confidence"].to_numpy(dtype=float)
    n_cls = len(PARTICLES)
    group = exp_codes.astype(np.int64) * n_cls + cls

    radius = np.array([p.radius_A for p in PARTICLES])
    xy_frac = np.array([config[p.name].xy_fraction for p in PARTICLES])
    z_frac = np.array([config[p.name].z_fraction for p in PARTICLES])
    pts = _scaled_points(x, y, z, group, (radius * xy_frac)[cls], (radius * z_frac)[cls])

    indptr, nbr, dist = _neighbour_lists(pts)
    row = np.repeat(np.arange(len(pts)), np.diff(indptr))
    density = np.bincount(row, weights=conf[nbr] * (1.0 - dist**2), minlength=len(pts))
    # Densest first; ties broken by confidence, then input order (stable).
    order = np.lexsort((-conf, -density))
    label, _ = _greedy_seeds(order, indptr, nbr)

    # Per cluster: confidence-weighted centre; score from the best box of each distinct slice.
    n_lab = int(label.max()) + 1
    wsum = np.bincount(label, weights=conf, minlength=n_lab)
    safe = np.where(wsum > 0, wsum, 1.0)
    cnt = np.bincount(label, minlength=n_lab).astype(float)
    cx, cy, cz = (
        np.where(wsum > 0, np.bincount(label, weights=conf * v, minlength=n_lab) / safe,
                 np.bincount(label, weights=v, minlength=n_lab) / cnt)
        for v in (x, y, z)
    )
    step = slice_step_A if slice_step_A is not None else infer_slice_step_A(z)
    slice_key = pd.DataFrame({"label": label, "z": np.round(z, 3), "conf": conf})
    per_slice = slice_key.groupby(["label", "z"], sort=False)["conf"].max()
    lab_of_slice = per_slice.index.get_level_values(0).to_numpy()
    conf_sum = np.bincount(lab_of_slice, weights=per_slice.to_numpy(), minlength=n_lab)
    n_slices = np.bincount(lab_of_slice, minlength=n_lab)

    lab_group = np.zeros(n_lab, dtype=np.int64)
    lab_group[label] = group  # all members of a cluster share its (run, class) group
    lab_cls = lab_group % n_cls
    if step is None:
        expected = np.ones(n_lab)
    else:
        expected = 1.0 + 2.0 * radius[lab_cls] / step
    score = np.clip(conf_sum / expected, 0.0, 1.0)

    lab_exp = lab_group // n_cls
    out = pd.DataFrame(
        {
            "experiment": np.asarray(exp_names, dtype=object)[lab_exp],
            "particle_type": np.asarray(NAMES, dtype=object)[lab_cls],
            "x": cx,
            "y": cy,
            "z": cz,
            "score": score,
            "n_slices": n_slices.astype(np.int64),
            "share": class_share(np.column_stack([cx, cy, cz]), lab_exp, lab_cls, score),
        }
    )
    out = out.sort_values(["experiment", "particle_type", "score"], ascending=[True, True, False], kind="stable")
    out = out.reset_index(drop=True)
    return select(out, config) if apply_thresholds else out


def class_share(xyz_A: np.ndarray, experiment: np.ndarray, class_id: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Each candidate's share of the score at its spot: ``score / (score + s_other)``.

    ``s_other`` is the best score among candidates of another class in the same
    experiment within ``MATCH_RADIUS_FRACTION * radius`` of this candidate's class
    (0 when none). A candidate with score 0 and no rival has share 1.

    Parameters
    ----------
    xyz_A : ndarray (n, 3)
        Candidate centres, Angstrom.
    experiment, class_id : ndarray (n,) int
        Experiment code and index in :data:`particles.PARTICLES`.
    score : ndarray (n,) float
    """
    n = len(score)
    rival = np.zeros(n)
    if n:
        reach_A = np.array([p.radius_A for p in PARTICLES])[class_id] * MATCH_RADIUS_FRACTION
        pts = np.column_stack([xyz_A, experiment * EXPERIMENT_GAP_A])
        pairs = cKDTree(pts).query_pairs(reach_A.max(), output_type="ndarray")
        i, j = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
        d = np.sqrt(((pts[i] - pts[j]) ** 2).sum(axis=1))
        ok = (class_id[i] != class_id[j]) & (d <= reach_A[i])
        np.maximum.at(rival, i[ok], score[j[ok]])
    total = score + rival
    return np.divide(score, total, out=np.ones(n), where=total > 0)


def nms_3d(candidates: pd.DataFrame, config: AggregateConfig | None = None) -> pd.DataFrame:
    """3D non-maximum suppression per (experiment, particle type).

    Of two candidates closer than ``nms_fraction * radius`` (Angstrom) only the
    higher ``score`` stays (greedy, best first). Returns the kept rows, sorted as
    :func:`aggregate` sorts.
    """
    config = AggregateConfig() if config is None else config
    if candidates.empty:
        return candidates.reset_index(drop=True)
    exp_codes, _ = pd.factorize(candidates["experiment"], sort=True)
    frames.validate(candidates, frames.CANDIDATES)
    types = candidates["particle_type"].to_numpy()
    cls = pd.Categorical(types, categories=list(NAMES)).codes.astype(np.int64)
    nms_A = np.array([p.radius_A * config[p.name].nms_fraction for p in PARTICLES])[cls]
    group = exp_codes.astype(np.int64) * len(PARTICLES) + cls
    x, y, z = (candidates[c].to_numpy(dtype=float) for c in ("x", "y", "z"))
    pts = _scaled_points(x, y, z, group, nms_A, nms_A)
    # "closer than": shrink the radius a hair so exactly-at-distance pairs survive.
    indptr, nbr, _ = _neighbour_lists(pts, radius=1.0 - 1e-9)
    order = np.argsort(-candidates["score"].to_numpy(dtype=float), kind="stable")
    _, keep = _greedy_seeds(order, indptr, nbr)
    out = candidates.loc[keep]
    out = out.sort_values(["experiment", "particle_type", "score"], ascending=[True, True, False], kind="stable")
    return out.reset_index(drop=True)


def _per_row(config: AggregateConfig, name: str, types: np.ndarray) -> np.ndarray:
    """The :class:`ClassParams` field ``name`` of each row's particle type."""
    return pd.Series({n: getattr(config[n], name) for n in NAMES}).reindex(types).to_numpy()


def relative_scores(candidates: pd.DataFrame, config: AggregateConfig) -> pd.DataFrame:
    """``candidates`` with the ``score`` of each type whose ``ref_rank`` is set made relative to its run's:
    ``s / (s + ref)``, ``ref`` the score of the run's ``ref_rank``-th best candidate of the type (its
    lowest when it has fewer; at least 1e-6). Monotone within a run, so ranks, NMS and the floor are
    unchanged; other types and an all-off config return ``candidates`` itself."""
    ks = np.array([config[n].ref_rank for n in NAMES])
    if candidates.empty or not ks.any():
        return candidates
    cls = pd.Categorical(candidates["particle_type"], categories=list(NAMES)).codes
    k = np.where(cls >= 0, ks[cls], 0)
    score = candidates["score"].to_numpy(dtype=float)
    group = pd.factorize(candidates["experiment"].astype(str))[0].astype(np.int64) * (len(NAMES) + 1) + cls + 1
    order = np.lexsort((-score, group))  # best first within each (run, type)
    g, s = group[order], score[order]
    start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    size = np.diff(np.r_[start, len(g)])
    n_groups = np.repeat(np.arange(len(start)), size)
    ref_pos = start + np.minimum(k[order][start], size) - 1
    ref = np.maximum(s[ref_pos], 1e-6)[n_groups]
    new = score.copy()
    on = k[order] > 0
    new[order[on]] = s[on] / (s[on] + ref[on])
    return candidates.assign(score=new)


def select(candidates: pd.DataFrame, config: AggregateConfig | None = None) -> pd.DataFrame:
    """Apply per-class ``min_support`` and ``conf_threshold``, then :func:`nms_3d`.

    ``candidates`` is :func:`aggregate`'s output with ``apply_thresholds=False``. Types with a
    ``ref_rank`` are thresholded (and returned) on their :func:`relative_scores`.
    """
    config = AggregateConfig() if config is None else config
    if candidates.empty:
        return candidates.reset_index(drop=True)
    frames.validate(candidates, frames.CANDIDATES, need=("n_slices",))
    candidates = relative_scores(candidates, config)
    types = candidates["particle_type"].to_numpy()
    ok = (candidates["n_slices"].to_numpy() >= _per_row(config, "min_support", types))
    ok &= candidate_share(candidates) >= _per_row(config, "min_share", types)
    if not any(config[n].min_keep for n in NAMES):
        ok &= candidates["score"].to_numpy() >= _per_row(config, "conf_threshold", types)
        return nms_3d(candidates.loc[ok], config)
    # Greedy NMS keeps a candidate unless a higher-scored one suppresses it, so the survivors
    # above a threshold are the same whether the threshold comes before the NMS or after it.
    # nms_3d sorts each (run, type) best first: a row's rank there says whether the floor keeps it.
    kept = nms_3d(candidates.loc[ok], config)
    kept_types = kept["particle_type"].to_numpy()
    rank = kept.groupby(["experiment", "particle_type"], sort=False).cumcount().to_numpy()
    keep = (kept["score"].to_numpy() >= _per_row(config, "conf_threshold", kept_types))
    keep |= rank < _per_row(config, "min_keep", kept_types)
    return kept.loc[keep].reset_index(drop=True)


def candidate_share(candidates: pd.DataFrame) -> np.ndarray:
    """The ``share`` column of candidates (1 where absent: frames made before it existed)."""
    if "share" in candidates.columns:
        return candidates["share"].to_numpy(dtype=float)
    return np.ones(len(candidates))
