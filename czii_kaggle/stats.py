"""Pick and volume statistics behind the EDA figures: counts, nearest neighbours, plane sections,
the busiest slice, particle crops.

Plain numbers and arrays (no matplotlib): :mod:`czii_kaggle.viz` draws them, a notebook or a test
reads them. Picks are ``experiment, particle_type, x, y, z`` in Angstrom
(:data:`czii_kaggle.frames.PICKS`); volumes are ``(z, y, x)`` voxels, voxel ``i`` centred at
``i * voxel_size_A`` Angstrom.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from . import frames, particles
from .particles import NAMES

_XYZ = ("x", "y", "z")


def types_in(picks: pd.DataFrame) -> list[str]:
    """Particle types present in ``picks``, in particle-table order (unknown names raise)."""
    present = set(picks["particle_type"].astype(str))
    for name in present:
        particles.get(name)
    return [n for n in NAMES if n in present]


def check_volume(volume: np.ndarray, voxel_size_A: float) -> np.ndarray:
    """``volume`` as an array, checked: non-empty ``(z, y, x)``, a positive finite voxel size."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.size == 0:
        raise ValueError(f"volume must be a non-empty (z, y, x) array, got shape {volume.shape}")
    if not (np.isfinite(voxel_size_A) and voxel_size_A > 0):
        raise ValueError(f"voxel_size_A must be a positive number, got {voxel_size_A!r}")
    return volume


def pick_counts(picks: pd.DataFrame) -> pd.DataFrame:
    """Number of picks per run and particle type.

    Parameters
    ----------
    picks : DataFrame
        Columns ``experiment, particle_type`` (others ignored).

    Returns
    -------
    DataFrame
        Indexed by ``experiment`` (sorted); one int64 column per particle type in
        particle-table order (all six, 0 where absent).
    """
    frames.validate(picks, frames.PICKS)
    table = pd.crosstab(picks["experiment"].astype(str), picks["particle_type"].astype(str))
    table = table.reindex(columns=list(NAMES), fill_value=0).astype(np.int64)
    table.index.name, table.columns.name = "experiment", "particle_type"
    return table.sort_index()


def nearest_neighbour_distances(picks: pd.DataFrame) -> np.ndarray:
    """Distance from each pick to the nearest other pick of the same type in the same run.

    Parameters
    ----------
    picks : DataFrame
        ``experiment, particle_type, x, y, z`` in Angstrom.

    Returns
    -------
    ndarray, float64, shape (len(picks),)
        Angstrom, aligned with the rows of ``picks``; NaN for a pick that is alone
        of its type in its run.
    """
    frames.validate(picks, frames.PICKS)
    out = np.full(len(picks), np.nan)
    if len(picks) == 0:
        return out
    xyz_A = picks[list(_XYZ)].to_numpy(dtype=np.float64)
    keys = [picks["experiment"].astype(str), picks["particle_type"].astype(str)]
    for idx in pd.DataFrame({"e": keys[0], "t": keys[1]}).groupby(["e", "t"], sort=False).indices.values():
        if len(idx) < 2:
            continue
        dist, _ = cKDTree(xyz_A[idx]).query(xyz_A[idx], k=2)
        out[idx] = dist[:, 1]
    return out


def plane_sections(picks: pd.DataFrame, axis: str, position_A: float) -> pd.DataFrame:
    """The picks whose sphere cuts the plane ``axis = position_A``, with the cut's radius.

    Parameters
    ----------
    picks : DataFrame
        ``particle_type, x, y, z`` in Angstrom.
    axis : {"x", "y", "z"}
        Normal of the plane.
    position_A : float
        Plane position along ``axis``, Angstrom.

    Returns
    -------
    DataFrame
        The rows of ``picks`` with ``|pick[axis] - position_A| < radius_A``, plus
        ``section_radius_A = sqrt(radius_A**2 - d**2)`` (Angstrom), ``d`` being that
        distance. A sphere that only touches the plane (``d == radius``) is left out.
    """
    if axis not in _XYZ:
        raise ValueError(f"axis must be one of {_XYZ}, not {axis!r}")
    types_in(picks)
    radius_A = picks["particle_type"].map(particles.RADII_A).to_numpy(dtype=np.float64)
    d_A = np.abs(picks[axis].to_numpy(dtype=np.float64) - float(position_A))
    cuts = d_A < radius_A
    out = picks.loc[cuts].copy()
    out["section_radius_A"] = np.sqrt(radius_A[cuts] ** 2 - d_A[cuts] ** 2)
    return out


def busiest_slice(picks: pd.DataFrame, voxel_size_A: float, n_slices: int) -> int:
    """The z slice (voxel index) cut by the most pick spheres.

    Parameters
    ----------
    picks : DataFrame
        ``particle_type, z`` (Angstrom) of one tomogram.
    voxel_size_A : float
        Angstrom per voxel; slice ``i`` lies at ``z = i * voxel_size_A``.
    n_slices : int
        Number of z slices of the tomogram.

    Returns
    -------
    int
        The slice with the most spheres cutting it (``|z - i * voxel_size_A| < radius``),
        the lowest such index on a tie; ``n_slices // 2`` when no pick cuts any slice.
    """
    types_in(picks)
    radius_A = picks["particle_type"].map(particles.RADII_A).to_numpy(dtype=np.float64)
    z_A = picks["z"].to_numpy(dtype=np.float64)
    # slices strictly inside (z - r, z + r): first = floor((z - r) / v) + 1, last = ceil((z + r) / v) - 1
    first = np.clip(np.floor((z_A - radius_A) / voxel_size_A).astype(np.int64) + 1, 0, n_slices)
    last = np.clip(np.ceil((z_A + radius_A) / voxel_size_A).astype(np.int64) - 1, -1, n_slices - 1)
    ok = last >= first
    cover = np.zeros(n_slices + 1, dtype=np.int64)
    np.add.at(cover, first[ok], 1)
    np.add.at(cover, last[ok] + 1, -1)
    depth = np.cumsum(cover[:-1])
    return int(depth.argmax()) if depth.size and depth.max() > 0 else n_slices // 2


def particle_crops(
    volume: np.ndarray, voxel_size_A: float, picks: pd.DataFrame, size_vox: int = 32
) -> dict[str, np.ndarray]:
    """x-y crops of the tomogram centred on each pick, grouped by particle type.

    Each crop is the ``size_vox x size_vox`` window of the z slice nearest the
    pick, centred on the pick's nearest voxel (index ``size_vox // 2``). Parts
    of a window outside the volume are NaN; picks whose centre voxel lies outside
    the volume are skipped.

    Parameters
    ----------
    volume : ndarray, shape (nz, ny, nx)
        Tomogram voxels.
    voxel_size_A : float
        Angstrom per voxel.
    picks : DataFrame
        ``particle_type, x, y, z`` (Angstrom) of this tomogram.
    size_vox : int
        Crop side in voxels.

    Returns
    -------
    dict
        Particle type -> float32 array ``(n, size_vox, size_vox)`` (rows y, columns
        x), for every type present in ``picks`` (``n`` may be 0), in particle-table
        order.
    """
    volume = check_volume(volume, voxel_size_A)
    frames.validate(picks, frames.PICKS)
    size_vox = int(size_vox)
    if size_vox < 1:
        raise ValueError(f"size_vox must be >= 1, got {size_vox}")
    shape = np.array(volume.shape)
    offsets = np.arange(size_vox) - size_vox // 2
    out: dict[str, np.ndarray] = {}
    for name in types_in(picks):
        rows = picks[picks["particle_type"] == name]
        zyx = np.rint(rows[["z", "y", "x"]].to_numpy(np.float64) / voxel_size_A).astype(np.int64)
        zyx = zyx[((zyx >= 0) & (zyx < shape)).all(axis=1)]
        iy = zyx[:, 1:2] + offsets  # (n, s)
        ix = zyx[:, 2:3] + offsets
        crops = volume[zyx[:, 0, None, None],
                       np.clip(iy, 0, shape[1] - 1)[:, :, None],
                       np.clip(ix, 0, shape[2] - 1)[:, None, :]].astype(np.float32)
        outside = ((iy < 0) | (iy >= shape[1]))[:, :, None] | ((ix < 0) | (ix >= shape[2]))[:, None, :]
        crops[outside] = np.nan
        out[name] = crops
    return out


def average_crop(crops: np.ndarray) -> np.ndarray:
    """Pixel-wise mean of crops ``(n, s, s)`` ignoring NaN; NaN where no crop has a value."""
    crops = np.asarray(crops, dtype=np.float64)
    valid = np.isfinite(crops)
    n = valid.sum(axis=0)
    total = np.where(valid, crops, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)


def look_signal(
    sources: list[tuple[str | Path, list[str] | None]], level: int = 1, n_background: int = 300, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How much signal of each type a set of labelled tomograms of one look holds, with no detector.

    :func:`czii_kaggle.simulate.class_average_snr` over the runs with picks of Kaggle-layout roots (train
    split): each type's class average from half the runs, its matched-filter SNR on the other half, halves
    swapped. Read it against the simulated looks' curve of F-beta against this SNR (docs/EXPERIMENTS.md,
    "Score against signal"; docs/figures/signal_score.png), on which looks the model saw and looks it never saw
    lie alike: e.g. beta-galactosidase at SNR 7-9 scores 0.72-0.85 with the shipped default, at 3-4 0.2-0.5.
    A run whose picks or tomogram cannot be read is reported and left out; the others are measured.

    Parameters
    ----------
    sources : list of (root, runs or None)
        Kaggle-layout roots and their runs (None: every run with a ``Picks`` folder).
    level : int
        The grid measured on: Kaggle's zarr level ``level`` (1: 20.02 A per voxel, the curve's). Tomograms of
        another voxel size are resampled onto that grid (:func:`czii_kaggle.preprocess.read_at_voxel_size`), so
        that their SNR reads against the same curve.
    n_background, seed : int
        As :func:`~czii_kaggle.simulate.class_average_snr`.

    Returns
    -------
    table : DataFrame indexed by particle type
        ``n`` (particles measured), ``snr``; the types with particles in both halves.
    report : DataFrame
        ``root, experiment, status`` ("ok" or "skipped"), ``error``, one row per run.
    """
    from . import layout, picks as picks_io
    from .errors import CziiInputError
    from .preprocess import binned_origin_A, read_at_voxel_size
    from .simulate import class_average_snr

    grid_A = layout.KAGGLE_VOXEL_SIZE_A * 2**level
    origin_A = binned_origin_A(grid_A, layout.KAGGLE_VOXEL_SIZE_A)

    volumes, tables, rows, voxel = [], [], [], None
    for root, runs in sources:
        for run in layout.list_pick_runs(root) if runs is None else runs:
            path = layout.tomogram_path(root, "train", run)
            try:
                p = picks_io.read_run_picks(root, run)
                v, vs = read_at_voxel_size(path, grid_A, origin_A=origin_A)
                if voxel is not None and abs(vs - voxel) > 1e-3 * voxel:
                    raise CziiInputError(path, f"voxel size {vs:g} A at level {level}, not the other runs' {voxel:g} A")
            except (CziiInputError, OSError, ValueError, KeyError) as exc:
                rows.append({"root": str(root), "experiment": run, "status": "skipped", "error": str(exc)})
                continue
            voxel = vs
            volumes.append(v)
            tables.append(p)
            rows.append({"root": str(root), "experiment": run, "status": "ok", "error": ""})
    report = pd.DataFrame(rows, columns=["root", "experiment", "status", "error"])
    if len(volumes) < 2:
        where = ", ".join(str(r) for r, _ in sources)
        skipped = "; ".join(f"{r.experiment}: {r.error}" for r in report.itertuples() if r.status != "ok")
        raise CziiInputError(where, f"{len(volumes)} readable run(s) with picks: the signal needs at least 2 "
                                    "(each half's class average is measured on the other)"
                                    + (f"; skipped {skipped}" if skipped else ""))
    table = class_average_snr(volumes, tables, voxel, n_background=n_background, seed=seed)
    table.index.name = "particle_type"
    return table, report
