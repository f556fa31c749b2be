"""MRC tomograms (IMOD, RELION, AreTomo, Warp) into the Kaggle layout, so that every detector reads them.

Labs keep reconstructed tomograms as MRC files (``.mrc``, ``.rec``); the detectors read OME-Zarr in the Kaggle
layout. :func:`import_mrc` writes each MRC file as ``{root}/{split}/static/ExperimentRuns/{run}/VoxelSpacing10.000/
{type}.zarr`` (the run named after the file; the folder name is only a name, the voxel size is the file's, kept in
``.zattrs``), after which ``czii-kaggle predict --data ROOT`` runs the bundle's detectors on them, each at the voxel
size it was trained at. Needs ``mrcfile`` (the ``copick`` extra; not in the offline Kaggle archive).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import layout, omezarr
from .errors import CziiInputError

#: File endings taken off a file's name to name its run (the longest that matches).
MRC_SUFFIXES = (".mrc", ".rec", ".map", ".mrcs")
#: A header voxel size at or below this (Angstrom) is taken as unset: IMOD writes 1.0 where it has none.
UNSET_VOXEL_A = 1.0
REPORT_COLUMNS = ["experiment", "source", "status", "voxel_size_A", "shape", "error"]


def run_name(path: str | Path) -> str:
    """The run an MRC file becomes: its name without its MRC ending (``TS_01.rec`` -> ``TS_01``)."""
    name = Path(path).name
    for suffix in MRC_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def read_mrc(path: str | Path, voxel_size_A: float | None = None) -> tuple[np.ndarray, float]:
    """One MRC tomogram as float32 ``(z, y, x)`` voxels and its voxel size (Angstrom).

    Parameters
    ----------
    path : str or Path
        The MRC file; read only, memory-mapped.
    voxel_size_A : float, optional
        Overrides the header's voxel size (needed where the header has none: 0 or IMOD's 1.0).

    Raises
    ------
    CziiInputError
        Naming the file: not a readable MRC file, not a 3D volume, no voxel size, or no contrast.
    """
    path = Path(path)
    try:
        import mrcfile
    except ImportError:
        raise CziiInputError(path, "reading MRC files needs mrcfile: pip install -e '.[copick]'") from None
    if not path.is_file():
        raise CziiInputError(path, "no such MRC file")
    try:
        with mrcfile.mmap(path, mode="r", permissive=False) as m:
            if m.data is None or m.data.ndim != 3 or min(m.data.shape) < 2:
                shape = None if m.data is None else tuple(m.data.shape)
                raise CziiInputError(path, f"not a 3D tomogram (data of shape {shape})")
            header_A = float(m.voxel_size.x)
            volume = np.array(m.data, dtype=np.float32)  # a copy: the file stays as it is
    except CziiInputError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise CziiInputError(path, f"not a readable MRC file ({exc})") from None
    if voxel_size_A is None:
        if not np.isfinite(header_A) or header_A <= UNSET_VOXEL_A:
            raise CziiInputError(path, f"its header gives no voxel size ({header_A:g} A): pass --voxel-size")
        voxel_size_A = header_A
    if not np.isfinite(volume).any() or np.nanmax(volume) == np.nanmin(volume):
        raise CziiInputError(path, "no contrast (every voxel one value)")
    return volume, float(voxel_size_A)


def import_mrc(paths: list[str | Path], root: str | Path, split: str = "test", voxel_size_A: float | None = None,
               tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE) -> pd.DataFrame:
    """Write MRC tomograms into a Kaggle-layout root, one run per file; returns one report row per file.

    Each tomogram is written whole or not at all (:func:`czii_kaggle.omezarr.write_tomogram`, 3 levels); a
    file that cannot be read is a ``failed`` row and the others are written. The input files are only read.

    Raises
    ------
    CziiInputError
        Before anything is written: two files that would name the same run, or a run whose tomogram already
        exists under ``root`` (never replaced).
    """
    root = Path(root)
    names = [run_name(p) for p in paths]
    seen: dict[str, Path] = {}
    for name, p in zip(names, paths):
        if name in seen:
            raise CziiInputError(Path(p), f"would be run {name!r}, as {seen[name]} is: rename one of them")
        seen[name] = Path(p)
        target = layout.tomogram_path(root, split, name, tomo_type)
        if target.exists():
            raise CziiInputError(target, "already exists (import-mrc never replaces a tomogram): choose another --out")
    rows = []
    for name, p in zip(names, paths):
        try:
            volume, vs = read_mrc(p, voxel_size_A)
            omezarr.write_tomogram(layout.tomogram_path(root, split, name, tomo_type), volume, vs)
        except CziiInputError as exc:
            rows.append({"experiment": name, "source": str(p), "status": "failed", "voxel_size_A": np.nan,
                         "shape": "", "error": str(exc)})
            continue
        rows.append({"experiment": name, "source": str(p), "status": "ok", "voxel_size_A": vs,
                     "shape": "x".join(map(str, volume.shape)), "error": ""})
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)
