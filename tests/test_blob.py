"""The training-free blob floor: candidates in the aggregate frame, size windows per type."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import blob, metric, submission, tune
from czii_kaggle.aggregate import CANDIDATE_COLUMNS, select
from czii_kaggle.particles import BY_NAME

VS = 20.0


def _spheres(shape, centres_vox, radii_vox, seed=0, noise=0.3):
    """Dark balls (dense = dark) in Gaussian noise."""
    z, y, x = np.indices(shape, dtype=np.float32)
    vol = np.random.default_rng(seed).normal(0.0, noise, shape).astype(np.float32)
    for (cz, cy, cx), r in zip(centres_vox, radii_vox):
        vol -= ((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r**2).astype(np.float32)
    return vol


@pytest.fixture(scope="module")
def scene():
    big, small = BY_NAME["ribosome"].radius_A / VS, BY_NAME["apo-ferritin"].radius_A / VS
    centres = [(20, 20, 20), (20, 20, 60), (20, 60, 40), (20, 45, 15), (20, 50, 70)]
    radii = [big, big, small, small, small]
    types = ["ribosome", "ribosome", "apo-ferritin", "apo-ferritin", "apo-ferritin"]
    vol = _spheres((40, 80, 90), centres, radii)
    truth = pd.DataFrame({"experiment": "r", "particle_type": types,
                          "x": [c[2] * VS for c in centres], "y": [c[1] * VS for c in centres],
                          "z": [c[0] * VS for c in centres]})
    return vol, truth


def test_candidates_frame(scene):
    vol, _ = scene
    c = blob.blob_candidates(vol, VS, "r")
    assert list(c.columns) == list(CANDIDATE_COLUMNS)
    assert c["score"].between(0, 1).all() and c["share"].between(0, 1).all() and (c["n_slices"] == 1).all()
    assert set(c["experiment"]) == {"r"}


def test_each_type_found_at_its_own_size(scene):
    vol, truth = scene
    c = blob.blob_candidates(vol, VS, "r")
    for _, t in truth.iterrows():
        own = c[c["particle_type"] == t.particle_type]
        d = np.sqrt((own["x"] - t.x) ** 2 + (own["y"] - t.y) ** 2 + (own["z"] - t.z) ** 2)
        best = own.loc[d.idxmin()]
        assert d.min() <= 0.5 * BY_NAME[t.particle_type].radius_A
        # the size window that fits wins against the other size at the centre
        other = c[c["particle_type"] == ({"ribosome", "apo-ferritin"} - {t.particle_type}).pop()]
        d_other = np.sqrt((other["x"] - t.x) ** 2 + (other["y"] - t.y) ** 2 + (other["z"] - t.z) ** 2)
        rival = other.loc[d_other <= 0.5 * BY_NAME[t.particle_type].radius_A, "score"]
        assert best["score"] > (rival.max() if len(rival) else 0.0)
    # tuned through the existing thresholds and NMS, the floor scores these clean balls well
    config, _ = tune.tune_thresholds(c, truth, blob.start_config(), support_grid=(1,))
    table = metric.score_table(truth, submission.make_submission(select(c, config)))
    assert table.loc["ribosome", "f_beta"] > 0.9 and table.loc["apo-ferritin", "f_beta"] > 0.9


def test_origin_shifts_coordinates(scene):
    vol, _ = scene
    a = blob.blob_candidates(vol, VS, "r")
    b = blob.blob_candidates(vol, VS, "r", origin_A=5.0)
    np.testing.assert_allclose(b[["x", "y", "z"]].to_numpy(), a[["x", "y", "z"]].to_numpy() + 5.0)


def test_bad_config():
    with pytest.raises(ValueError):
        blob.BlobConfig(inner_fraction=1.5, outer_fraction=1.0)
    with pytest.raises(ValueError):
        blob.BlobConfig(level=3)


def test_map_candidates_peaks_and_shares():
    """The shared second half: a peak in one type's map is that type's candidate, scored and shared against the
    best other type's response at the voxel; a wrong number of maps is refused."""
    from czii_kaggle.particles import PARTICLES

    shape = (20, 30, 30)
    maps = [np.zeros(shape, np.float32) for _ in PARTICLES]
    k = [p.name for p in PARTICLES].index("thyroglobulin")
    maps[k][10, 12, 20] = 6.0
    maps[(k + 1) % len(PARTICLES)][10, 12, 20] = 2.0  # a weaker rival at the same voxel
    c = blob.map_candidates(maps, VS, "r", blob.BlobConfig(), origin_A=5.0)
    assert list(c.columns) == list(CANDIDATE_COLUMNS)
    own = c[c["particle_type"] == "thyroglobulin"]
    assert len(own) == 1
    row = own.iloc[0]
    assert (row.x, row.y, row.z) == (5.0 + 20 * VS, 5.0 + 12 * VS, 5.0 + 10 * VS)
    assert row.score == pytest.approx(6.0 / (6.0 + blob.BlobConfig().score_half_z))
    assert row.share == pytest.approx(6.0 / 8.0)
    assert set(c["particle_type"]) == {"thyroglobulin", PARTICLES[(k + 1) % len(PARTICLES)].name}
    with pytest.raises(ValueError, match="one map per type"):
        blob.map_candidates(maps[:-1], VS, "r")
