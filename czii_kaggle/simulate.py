"""Simulated cryo-ET tomograms and picks in the exact Kaggle layout.

No real tomogram voxels are available, so this module makes the training and
test data. It follows the physics that makes the real problem hard, one
function per effect:

1. **layout** (:func:`random_layout`, :func:`real_layouts`): particle centres in
   Angstrom, counts around the real runs' means, inside an ice slab.
2. **targets** (:func:`render_particle`, :func:`render_targets`): each of the six
   types has its own 3D shape at its real radius, randomly rotated, as a union of
   soft-edged ellipsoids / spherical shells (density, protein ~ 1).
3. **clutter** (:func:`render_clutter`, :func:`render_gold`,
   :func:`render_membranes`): non-target proteins of similar sizes, dense gold
   beads, curved lipid bilayers.
4. **microscope** (:func:`apply_microscope`): one FFT pair applies the missing
   wedge (tilt axis y, beam z), a phase-flipped CTF with a B-factor envelope,
   wedge-shaped reconstruction noise, a little white noise and a light Gaussian
   denoise (Kaggle's tomograms are the ``denoised`` ones). Dense = dark.
5. **gradient and scale** (:func:`add_gradient`): a slow polynomial intensity
   trend, then zero mean and unit standard deviation (the real ``denoised``
   arrays are float32 of arbitrary scale; models normalise by percentiles).

Everything is float32 / complex64; one 184 x 630 x 630 tomogram takes well under
30 s and about 1 GiB (see ``benchmarks/results/simulate.md``).

Units: Angstrom (``_A``) for positions, radii and lengths; voxels (``_vox``) for
array indices; arrays are ``(z, y, x)``; voxel index ``i`` <-> ``i * voxel_size_A``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Mapping, NamedTuple

import numpy as np
import pandas as pd
import scipy.fft
from scipy.spatial import cKDTree
from scipy.special import expit

from . import layout
from .errors import CziiInputError
from .particles import BY_NAME, NAMES

#: Named difficulties; any float in [0, 1] is accepted too.
DIFFICULTY: dict[str, float] = {"easy": 0.2, "medium": 0.5, "hard": 0.85}

#: Mean pick counts per type over the five real training runs with picks
#: (``../shared/czii-real/README.md``), for a full 184 x 630 x 630 tomogram.
REAL_MEAN_COUNTS: dict[str, float] = {
    "apo-ferritin": 55.0,
    "beta-amylase": 11.4,
    "beta-galactosidase": 13.0,
    "ribosome": 42.2,
    "thyroglobulin": 31.4,
    "virus-like-particle": 14.2,
}

#: Std (density units, protein ~ 1) of the sample's structural density noise at difficulty 0
#: (it doubles at difficulty 1); see :class:`DifficultyKnobs`.
STRUCTURE_SIGMA: float = 0.3

#: Kaggle's level-0 voxel size (Angstrom) in ``denoised.zarr/.zattrs``: the simulator's default.
KAGGLE_VOXEL_SIZE_A: float = 10.012444537618887

#: Full Kaggle tomogram shape ``(z, y, x)``: counts scale with the volume relative to it.
FULL_SHAPE_VOX: tuple[int, int, int] = (184, 630, 630)

PICKS_COLUMNS = ["experiment", "particle_type", "x", "y", "z"]
SOLUTION_COLUMNS = ["id", "experiment", "particle_type", "x", "y", "z"]

_ELLIPSOID, _SHELL = 0, 1
_ELECTRON_VOLTAGE_V = 300e3
_SPHERICAL_ABERRATION_A = 2.7e7  # Cs = 2.7 mm, Titan Krios


def difficulty_value(difficulty: float | str) -> float:
    """A difficulty as a float in [0, 1]; accepts the names of :data:`DIFFICULTY` and numbers as text."""
    if isinstance(difficulty, str) and difficulty in DIFFICULTY:
        return DIFFICULTY[difficulty]
    try:
        d = float(difficulty)  # a number, or a number written as text ("0.3")
    except (TypeError, ValueError):
        raise ValueError(
            f"difficulty must be a number in [0, 1] or one of {', '.join(DIFFICULTY)}, not {difficulty!r}"
        ) from None
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], not {difficulty!r}")
    return d


@dataclass(frozen=True)
class SimConfig:
    """Options of one simulated tomogram.

    Attributes
    ----------
    shape_vox : (int, int, int)
        Tomogram shape ``(z, y, x)`` in voxels (Kaggle: 184 x 630 x 630).
    voxel_size_A : float
        Voxel size in Angstrom (Kaggle's level 0: 10.012444...).
    difficulty : float or str
        0 (clean) .. 1 (very hard), or a name of :data:`DIFFICULTY`. Raises the
        noise, the clutter, the membranes, the blur (B-factor) and the gradient.
    tilt_range_deg : float
        Tilt series range +-degrees about the y axis; beyond it is the missing wedge.
    clutter : bool
        Add non-target proteins, gold beads and membranes.
    defocus_um : (float, float)
        Range of the defocus (micrometre, underfocus) drawn once per tomogram.
    bfactor_A2 : float
        B-factor (Angstrom^2) of the CTF envelope ``exp(-B k^2 / 4)`` at difficulty 0;
        it grows by ``600 * difficulty``.
    amplitude_contrast : float
        Amplitude-contrast fraction of the CTF.
    denoise_sigma_vox : float
        Sigma (voxels) of the final Gaussian low-pass standing for Kaggle's denoising.
    noise_scale : float
        Multiplies the difficulty's noise standard deviation (1: as calibrated).
    particle_jitter : float
        Per-particle relative spread of size (x 0.5) and contrast, uniform +-.
    """

    shape_vox: tuple[int, int, int] = FULL_SHAPE_VOX
    voxel_size_A: float = KAGGLE_VOXEL_SIZE_A
    difficulty: float | str = 0.5
    tilt_range_deg: float = 60.0
    clutter: bool = True
    defocus_um: tuple[float, float] = (2.0, 4.0)
    bfactor_A2: float = 500.0
    amplitude_contrast: float = 0.07
    denoise_sigma_vox: float = 1.0
    noise_scale: float = 1.0
    particle_jitter: float = 0.1

    def __post_init__(self):
        if len(self.shape_vox) != 3 or any(int(n) < 8 for n in self.shape_vox):
            raise ValueError(f"shape_vox must be 3 sizes >= 8, not {self.shape_vox!r}")
        object.__setattr__(self, "shape_vox", tuple(int(n) for n in self.shape_vox))
        difficulty_value(self.difficulty)
        if not 0.0 < self.tilt_range_deg <= 90.0:
            raise ValueError(f"tilt_range_deg must be in (0, 90], not {self.tilt_range_deg!r}")
        if self.voxel_size_A <= 0:
            raise ValueError(f"voxel_size_A must be > 0, not {self.voxel_size_A!r}")
        lo, hi = self.defocus_um
        if not 0.0 < lo <= hi:
            raise ValueError(f"defocus_um must be a range 0 < lo <= hi, not {self.defocus_um!r}")

    @property
    def difficulty_float(self) -> float:
        return difficulty_value(self.difficulty)


@dataclass(frozen=True)
class DifficultyKnobs:
    """What a difficulty sets (see :func:`difficulty_knobs`).

    Attributes
    ----------
    noise_sigma : float
        Std (density units, protein ~ 1) of the white noise added before the
        microscope filter; it then carries the missing wedge.
    post_noise_fraction : float
        Std of the white noise added after the wedge, as a fraction of ``noise_sigma``.
    structure_sigma : float
        Std (density units) of white density fluctuations added to the sample before
        the CTF (solvent and ice structure, unresolved small proteins): imaged like the
        particles, they give the background its blobby texture at particle scale.
    extra_bfactor_A2 : float
        Added to :attr:`SimConfig.bfactor_A2` (Angstrom^2).
    clutter_per_full : float
        Mean number of non-target protein blobs in a full-size tomogram.
    membranes_per_full : float
        Mean number of membranes in a full-size tomogram.
    gold_per_full : float
        Mean number of gold beads in a full-size tomogram.
    gradient_fraction : float
        Amplitude of the slow intensity trend as a fraction of the volume's std.
    """

    noise_sigma: float
    post_noise_fraction: float
    structure_sigma: float
    extra_bfactor_A2: float
    clutter_per_full: float
    membranes_per_full: float
    gold_per_full: float
    gradient_fraction: float


def difficulty_knobs(difficulty: float | str, noise_scale: float = 1.0) -> DifficultyKnobs:
    """The noise, blur and clutter of a difficulty (float in [0, 1] or a name).

    Noise grows geometrically (x 10 in std from 0 to 1), structural noise x 2; clutter, membranes,
    blur and gradient grow linearly.
    """
    d = difficulty_value(difficulty)
    return DifficultyKnobs(
        noise_sigma=noise_scale * 0.1 * 10.0**d,
        post_noise_fraction=0.12,
        structure_sigma=noise_scale * STRUCTURE_SIGMA * (1.0 + d),
        extra_bfactor_A2=600.0 * d,
        clutter_per_full=60.0 + 340.0 * d,
        membranes_per_full=0.3 + 1.7 * d,
        gold_per_full=1.0 + 2.0 * d,
        gradient_fraction=0.1 + 0.3 * d,
    )


# --------------------------------------------------------------------------- shapes


class Blob(NamedTuple):
    """One soft-edged component of a particle, in the particle's own frame (Angstrom).

    ``kind`` 0: ellipsoid with semi-axes ``axes_A`` (x, y, z); ``kind`` 1: spherical
    shell with outer radius ``axes_A[0]`` and inner radius ``axes_A[1]``.
    ``value`` is its density relative to the particle's contrast.
    """

    kind: int
    centre_A: tuple[float, float, float]
    axes_A: tuple[float, float, float]
    value: float


#: Relative density contrast of each type (protein in ice ~ 1; dense = darker in
#: the tomogram). The copick map thresholds rank VLP highest; beta-galactosidase,
#: thyroglobulin (a loose, glycosylated dimer) and beta-amylase (small) are weak.
TYPE_CONTRAST: dict[str, float] = {
    "apo-ferritin": 1.0,
    "beta-amylase": 0.65,
    "beta-galactosidase": 0.85,
    "ribosome": 1.05,
    "thyroglobulin": 0.8,
    "virus-like-particle": 1.4,
}


def particle_blobs(particle_type: str, radius_A: float | None = None) -> tuple[Blob, ...]:
    """The 3D shape of a particle type as soft blobs, scaled to its radius.

    Parameters
    ----------
    particle_type : str
        One of :data:`czii_kaggle.particles.NAMES`.
    radius_A : float, optional
        Radius in Angstrom; the type's ``radius_A`` from the particle table by default.

    Returns
    -------
    tuple of Blob
        Components in the particle frame (Angstrom, x y z), centred near the origin.
    """
    if particle_type not in BY_NAME:
        raise ValueError(f"unknown particle type {particle_type!r}; known types: {', '.join(NAMES)}")
    r = BY_NAME[particle_type].radius_A if radius_A is None else float(radius_A)

    def ell(cx, cy, cz, ax, ay, az, value=1.0):
        return Blob(_ELLIPSOID, (cx * r, cy * r, cz * r), (ax * r, ay * r, az * r), value)

    if particle_type == "apo-ferritin":
        # 24-mer cage: 120 A outer, ~80 A inner diameter.
        return (Blob(_SHELL, (0.0, 0.0, 0.0), (r, 0.65 * r, 0.0), 1.0),)
    if particle_type == "virus-like-particle":
        # Thin capsid (~25 A) with a faint packaged content.
        return (
            Blob(_SHELL, (0.0, 0.0, 0.0), (r, r - 25.0, 0.0), 1.0),
            ell(0, 0, 0, 0.72, 0.72, 0.72, 0.15),
        )
    if particle_type == "ribosome":
        # Large subunit + small subunit (~2.4 : 1 volume), a cleft between them.
        return (
            ell(0.0, 0.0, -0.2, 0.70, 0.62, 0.52),
            ell(0.08, 0.0, 0.47, 0.62, 0.45, 0.33),
        )
    if particle_type == "beta-galactosidase":
        # D2 tetramer: four lobes at (+-a, +-b, +-c) with the sign pattern of D2,
        # a channel through the middle.
        a, b, c = 0.48, 0.46, 0.12
        return tuple(
            ell(sx * a, sy * b, sz * c, 0.40, 0.38, 0.45)
            for sx, sy, sz in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1))
        )
    if particle_type == "thyroglobulin":
        # Elongated dimer: two long lobes side by side, length ~2 r.
        return (
            ell(0.0, 0.28, 0.0, 0.90, 0.29, 0.33),
            ell(0.05, -0.28, 0.03, 0.86, 0.29, 0.33),
        )
    # beta-amylase: small compact blob, slightly irregular.
    return (
        ell(0.0, 0.0, 0.0, 0.76, 0.68, 0.62),
        ell(0.3, 0.15, 0.1, 0.45, 0.42, 0.40),
    )


def _blobs_extent_A(blobs: tuple[Blob, ...]) -> float:
    """Radius (Angstrom) of a sphere about the origin that holds every blob."""
    ext = 0.0
    for b in blobs:
        reach = b.axes_A[0] if b.kind == _SHELL else max(b.axes_A)
        ext = max(ext, float(np.linalg.norm(b.centre_A)) + reach)
    return ext


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniformly random rotation matrices, shape (n, 3, 3), float64.

    ``R @ u`` maps particle-frame vectors (x, y, z) to the tomogram frame.
    """
    u1, u2, u3 = rng.random((3, n))
    a, b = np.sqrt(1.0 - u1), np.sqrt(u1)
    x, y = a * np.sin(2 * np.pi * u2), a * np.cos(2 * np.pi * u2)
    z, w = b * np.sin(2 * np.pi * u3), b * np.cos(2 * np.pi * u3)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def _eval_blobs(
    blobs: tuple[Blob, ...],
    rotation: np.ndarray,
    dz_A: np.ndarray,
    dy_A: np.ndarray,
    dx_A: np.ndarray,
    edge_A: float,
) -> np.ndarray:
    """Density of ``blobs`` (union by max) on a grid of offsets from the particle centre.

    ``dz_A, dy_A, dx_A`` are 1D offsets (Angstrom) of the grid's z, y, x planes;
    returns float32 of shape (len(dz_A), len(dy_A), len(dx_A)), values in [0, max value].
    """
    dz = np.asarray(dz_A, np.float32)[:, None, None]
    dy = np.asarray(dy_A, np.float32)[None, :, None]
    dx = np.asarray(dx_A, np.float32)[None, None, :]
    rot = np.asarray(rotation, np.float32)
    # particle frame u = R^T d, d = (dx, dy, dz)
    u = [dx * rot[0, j] + dy * rot[1, j] + dz * rot[2, j] for j in range(3)]
    out = np.zeros(np.broadcast_shapes(dz.shape, dy.shape, dx.shape), np.float32)
    inv_edge = np.float32(1.0 / edge_A)
    for b in blobs:
        c = b.centre_A
        if b.kind == _SHELL:
            rho = np.sqrt((u[0] - c[0]) ** 2 + (u[1] - c[1]) ** 2 + (u[2] - c[2]) ** 2)
            val = expit((b.axes_A[0] - rho) * inv_edge)
            val -= expit((b.axes_A[1] - rho) * inv_edge)
        else:
            a = b.axes_A
            q = ((u[0] - c[0]) / a[0]) ** 2 + ((u[1] - c[1]) / a[1]) ** 2 + ((u[2] - c[2]) / a[2]) ** 2
            np.sqrt(q, out=q)
            # (1 - rho) * mean semi-axis ~ signed distance to the surface (Angstrom)
            val = expit((1.0 - q) * np.float32(np.mean(a)) * inv_edge)
        if b.value != 1.0:
            val *= np.float32(b.value)
        np.maximum(out, val, out=out)
    return out


def render_particle(
    particle_type: str,
    rotation: np.ndarray | None = None,
    voxel_size_A: float = KAGGLE_VOXEL_SIZE_A,
    offset_vox: tuple[float, float, float] = (0.0, 0.0, 0.0),
    edge_A: float | None = None,
) -> np.ndarray:
    """One noise-free particle as a density cube (dense = positive).

    Parameters
    ----------
    particle_type : str
        One of the six types.
    rotation : ndarray (3, 3), optional
        Particle-to-tomogram rotation (x, y, z); identity when omitted.
    voxel_size_A : float
        Voxel size in Angstrom.
    offset_vox : (float, float, float)
        Sub-voxel offset ``(z, y, x)`` of the particle centre from the cube's centre voxel.
    edge_A : float, optional
        Width (Angstrom) of the soft edge; ``0.4 * voxel_size_A`` by default.

    Returns
    -------
    ndarray, float32, shape (n, n, n)
        ``(z, y, x)`` density (protein ~ 1, before the type's contrast); the
        particle centre is at voxel ``(n // 2) + offset_vox``.
    """
    blobs = particle_blobs(particle_type)
    rotation = np.eye(3) if rotation is None else np.asarray(rotation, float)
    edge_A = 0.4 * voxel_size_A if edge_A is None else float(edge_A)
    half = int(math.ceil((_blobs_extent_A(blobs) + 3 * edge_A) / voxel_size_A)) + 1
    idx = np.arange(-half, half + 1, dtype=np.float64)
    oz, oy, ox = offset_vox
    return _eval_blobs(
        blobs,
        rotation,
        (idx - oz) * voxel_size_A,
        (idx - oy) * voxel_size_A,
        (idx - ox) * voxel_size_A,
        edge_A,
    )


def _splat(
    volume: np.ndarray,
    blobs: tuple[Blob, ...],
    rotation: np.ndarray,
    centre_vox: np.ndarray,
    contrast: float,
    voxel_size_A: float,
    edge_A: float,
) -> None:
    """Add ``contrast * blobs`` at ``centre_vox`` (z, y, x, sub-voxel) into ``volume`` in place."""
    half = (_blobs_extent_A(blobs) + 3 * edge_A) / voxel_size_A
    lo = np.maximum(np.floor(centre_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + half).astype(int) + 1, volume.shape)
    if np.any(hi <= lo):
        return
    axes = [(np.arange(lo[i], hi[i]) - centre_vox[i]) * voxel_size_A for i in range(3)]
    box = _eval_blobs(blobs, rotation, axes[0], axes[1], axes[2], edge_A)
    box *= np.float32(contrast)
    volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += box


def _scaled_blobs(blobs: tuple[Blob, ...], scale: float) -> tuple[Blob, ...]:
    return tuple(
        Blob(b.kind, tuple(scale * c for c in b.centre_A), tuple(scale * a for a in b.axes_A), b.value)
        for b in blobs
    )


# --------------------------------------------------------------------------- layout


def _check_picks(picks: pd.DataFrame, what: str = "picks") -> None:
    missing = [c for c in PICKS_COLUMNS if c not in picks.columns]
    if missing:
        raise CziiInputError(None, f"{what} DataFrame lacks columns {missing}")
    unknown = sorted(set(picks["particle_type"]) - set(NAMES))
    if unknown:
        raise CziiInputError(None, f"{what}: unknown particle types {unknown}; known: {', '.join(NAMES)}")


def _empty_picks() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "experiment": pd.Series([], dtype=str),
            "particle_type": pd.Series([], dtype=str),
            "x": pd.Series([], dtype=float),
            "y": pd.Series([], dtype=float),
            "z": pd.Series([], dtype=float),
        }
    )


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
    return out[PICKS_COLUMNS].astype({"experiment": str, "particle_type": str})


def default_real_root() -> Path | None:
    """``../shared/czii-real`` beside the repository (or ``shared/czii-real`` in it), if present."""
    repo = Path(__file__).resolve().parents[1]
    for cand in (repo.parent / "shared" / "czii-real", repo / "shared" / "czii-real"):
        if layout.overlay_runs_dir(cand).is_dir():
            return cand
    return None


def real_layouts(real_root: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """The ground-truth picks of every real run under ``{real_root}/train/overlay``.

    Parameters
    ----------
    real_root : str or Path, optional
        A Kaggle-layout root with picks; :func:`default_real_root` when omitted.

    Returns
    -------
    dict
        Run name -> picks DataFrame (``experiment, particle_type, x, y, z``, Angstrom).
    """
    from .picks import read_run_picks

    if real_root is None:
        real_root = default_real_root()
        if real_root is None:
            raise CziiInputError(None, "no real picks found: pass real_root (a folder with train/overlay)")
    runs = layout.list_pick_runs(real_root)
    if not runs:
        raise CziiInputError(layout.overlay_runs_dir(real_root), "no run with a Picks folder")
    return {run: read_run_picks(real_root, run) for run in runs}


def crop_layout(picks: pd.DataFrame, shape_vox: tuple[int, int, int], voxel_size_A: float) -> pd.DataFrame:
    """The picks whose centres lie inside a ``shape_vox`` volume (from voxel 0 to n - 1)."""
    _check_picks(picks)
    ext_A = (np.asarray(shape_vox, float) - 1) * voxel_size_A
    xyz = picks[["z", "y", "x"]].to_numpy(float)
    inside = np.all((xyz >= 0) & (xyz <= ext_A), axis=1)
    return picks.loc[inside].reset_index(drop=True)


# --------------------------------------------------------------------------- density


def _picks_vox(picks: pd.DataFrame, voxel_size_A: float) -> np.ndarray:
    """Pick centres as (n, 3) float ``(z, y, x)`` voxel coordinates."""
    return picks[["z", "y", "x"]].to_numpy(np.float64) / voxel_size_A


def render_targets(
    volume: np.ndarray,
    picks: pd.DataFrame,
    voxel_size_A: float,
    rng: np.random.Generator,
    jitter: float = 0.1,
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
        Relative contrast spread (uniform +-), half of it for size.
    """
    n = len(picks)
    rots = random_rotations(n, rng)
    size = 1.0 + 0.5 * jitter * rng.uniform(-1, 1, n)
    gain = 1.0 + jitter * rng.uniform(-1, 1, n)
    centres = _picks_vox(picks, voxel_size_A)
    edge_A = 0.4 * voxel_size_A
    shapes = {name: particle_blobs(name) for name in NAMES}
    for i, name in enumerate(picks["particle_type"].to_numpy()):
        blobs = _scaled_blobs(shapes[name], size[i])
        _splat(volume, blobs, rots[i], centres[i], TYPE_CONTRAST[name] * gain[i], voxel_size_A, edge_A)


def _clutter_blobs(rng: np.random.Generator) -> tuple[tuple[Blob, ...], float]:
    """A random non-target protein: 1-4 ellipsoids (sometimes a small cage), radius 40-160 A.

    Returns the blobs and the outer radius (Angstrom).
    """
    if rng.random() < 0.06:
        r = rng.uniform(45.0, 90.0)
        return (Blob(_SHELL, (0.0, 0.0, 0.0), (r, rng.uniform(0.5, 0.75) * r, 0.0), 1.0),), r
    r = rng.uniform(40.0, 160.0)
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
) -> None:
    """Add ``n_blobs`` random non-target proteins (sizes like the targets) into ``volume``.

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
        blobs, r = _clutter_blobs(rng)
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


# --------------------------------------------------------------------------- microscope


def electron_wavelength_A(voltage_V: float = _ELECTRON_VOLTAGE_V) -> float:
    """Relativistic electron wavelength in Angstrom (0.0197 A at 300 kV)."""
    return 12.2639 / math.sqrt(voltage_V + 0.97845e-6 * voltage_V**2)


def ctf_envelope(
    k_A: np.ndarray,
    defocus_A: float,
    amplitude_contrast: float = 0.07,
    bfactor_A2: float = 500.0,
) -> np.ndarray:
    """Phase-flipped CTF amplitude times the B-factor envelope.

    Parameters
    ----------
    k_A : ndarray
        Spatial frequency in 1/Angstrom.
    defocus_A : float
        Underfocus in Angstrom (2-4 um = 20000-40000 A).
    amplitude_contrast : float
        Amplitude-contrast fraction.
    bfactor_A2 : float
        B-factor in Angstrom^2: envelope ``exp(-B k^2 / 4)``.

    Returns
    -------
    ndarray float32, like ``k_A``
        ``|sqrt(1 - A^2) sin(chi) + A cos(chi)| exp(-B k^2 / 4)``, with
        ``chi = pi lambda dz k^2 - pi/2 Cs lambda^3 k^4`` at 300 kV, Cs 2.7 mm.
    """
    k2 = np.asarray(k_A, np.float64) ** 2
    lam = electron_wavelength_A()
    chi = np.pi * lam * defocus_A * k2 - 0.5 * np.pi * _SPHERICAL_ABERRATION_A * lam**3 * k2 * k2
    ctf = np.abs(math.sqrt(1 - amplitude_contrast**2) * np.sin(chi) + amplitude_contrast * np.cos(chi))
    return (ctf * np.exp(-0.25 * bfactor_A2 * k2)).astype(np.float32)


def wedge_mask(
    shape_vox: tuple[int, int, int], tilt_range_deg: float = 60.0
) -> np.ndarray:
    """Sampled Fourier region of an ``rfftn`` spectrum (z, y, x half axis), bool.

    Tilt axis y, beam z: ``|k_z| <= |k_x| tan(tilt_range)`` is sampled; the rest is
    the missing wedge.
    """
    nz, ny, nx = shape_vox
    kz = np.abs(np.fft.fftfreq(nz))[:, None, None]
    kx = np.fft.rfftfreq(nx)[None, None, :]
    return np.broadcast_to(kz <= kx * math.tan(math.radians(tilt_range_deg)) + 1e-12, (nz, ny, nx // 2 + 1))


def apply_microscope(
    density: np.ndarray,
    voxel_size_A: float,
    rng: np.random.Generator,
    defocus_A: float,
    noise_sigma: float,
    post_noise_sigma: float,
    structure_sigma: float = 0.0,
    tilt_range_deg: float = 60.0,
    amplitude_contrast: float = 0.07,
    bfactor_A2: float = 500.0,
    denoise_sigma_vox: float = 1.0,
) -> np.ndarray:
    """Image a density volume: one ``rfftn``/``irfftn`` pair does it all.

    In Fourier space,
    ``T(k) = G(k) [ W(k) (-|CTF(k)| E(k) (S(k) + Ns(k)) + N1(k)) + N2(k) ]``:
    ``S`` the density, ``Ns`` white density fluctuations of std ``structure_sigma``,
    ``W`` the missing-wedge mask, ``|CTF| E`` the phase-flipped CTF and envelope, ``N1``
    white noise of std ``noise_sigma`` (it carries the wedge like the noise of a real
    reconstruction), ``N2`` white noise of std ``post_noise_sigma`` (no wedge), ``G`` a
    Gaussian low-pass of sigma ``denoise_sigma_vox`` (the denoising). The three
    independent noises are drawn as one Gaussian field of the summed variance,
    directly in Fourier space, plane by plane.

    Parameters
    ----------
    density : ndarray float32 (z, y, x)
        Density (protein ~ 1); consumed (its memory may be reused).
    voxel_size_A : float
        Voxel size in Angstrom.
    rng : numpy Generator
        Noise source.
    defocus_A : float
        Underfocus in Angstrom.
    noise_sigma, post_noise_sigma, structure_sigma : float
        Real-space std of the three white noises (density units).
    tilt_range_deg, amplitude_contrast, bfactor_A2, denoise_sigma_vox
        As in :class:`SimConfig`.

    Returns
    -------
    ndarray float32 (z, y, x)
        The tomogram: dense = dark (negative).
    """
    shape = density.shape
    nz, ny, nx = shape
    spec = scipy.fft.rfftn(density, workers=-1, overwrite_x=True)
    del density
    fz = np.fft.fftfreq(nz).astype(np.float32)  # cycles / voxel
    fy2 = (np.fft.fftfreq(ny).astype(np.float32) ** 2)[:, None]
    fx = np.fft.rfftfreq(nx).astype(np.float32)
    fx2 = (fx**2)[None, :]
    # radial look-up table: |CTF| E(k) and G(k), k in cycles/voxel
    n_lut = 4096
    f_max = math.sqrt(3) * 0.5 + 1e-3
    f_lut = np.linspace(0.0, f_max, n_lut)
    gauss = np.exp(-2 * np.pi**2 * denoise_sigma_vox**2 * f_lut**2)
    ctf = ctf_envelope(f_lut / voxel_size_A, defocus_A, amplitude_contrast, bfactor_A2).astype(np.float64)
    lut_signal = (-ctf * gauss).astype(np.float32)
    norm = math.sqrt(nz * ny * nx / 2.0)  # unnormalised rfftn of unit white noise
    lut_noise_in = (
        norm * gauss * np.sqrt(noise_sigma**2 + post_noise_sigma**2 + (structure_sigma * ctf) ** 2)
    ).astype(np.float32)
    lut_noise_out = (norm * gauss * post_noise_sigma).astype(np.float32)
    lut_scale = np.float32((n_lut - 1) / f_max)
    tan_t = np.float32(math.tan(math.radians(tilt_range_deg)))
    for i in range(nz):
        f2 = fy2 + fx2 + fz[i] ** 2
        np.sqrt(f2, out=f2)
        f2 *= lut_scale
        idx = f2.astype(np.int32)
        inside = (fx * tan_t >= abs(fz[i]) - 1e-7)[None, :]  # (1, nxh) sampled region
        h_signal = np.where(inside, lut_signal[idx], np.float32(0.0))
        h_noise = np.where(inside, lut_noise_in[idx], lut_noise_out[idx])
        noise = rng.standard_normal((ny, 2 * len(fx)), dtype=np.float32).view(np.complex64)
        noise *= h_noise
        plane = spec[i]
        plane *= h_signal
        plane += noise
    return scipy.fft.irfftn(spec, s=shape, workers=-1, overwrite_x=True).astype(np.float32, copy=False)


def _mean_std(volume: np.ndarray) -> tuple[float, float]:
    """Mean and std of a float32 volume, accumulated plane by plane (fast, no float64 copy)."""
    s1 = s2 = 0.0
    for plane in volume:
        flat = plane.reshape(-1)
        s1 += float(flat.sum(dtype=np.float64))
        s2 += float(np.dot(flat, flat))
    n = volume.size
    mean = s1 / n
    return mean, math.sqrt(max(s2 / n - mean * mean, 0.0))


def add_gradient(volume: np.ndarray, rng: np.random.Generator, amplitude: float) -> None:
    """Add a slow random quadratic intensity trend of peak amplitude ~``amplitude`` in place."""
    nz, ny, nx = volume.shape
    z = np.linspace(-1, 1, nz, dtype=np.float32)
    y = np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, :]
    c = rng.normal(0.0, 1.0, 7).astype(np.float32) * np.float32(amplitude / 3.0)
    in_plane = c[0] * x + c[1] * y + c[3] * x * x + c[4] * y * y + c[5] * x * y  # (ny, nx)
    for i in range(nz):
        volume[i] += in_plane + (c[2] * z[i] + c[6] * z[i] * x)


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


def simulate_tomogram(
    picks: pd.DataFrame,
    config: SimConfig = SimConfig(),
    seed: int = 0,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Simulate one ``denoised`` tomogram holding ``picks``.

    Parameters
    ----------
    picks : DataFrame
        ``particle_type, x, y, z`` (Angstrom) of the particles to place (any experiment).
    config : SimConfig
        Shape, voxel size, difficulty and microscope.
    seed : int
        Everything random (orientations, clutter, defocus, noise) follows from it.
    timings : dict, optional
        When given, receives the seconds spent in ``"render"`` (targets and clutter),
        ``"microscope"`` (FFT filters and noise) and ``"scale"`` (gradient, normalisation).

    Returns
    -------
    ndarray float32, shape ``config.shape_vox`` (z, y, x)
        Zero mean, unit std; particles dark.
    """
    _check_picks(picks)
    vs = config.voxel_size_A
    knobs = difficulty_knobs(config.difficulty, config.noise_scale)
    streams = np.random.SeedSequence(seed).spawn(7)
    rng_part, rng_clut, rng_gold, rng_mem, rng_mic, rng_grad, rng_count = map(np.random.default_rng, streams)
    vol_frac = float(np.prod(config.shape_vox) / np.prod(FULL_SHAPE_VOX))
    # clutter counts from fixed quantiles: a harder tomogram of the same seed holds the
    # same clutter and more (each kind has its own stream, drawn item by item)
    u_clutter, u_gold, u_mem = rng_count.random(3)

    t0 = time.perf_counter()
    density = np.zeros(config.shape_vox, np.float32)
    render_targets(density, picks, vs, rng_part, config.particle_jitter)
    if config.clutter:
        z_range = _slab_vox(picks, config.shape_vox, vs)
        n_clutter = _poisson_quantile(u_clutter, knobs.clutter_per_full * vol_frac)
        render_clutter(density, picks, vs, rng_clut, n_clutter, z_range)
        render_gold(density, vs, rng_gold, _poisson_quantile(u_gold, knobs.gold_per_full * vol_frac), z_range)
        n_mem = _poisson_quantile(u_mem, knobs.membranes_per_full * max(vol_frac, 0.05))
        render_membranes(density, vs, rng_mem, n_mem)

    t1 = time.perf_counter()
    defocus_A = 1e4 * rng_mic.uniform(*config.defocus_um)
    vol = apply_microscope(
        density,
        vs,
        rng_mic,
        defocus_A=defocus_A,
        noise_sigma=knobs.noise_sigma,
        post_noise_sigma=knobs.noise_sigma * knobs.post_noise_fraction,
        structure_sigma=knobs.structure_sigma,
        tilt_range_deg=config.tilt_range_deg,
        amplitude_contrast=config.amplitude_contrast,
        bfactor_A2=config.bfactor_A2 + knobs.extra_bfactor_A2,
        denoise_sigma_vox=config.denoise_sigma_vox,
    )
    t2 = time.perf_counter()
    add_gradient(vol, rng_grad, knobs.gradient_fraction * _mean_std(vol)[1])
    mean, std = _mean_std(vol)
    vol -= np.float32(mean)
    vol /= np.float32(max(std, 1e-12))
    if timings is not None:
        timings.update(render=t1 - t0, microscope=t2 - t1, scale=time.perf_counter() - t2)
    return vol


# --------------------------------------------------------------------------- measure


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
    _check_picks(picks)
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


@dataclass
class SimDataset:
    """A simulated dataset on disk.

    Attributes
    ----------
    root : Path
        Kaggle-layout data root ``{out_dir}/czii-cryo-et-object-identification``.
    solution_csv : Path
        ``{out_dir}/test_solution.csv``: the test runs' picks with an ``id`` column.
    train_runs, test_runs : list of str
        Run names.
    difficulties : dict
        Run name -> difficulty (float) it was simulated at.
    """

    root: Path
    solution_csv: Path
    train_runs: list[str]
    test_runs: list[str]
    difficulties: dict[str, float] = field(default_factory=dict)


def _run_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def simulate_dataset(
    out_dir: str | Path,
    n_train: int = 4,
    n_test: int = 2,
    config: SimConfig = SimConfig(),
    seed: int = 0,
    real_train_layouts: bool = False,
    real_root: str | Path | None = None,
    difficulties: list[float | str] | None = None,
    count_scale: float | Mapping[str, float] = 1.0,
) -> SimDataset:
    """Simulate training and test runs in the exact Kaggle layout.

    Writes ``{root}/train/static/ExperimentRuns/{run}/VoxelSpacing10.000/denoised.zarr``
    and ``{root}/train/overlay/ExperimentRuns/{run}/Picks/*.json`` for training runs,
    ``{root}/test/static/...`` (no picks) for test runs, the test picks as
    ``{out_dir}/test_solution.csv`` (``id, experiment, particle_type, x, y, z``) and
    ``{out_dir}/simulation.json`` (config and per-run difficulty / seed).

    Parameters
    ----------
    out_dir : str or Path
        Output folder.
    n_train, n_test : int
        Number of training and test runs.
    config : SimConfig
        Simulation options (``config.difficulty`` for every run unless ``difficulties``).
    seed : int
        Master seed; run ``i`` gets its own seed from ``(seed, i)``.
    real_train_layouts : bool
        Training runs take the real runs' picks (cropped to the shape) and names
        (TS_5_4, ...), as many as there are; further runs are random.
    real_root : str or Path, optional
        Where the real picks are (see :func:`real_layouts`).
    difficulties : list, optional
        One difficulty (float or name) per run, training runs first.
    count_scale : float or mapping
        Multiplies the random layouts' mean counts (one factor, or ``{name: factor}``);
        real layouts keep their own picks.

    Returns
    -------
    SimDataset
    """
    from tqdm.auto import tqdm

    from .io import write_tomogram
    from .picks import write_picks_file, write_run_picks

    n_runs = n_train + n_test
    if n_train < 0 or n_test < 0 or n_runs == 0:
        raise ValueError(f"need n_train, n_test >= 0 and at least one run, not {n_train}, {n_test}")
    if difficulties is None:
        diffs = [config.difficulty_float] * n_runs
    else:
        if len(difficulties) != n_runs:
            raise ValueError(f"difficulties has {len(difficulties)} values for {n_runs} runs")
        diffs = [difficulty_value(d) for d in difficulties]
    out_dir = Path(out_dir)
    root = out_dir / "czii-cryo-et-object-identification"
    real = real_layouts(real_root) if real_train_layouts and n_train else {}
    real_names = sorted(real)[:n_train]

    plan = []  # (split, run, picks, run_seed, difficulty)
    for i in range(n_runs):
        run_seed = _run_seed(seed, i)
        split = "train" if i < n_train else "test"
        if i < len(real_names):
            run = real_names[i]
            picks = crop_layout(real[run], config.shape_vox, config.voxel_size_A)
        else:
            run = f"TS_sim_{seed}_{i}"
            picks = random_layout(
                config.shape_vox, config.voxel_size_A, np.random.default_rng(run_seed), run, count_scale
            )
        picks = picks.assign(experiment=run)
        plan.append((split, run, picks, run_seed, diffs[i]))

    for split, run, picks, run_seed, d in tqdm(plan, desc="simulate", unit="run"):
        cfg = SimConfig(**{**asdict(config), "difficulty": d})
        vol = simulate_tomogram(picks, cfg, seed=run_seed)
        write_tomogram(layout.tomogram_path(root, split, run), vol, config.voxel_size_A, overwrite=True)
        if split == "train" and len(picks):
            write_run_picks(root, picks)
        elif split == "train":  # a run with no particle still gets its six (empty) pick files
            for name in NAMES:
                write_picks_file(layout.picks_path(root, run, name), run, name, np.zeros((0, 3)))

    test = [p for s, _, p, _, _ in plan if s == "test"]
    solution = pd.concat(test, ignore_index=True) if test else _empty_picks()
    solution = solution[PICKS_COLUMNS].reset_index(drop=True)
    solution.insert(0, "id", np.arange(len(solution)))
    solution = solution[SOLUTION_COLUMNS]
    out_dir.mkdir(parents=True, exist_ok=True)
    solution.to_csv(out_dir / "test_solution.csv", index=False)
    meta = {
        "seed": seed,
        "count_scale": count_scales(count_scale),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "runs": [{"run": r, "split": s, "seed": rs, "difficulty": d, "n_picks": len(p)} for s, r, p, rs, d in plan],
    }
    (out_dir / "simulation.json").write_text(json.dumps(meta, indent=1))
    return SimDataset(
        root=root,
        solution_csv=out_dir / "test_solution.csv",
        train_runs=[r for s, r, *_ in plan if s == "train"],
        test_runs=[r for s, r, *_ in plan if s == "test"],
        difficulties={r: d for _, r, _, _, d in plan},
    )
