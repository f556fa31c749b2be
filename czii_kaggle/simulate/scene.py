"""The sample's density: targets, clutter proteins, gold, membranes, ice contamination (protein ~ 1)."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ..particles import BY_NAME, NAMES
from .layouts import _picks_vox
from .shapes import _ELLIPSOID, _SHELL, TYPE_CONTRAST, Blob, _scaled_blobs, _splat, particle_blobs, random_rotations


def render_targets(
    volume: np.ndarray,
    picks: pd.DataFrame,
    voxel_size_A: float,
    rng: np.random.Generator,
    jitter: float = 0.1,
    shapes: dict[str, tuple[Blob, ...]] | None = None,
    size_jitter: float | None = None,
    contrasts: dict[str, float] | None = None,
) -> None:
    """Add every pick's particle (random orientation, its type's contrast) into ``volume``.

    Parameters
    ----------
    volume : ndarray float32 (z, y, x)
        Density, modified in place; overlapping particles add.
    picks : DataFrame
        ``particle_type, x, y, z`` (Angstrom).
    voxel_size_A : float
        Voxel size in Angstrom.
    rng : numpy Generator
        Orientations, size and contrast jitter.
    jitter : float
        Relative contrast spread (uniform +-), half of it for size unless ``size_jitter``.
    shapes : dict, optional
        Type -> blobs (a particle model, :func:`~czii_kaggle.simulate.shapes.model_blobs`);
        the classic shapes by default.
    size_jitter : float, optional
        Relative size spread (uniform +-); ``0.5 * jitter`` by default.
    contrasts : dict, optional
        Type -> contrast; :data:`~czii_kaggle.simulate.shapes.TYPE_CONTRAST` by default.
    """
    n = len(picks)
    rots = random_rotations(n, rng)
    size = 1.0 + (0.5 * jitter if size_jitter is None else size_jitter) * rng.uniform(-1, 1, n)
    gain = 1.0 + jitter * rng.uniform(-1, 1, n)
    centres = _picks_vox(picks, voxel_size_A)
    edge_A = 0.4 * voxel_size_A
    shapes = {name: particle_blobs(name) for name in NAMES} if shapes is None else shapes
    contrasts = TYPE_CONTRAST if contrasts is None else contrasts
    for i, name in enumerate(picks["particle_type"].to_numpy()):
        blobs = _scaled_blobs(shapes[name], size[i])
        _splat(volume, blobs, rots[i], centres[i], contrasts[name] * gain[i], voxel_size_A, edge_A)


#: Outer radius range (Angstrom) of the classic clutter proteins, and of a random look's (3-30 nm across).
CLASSIC_CLUTTER_RADIUS_A = (40.0, 160.0)
WIDE_CLUTTER_RADIUS_A = (15.0, 150.0)


def _clutter_blobs(
    rng: np.random.Generator, radius_A: tuple[float, float] = CLASSIC_CLUTTER_RADIUS_A
) -> tuple[tuple[Blob, ...], float]:
    """A random non-target protein: 1-4 ellipsoids (sometimes a small cage), outer radius in ``radius_A``.

    Returns the blobs and the outer radius (Angstrom).
    """
    if rng.random() < 0.06:
        r = rng.uniform(max(45.0, radius_A[0]), max(90.0, radius_A[0]))
        return (Blob(_SHELL, (0.0, 0.0, 0.0), (r, rng.uniform(0.5, 0.75) * r, 0.0), 1.0),), r
    r = rng.uniform(*radius_A)
    k = int(rng.integers(1, 5))
    centres = rng.normal(0.0, 0.3 * r, (k, 3)) if k > 1 else np.zeros((1, 3))
    axes = rng.uniform(0.3, 0.7, (k, 3)) * r
    values = rng.uniform(0.6, 1.0, k)
    values[0] = 1.0
    blobs = tuple(Blob(_ELLIPSOID, tuple(c), tuple(a), float(v)) for c, a, v in zip(centres, axes, values))
    return blobs, r


def _slab_vox(picks: pd.DataFrame, shape_vox: tuple[int, int, int], voxel_size_A: float) -> tuple[float, float]:
    """The z range (voxels) the sample occupies: the picks' z span + 100 A, else the whole depth."""
    if len(picks) >= 2:
        z = picks["z"].to_numpy(float) / voxel_size_A
        pad = 100.0 / voxel_size_A
        return max(0.0, z.min() - pad), min(shape_vox[0] - 1.0, z.max() + pad)
    return 0.0, shape_vox[0] - 1.0


def render_clutter(
    volume: np.ndarray,
    picks: pd.DataFrame,
    voxel_size_A: float,
    rng: np.random.Generator,
    n_blobs: int,
    z_range_vox: tuple[float, float],
    radius_A: tuple[float, float] = CLASSIC_CLUTTER_RADIUS_A,
) -> None:
    """Add ``n_blobs`` random non-target proteins (outer radius in ``radius_A``) into ``volume``.

    Blobs sit anywhere in the ice slab ``z_range_vox`` but not on top of a target
    (centres at least ``0.7 (r + r_target)`` apart). Contrast 0.3-0.9.
    """
    if n_blobs <= 0:
        return
    ext = np.asarray(volume.shape, float) - 1
    lo = np.array([z_range_vox[0], 0.0, 0.0])
    hi = np.array([z_range_vox[1], ext[1], ext[2]])
    made = []  # drawn blob by blob: the first n blobs do not depend on n_blobs
    for _ in range(n_blobs):
        blobs, r = _clutter_blobs(rng, radius_A)
        made.append((blobs, r, rng.uniform(lo, hi), random_rotations(1, rng)[0], rng.uniform(0.3, 0.9)))
    radii = np.array([m[1] for m in made])
    centres = np.array([m[2] for m in made])
    keep = np.ones(n_blobs, bool)
    tgt = _picks_vox(picks, voxel_size_A)
    for name in NAMES:
        pts = tgt[picks["particle_type"].to_numpy() == name]
        if len(pts):
            dist, _ = cKDTree(pts).query(centres, k=1)
            keep &= dist * voxel_size_A >= 0.7 * (radii + BY_NAME[name].radius_A)
    edge_A = 0.4 * voxel_size_A
    for i in np.flatnonzero(keep):
        blobs, _, centre, rot, contrast = made[i]
        _splat(volume, blobs, rot, centre, contrast, voxel_size_A, edge_A)


def render_gold(
    volume: np.ndarray,
    voxel_size_A: float,
    rng: np.random.Generator,
    n_beads: int,
    z_range_vox: tuple[float, float],
    density: float = 8.0,
) -> None:
    """Add ``n_beads`` gold fiducials: solid spheres of radius 50-100 A, ``density`` x protein."""
    ext = np.asarray(volume.shape, float) - 1
    for _ in range(n_beads):
        r = rng.uniform(50.0, 100.0)
        c = rng.uniform([z_range_vox[0], 0, 0], [z_range_vox[1], ext[1], ext[2]])
        blobs = (Blob(_ELLIPSOID, (0.0, 0.0, 0.0), (r, r, r), 1.0),)
        _splat(volume, blobs, np.eye(3), c, density, voxel_size_A, 0.4 * voxel_size_A)


def render_membranes(
    volume: np.ndarray,
    voxel_size_A: float,
    rng: np.random.Generator,
    n_membranes: int,
    density: float = 0.8,
    block_vox: int = 32,
) -> None:
    """Add ``n_membranes`` curved lipid bilayers crossing the volume.

    Each is a patch of a sphere of radius 1500-6000 A through a random point with a
    random normal: two head-group leaflets 36 A apart (Gaussian, sigma 7 A) of
    ``density``. Only the blocks of ``block_vox`` voxels the surface crosses are evaluated.
    """
    vs = voxel_size_A
    half_gap, sigma = 18.0, 7.0
    band_A = half_gap + 4 * sigma
    shape = np.asarray(volume.shape)
    starts = [np.arange(0, n, block_vox) for n in shape]
    blo = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, 3)
    bhi = np.minimum(blo + block_vox, shape) - 1
    for _ in range(n_membranes):
        radius_A = rng.uniform(1500.0, 6000.0)
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        through = rng.uniform(0, shape - 1)
        centre = through + normal * radius_A / vs  # voxels (z, y, x)
        near = np.maximum(np.maximum(blo - centre, centre - bhi), 0.0)
        far = np.maximum(np.abs(centre - blo), np.abs(centre - bhi))
        dmin = np.linalg.norm(near, axis=1) * vs
        dmax = np.linalg.norm(far, axis=1) * vs
        hit = (dmin <= radius_A + band_A) & (dmax >= radius_A - band_A)
        strength = np.float32(density * rng.uniform(0.6, 1.2))
        for lo, hi in zip(blo[hit], bhi[hit] + 1):
            dz = ((np.arange(lo[0], hi[0]) - centre[0]) * vs).astype(np.float32)[:, None, None]
            dy = ((np.arange(lo[1], hi[1]) - centre[1]) * vs).astype(np.float32)[None, :, None]
            dx = ((np.arange(lo[2], hi[2]) - centre[2]) * vs).astype(np.float32)[None, None, :]
            d = np.sqrt(dz * dz + dy * dy + dx * dx)
            d -= np.float32(radius_A)
            np.abs(d, out=d)
            d -= np.float32(half_gap)
            d *= d
            d *= np.float32(-0.5 / sigma**2)
            np.exp(d, out=d)
            d *= strength
            volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += d



def render_ice(
    volume: np.ndarray,
    voxel_size_A: float,
    rng: np.random.Generator,
    n_blobs: int,
    z_range_vox: tuple[float, float],
) -> None:
    """Add ``n_blobs`` ice contaminations: large flattened ellipsoids (200-600 A across, 1-2.5 x protein)
    near the top or bottom surface of the ice slab ``z_range_vox`` (crystalline ice on the grid)."""
    ext = np.asarray(volume.shape, float) - 1
    for _ in range(n_blobs):
        r = rng.uniform(100.0, 300.0)
        z = z_range_vox[0] if rng.random() < 0.5 else z_range_vox[1]
        c = np.array([z + rng.normal(0.0, 3.0), rng.uniform(0, ext[1]), rng.uniform(0, ext[2])])
        blobs = (Blob(_ELLIPSOID, (0.0, 0.0, 0.0), (r, r * rng.uniform(0.6, 1.0), r * rng.uniform(0.25, 0.5)), 1.0),)
        rot = random_rotations(1, rng)[0]
        _splat(volume, blobs, rot, c, rng.uniform(1.0, 2.5), voxel_size_A, 2.0 * voxel_size_A)


def _poisson_quantile(u: float, mean: float) -> int:
    """The ``u`` quantile of a Poisson law of ``mean`` (monotone in ``mean`` for a fixed ``u``)."""
    if mean > 500.0:  # normal approximation (exp(-mean) would underflow)
        return max(0, round(mean + math.sqrt(mean) * NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))))
    k, p = 0, math.exp(-mean)
    cdf = p
    while cdf < u and k < 100000:
        k += 1
        p *= mean / k
        cdf += p
    return k
