"""Particle layouts: where the particles sit (random like a real run, or the real runs' picks)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .. import frames, layout
from ..errors import CziiInputError
from ..particles import BY_NAME, NAMES
from .config import FULL_SHAPE_VOX, REAL_MEAN_COUNTS


def _place_non_overlapping(
    lo_A: np.ndarray,
    hi_A: np.ndarray,
    n: int,
    radius_A: float,
    others: list[tuple[np.ndarray, float]],
    rng: np.random.Generator,
    overlap: float,
    max_rounds: int = 40,
) -> np.ndarray:
    """Up to ``n`` uniform points in the box ``[lo_A, hi_A]`` (x, y, z Angstrom).

    A candidate is rejected when closer than ``overlap * (radius_A + r)`` to a point of
    ``others`` (a list of ``(points (m, 3), r)``) or to another accepted point.
    Vectorised: each round draws a batch, rejects it against k-d trees, and drops the
    later point of every too-close pair inside the batch.
    """
    placed = np.empty((0, 3))
    trees = [(cKDTree(p), r) for p, r in others if len(p)]
    for _ in range(max_rounds):
        need = n - len(placed)
        if need <= 0:
            break
        cand = rng.uniform(lo_A, hi_A, size=(2 * need + 8, 3))
        ok = np.ones(len(cand), bool)
        for tree, r in trees + ([(cKDTree(placed), radius_A)] if len(placed) else []):
            dist, _ = tree.query(cand, k=1)
            ok &= dist >= overlap * (radius_A + r)
        cand = cand[ok]
        pairs = cKDTree(cand).query_pairs(overlap * 2 * radius_A, output_type="ndarray")
        if len(pairs):
            keep = np.ones(len(cand), bool)
            keep[pairs.max(axis=1)] = False
            cand = cand[keep]
        placed = np.concatenate([placed, cand[:need]])
    return placed


def _ice_slab_A(depth_A: float, rng: np.random.Generator) -> tuple[float, float]:
    """A random ice slab ``(z_lo, z_hi)`` in Angstrom, 800-1500 A thick like the real runs."""
    thickness = min(depth_A, rng.uniform(800.0, 1500.0))
    z0 = rng.uniform(0.0, depth_A - thickness)
    return z0, z0 + thickness


def count_scales(count_scale: float | Mapping[str, float]) -> dict[str, float]:
    """``{name: factor}`` for every type from one factor or a partial mapping (missing types: 1)."""
    if isinstance(count_scale, Mapping):
        unknown = sorted(set(count_scale) - set(NAMES))
        if unknown:
            raise ValueError(f"count_scale names unknown particle types {unknown}; known types: {', '.join(NAMES)}")
        scale = {name: float(count_scale.get(name, 1.0)) for name in NAMES}
    else:
        scale = dict.fromkeys(NAMES, float(count_scale))
    bad = {n: f for n, f in scale.items() if not f >= 0}
    if bad:
        raise ValueError(f"count_scale factors must be >= 0, not {bad}")
    return scale


def random_layout(
    shape_vox: tuple[int, int, int],
    voxel_size_A: float,
    rng: np.random.Generator,
    run: str = "sim",
    count_scale: float | Mapping[str, float] = 1.0,
    overlap: float = 0.9,
) -> pd.DataFrame:
    """Random particle picks like a real run.

    Parameters
    ----------
    shape_vox : (int, int, int)
        Tomogram shape ``(z, y, x)`` in voxels.
    voxel_size_A : float
        Voxel size in Angstrom.
    rng : numpy Generator
        Source of randomness.
    run : str
        Experiment name of the picks.
    count_scale : float or mapping
        Multiplies the mean counts: one factor for every type, or ``{name: factor}``
        (types left out keep 1), e.g. to show a detector more of the rare hard types.
    overlap : float
        Centres closer than ``overlap * (r1 + r2)`` are rejected.

    Returns
    -------
    DataFrame
        ``experiment, particle_type, x, y, z`` (Angstrom). Counts are Poisson with
        mean :data:`REAL_MEAN_COUNTS` x (volume / 184 x 630 x 630) x ``count_scale``
        (fewer when the volume cannot hold them apart). Centres lie at least a
        radius inside the volume in x, y and inside a random ice slab in z.
    """
    shape = np.asarray(shape_vox, float)
    vol_frac = float(np.prod(shape) / np.prod(FULL_SHAPE_VOX))
    ext_A = (shape - 1) * voxel_size_A  # z, y, x
    z_lo, z_hi = _ice_slab_A(ext_A[0], rng)
    scale = count_scales(count_scale)
    counts = {name: rng.poisson(REAL_MEAN_COUNTS[name] * vol_frac * scale[name]) for name in NAMES}
    placed: list[tuple[np.ndarray, float]] = []
    rows = []
    for name in sorted(NAMES, key=lambda n: -BY_NAME[n].radius_A):
        r = BY_NAME[name].radius_A
        lo = np.array([r, r, max(z_lo + 0.5 * r, r)])
        hi = np.array([ext_A[2] - r, ext_A[1] - r, min(z_hi - 0.5 * r, ext_A[0] - r)])
        too_small = lo > hi  # the volume is thinner than the particle: centre it there
        mid = 0.5 * (lo + hi)
        lo, hi = np.where(too_small, mid, lo), np.where(too_small, mid, hi)
        pts = _place_non_overlapping(lo, hi, counts[name], r, placed, rng, overlap)
        placed.append((pts, r))
        rows.append(pd.DataFrame({"particle_type": name, "x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]}))
    out = pd.concat(rows, ignore_index=True)
    out.insert(0, "experiment", run)
    out = out.sort_values("particle_type", kind="stable").reset_index(drop=True)
    return out[frames.PICKS_COLUMNS].astype({"experiment": str, "particle_type": str})


def real_layouts(real_root: str | Path) -> dict[str, pd.DataFrame]:
    """The ground-truth picks of every real run under ``{real_root}/train/overlay``.

    Parameters
    ----------
    real_root : str or Path
        A Kaggle-layout root with picks (the competition's data root, or the real picks kept
        beside a development checkout: the tests and notebooks find ``../shared/czii-real``).

    Returns
    -------
    dict
        Run name -> picks DataFrame (``experiment, particle_type, x, y, z``, Angstrom).
    """
    from ..picks import read_run_picks

    if real_root is None:
        raise CziiInputError(None, "real layouts need real_root: a Kaggle-layout folder with train/overlay picks")
    runs = layout.list_pick_runs(real_root)
    if not runs:
        raise CziiInputError(layout.overlay_runs_dir(real_root), "no run with a Picks folder")
    return {run: read_run_picks(real_root, run) for run in runs}


def crop_layout(picks: pd.DataFrame, shape_vox: tuple[int, int, int], voxel_size_A: float) -> pd.DataFrame:
    """The picks whose centres lie inside a ``shape_vox`` volume (from voxel 0 to n - 1)."""
    frames.validate(picks, frames.PICKS)
    ext_A = (np.asarray(shape_vox, float) - 1) * voxel_size_A
    xyz = picks[["z", "y", "x"]].to_numpy(float)
    inside = np.all((xyz >= 0) & (xyz <= ext_A), axis=1)
    return picks.loc[inside].reset_index(drop=True)



def _picks_vox(picks: pd.DataFrame, voxel_size_A: float) -> np.ndarray:
    """Pick centres as (n, 3) float ``(z, y, x)`` voxel coordinates."""
    return picks[["z", "y", "x"]].to_numpy(np.float64) / voxel_size_A
