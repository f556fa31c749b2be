"""Copick JSON picks <-> DataFrame (czii_kaggle.picks)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import layout, picks
from czii_kaggle.errors import CziiInputError
from czii_kaggle.particles import NAMES

#: Pick counts of the real runs, copied from ../shared/czii-real/README.md (in NAMES order).
README_COUNTS = {
    "TS_5_4": [46, 10, 12, 31, 30, 11],
    "TS_69_2": [35, 12, 16, 37, 34, 9],
    "TS_6_4": [58, 9, 12, 74, 30, 10],
    "TS_6_6": [41, 14, 11, 23, 35, 19],
    "TS_73_6": [95, 12, 14, 46, 28, 22],
}


def _doc(**overrides):
    doc = {
        "pickable_object_name": "ribosome",
        "user_id": "curation",
        "session_id": "0",
        "run_name": "TS_1",
        "voxel_spacing": None,
        "unit": "angstrom",
        "points": [
            {"location": {"x": 1.5, "y": 2.0, "z": 3}, "transformation_": [], "instance_id": 0},
            {"location": {"x": 4.0, "y": 5.0, "z": 6.0}, "transformation_": [], "instance_id": 0},
        ],
        "trust_orientation": True,
    }
    doc.update(overrides)
    return doc


def _write(tmp_path, doc, name="ribosome.json"):
    f = tmp_path / name
    f.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return f


def _assert_picks_dtypes(df):
    assert list(df.columns) == picks.PICKS_COLUMNS
    assert all(df[c].dtype == np.float64 for c in "xyz")
    assert pd.api.types.is_string_dtype(df["experiment"])
    assert pd.api.types.is_string_dtype(df["particle_type"])


# ------------------------------------------------------------------ real files


def test_real_counts_match_readme(real_root):
    df = picks.read_all_picks(real_root)
    _assert_picks_dtypes(df)
    counts = df.groupby(["experiment", "particle_type"]).size().unstack()[list(NAMES)]
    assert counts.to_dict("index") == {r: dict(zip(NAMES, c)) for r, c in README_COUNTS.items()}


def test_real_coordinates_are_angstrom(real_root):
    df = picks.read_all_picks(real_root)
    assert df[["x", "y", "z"]].min().min() > 0
    assert df[["x", "y"]].max().max() < 630 * 10.02 and df["z"].max() < 184 * 10.02


def test_real_first_point(real_root):
    df = picks.read_run_picks(real_root, "TS_5_4", particles=["ribosome"])
    first = json.loads(layout.picks_path(real_root, "TS_5_4", "ribosome").read_text())["points"][0]["location"]
    assert tuple(df.iloc[0][["x", "y", "z"]]) == (first["x"], first["y"], first["z"])
    assert set(df["experiment"]) == {"TS_5_4"} and set(df["particle_type"]) == {"ribosome"}


def test_real_files_round_trip_byte_for_byte(real_root, tmp_path):
    df = picks.read_all_picks(real_root)
    written = picks.write_run_picks(tmp_path, df)
    originals = sorted(layout.overlay_runs_dir(real_root).glob("*/Picks/*.json"))
    assert len(originals) == len(written) == 30
    for f in written:
        assert f.read_bytes() == (real_root / f.relative_to(tmp_path)).read_bytes(), f


def test_read_run_picks_particle_subset(real_root):
    df = picks.read_run_picks(real_root, "TS_6_4", particles=["thyroglobulin", "apo-ferritin"])
    assert df["particle_type"].value_counts().to_dict() == {"apo-ferritin": 58, "thyroglobulin": 30}
    assert list(dict.fromkeys(df["particle_type"])) == ["thyroglobulin", "apo-ferritin"]
    with pytest.raises(ValueError, match="unknown particle"):
        picks.read_run_picks(real_root, "TS_6_4", particles=["ferritin"])


def test_read_all_picks_given_runs(real_root):
    df = picks.read_all_picks(real_root, runs=["TS_73_6", "TS_5_4"])
    assert list(dict.fromkeys(df["experiment"])) == ["TS_73_6", "TS_5_4"]
    assert len(df) == sum(README_COUNTS["TS_73_6"]) + sum(README_COUNTS["TS_5_4"])


# ------------------------------------------------------------------ writing


def test_write_picks_file_format(tmp_path):
    f = picks.write_picks_file(tmp_path / "a" / "beta-amylase.json", "TS_9", "beta-amylase", [[1.0, 2.5, 3.25]])
    text = f.read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc)
    assert list(doc) == [
        "pickable_object_name", "user_id", "session_id", "run_name",
        "voxel_spacing", "unit", "points", "trust_orientation",
    ]
    assert (doc["user_id"], doc["session_id"], doc["voxel_spacing"], doc["unit"], doc["trust_orientation"]) == (
        "curation", "0", None, "angstrom", True,
    )
    (point,) = doc["points"]
    assert list(point) == ["location", "transformation_", "instance_id"]
    assert point["location"] == {"x": 1.0, "y": 2.5, "z": 3.25}
    assert np.array_equal(point["transformation_"], np.eye(4)) and point["instance_id"] == 0


def test_write_then_read_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "experiment": ["TS_a"] * 3 + ["TS_b"] * 2,
            "particle_type": ["ribosome", "apo-ferritin", "ribosome", "thyroglobulin", "thyroglobulin"],
            "x": rng.uniform(0, 6300, 5), "y": rng.uniform(0, 6300, 5), "z": rng.uniform(0, 1800, 5),
        }
    )
    written = picks.write_run_picks(tmp_path, df)
    assert len(written) == 12  # every run gets all six files
    assert {f.stem for f in written} == set(NAMES)
    back = picks.read_all_picks(tmp_path)
    _assert_picks_dtypes(back)
    key = ["experiment", "particle_type", "x"]
    pd.testing.assert_frame_equal(
        back.sort_values(key).reset_index(drop=True),
        df.astype(back.dtypes.to_dict()).sort_values(key).reset_index(drop=True),
    )
    empty = picks.read_picks_file(layout.picks_path(tmp_path, "TS_b", "virus-like-particle"))
    assert empty.empty
    _assert_picks_dtypes(empty)


def test_write_rejects_bad_frames(tmp_path):
    with pytest.raises(CziiInputError, match=r"^invalid picks, 1 problem\(s\): missing column\(s\) particle_type, y, z"):
        picks.write_run_picks(tmp_path, pd.DataFrame({"experiment": ["a"], "x": [1.0]}))
    bad = pd.DataFrame({"experiment": ["a"], "particle_type": ["proteasome"], "x": [1.0], "y": [1.0], "z": [1.0]})
    with pytest.raises(CziiInputError, match="unknown particle_type 'proteasome' in row 0"):
        picks.write_run_picks(tmp_path, bad)
    with pytest.raises(ValueError, match="non-finite"):
        picks.write_picks_file(tmp_path / "r.json", "a", "ribosome", [[1.0, np.nan, 2.0]])
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        picks.write_picks_file(tmp_path / "r.json", "a", "ribosome", [[1.0, 2.0]])
    assert not list(tmp_path.rglob("*.json"))


# ------------------------------------------------------------------ reading a single file


def test_read_picks_file(tmp_path):
    df = picks.read_picks_file(_write(tmp_path, _doc()))
    _assert_picks_dtypes(df)
    assert df.to_dict("list") == {
        "experiment": ["TS_1", "TS_1"],
        "particle_type": ["ribosome", "ribosome"],
        "x": [1.5, 4.0], "y": [2.0, 5.0], "z": [3.0, 6.0],
    }


def test_empty_points_gives_empty_typed_frame(tmp_path):
    df = picks.read_picks_file(_write(tmp_path, _doc(points=[])))
    assert df.empty
    _assert_picks_dtypes(df)
    full = picks.read_picks_file(_write(tmp_path, _doc(), "full.json"))
    assert (df.dtypes == full.dtypes).all()


@pytest.mark.parametrize("field", ["pickable_object_name", "run_name", "points"])
def test_missing_field(tmp_path, field):
    doc = _doc()
    del doc[field]
    f = _write(tmp_path, doc)
    with pytest.raises(CziiInputError, match=f"missing field '{field}'") as err:
        picks.read_picks_file(f)
    assert err.value.path == f


def test_malformed_json(tmp_path):
    f = _write(tmp_path, '{"pickable_object_name": "ribosome", ')
    with pytest.raises(CziiInputError, match="malformed picks JSON") as err:
        picks.read_picks_file(f)
    assert str(f) in str(err.value)


def test_json_not_an_object(tmp_path):
    with pytest.raises(CziiInputError, match="not an object"):
        picks.read_picks_file(_write(tmp_path, "[1, 2]"))


def test_missing_file(tmp_path):
    with pytest.raises(CziiInputError, match="no such picks file"):
        picks.read_picks_file(tmp_path / "ribosome.json")


def test_unknown_particle(tmp_path):
    with pytest.raises(CziiInputError, match="'pickable_object_name' is 'membrane'"):
        picks.read_picks_file(_write(tmp_path, _doc(pickable_object_name="membrane")))


def test_wrong_unit(tmp_path):
    with pytest.raises(CziiInputError, match="'unit' is 'nm'"):
        picks.read_picks_file(_write(tmp_path, _doc(unit="nm")))


@pytest.mark.parametrize(
    "location, field",
    [
        ({"x": "12.5", "y": 1.0, "z": 1.0}, r"points\[1\]\.location\.x is '12\.5'"),
        ({"x": 1.0, "y": None, "z": 1.0}, r"points\[1\]\.location\.y is None"),
        ({"x": 1.0, "y": 1.0, "z": True}, r"points\[1\]\.location\.z is True"),
        ({"x": 1.0, "y": 1.0, "z": float("nan")}, r"points\[1\]\.location\.z is nan"),
        ({"x": 1.0, "y": 1.0}, r"missing field points\[1\]\.location\.z"),
        ("here", r"points\[1\]\.location missing"),
    ],
)
def test_bad_location(tmp_path, location, field):
    doc = _doc()
    doc["points"][1]["location"] = location
    f = _write(tmp_path, doc)
    with pytest.raises(CziiInputError, match=field) as err:
        picks.read_picks_file(f)
    assert err.value.path == f


def test_points_not_a_list(tmp_path):
    with pytest.raises(CziiInputError, match="'points'"):
        picks.read_picks_file(_write(tmp_path, _doc(points={"x": 1})))


# ------------------------------------------------------------------ runs


def test_empty_run_folder(tmp_path):
    d = layout.picks_dir(tmp_path, "TS_1")
    d.mkdir(parents=True)
    with pytest.raises(CziiInputError, match="empty run 'TS_1'") as err:
        picks.read_run_picks(tmp_path, "TS_1")
    assert err.value.path == d


def test_run_without_picks_folder(tmp_path):
    with pytest.raises(CziiInputError, match="no Picks folder"):
        picks.read_run_picks(tmp_path, "TS_1")


def test_requested_particle_file_missing(tmp_path):
    picks.write_picks_file(layout.picks_path(tmp_path, "TS_1", "ribosome"), "TS_1", "ribosome", [[1.0, 2.0, 3.0]])
    assert len(picks.read_run_picks(tmp_path, "TS_1")) == 1
    with pytest.raises(CziiInputError, match="no such picks file") as err:
        picks.read_run_picks(tmp_path, "TS_1", particles=["thyroglobulin"])
    assert err.value.path == layout.picks_path(tmp_path, "TS_1", "thyroglobulin")


def test_misfiled_picks(tmp_path):
    f = layout.picks_path(tmp_path, "TS_1", "apo-ferritin")
    picks.write_picks_file(f, "TS_1", "ribosome", [[1.0, 2.0, 3.0]])
    with pytest.raises(CziiInputError, match="'pickable_object_name' is 'ribosome'"):
        picks.read_run_picks(tmp_path, "TS_1")
    picks.write_picks_file(f, "TS_2", "apo-ferritin", [[1.0, 2.0, 3.0]])
    with pytest.raises(CziiInputError, match="'run_name' is 'TS_2'"):
        picks.read_run_picks(tmp_path, "TS_1")


def test_no_pick_runs(tmp_path):
    layout.overlay_runs_dir(tmp_path).mkdir(parents=True)
    with pytest.raises(CziiInputError, match="no run has a Picks folder"):
        picks.read_all_picks(tmp_path)
