"""Shared pytest fixtures."""
from __future__ import annotations

import math
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


@pytest.fixture(scope="session")
def real_picks(real_root):
    """The real runs' picks (``experiment, particle_type, x, y, z``, Angstrom)."""
    from czii_kaggle.picks import read_all_picks

    return read_all_picks(real_root)


def _cuts_by_loop(picks, axis, position_A):
    """Reference: (x, y, z, radius of the cut, type) of each pick cutting the plane, by a plain loop."""
    from czii_kaggle import particles

    out = []
    for _, p in picks.iterrows():
        r = particles.get(p["particle_type"]).radius_A
        d = abs(p[axis] - position_A)
        if d < r:
            out.append((p["x"], p["y"], p["z"], math.sqrt(r * r - d * d), p["particle_type"]))
    return out


@pytest.fixture
def cuts_by_loop():
    """:func:`_cuts_by_loop`, the plane sections of picks computed without the library."""
    return _cuts_by_loop
