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
        w = (-w / np.abs(w).sum()).astype(volume.dtype)
        bg = _background(rng, shape, tree, r_vox, n_background)
        s_true, s_bg = _statistic(padded, pad, all_vox[sel], w), _statistic(padded, pad, bg, w)
        rows[name] = {"n": int(sel.sum()), "snr": _snr(s_true, s_bg)}
    return pd.DataFrame.from_dict(rows, orient="index")


def _background(rng: np.random.Generator, shape: np.ndarray, tree: cKDTree | None, r_vox: float, n: int) -> np.ndarray:
    """Up to ``n`` random points (voxels) of a volume of ``shape`` at least 1.5 ``r_vox`` from every pick of
    ``tree`` (None: no picks)."""
    bg = rng.uniform(0, shape - 1, (4 * n, 3))
    if tree is not None:
        d, _ = tree.query(bg, k=1)
        bg = bg[d >= 1.5 * r_vox]
    return bg[:n]


def _statistic(padded: np.ndarray, pad: int, centres: np.ndarray, template: np.ndarray) -> np.ndarray:
    """The correlation of the cubic ``template`` (side ``2h + 1``) with the volume at ``centres`` (voxels,
    outside points moved to the nearest voxel); ``padded`` is the volume edge-padded by ``pad`` >= h."""
    n = template.shape[0]
    shape = np.array(padded.shape) - 2 * pad
    lo = np.clip(np.rint(centres).astype(int), 0, shape - 1) + pad - n // 2
    w = template.ravel()
    return np.array([np.dot(padded[z : z + n, y : y + n, x : x + n].ravel(), w) for z, y, x in lo], float)


def _snr(signal: np.ndarray, background: np.ndarray) -> float:
    """(mean signal - mean background) / background std; NaN with fewer than 3 background points."""
    if len(background) <= 2:
        return float("nan")
    return float((np.mean(signal) - background.mean()) / max(float(background.std()), 1e-12))


def class_average_snr(
    volumes: list[np.ndarray],
    picks: list[pd.DataFrame],
    voxel_size_A: float,
    n_background: int = 300,
    seed: int = 0,
) -> pd.DataFrame:
    """Detection SNR per type of the matched filter of the data's own class average: how much signal
    a look leaves, measured with no model of the particle and no detector.

    The runs are split in two halves (even and odd positions in the lists). A type's template is the
    mean of the subvolumes around its particles in one half (a rotation-averaged class average that
    carries the look's own CTF, missing wedge and filter), made zero-mean inside a sphere of 1.2 radii
    and of unit norm; its correlation with the other half's runs is the statistic, and the halves are
    then swapped. SNR = (mean statistic at the particles - mean at random background points at least
    1.5 radii from any pick) / std at those points, over both directions pooled; each volume is first
    scaled to zero mean and unit std. Particles too near the border for a whole subvolume are left
    out of the averages; every particle is measured (outside points moved to the nearest voxel).
    A non-linear detector can beat this linear one; clutter counts as noise.

    Parameters
    ----------
    volumes : list of ndarray (z, y, x)
        Tomograms of one look, at least 2, of the same voxel size.
    picks : list of DataFrame
        ``particle_type, x, y, z`` (Angstrom) of each volume, in the same order.
    voxel_size_A : float
        Voxel size in Angstrom.
    n_background : int
        Background points per volume and type.
    seed : int
        Seed of the background points.

    Returns
    -------
    DataFrame indexed by particle type
        ``n`` (particles measured), ``snr``, for the types with particles in both halves.
    """
    if len(volumes) < 2 or len(volumes) != len(picks):
        raise ValueError(f"need at least 2 volumes and one picks table each, not {len(volumes)} and {len(picks)}")
    rng = np.random.default_rng(seed)
    vols = [((v - v.mean()) / max(float(v.std()), 1e-12)).astype(np.float32) for v in volumes]
    for p in picks:
        frames.validate(p, frames.PICKS)
    vox = [_picks_vox(p, voxel_size_A) for p in picks]
    types = [p["particle_type"].to_numpy() for p in picks]
    trees = [cKDTree(v) if len(v) else None for v in vox]
    pad = int(math.ceil(1.2 * max(p.radius_A for p in BY_NAME.values()) / voxel_size_A))
    padded = [np.pad(v, pad, mode="edge") for v in vols]  # edge voxels repeat outside the volume
    halves = (list(range(0, len(vols), 2)), list(range(1, len(vols), 2)))
    rows = {}
    for name in NAMES:
        r_vox = BY_NAME[name].radius_A / voxel_size_A
        h = int(math.ceil(1.2 * r_vox))
        g = np.arange(-h, h + 1)
        inside = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) <= h**2
        fg, bg = [], []
        for learn, test in (halves, halves[::-1]):
            cubes = [_cube(vols[i], c, h) for i in learn for c in np.rint(vox[i][types[i] == name]).astype(int)]
            cubes = [c for c in cubes if c is not None]
            n_test = sum(int((types[i] == name).sum()) for i in test)
            if not cubes or not n_test:
                break
            t = np.mean(cubes, axis=0)
            t = np.where(inside, t - t[inside].mean(), 0.0)
            t = (t / max(float(np.linalg.norm(t)), 1e-12)).astype(np.float32)
            for i in test:
                shape = np.array(vols[i].shape)
                fg.extend(_statistic(padded[i], pad, vox[i][types[i] == name], t))
                bg.extend(_statistic(padded[i], pad, _background(rng, shape, trees[i], r_vox, n_background), t))
        else:
            rows[name] = {"n": len(fg), "snr": _snr(np.asarray(fg), np.asarray(bg))}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["n", "snr"])


def _cube(volume: np.ndarray, centre: np.ndarray, h: int) -> np.ndarray | None:
    """The ``(2h+1)^3`` subvolume around ``centre`` (z, y, x voxels), or None where it leaves the volume."""
    z, y, x = centre
    if all(h <= c < s - h for c, s in zip((z, y, x), volume.shape)):
        return volume[z - h : z + h + 1, y - h : y + h + 1, x - h : x + h + 1]
    return None

# --------------------------------------------------------------------------- dataset
