"""The data frames that pass between stages: their columns, declared once, and one validator.

- :data:`PICKS`: ``experiment, particle_type, x, y, z`` (:mod:`czii_kaggle.picks`, the simulator);
- :data:`SOLUTION`: the picks' columns (:func:`czii_kaggle.submission.read_solution`; a solution CSV
  may hold an ``id`` first, like a submission);
- :data:`SUBMISSION`: exactly ``id, experiment, particle_type, x, y, z`` (:mod:`czii_kaggle.submission`);
- :data:`DETECTIONS`: ``experiment, z, x, y, w, h, confidence, class_id``, one row per box of one
  slice (:mod:`czii_kaggle.detect`);
- :data:`CANDIDATES`: ``experiment, particle_type, x, y, z, score`` (+ ``n_slices, share`` where
  made), scored 3D candidates before thresholds: every detector's output, :mod:`czii_kaggle.aggregate`,
  :mod:`czii_kaggle.ensemble`.

Every coordinate and box size is in **Angstrom** (``x, y, z``; detections' ``z, x, y`` box centre and
``w, h`` box size). ``class_id`` is the index in :data:`czii_kaggle.particles.PARTICLES`. A column
name means the same in every frame, so the kind of each column is declared once (:data:`COLUMN_KINDS`).

:func:`validate` is the one check: it lists every problem of a frame in one line (a few example row
numbers each) and raises :class:`~czii_kaggle.errors.CziiInputError` naming the file (when there is
one) and the frame; it returns a copy with clean dtypes. :func:`empty` gives a frame's empty form.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .errors import CziiInputError
from .particles import NAMES, PARTICLES

#: Largest plausible coordinate (Angstrom): 0.1 mm, far beyond any tomogram (Kaggle's span about
#: 6300 x 6300 x 1840). Beyond it the metric's distances would overflow.
MAX_COORDINATE_A = 1e6
#: How many example row numbers a problem lists.
N_EXAMPLES = 5

#: What each column holds: ``name`` (non-empty text), ``particle`` (a name of the particle table),
#: ``coord`` (finite Angstrom, at most :data:`MAX_COORDINATE_A` in size), ``size`` (finite, >= 0),
#: ``number`` (finite), ``class`` (an integer index of the particle table), ``count`` (integer >= 0),
#: ``id`` (unique integers).
COLUMN_KINDS: dict[str, str] = {
    "id": "id",
    "experiment": "name",
    "particle_type": "particle",
    "x": "coord", "y": "coord", "z": "coord",
    "w": "size", "h": "size",
    "confidence": "number", "score": "number", "share": "number",
    "class_id": "class",
    "n_slices": "count",
}  # fmt: skip
_DTYPES = {"name": object, "particle": object, "coord": np.float64, "size": np.float64, "number": np.float64,
           "class": np.int64, "count": np.int64, "id": np.int64}


@dataclass(frozen=True)
class Frame:
    """A frame's columns in order; ``optional`` ones may be absent (unless a caller needs them).

    ``exact``: no other column may be present and the first column must come first (a file Kaggle
    reads); ``non_negative``: coordinates below zero are a problem (positions inside a tomogram).
    """

    name: str
    columns: tuple[str, ...]
    optional: tuple[str, ...] = ()
    exact: bool = False
    non_negative: bool = False

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.optional)


PICKS_COLUMNS: list[str] = ["experiment", "particle_type", "x", "y", "z"]
SOLUTION_COLUMNS: list[str] = list(PICKS_COLUMNS)
SUBMISSION_COLUMNS: list[str] = ["id", *PICKS_COLUMNS]
DETECTION_COLUMNS: list[str] = ["experiment", "z", "x", "y", "w", "h", "confidence", "class_id"]
CANDIDATE_COLUMNS: tuple[str, ...] = (*PICKS_COLUMNS, "score", "n_slices", "share")

PICKS = Frame("picks", tuple(PICKS_COLUMNS))
SOLUTION = Frame("solution", tuple(SOLUTION_COLUMNS))
SUBMISSION = Frame("submission", tuple(SUBMISSION_COLUMNS), exact=True, non_negative=True)
DETECTIONS = Frame("detections", tuple(DETECTION_COLUMNS))
#: Scored 3D candidates, a detector's output before thresholds: ``n_slices`` (slices, or detectors,
#: that support a candidate) and ``share`` (its score's share among rival types) where made.
CANDIDATES = Frame("candidates", CANDIDATE_COLUMNS, optional=("n_slices", "share"))


def empty(frame: Frame) -> pd.DataFrame:
    """An empty frame with all of ``frame``'s columns and their dtypes."""
    return pd.DataFrame({c: pd.Series([], dtype=_DTYPES[COLUMN_KINDS[c]]) for c in frame.columns})


def rows_text(mask) -> str:
    """``"rows 3, 7"``-style text for the True positions of ``mask`` (at most :data:`N_EXAMPLES`)."""
    where = np.flatnonzero(np.asarray(mask, dtype=bool))
    shown = ", ".join(str(i) for i in where[:N_EXAMPLES])
    more = f", ... ({len(where)} rows)" if len(where) > N_EXAMPLES else ""
    return f"row{'s' if len(where) > 1 else ''} {shown}{more}"


def problems_text(what: str, problems: list[str]) -> str:
    """The one-line message: ``invalid <what>, n problem(s): a; b; ...``."""
    return f"invalid {what}, {len(problems)} problem(s): " + "; ".join(problems)


def _column_problems(col: str, values: pd.Series, frame: Frame) -> tuple[list[str], object]:
    """Problems of one column and its values with the kind's dtype (where they convert)."""
    kind = COLUMN_KINDS[col]
    problems: list[str] = []
    if kind in ("name", "particle"):
        missing = values.isna().to_numpy()
        text = values.astype(str)
        if kind == "name":
            bad = missing | (text.str.strip() == "").to_numpy()
            if bad.any():
                problems.append(f"empty {col} name in {rows_text(bad)}")
        else:
            bad = missing | ~text.isin(NAMES).to_numpy()
            if bad.any():
                names = sorted(set(text[bad]))
                problems.append(f"unknown {col} {', '.join(map(repr, names))} in {rows_text(bad)}; "
                                f"known: {', '.join(NAMES)}")
        return problems, text.to_numpy(dtype=object)
    if values.dtype == bool:
        problems.append(f"{col}: true/false values, not numbers")
        return problems, None
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    finite = np.isfinite(numbers)
    if kind in ("class", "count", "id"):
        not_int = ~finite | (numbers != np.round(numbers))
        if not_int.any():
            problems.append(f"{col}: not an integer in {rows_text(not_int)}")
        if kind == "count" and (numbers < 0).any():
            problems.append(f"{col}: negative value in {rows_text(numbers < 0)}")
        if kind == "class":
            outside = finite & ((numbers < 0) | (numbers >= len(PARTICLES)))
            if outside.any():
                problems.append(f"{col}: outside 0..{len(PARTICLES) - 1} in {rows_text(outside)}")
        if kind == "id":
            repeated = pd.Series(numbers).duplicated(keep=False).to_numpy() & ~not_int
            if repeated.any():
                problems.append(f"{col}: repeated value in {rows_text(repeated)}")
        return problems, (None if problems else numbers.astype(np.int64))
    was_missing = values.isna().to_numpy()
    not_number = np.isnan(numbers) & ~was_missing
    if not_number.any():
        problems.append(f"{col}: not a number in {rows_text(not_number)}")
    not_finite = ~np.isfinite(numbers) & ~not_number
    if not_finite.any():
        problems.append(f"{col}: missing or infinite value in {rows_text(not_finite)}")
    if kind == "coord":
        if frame.non_negative and (numbers < 0).any():
            problems.append(f"{col}: negative coordinate in {rows_text(numbers < 0)}")
        too_far = finite & (np.abs(numbers) > MAX_COORDINATE_A)
        if too_far.any():
            problems.append(f"{col}: coordinate beyond {MAX_COORDINATE_A:g} Angstrom (not a position in a "
                            f"tomogram) in {rows_text(too_far)}")
    elif kind == "size" and (numbers < 0).any():
        problems.append(f"{col}: negative value in {rows_text(numbers < 0)}")
    return problems, numbers


def validate(df: pd.DataFrame, frame: Frame, path: str | Path | None = None, *, what: str | None = None,
             need: Iterable[str] = ()) -> pd.DataFrame:
    """Check ``df`` against ``frame`` and return a copy with clean dtypes.

    Parameters
    ----------
    df : pandas.DataFrame
        The frame to check; columns beyond ``frame``'s are kept (and are a problem when ``frame.exact``).
    frame : Frame
        :data:`PICKS`, :data:`SOLUTION`, :data:`SUBMISSION`, :data:`DETECTIONS` or :data:`CANDIDATES`.
    path : path-like, optional
        The file the frame was read from or is written to, named first in the error.
    what : str, optional
        What the frame is, for the error (default ``frame.name``: "picks", "solution" ...).
    need : iterable of str
        Optional columns of ``frame`` this caller needs.

    Returns
    -------
    pandas.DataFrame
        ``frame``'s columns present, in order, then any other columns; index 0..n-1; names ``str``,
        coordinates and scores ``float64`` (Angstrom), ``id``, ``class_id`` and ``n_slices`` ``int64``.

    Raises
    ------
    CziiInputError
        One line listing every problem, e.g. ``invalid picks, 2 problem(s): missing column(s) z;
        x: missing or infinite value in rows 3, 7``: not a DataFrame, missing, repeated or (``exact``)
        unexpected columns, empty names, unknown particle types, values that are not numbers, NaN or
        infinite, coordinates beyond :data:`MAX_COORDINATE_A` (or negative, ``non_negative``), class ids
        outside the particle table, counts or ids that are not integers, repeated ids.
    """
    what = frame.name if what is None else what
    if not isinstance(df, pd.DataFrame):
        raise CziiInputError(path, f"{what} must be a pandas DataFrame, not {type(df).__name__}")
    columns = [str(c) for c in df.columns]
    problems: list[str] = []
    required = [*frame.required, *(c for c in need if c not in frame.required)]
    missing = [c for c in required if c not in columns]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}; needs {', '.join(required)}")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        problems.append(f"repeated column(s) {', '.join(map(repr, repeated))}")
    if frame.exact:
        extra = [c for c in columns if c not in frame.columns]
        if extra:
            problems.append(f"unexpected column(s) {', '.join(map(repr, extra))}")
        if columns and frame.columns[0] in columns and columns[0] != frame.columns[0]:
            problems.append(f"the first column must be {frame.columns[0]!r}, not {columns[0]!r}")
    if repeated:
        raise CziiInputError(path, problems_text(what, problems))
    out = df.reset_index(drop=True)
    out.columns = columns
    clean = {}
    for col in frame.columns:
        if col in columns:
            col_problems, values = _column_problems(col, out[col], frame)
            problems += col_problems
            clean[col] = values
    if problems:
        raise CziiInputError(path, problems_text(what, problems))
    ordered = [c for c in frame.columns if c in columns] + [c for c in columns if c not in frame.columns]
    out = out[ordered].copy()
    for col, values in clean.items():
        out[col] = values
    return out
