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


def make_tiny_bundle(folder: Path, keep_all: bool = False) -> Path:
    """A bundle in ``folder`` for fast tests of the detectors' plumbing: the shipped YOLO model, an untrained
    small heatmap network (windows of 16 x 64 x 64 level-1 voxels) and an unfitted ensemble of the two
    (``keep_all``: every merged candidate kept, so that picks come out whatever the untrained scores)."""
    import shutil

    import torch

    from czii_kaggle.aggregate import AggregateConfig, ClassParams
    from czii_kaggle.bundle import DEFAULT_BUNDLE, save_ensemble, save_heatmap_json
    from czii_kaggle.detectors.heatmap import HeatmapConfig
    from czii_kaggle.detectors.heatmap_net import HeatmapUNet
    from czii_kaggle.ensemble import EnsembleConfig
    from czii_kaggle.particles import PARTICLES

    folder.mkdir(parents=True)
    for name in ("model.pt", "model.onnx", "czii_config.json"):
        shutil.copy(DEFAULT_BUNDLE / name, folder / name)
    torch.manual_seed(0)
    torch.save(HeatmapUNet(6, (4, 8, 8)).state_dict(), folder / "heatmap.pt")
    save_heatmap_json(folder, config=HeatmapConfig(channels=(4, 8, 8), window_vox=(16, 64, 64), overlap_vox=8,
                                                   min_peak=0.0).to_dict())
    config = EnsembleConfig()
    if keep_all:
        config = EnsembleConfig(aggregate=AggregateConfig(
            {p.name: ClassParams(min_support=1, conf_threshold=0.0) for p in PARTICLES}))
    save_ensemble(folder, config)
    return folder
