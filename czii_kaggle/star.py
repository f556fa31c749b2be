"""Picks -> RELION 5 STAR particle tables, through ``starfile`` (``pip install czii_kaggle[copick]``).

Coordinates, as RELION 5 reads them (and as copick's converter writes them,
``copick.util.formats.build_relion_particles_df`` / ``relion_coordinates_to_angstrom``):

- ``rlnCenteredCoordinate{X,Y,Z}Angst``: position minus the tomogram centre, in Angstrom. The
  centre is ``size / 2 * pixel size`` per axis (RELION 5: ``rlnTomoSize{X,Y,Z} / 2 *
  rlnTomoTiltSeriesPixelSize``, both in tilt-series pixels; here the tomogram's voxel count
  times its voxel size, the same length). Our positions put voxel ``i``'s centre at
  ``i * voxel_size_A`` (docs/ARCHITECTURE.md), so ``centred_A = x_A - n_x * voxel_size_A / 2``.
- ``rlnCoordinate{X,Y,Z}`` only when the tilt-series pixel size is given: RELION 4 and 5 read
  these columns in tilt-series pixels (``x_A / pixel_A``); tomogram voxels would be misread.
- ``rlnTomoName``: the run, which must match the tomogram's name in RELION's ``tomograms.star``.
- ``rlnAutopickFigureOfMerit``: the detection score.

Numbers are written with 6 decimals (``starfile``'s default): 1e-6 Angstrom.

Particles go in a block named ``particles`` (``data_particles``), which RELION's tomography
programs read by name. No angles are written: the detector finds positions, not orientations.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import frames, layout, omezarr, picks as picks_io
from .errors import CziiInputError
from .particles import NAMES

CENTERED_COLUMNS = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
PIXEL_COLUMNS = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]


def _starfile():
    try:
        import starfile
    except ImportError:
        raise CziiInputError(None, "--format star needs starfile: "
                                   "pip install 'czii_kaggle[copick]' (or starfile)") from None
    return starfile


def tomogram_centers_A(tomograms: dict[str, str | Path]) -> dict[str, tuple[float, float, float]]:
    """``{run: (x, y, z)}`` centre in Angstrom of each run's tomogram, ``shape / 2 * voxel size``,
    read from the zarr metadata (no voxel is read)."""
    centers = {}
    for run, path in tomograms.items():
        nz, ny, nx = (int(s) for s in omezarr.open_level(path).shape)
        v = omezarr.read_voxel_size(path)
        centers[run] = (nx * v / 2, ny * v / 2, nz * v / 2)
    return centers


def relion_table(picks: pd.DataFrame, centers_A: dict[str, tuple[float, float, float]],
                 tilt_series_pixel_size_A: float | None = None) -> pd.DataFrame:
    """RELION 5 particle rows for ``picks`` (``experiment, particle_type, x, y, z`` Angstrom, optional ``score``)."""
    picks = frames.validate(picks, frames.PICKS)
    missing = sorted(set(picks["experiment"]) - set(centers_A))
    if missing:
        raise ValueError(f"no tomogram centre for runs {missing}")
    xyz = picks[["x", "y", "z"]].to_numpy(np.float64).reshape(-1, 3)
    centers = np.array([centers_A[r] for r in picks["experiment"]], dtype=np.float64).reshape(-1, 3)
    data = {"rlnTomoName": picks["experiment"].astype(str).to_numpy()}
    if tilt_series_pixel_size_A is not None:
        if not tilt_series_pixel_size_A > 0:
            raise ValueError(f"tilt-series pixel size must be > 0, not {tilt_series_pixel_size_A}")
        for col, values in zip(PIXEL_COLUMNS, (xyz / tilt_series_pixel_size_A).T):
            data[col] = values
    for col, values in zip(CENTERED_COLUMNS, (xyz - centers).T):
        data[col] = values
    if "score" in picks:
        data["rlnAutopickFigureOfMerit"] = picks["score"].to_numpy(np.float64)
    return pd.DataFrame(data)


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    starfile = _starfile()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    starfile.write({"particles": df}, tmp, overwrite=True)
    os.replace(tmp, path)


def write_star(picks: pd.DataFrame, out_dir: str | Path, centers_A: dict[str, tuple[float, float, float]],
               per_run: bool = False, tilt_series_pixel_size_A: float | None = None) -> list[Path]:
    """Write picks as RELION 5 STAR files, one per particle type that has picks.

    ``{out_dir}/{particle}.star`` holds every run (``rlnTomoName`` says which), as RELION 5's
    coordinate import takes it; with ``per_run``, ``{out_dir}/{run}/{particle}.star`` instead.
    Each file is written under a temporary name and renamed. Returns the paths written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CziiInputError(out_dir, "--format star writes a folder, and this is a file")
    picks = frames.validate(picks, frames.PICKS)
    table = relion_table(picks, centers_A, tilt_series_pixel_size_A)
    written = []
    keys = ["experiment", "particle_type"] if per_run else "particle_type"
    for key, idx in picks.groupby(keys, sort=True).groups.items():
        key = key if isinstance(key, tuple) else (key,)
        path = (out_dir / key[0] / f"{key[1]}.star") if per_run else out_dir / f"{key[0]}.star"
        _write_atomic(table.loc[idx].reset_index(drop=True), path)
        written.append(path)
    return written


def read_star(path: str | Path, centers_A: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    """Positions of a STAR file written by :func:`write_star` (or any RELION 5 table with centred
    coordinates) as ``experiment, particle_type, x, y, z`` Angstrom; the type is the file's stem."""
    path = Path(path)
    try:
        df = _starfile().read(path, always_dict=True)
    except Exception as exc:  # noqa: BLE001 - starfile's parse errors
        raise CziiInputError(path, f"not a readable STAR file ({exc})") from None
    df = df.get("particles", next(iter(df.values()), None))
    if df is None or not set(CENTERED_COLUMNS + ["rlnTomoName"]) <= set(df.columns):
        raise CziiInputError(path, f"has no particles table with rlnTomoName and {CENTERED_COLUMNS}")
    names = df["rlnTomoName"].astype(str)
    unknown = sorted(set(names) - set(centers_A))
    if unknown:
        raise CziiInputError(path, f"tomograms {unknown} have no known centre")
    xyz = df[CENTERED_COLUMNS].to_numpy(np.float64) + np.array([centers_A[n] for n in names]).reshape(-1, 3)
    return pd.DataFrame({"experiment": names.to_numpy(), "particle_type": path.stem,
                         "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})


def check_star_names(star_paths) -> None:
    """Each STAR file to import holds one particle type and is named after it (``ribosome.star``), as
    :func:`write_star` names them; raises :class:`CziiInputError` naming the first that is not."""
    for p in star_paths:
        if Path(p).stem not in NAMES:
            raise CziiInputError(Path(p), f"names no particle type: name each STAR file after its type, one of "
                                          f"{', '.join(NAMES)} (e.g. ribosome.star)")


def import_picks(root: str | Path, star_paths) -> pd.DataFrame:
    """RELION 5 STAR picks as the copick picks of the training runs of a Kaggle-layout ``root``.

    Each file holds one particle type and is named after it (:func:`check_star_names`); its rows'
    ``rlnTomoName`` name the runs, whose tomograms (under ``root/train``) give the centres the
    coordinates are relative to (:func:`read_star`). Every run with picks gets its six pick files
    (:func:`czii_kaggle.picks.write_run_picks`); runs already holding picks are refused, never replaced.
    Returns the picks written (``experiment, particle_type, x, y, z``, Angstrom).
    """
    check_star_names(star_paths)
    runs = layout.list_runs(root, "train")
    centers = tomogram_centers_A({r: layout.tomogram_path(root, "train", r) for r in runs})
    picks = pd.concat([read_star(p, centers) for p in star_paths], ignore_index=True)
    for run in sorted(set(picks["experiment"])):
        held = layout.picks_dir(root, run)
        if held.is_dir() and any(held.iterdir()):
            raise CziiInputError(held, "already holds picks (never replaced): import into a new --out")
    picks_io.write_run_picks(root, picks)
    return picks
