"""The aggregation of the best public Kaggle YOLO notebook, re-implemented for comparison only.

What that notebook does with the per-slice boxes of one run, per class:

* link two detections when ``|dz| <= 35 A`` and their x-y distance ``<= 25 A``;
* clusters = connected components of those links (union-find: single linkage);
* centre = plain mean of the members, score = ``sum(conf) / n ** 0.32``
  (``n`` = number of member detections);
* keep a cluster when ``n >= min_size`` and ``score >= threshold`` with the
  notebook's hand-set values below; beta-amylase is never output.

Nothing in ``czii_kaggle`` imports this module.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from czii_kaggle.aggregate import CANDIDATE_COLUMNS, empty_candidates
from czii_kaggle.particles import NAMES

LINK_DZ_A = 35.0
LINK_XY_A = 25.0
SIZE_EXPONENT = 0.32
#: particle type -> (score threshold, minimum cluster size); ``None``: never output.
THRESHOLDS: dict[str, tuple[float, int] | None] = {
    "apo-ferritin": (0.40, 3),
    "beta-amylase": None,
    "beta-galactosidase": (0.15, 2),
    "ribosome": (0.45, 8),
    "thyroglobulin": (0.15, 3),
    "virus-like-particle": (0.45, 7),
}


def baseline_aggregate(detections: pd.DataFrame, apply_thresholds: bool = True) -> pd.DataFrame:
    """Public-notebook aggregation of raw detections (``experiment, z, x, y, confidence, class_id``, Angstrom).

    Returns the columns of :func:`czii_kaggle.aggregate.aggregate`; ``n_slices``
    holds the number of member detections (the notebook's cluster size).
    """
    if detections.empty:
        return empty_candidates()
    exp_codes, exp_names = pd.factorize(detections["experiment"], sort=True)
    cls = detections["class_id"].to_numpy().astype(np.int64)
    group = exp_codes.astype(np.int64) * len(NAMES) + cls
    x, y, z = (detections[c].to_numpy(float) for c in ("x", "y", "z"))
    conf = detections["confidence"].to_numpy(float)
    # Scale z so the (|dz| <= 35, xy <= 25) cylinder lies inside a ball, then filter exactly.
    gap = 10.0 * (LINK_XY_A + LINK_DZ_A)
    pts = np.column_stack([x, y, z * LINK_XY_A / LINK_DZ_A, group * gap])
    pairs = cKDTree(pts).query_pairs(LINK_XY_A * np.sqrt(2.0), output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    ok = (np.abs(z[i] - z[j]) <= LINK_DZ_A) & (np.hypot(x[i] - x[j], y[i] - y[j]) <= LINK_XY_A)
    i, j = i[ok], j[ok]
    n = len(pts)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    n_lab, label = connected_components(graph, directed=False)
    size = np.bincount(label, minlength=n_lab)
    centre = [np.bincount(label, weights=v, minlength=n_lab) / size for v in (x, y, z)]
    score = np.bincount(label, weights=conf, minlength=n_lab) / size**SIZE_EXPONENT
    lab_group = np.zeros(n_lab, dtype=np.int64)
    lab_group[label] = group
    out = pd.DataFrame(
        {
            "experiment": np.asarray(exp_names, dtype=object)[lab_group // len(NAMES)],
            "particle_type": np.asarray(NAMES, dtype=object)[lab_group % len(NAMES)],
            "x": centre[0],
            "y": centre[1],
            "z": centre[2],
            "score": score,
            "n_slices": size.astype(np.int64),
            "share": 1.0,  # the notebook knows no class share: nothing is ever dropped for it
        },
        columns=list(CANDIDATE_COLUMNS),
    )
    if apply_thresholds:
        out = baseline_select(out)
    return out.sort_values(["experiment", "particle_type", "score"], ascending=[True, True, False]).reset_index(drop=True)


def baseline_select(candidates: pd.DataFrame) -> pd.DataFrame:
    """The notebook's fixed per-class threshold and minimum cluster size."""
    thr = {n: (v if v is not None else (np.inf, np.iinfo(np.int64).max)) for n, v in THRESHOLDS.items()}
    t = candidates["particle_type"].map(lambda n: thr[n][0]).to_numpy(float)
    m = candidates["particle_type"].map(lambda n: thr[n][1]).to_numpy(float)
    keep = (candidates["score"].to_numpy(float) >= t) & (candidates["n_slices"].to_numpy() >= m)
    return candidates.loc[keep].reset_index(drop=True)
