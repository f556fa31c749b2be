"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

#: The real competition files (no voxels), beside the repository: ``../shared/czii-real``.
REAL_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "czii-real"


@pytest.fixture(scope="session")
def real_root() -> Path:
    """Root of the real Kaggle files (picks, zarr metadata); skips the test when absent."""
    if not REAL_ROOT.is_dir():
        pytest.skip(f"real competition files not found at {REAL_ROOT}")
    return REAL_ROOT
