"""Pick and volume statistics (czii_kaggle.stats)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import particles, stats
from czii_kaggle.errors import CziiInputError

V = 10.0  # voxel size (Angstrom) of the synthetic volumes


def _picks(rows, experiment="run_a"):
    """rows: (particle_type, x, y, z) in Angstrom."""
    df = pd.DataFrame(rows, columns=["particle_type", "x", "y", "z"])
    df.insert(0, "experiment", experiment)
    return df


# --------------------------------------------------------------------------- tables


def test_pick_counts_match_the_real_files_table(real_picks):
    counts = stats.pick_counts(real_picks)
    assert list(counts.columns) == list(particles.NAMES)
    assert list(counts.index) == sorted(counts.index) and len(counts) == 5
    assert counts.dtypes.eq(np.int64).all()
    # the table of ../shared/czii-real/README.md
    assert counts.loc["TS_5_4"].tolist() == [46, 10, 12, 31, 30, 11]
    assert counts.loc["TS_73_6"].tolist() == [95, 12, 14, 46, 28, 22]
    assert counts.to_numpy().sum() == len(real_picks)


def test_pick_counts_fill_absent_types_with_zero():
    counts = stats.pick_counts(_picks([("ribosome", 1, 2, 3), ("ribosome", 5, 6, 7)]))
    assert counts.loc["run_a", "ribosome"] == 2
    assert counts.loc["run_a"].drop("ribosome").eq(0).all()


def test_pick_counts_reject_unknown_types_and_missing_columns():
    with pytest.raises(CziiInputError, match=r"^invalid picks, 1 problem\(s\): unknown particle_type 'proteasome'"):
        stats.pick_counts(_picks([("proteasome", 1, 2, 3)]))
    with pytest.raises(CziiInputError, match=r"^invalid picks, 1 problem\(s\): missing column\(s\) x, y, z"):
        stats.pick_counts(pd.DataFrame({"experiment": ["a"], "particle_type": ["ribosome"]}))


def test_nearest_neighbour_distances_within_type_and_run():
    picks = pd.concat(
        [
            _picks([("apo-ferritin", 0, 0, 0), ("apo-ferritin", 100, 0, 0), ("apo-ferritin", 250, 0, 0),
                    ("ribosome", 10, 0, 0)]),
            _picks([("apo-ferritin", 30, 0, 0)], experiment="run_b"),
        ],
        ignore_index=True,
    )
    nn = stats.nearest_neighbour_distances(picks)
    np.testing.assert_allclose(nn[:3], [100, 100, 150])
    assert np.isnan(nn[3]) and np.isnan(nn[4])  # alone of its type / in its run


def test_nearest_neighbour_distances_equal_brute_force_on_real_picks(real_picks):
    nn = stats.nearest_neighbour_distances(real_picks)
    xyz = real_picks[["x", "y", "z"]].to_numpy()
    for (run, name), idx in real_picks.groupby(["experiment", "particle_type"]).indices.items():
        d = np.linalg.norm(xyz[idx, None, :] - xyz[None, idx, :], axis=-1)
        np.fill_diagonal(d, np.inf)
        np.testing.assert_allclose(nn[idx], d.min(axis=1), err_msg=f"{run} {name}")


def test_plane_sections_radius_is_the_sphere_cross_section():
    # ribosome r = 150: d = 90 -> 120 (3-4-5); d = 150 only touches; d = 0 -> full radius
    picks = _picks([("ribosome", 0, 0, 1090), ("ribosome", 0, 0, 1150), ("ribosome", 0, 0, 1000),
                    ("apo-ferritin", 0, 0, 1059.0)])
    cut = stats.plane_sections(picks, "z", 1000.0)
    assert cut.index.tolist() == [0, 2, 3]
    np.testing.assert_allclose(cut["section_radius_A"], [120.0, 150.0, math.sqrt(60**2 - 59**2)])
    with pytest.raises(ValueError, match="axis"):
        stats.plane_sections(picks, "w", 0.0)


def test_busiest_slice_matches_a_slice_by_slice_count(cuts_by_loop):
    picks = _picks([("ribosome", 0, 0, 400.0), ("apo-ferritin", 0, 0, 520.0), ("apo-ferritin", 0, 0, 530.0),
                    ("virus-like-particle", 0, 0, 1500.0)])
    n = 60
    depth = [len(cuts_by_loop(picks, "z", i * V)) for i in range(n)]
    assert stats.busiest_slice(picks, V, n) == int(np.argmax(depth)) and max(depth) == 3
    assert stats.busiest_slice(picks.iloc[:0], V, n) == n // 2


# --------------------------------------------------------------------------- figures


def test_particle_crops_are_centred_on_the_pick_and_nan_outside():
    nz, ny, nx = 12, 30, 40
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    vol = (z * 10000 + y * 100 + x).astype(np.float32)  # each voxel's value names it
    picks = _picks([
        ("ribosome", 204.0, 96.0, 51.0),       # voxel (5, 10, 20) after rounding
        ("ribosome", 10.0, 290.0, 110.0),      # voxel (11, 29, 1): crop runs off two edges
        ("apo-ferritin", 500.0, 100.0, 60.0),  # x = 50 vox: outside, skipped
    ])
    crops = stats.particle_crops(vol, V, picks, size_vox=7)
    assert list(crops) == ["apo-ferritin", "ribosome"]
    assert crops["apo-ferritin"].shape == (0, 7, 7)
    rib = crops["ribosome"]
    assert rib.shape == (2, 7, 7) and rib.dtype == np.float32
    np.testing.assert_array_equal(rib[0], vol[5, 7:14, 17:24])
    assert rib[1, 3, 3] == vol[11, 29, 1]
    # rows beyond y = 29 and columns before x = 0 are NaN, the rest is the volume
    np.testing.assert_array_equal(np.isnan(rib[1]), np.add.outer(np.arange(7) > 3, np.arange(7) < 2) > 0)
    np.testing.assert_array_equal(rib[1, :4, 2:], vol[11, 26:30, 0:5])


def test_average_crop_ignores_nan():
    crops = np.array([[[1.0, np.nan]], [[3.0, np.nan]], [[np.nan, np.nan]]])
    avg = stats.average_crop(crops)
    assert avg[0, 0] == 2.0 and np.isnan(avg[0, 1])
