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

from . import particles
from .errors import CziiInputError
from .outputs import atomic_path

SUBMISSION_COLUMNS: list[str] = ["id", "experiment", "particle_type", "x", "y", "z"]
SOLUTION_COLUMNS: list[str] = ["experiment", "particle_type", "x", "y", "z"]
_XYZ = ["x", "y", "z"]
_STR_COLUMNS = ("experiment", "particle_type")
#: How many example row numbers a problem lists.
_N_EXAMPLES = 5
#: Largest plausible coordinate (Angstrom): 0.1 mm, far beyond any tomogram (Kaggle's span about
#: 6300 x 6300 x 1840). Beyond it the metric's distances would overflow.
MAX_COORDINATE_A = 1e6


def _rows(mask) -> str:
    """``"rows 3, 7 (2 rows)"``-style text for the True positions of ``mask``."""
    where = np.flatnonzero(np.asarray(mask, dtype=bool))
    shown = ", ".join(str(i) for i in where[:_N_EXAMPLES])
    more = f", ... ({len(where)} rows)" if len(where) > _N_EXAMPLES else ""
    return f"row{'s' if len(where) > 1 else ''} {shown}{more}"


def _problem_text(what: str, problems: list[str]) -> str:
    return f"invalid {what}, {len(problems)} problem(s): " + "; ".join(problems)  # one line


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


def _content_problems(df: pd.DataFrame, *, non_negative: bool) -> tuple[list[str], pd.DataFrame]:
    """Problems of the experiment, particle_type and x/y/z columns present in ``df``.

    Returns the problems and a copy with those columns' dtypes fixed
    (``str`` names, ``float64`` Angstrom coordinates).
    """
    problems: list[str] = []
    out = df.copy()
    if "experiment" in df.columns:
        exp = df["experiment"]
        empty = exp.isna().to_numpy() | (exp.astype(str).str.strip() == "").to_numpy()
        if empty.any():
            problems.append(f"empty experiment name in {_rows(empty)}")
        out["experiment"] = exp.astype(str)
    if "particle_type" in df.columns:
        kind = df["particle_type"]
        unknown = ~kind.isin(particles.NAMES).to_numpy()
        if unknown.any():
            names = sorted(set(kind[unknown].astype(str)))
            problems.append(
                f"unknown particle_type {', '.join(map(repr, names))} in {_rows(unknown)}; "
                f"known: {', '.join(particles.NAMES)}"
            )
        out["particle_type"] = kind.astype(str)
    for col in _XYZ:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        was_missing = df[col].isna().to_numpy()
        not_number = np.isnan(values) & ~was_missing
        if not_number.any():
            problems.append(f"{col}: not a number in {_rows(not_number)}")
        not_finite = ~np.isfinite(values) & ~not_number
        if not_finite.any():
            problems.append(f"{col}: missing or infinite value in {_rows(not_finite)}")
        if non_negative:
            negative = values < 0
            if negative.any():
                problems.append(f"{col}: negative coordinate in {_rows(negative)}")
        too_far = np.isfinite(values) & (np.abs(values) > MAX_COORDINATE_A)
        if too_far.any():
            problems.append(f"{col}: coordinate beyond {MAX_COORDINATE_A:g} Angstrom (not a position in a "
                            f"tomogram) in {_rows(too_far)}")
        out[col] = values
    return problems, out


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
    problems: list[str] = []
    columns = [str(c) for c in sub.columns]
    missing = [c for c in SUBMISSION_COLUMNS if c not in columns]
    extra = [c for c in columns if c not in SUBMISSION_COLUMNS]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected column(s) {', '.join(map(repr, extra))}")
    if columns and "id" in columns and columns[0] != "id":
        problems.append(f"the first column must be 'id', not {columns[0]!r}")
    repeated_cols = sorted({c for c in columns if columns.count(c) > 1})
    if repeated_cols:
        problems.append(f"repeated column(s) {', '.join(map(repr, repeated_cols))}")
        raise CziiInputError(path, _problem_text("submission", problems))

    content, out = _content_problems(sub.reset_index(drop=True), non_negative=True)
    problems += content
    if "id" in columns:
        ids = pd.to_numeric(sub["id"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        not_int = ~np.isfinite(ids) | (ids != np.round(ids))
        if not_int.any():
            problems.append(f"id: not an integer in {_rows(not_int)}")
        repeated = pd.Series(ids).duplicated(keep=False).to_numpy() & ~not_int
        if repeated.any():
            problems.append(f"id: repeated value in {_rows(repeated)}")
        if not not_int.any():
            out["id"] = ids.astype(np.int64)

    if problems:
        raise CziiInputError(path, _problem_text("submission", problems))
    return out[SUBMISSION_COLUMNS].reset_index(drop=True)


def _empty_submission() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series([], dtype=np.int64),
            "experiment": pd.Series([], dtype=str),
            "particle_type": pd.Series([], dtype=str),
            **{c: pd.Series([], dtype=np.float64) for c in _XYZ},
        }
    )


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
        raise CziiInputError(None, f"picks lack column(s) {', '.join(missing)}")
    if len(picks) == 0:
        return _empty_submission()
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
    problems: list[str] = []
    missing = [c for c in SOLUTION_COLUMNS if c not in df.columns]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    content, out = _content_problems(df, non_negative=False)
    problems += content
    if not missing and not content:
        dup = out.duplicated(subset=["experiment", *_XYZ], keep=False).to_numpy()
        if dup.any():
            problems.append(f"repeated (experiment, x, y, z) point in {_rows(dup)}")
    if problems:
        raise CziiInputError(path, _problem_text("solution", problems))
    return out[SOLUTION_COLUMNS].reset_index(drop=True)
