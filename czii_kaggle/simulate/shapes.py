"""Particle density models: the six types as soft-edged blobs, their real dimensions, rotations.

Three models per complex (a run's ``look.particle_model``, :mod:`czii_kaggle.simulate.look`):

- ``classic``: :func:`particle_blobs`, hand-made shapes at the particle table's radius
  (what the shipped model was trained on);
- ``envelope``: one filled ellipsoid of the complex's real dimensions
  (:data:`DIMENSIONS_A`), a shell for the hollow ones (apo-ferritin, VLP);
- ``subunits``: a cloud of small ellipsoidal subunits filling that envelope (or lying
  on the shell), one random arrangement per type and run (:func:`model_blobs`);
- ``lobes``: 2-5 large overlapping ellipsoids spanning the real extents (hollow ones: a
  shell of random thickness with random content), one random shape per type and run.
  Drawn only where a look spec names it (:data:`czii_kaggle.simulate.look.EXTRA_CHOICES`).

Every model is scaled per particle by the look's size jitter and turned by a uniformly
random rotation when rendered (:mod:`czii_kaggle.simulate.scene`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import expit

from ..particles import BY_NAME, NAMES
from .config import KAGGLE_VOXEL_SIZE_A

_ELLIPSOID, _SHELL = 0, 1


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
    # many small blobs (subunit clouds): evaluate each only in its own box (classic shapes: whole grid)
    boxed = len(blobs) > 8
    axes_1d = [np.asarray(a, np.float64) for a in (dz_A, dy_A, dx_A)]
    for b in blobs:
        c = b.centre_A
        sub = (slice(None),) * 3
        if boxed:
            centre_zyx = (np.asarray(rotation, np.float64) @ np.asarray(c, np.float64))[::-1]  # d = R u
            reach = max(b.axes_A) + 6.0 * edge_A
            sub = tuple(slice(int(np.searchsorted(ax, m - reach)), int(np.searchsorted(ax, m + reach, "right")))
                        for ax, m in zip(axes_1d, centre_zyx))
            if any(sl.start >= sl.stop for sl in sub):
                continue
        uu = [np.broadcast_to(uj, out.shape)[sub] if boxed else uj for uj in u]
        if b.kind == _SHELL:
            rho = np.sqrt((uu[0] - c[0]) ** 2 + (uu[1] - c[1]) ** 2 + (uu[2] - c[2]) ** 2)
            val = expit((b.axes_A[0] - rho) * inv_edge)
            val -= expit((b.axes_A[1] - rho) * inv_edge)
        else:
            a = b.axes_A
            q = ((uu[0] - c[0]) / a[0]) ** 2 + ((uu[1] - c[1]) / a[1]) ** 2 + ((uu[2] - c[2]) / a[2]) ** 2
            np.sqrt(q, out=q)
            # (1 - rho) * mean semi-axis ~ signed distance to the surface (Angstrom)
            val = expit((1.0 - q) * np.float32(np.mean(a)) * inv_edge)
        if b.value != 1.0:
            val *= np.float32(b.value)
        np.maximum(out[sub], val, out=out[sub])
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


class Dimensions(NamedTuple):
    """Approximate size of a complex: full extents (Angstrom) along its three axes, cavity, source."""

    extent_A: tuple[float, float, float]
    cavity_radius_A: float  # 0: filled
    shell_A: float  # shell thickness of a hollow complex (0: filled)
    source: str


#: Real dimensions of the six complexes (approximate; a tomogram at 10 A cannot tell finer).
#: Sources: the copick config's PDB entries (``../shared/czii-real/copick_config.json``) and
#: the structure papers behind them. Values marked "approx." are estimates from the complex's
#: mass and shape as described there, not measured on the coordinates (no PDB access here).
DIMENSIONS_A: dict[str, Dimensions] = {
    "apo-ferritin": Dimensions((120.0, 120.0, 120.0), 40.0, 20.0,
                               "24-mer cage, 12 nm outer, 8 nm cavity diameter (PDB 4V1W)"),
    "beta-amylase": Dimensions((105.0, 95.0, 70.0), 0.0, 0.0,
                               "sweet-potato beta-amylase tetramer, ~220 kDa (PDB 1FA2); approx."),
    "beta-galactosidase": Dimensions((175.0, 135.0, 90.0), 0.0, 0.0,
                                     "E. coli tetramer 17.5 x 13.5 x 9 nm (PDB 6X1Q)"),
    "ribosome": Dimensions((290.0, 260.0, 240.0), 0.0, 0.0,
                           "80S ribosome, 25-30 nm (PDB 6EK0, human 80S); approx."),
    "thyroglobulin": Dimensions((250.0, 170.0, 120.0), 0.0, 0.0,
                                "660 kDa homodimer, elongated (PDB 6SCJ); approx."),
    "virus-like-particle": Dimensions((270.0, 270.0, 270.0), 105.0, 30.0,
                                      "icosahedral capsid ~27 nm, ~3 nm shell (PDB 6N4V); approx."),
}


def envelope_blobs(particle_type: str) -> tuple[Blob, ...]:
    """The ``envelope`` model: one filled ellipsoid of the real extents, or a shell for a hollow complex."""
    dim = DIMENSIONS_A[particle_type]
    if dim.cavity_radius_A > 0:
        outer = dim.extent_A[0] / 2.0
        return (Blob(_SHELL, (0.0, 0.0, 0.0), (outer, outer - dim.shell_A, 0.0), 1.0),)
    return (Blob(_ELLIPSOID, (0.0, 0.0, 0.0), tuple(e / 2.0 for e in dim.extent_A), 1.0),)


def subunit_blobs(particle_type: str, rng: np.random.Generator) -> tuple[Blob, ...]:
    """The ``subunits`` model: 6-24 ellipsoidal subunits filling the envelope (or on the shell).

    Subunit centres are drawn in the envelope (hollow: on the shell's mid-surface), each
    subunit an ellipsoid whose volume share roughly fills the envelope; densities 0.7-1.
    """
    dim = DIMENSIONS_A[particle_type]
    semi = np.asarray(dim.extent_A) / 2.0
    if dim.cavity_radius_A > 0:
        n = 24 if particle_type == "apo-ferritin" else 60  # 24 ferritin chains; 60 capsomer-sized lumps
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        mid = semi[0] - dim.shell_A / 2.0
        centres = v * mid
        r_sub = max(dim.shell_A / 2.0, 0.8 * math.sqrt(4.0 * mid**2 / n))
        axes = np.full((n, 3), r_sub)
    else:
        n = int(rng.integers(6, 25))
        u = rng.normal(size=(n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        centres = u * (rng.random((n, 1)) ** (1 / 3)) * semi * 0.7
        r_sub = (np.prod(semi) / n) ** (1 / 3) * rng.uniform(0.9, 1.3, n)
        axes = r_sub[:, None] * rng.uniform(0.8, 1.25, (n, 3))
    values = rng.uniform(0.7, 1.0, n)
    return tuple(Blob(_ELLIPSOID, tuple(map(float, c)), tuple(map(float, a)), float(w))
                 for c, a, w in zip(centres, axes, values))


def lobe_blobs(particle_type: str, rng: np.random.Generator) -> tuple[Blob, ...]:
    """The ``lobes`` model: a random shape of the real extents from a few large parts.

    Filled complexes: 2-5 ellipsoids, each 45-75 % of the envelope's semi-axes, centred so
    that each stays inside the envelope's bounding box; densities 0.75-1. Hollow complexes:
    a shell of the real outer radius (+-5 %) and 0.6-1.6 times the real thickness, holding a
    faint content (density 0-0.35) of 30-80 % of the cavity's radius. Unlike ``subunits``,
    few parts, each a sizeable share of the complex: the outline varies, not the texture.
    """
    dim = DIMENSIONS_A[particle_type]
    semi = np.asarray(dim.extent_A) / 2.0
    if dim.cavity_radius_A > 0:
        outer = float(semi[0] * rng.uniform(0.95, 1.05))
        inner = max(outer - dim.shell_A * float(rng.uniform(0.6, 1.6)), 0.2 * outer)
        content = float(inner * rng.uniform(0.3, 0.8))
        return (Blob(_SHELL, (0.0, 0.0, 0.0), (outer, inner, 0.0), 1.0),
                Blob(_ELLIPSOID, (0.0, 0.0, 0.0), (content, content, content), float(rng.uniform(0.0, 0.35))))
    n = int(rng.integers(2, 6))
    axes = semi * rng.uniform(0.45, 0.75, (n, 3))
    centres = rng.uniform(-1.0, 1.0, (n, 3)) * (semi - axes)
    values = rng.uniform(0.75, 1.0, n)
    return tuple(Blob(_ELLIPSOID, tuple(map(float, c)), tuple(map(float, a)), float(w))
                 for c, a, w in zip(centres, axes, values))


def model_blobs(particle_model: str, seed: int = 0) -> dict[str, tuple[Blob, ...]]:
    """The blobs of every type under one particle model; ``seed`` fixes the subunit clouds of a run."""
    if particle_model == "classic":
        return {name: particle_blobs(name) for name in NAMES}
    if particle_model == "envelope":
        return {name: envelope_blobs(name) for name in NAMES}
    if particle_model == "subunits":
        rng = np.random.default_rng([seed, 2])
        return {name: subunit_blobs(name, rng) for name in NAMES}
    if particle_model == "lobes":
        rng = np.random.default_rng([seed, 3])
        return {name: lobe_blobs(name, rng) for name in NAMES}
    raise ValueError(f"unknown particle model {particle_model!r}")
