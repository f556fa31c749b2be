"""Errors the library raises for bad input: each names the file and the problem."""
from __future__ import annotations

from pathlib import Path


class CziiInputError(ValueError):
    """Bad input data: a missing or malformed file, tomogram, picks or submission.

    The message always starts with the offending path (when there is one) so a
    user sees at once which file is wrong and why.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class CziiRunError(RuntimeError):
    """Prediction of one or more runs failed or found nothing; the one-line message says
    which runs, why, and what to do."""
