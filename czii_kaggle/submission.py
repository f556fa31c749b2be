"""Write, read and validate ``submission.csv`` (and solution CSVs) in Kaggle's format.

A submission has the columns ``id, experiment, particle_type, x, y, z``: one row
per predicted particle centre, ``x, y, z`` in Angstrom, ``id`` a unique integer.
Validation collects every problem it finds and raises one
:class:`~czii_kaggle.errors.CziiInputError` that lists them all, each with a
few example row numbers (0 = the first data row, below the CSV header).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import frames, particles
from .errors import CziiInputError
from .frames import MAX_COORDINATE_A, SOLUTION_COLUMNS, SUBMISSION_COLUMNS
from .outputs import atomic_path

_XYZ = ["x", "y", "z"]
_STR_COLUMNS = ("experiment", "particle_type")


def _read_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.is_dir():
        raise CziiInputError(path, "is a folder, not a CSV file")
    if not path.is_file():
        raise CziiInputError(path, "no such file")
    try:
        return pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS})
    except pd.errors.EmptyDataError:
        raise CziiInputError(path, "the file is empty (not even a header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise CziiInputError(path, f"not a readable CSV: {exc}") from None


def validate_submission(sub: pd.DataFrame | str | Path, path: str | Path | None = None) -> pd.DataFrame:
    """Check a submission and return it with clean dtypes.

    Parameters
    ----------
    sub : pandas.DataFrame or path-like
        The submission frame, or the path of a submission CSV.
    path : path-like, optional
        The file to name in errors when ``sub`` is a frame read from a file.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SUBMISSION_COLUMNS` in order: ``id`` int64,
        ``experiment`` / ``particle_type`` str, ``x, y, z`` float64 (Angstrom).

    Raises
    ------
    CziiInputError
        Listing every problem: columns not exactly ``id, experiment,
        particle_type, x, y, z`` with ``id`` first, non-numeric / missing /
        infinite / negative coordinates or beyond :data:`MAX_COORDINATE_A`, unknown particle types, ids that are
        not unique integers, empty experiment names.
    """
    if not isinstance(sub, pd.DataFrame):
        path = sub if path is None else path
        sub = _read_csv(sub)
    return frames.validate(sub, frames.SUBMISSION, path)


def make_submission(picks: pd.DataFrame) -> pd.DataFrame:
    """A submission frame from picks-like rows.

    Parameters
    ----------
    picks : pandas.DataFrame
        Columns ``experiment, particle_type, x, y, z`` (Angstrom); any other
        column (``score``, an old ``id``...) is dropped.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SUBMISSION_COLUMNS`; rows sorted by experiment, then
        particle table order, then input order; ``id`` = 0..n-1 (int64).
        Not validated: :func:`write_submission` validates.
    """
    missing = [c for c in SOLUTION_COLUMNS if c not in picks.columns]
    if missing:
        frames.validate(picks, frames.PICKS)  # raises: names the missing columns
    if len(picks) == 0:
        return frames.empty(frames.SUBMISSION)
    order = {name: i for i, name in enumerate(particles.NAMES)}
    keyed = picks[SOLUTION_COLUMNS].reset_index(drop=True).assign(
        _kind=lambda d: d["particle_type"].map(order),
        _pos=np.arange(len(picks)),
    )
    out = keyed.sort_values(["experiment", "_kind", "_pos"], kind="stable", na_position="last")
    out = out[SOLUTION_COLUMNS].reset_index(drop=True)
    out.insert(0, "id", np.arange(len(out), dtype=np.int64))
    return out


def write_submission(picks: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Make, validate and write ``submission.csv`` (no index); returns the frame written.

    Parent folders are created; the file is written under a temporary name and renamed
    (:func:`czii_kaggle.outputs.atomic_path`). Raises :class:`CziiInputError` naming ``path``
    when the submission is invalid (nothing is written then).
    """
    path = Path(path)
    sub = validate_submission(make_submission(picks), path=path)
    with atomic_path(path) as tmp:
        sub.to_csv(tmp, index=False)
    return sub


def read_solution(path: str | Path) -> pd.DataFrame:
    """Read a solution (ground-truth) CSV: ``experiment, particle_type, x, y, z`` [, ``id``].

    Returns
    -------
    pandas.DataFrame
        Columns ``experiment, particle_type`` (str), ``x, y, z`` (float64, Angstrom);
        any ``id`` or other column is dropped.

    Raises
    ------
    CziiInputError
        Naming ``path`` and listing every problem: missing columns, empty
        experiment names, unknown particle types, non-finite coordinates or beyond
        :data:`MAX_COORDINATE_A`, and
        repeated ``(experiment, x, y, z)`` points (the Kaggle metric rejects those).
    """
    df = _read_csv(path)
    out = frames.validate(df, frames.SOLUTION, path)
    dup = out.duplicated(subset=["experiment", *_XYZ], keep=False).to_numpy()
    if dup.any():
        raise CziiInputError(path, frames.problems_text("solution", [f"repeated (experiment, x, y, z) point in "
                                                                     f"{frames.rows_text(dup)}"]))
    return out[SOLUTION_COLUMNS]
