"""Copick JSON picks <-> DataFrame ``experiment, particle_type, x, y, z`` (Angstrom).

One file per (run, particle type), ``{root}/train/overlay/ExperimentRuns/{run}/Picks/{particle}.json``::

    {"pickable_object_name": "ribosome", "user_id": "curation", "session_id": "0",
     "run_name": "TS_5_4", "voxel_spacing": null, "unit": "angstrom",
     "points": [{"location": {"x": 4601.271, "y": 601.066, "z": 600.934},
                 "transformation_": [[1.0, 0.0, 0.0, 0.0], ...], "instance_id": 0}, ...],
     "trust_orientation": true}

Files are written exactly so: the real files equal ``json.dumps(json.load(f))`` byte for byte,
and reading then writing one reproduces it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import frames, layout
from .errors import CziiInputError
from .outputs import write_text
from .particles import NAMES

from .frames import PICKS_COLUMNS  # noqa: F401  (re-exported: the picks frame's columns)
_IDENTITY_4x4 = [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]


def _picks_frame(experiments, particle_types, xyz_A: np.ndarray) -> pd.DataFrame:
    """A picks DataFrame with the canonical columns and dtypes (str names, float64 Angstrom)."""
    xyz_A = np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3)
    return pd.DataFrame(
        {
            "experiment": pd.Series(experiments, dtype=str),
            "particle_type": pd.Series(particle_types, dtype=str),
            "x": xyz_A[:, 0],
            "y": xyz_A[:, 1],
            "z": xyz_A[:, 2],
        }
    )


def _field(doc: dict, key: str, path: Path, kind: type | tuple[type, ...]):
    if key not in doc:
        raise CziiInputError(path, f"missing field {key!r}")
    value = doc[key]
    if not isinstance(value, kind):
        raise CziiInputError(path, f"field {key!r} is {value!r}, not a {getattr(kind, '__name__', kind)}")
    return value


def _point_xyz(point: object, i: int, path: Path) -> tuple[float, float, float]:
    """The ``(x, y, z)`` Angstrom location of ``points[i]``; bad input names the field."""
    where = f"points[{i}]"
    if not isinstance(point, dict) or not isinstance(point.get("location"), dict):
        raise CziiInputError(path, f"field {where}.location missing or not an object")
    loc = point["location"]
    xyz = []
    for axis in ("x", "y", "z"):
        if axis not in loc:
            raise CziiInputError(path, f"missing field {where}.location.{axis}")
        v = loc[axis]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CziiInputError(path, f"field {where}.location.{axis} is {v!r}, not a finite number")
        xyz.append(float(v))
    return tuple(xyz)


def read_picks_file(path: str | Path) -> pd.DataFrame:
    """Read one copick picks JSON file.

    Parameters
    ----------
    path : str or Path
        A ``{particle}.json`` picks file.

    Returns
    -------
    DataFrame
        Columns :data:`PICKS_COLUMNS`: ``experiment`` (the file's ``run_name``),
        ``particle_type`` (its ``pickable_object_name``), ``x, y, z`` float64 in
        Angstrom, one row per point in file order. No points: an empty frame with
        the same columns and dtypes.

    Raises
    ------
    CziiInputError
        Missing file, malformed JSON, a missing field, an unknown particle name,
        a unit other than Angstrom, or a non-numeric location; the message names
        the file and the field.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CziiInputError(path, "no such picks file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CziiInputError(path, f"malformed picks JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CziiInputError(path, "picks JSON is not an object")
    name = _field(doc, "pickable_object_name", path, str)
    if name not in NAMES:
        raise CziiInputError(
            path, f"field 'pickable_object_name' is {name!r}, not a known particle type ({', '.join(NAMES)})"
        )
    run = _field(doc, "run_name", path, str)
    unit = doc.get("unit", "angstrom")
    if unit != "angstrom":
        raise CziiInputError(path, f"field 'unit' is {unit!r}; only 'angstrom' is supported")
    points = _field(doc, "points", path, list)
    xyz_A = np.array([_point_xyz(p, i, path) for i, p in enumerate(points)], dtype=np.float64)
    n = len(points)
    return _picks_frame([run] * n, [name] * n, xyz_A)


def read_run_picks(root: str | Path, run: str, particles: list[str] | None = None) -> pd.DataFrame:
    """Read the ground-truth picks of one training run.

    Parameters
    ----------
    root : str or Path
        Kaggle-layout data root.
    run : str
        Run name, e.g. ``"TS_5_4"``.
    particles : list of str, optional
        Particle types to read (their files must exist); all ``*.json`` in the
        run's ``Picks`` folder when omitted.

    Returns
    -------
    DataFrame
        Columns :data:`PICKS_COLUMNS`, Angstrom; files in sorted order, points in file order.

    Raises
    ------
    CziiInputError
        No ``Picks`` folder, no JSON in it ("empty run"), a bad file, or a file whose
        ``run_name`` / ``pickable_object_name`` disagree with its place.
    """
    d = layout.picks_dir(root, run)
    if not d.is_dir():
        raise CziiInputError(d, f"run {run!r} has no Picks folder")
    if not any(d.glob("*.json")):
        raise CziiInputError(d, f"empty run {run!r}: the Picks folder holds no JSON file")
    if particles is None:
        files = sorted(d.glob("*.json"))
    else:
        unknown = [p for p in particles if p not in NAMES]
        if unknown:
            raise ValueError(f"unknown particle types {unknown}; known types: {', '.join(NAMES)}")
        files = [layout.picks_path(root, run, p) for p in particles]
    frames = []
    for f in files:
        df = read_picks_file(f)
        doc_name = _first_or_none(df, "particle_type")
        if doc_name is not None and doc_name != f.stem:
            raise CziiInputError(f, f"field 'pickable_object_name' is {doc_name!r} but the file is {f.name}")
        doc_run = _first_or_none(df, "experiment")
        if doc_run is not None and doc_run != run:
            raise CziiInputError(f, f"field 'run_name' is {doc_run!r} but the file is in run {run!r}")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _first_or_none(df: pd.DataFrame, column: str) -> str | None:
    return None if df.empty else str(df[column].iloc[0])


def read_all_picks(root: str | Path, runs: list[str] | None = None) -> pd.DataFrame:
    """Ground-truth picks of several training runs (all runs with a ``Picks`` folder by default).

    Returns
    -------
    DataFrame
        Columns :data:`PICKS_COLUMNS`, Angstrom, runs in the given (or sorted) order.
    """
    if runs is None:
        runs = layout.list_pick_runs(root)
        if not runs:
            raise CziiInputError(layout.overlay_runs_dir(root), "no run has a Picks folder")
    return pd.concat([read_run_picks(root, r) for r in runs], ignore_index=True)


def picks_document(run: str, particle: str, xyz_A: np.ndarray) -> dict:
    """The copick JSON document of one (run, particle type), keys in the real files' order.

    Parameters
    ----------
    xyz_A : array-like, shape (n, 3)
        Point locations ``x, y, z`` in Angstrom.
    """
    if particle not in NAMES:
        raise ValueError(f"unknown particle type {particle!r}; known types: {', '.join(NAMES)}")
    xyz_A = np.asarray(xyz_A, dtype=np.float64)
    if xyz_A.size == 0:
        xyz_A = xyz_A.reshape(0, 3)
    if xyz_A.ndim != 2 or xyz_A.shape[1] != 3:
        raise ValueError(f"xyz_A must have shape (n, 3), got {xyz_A.shape}")
    if not np.isfinite(xyz_A).all():
        raise ValueError(f"xyz_A of {run}/{particle} holds non-finite coordinates")
    return {
        "pickable_object_name": particle,
        "user_id": "curation",
        "session_id": "0",
        "run_name": run,
        "voxel_spacing": None,
        "unit": "angstrom",
        "points": [
            {
                "location": {"x": x, "y": y, "z": z},
                "transformation_": [row[:] for row in _IDENTITY_4x4],
                "instance_id": 0,
            }
            for x, y, z in xyz_A.tolist()
        ],
        "trust_orientation": True,
    }


def write_picks_file(path: str | Path, run: str, particle: str, xyz_A: np.ndarray) -> Path:
    """Write one copick picks JSON file exactly as the real ones (creating folders).

    Parameters
    ----------
    path : str or Path
        File to write.
    run : str
        ``run_name``.
    particle : str
        ``pickable_object_name`` (one of :data:`czii_kaggle.particles.NAMES`).
    xyz_A : array-like, shape (n, 3)
        Point locations ``x, y, z`` in Angstrom (n may be 0).

    Returns
    -------
    Path
        ``path`` (written under a temporary name, then renamed).
    """
    return write_text(path, json.dumps(picks_document(run, particle, xyz_A)))


def write_run_picks(root: str | Path, picks_df: pd.DataFrame) -> list[Path]:
    """Write a picks DataFrame as copick files under ``root``'s training overlay.

    Every experiment in ``picks_df`` gets all six particle files, like the real
    data: a type with no row in that experiment gets a file with empty ``points``.

    Parameters
    ----------
    root : str or Path
        Kaggle-layout data root.
    picks_df : DataFrame
        Columns :data:`PICKS_COLUMNS` (others ignored), ``x, y, z`` in Angstrom.
        Rows keep their order within each file.

    Returns
    -------
    list of Path
        The files written, by experiment (sorted) then particle type.
    """
    picks_df = frames.validate(picks_df, frames.PICKS)
    xyz_by_key = {
        key: g[["x", "y", "z"]].to_numpy(dtype=np.float64)
        for key, g in picks_df.groupby(["experiment", "particle_type"], sort=False)
    }
    written = []
    for run in sorted(set(picks_df["experiment"])):
        for particle in NAMES:
            xyz_A = xyz_by_key.get((run, particle), np.empty((0, 3)))
            written.append(write_picks_file(layout.picks_path(root, run, particle), run, particle, xyz_A))
    return written
