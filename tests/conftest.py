"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

try:  # Ultralytics binds its logger to the sys.stdout of its first import: import it here, at
    # collection, not inside a test using capsys, whose stream is closed when that test ends
    # (later tests would then print '--- Logging error ---' into their own captured stderr).
    from czii_kaggle.offline import import_ultralytics

    import_ultralytics()
except ImportError:  # the tests that need it skip or fail on their own
    pass

#: The real competition files (no voxels), beside the repository: ``../shared/czii-real``.
REAL_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "czii-real"


@pytest.fixture(scope="session")
def real_root() -> Path:
    """Root of the real Kaggle files (picks, zarr metadata); skips the test when absent."""
    if not REAL_ROOT.is_dir():
        pytest.skip(f"real competition files not found at {REAL_ROOT}")
    return REAL_ROOT
