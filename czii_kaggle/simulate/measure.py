"""Measures of a simulated tomogram: matched-filter detection SNR per type."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .. import frames
from ..particles import BY_NAME, NAMES
from .layouts import _picks_vox
from .shapes import _eval_blobs, particle_blobs, random_rotations


def detection_snr(
    volume: np.ndarray,
    picks: pd.DataFrame,
    voxel_size_A: float,
    n_background: int = 300,
    seed: int = 0,
) -> pd.DataFrame:
    """Matched-filter detection SNR of each particle type at its true positions.

    The template of a type is its density averaged over 8 random orientations
    (nearly isotropic), made zero-mean inside a sphere of 1.6 radius and negated
    (particles are dark). The statistic of a point is the template's correlation
    with the volume around it. SNR = (mean statistic at the true points - mean at
    random background points at least 1.5 radius from any pick) / std at those
    background points (clutter there counts as noise). Points outside the volume
    are moved to its nearest voxel.

    Parameters
    ----------
    volume : ndarray (z, y, x)
        A tomogram.
    picks : DataFrame
        ``particle_type, x, y, z`` (Angstrom).
    voxel_size_A : float
        Voxel size in Angstrom.
    n_background : int
        Number of random background points per type.
    seed : int
        Seed of the background points and template orientations.

    Returns
    -------
    DataFrame indexed by particle type
        ``n`` (picks), ``snr`` (float), for the types present.
    """
    frames.validate(picks, frames.PICKS)
    rng = np.random.default_rng(seed)
    shape = np.asarray(volume.shape)
    all_vox = _picks_vox(picks, voxel_size_A)
    tree = cKDTree(all_vox) if len(all_vox) else None
    pad = int(math.ceil(1.6 * max(p.radius_A for p in BY_NAME.values()) / voxel_size_A))
    padded = np.pad(volume, pad, mode="edge")  # edge voxels repeat outside the volume
    rows = {}
    for name in NAMES:
        sel = picks["particle_type"].to_numpy() == name
        if not sel.any():
            continue
        r_vox = BY_NAME[name].radius_A / voxel_size_A
        h = int(math.ceil(1.6 * r_vox))
        axis_A = np.arange(-h, h + 1) * voxel_size_A
        blobs = particle_blobs(name)
        template = sum(
            _eval_blobs(blobs, rot, axis_A, axis_A, axis_A, 0.4 * voxel_size_A) for rot in random_rotations(8, rng)
        ).astype(np.float64)
        g = np.arange(-h, h + 1)
        inside = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) <= (1.6 * r_vox) ** 2
        w = np.where(inside, template - template[inside].mean(), 0.0)
        w = (-w / np.abs(w).sum()).astype(volume.dtype).reshape(-1)
        bg = rng.uniform(0, shape - 1, (4 * n_background, 3))
        if tree is not None:
            d, _ = tree.query(bg, k=1)
            bg = bg[d >= 1.5 * r_vox]
        bg = bg[:n_background]

        def statistic(centres: np.ndarray) -> np.ndarray:
            lo = np.clip(np.rint(centres).astype(int), 0, shape - 1) + pad - h
            n = 2 * h + 1
            return np.array([np.dot(padded[z : z + n, y : y + n, x : x + n].ravel(), w) for z, y, x in lo], float)

        s_true, s_bg = statistic(all_vox[sel]), statistic(bg)
        snr = (s_true.mean() - s_bg.mean()) / max(float(s_bg.std()), 1e-12) if len(s_bg) > 2 else float("nan")
        rows[name] = {"n": int(sel.sum()), "snr": float(snr)}
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- dataset
