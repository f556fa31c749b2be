"""submission.csv: make, write, read back, validate; solution CSVs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import metric, particles
from czii_kaggle.errors import CziiInputError
from czii_kaggle.submission import (
    SUBMISSION_COLUMNS,
    make_submission,
    read_solution,
    validate_submission,
    write_submission,
)

SAMPLE = Path("/work/shared/czii-real/sample_submission.csv")
GOOD_CSV = """id,experiment,particle_type,x,y,z
0,TS_5_4,apo-ferritin,100.5,200.0,300.0
1,TS_5_4,ribosome,1100.0,200.0,300.0
2,TS_6_4,thyroglobulin,100.0,2200.0,1300.0
3,TS_6_4,beta-amylase,0.0,0.0,0.0
"""


def _picks() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "experiment": ["TS_b", "TS_a", "TS_b", "TS_a", "TS_a", "TS_b"],
            "particle_type": [
                "virus-like-particle",
                "ribosome",
                "apo-ferritin",
                "apo-ferritin",
                "ribosome",
                "virus-like-particle",
            ],
            "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "y": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
            "z": [7.0, 8.0, 9.0, 10.0, 11.0, 12.0],
            "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        }
    )


def _write(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- make / write
def test_make_submission_sorts_and_numbers_rows():
    sub = make_submission(_picks())
    assert list(sub.columns) == SUBMISSION_COLUMNS
    assert sub["id"].tolist() == list(range(6)) and sub["id"].dtype == np.int64
    # experiment, then particle table order, then input order (x records input order)
    assert sub["experiment"].tolist() == ["TS_a"] * 3 + ["TS_b"] * 3
    assert sub["particle_type"].tolist() == [
        "apo-ferritin", "ribosome", "ribosome", "apo-ferritin", "virus-like-particle", "virus-like-particle",
    ]
    assert sub["x"].tolist() == [4.0, 2.0, 5.0, 3.0, 1.0, 6.0]


def test_make_submission_of_nothing_has_the_columns():
    sub = make_submission(_picks().iloc[:0])
    assert list(sub.columns) == SUBMISSION_COLUMNS and len(sub) == 0
    with pytest.raises(CziiInputError, match="z"):
        make_submission(_picks().drop(columns=["z"]))


def test_round_trip_write_read_validate(tmp_path):
    picks = _picks()
    path = tmp_path / "deep" / "folder" / "submission.csv"
    written = write_submission(picks, path)
    assert path.is_file()
    assert path.read_text().splitlines()[0] == ",".join(SUBMISSION_COLUMNS)
    back = validate_submission(path)
    pd.testing.assert_frame_equal(back, written)
    assert len(back) == len(picks)
    # the picks, scored against themselves through the file, are perfect
    assert metric.score(picks, back) == pytest.approx(3 / 7)  # 3 of 5 scored types present, weight 1 each
    assert metric.score_table(picks, back)[["fp", "fn"]].to_numpy().sum() == 0


def test_empty_submission_round_trip(tmp_path):
    path = tmp_path / "submission.csv"
    write_submission(_picks().iloc[:0], path)
    back = validate_submission(path)
    assert list(back.columns) == SUBMISSION_COLUMNS and len(back) == 0


def test_write_refuses_an_invalid_submission(tmp_path):
    picks = _picks()
    picks.loc[2, "y"] = -5.0
    path = tmp_path / "out" / "submission.csv"
    with pytest.raises(CziiInputError, match="negative") as err:
        write_submission(picks, path)
    assert str(path) in str(err.value)
    assert not path.exists()


# ---------------------------------------------------------------- validate
def test_sample_submission_validates():
    if not SAMPLE.is_file():
        pytest.skip("real sample_submission.csv not available")
    sub = validate_submission(SAMPLE)
    assert len(sub) == 10 and list(sub.columns) == SUBMISSION_COLUMNS
    assert sub["id"].dtype == np.int64 and sub["x"].dtype == np.float64
    assert set(sub["particle_type"]) <= set(particles.NAMES)


def test_good_csv_validates_and_frame_too(tmp_path):
    sub = validate_submission(_write(tmp_path, GOOD_CSV))
    assert sub["id"].tolist() == [0, 1, 2, 3]
    assert sub.loc[0, "x"] == 100.5
    pd.testing.assert_frame_equal(validate_submission(sub), sub)


def test_every_problem_is_reported_at_once(tmp_path):
    text = """id,experiment,particle_type,x,y,z
0,TS_5_4,apo-ferritin,abc,1,2
1,TS_5_4,apo-ferritin,1,-3,2
2,TS_5_4,foo,1,1,2
0,TS_5_4,ribosome,1,1,2
4,,ribosome,1,1,2
5,TS_5_4,ribosome,1,1,
6.5,TS_5_4,ribosome,1,1,inf
"""
    path = _write(tmp_path, text, "bad.csv")
    with pytest.raises(CziiInputError) as err:
        validate_submission(path)
    msg = str(err.value)
    assert err.value.path == path and msg.startswith(str(path))
    assert "7 problem(s)" in msg
    for expected in (
        "x: not a number in row 0",
        "y: negative coordinate in row 1",
        "unknown particle_type 'foo' in row 2",
        "id: repeated value in rows 0, 3",
        "empty experiment name in row 4",
        "z: missing or infinite value in rows 5, 6",
        "id: not an integer in row 6",
    ):
        assert expected in msg


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("2,TS_6_4,thyroglobulin", "2,TS_6_4,Thyroglobulin", "unknown particle_type 'Thyroglobulin' in row 2"),
        ("1100.0,200.0,300.0", "1100.0,nan,300.0", "y: missing or infinite value in row 1"),
        ("1100.0,200.0,300.0", "1100.0,200.0,-0.5", "z: negative coordinate in row 1"),
        ("3,TS_6_4", "1,TS_6_4", "id: repeated value in rows 1, 3"),
        ("3,TS_6_4", "x3,TS_6_4", "id: not an integer in row 3"),
        ("0,TS_5_4", "0,  ", "empty experiment name in row 0"),
        ("id,experiment", "experiment,id", "the first column must be 'id'"),
        ("particle_type,x,y,z", "particle_type,x,y,zz", "missing column(s) z"),
    ],
)
def test_each_single_problem_is_found(tmp_path, old, new, expected):
    assert old in GOOD_CSV
    path = _write(tmp_path, GOOD_CSV.replace(old, new, 1))
    with pytest.raises(CziiInputError, match="problem") as err:
        validate_submission(path)
    assert expected in str(err.value)
    if "column" not in expected:
        assert "1 problem(s)" in str(err.value)


def test_extra_column_is_reported(tmp_path):
    sub = validate_submission(_write(tmp_path, GOOD_CSV)).assign(score=1.0)
    with pytest.raises(CziiInputError, match="unexpected column.*'score'"):
        validate_submission(sub, path="given.csv")
    with pytest.raises(CziiInputError, match=r"^given\.csv: "):
        validate_submission(sub, path="given.csv")


def test_missing_or_empty_file_is_named(tmp_path):
    with pytest.raises(CziiInputError, match="no such file"):
        validate_submission(tmp_path / "absent.csv")
    empty = _write(tmp_path, "", "empty.csv")
    with pytest.raises(CziiInputError, match="empty") as err:
        validate_submission(empty)
    assert err.value.path == empty


# ---------------------------------------------------------------- solution
def test_read_solution_round_trip(tmp_path):
    picks = _picks().drop(columns=["score"])
    path = tmp_path / "solution.csv"
    picks.assign(id=np.arange(len(picks))).to_csv(path, index=False)
    sol = read_solution(path)
    assert list(sol.columns) == ["experiment", "particle_type", "x", "y", "z"]
    pd.testing.assert_frame_equal(sol, picks.astype({"experiment": "str", "particle_type": "str"}), check_dtype=False)
    assert sol["x"].dtype == np.float64


def test_read_solution_reports_problems(tmp_path):
    text = "experiment,particle_type,x,y\nTS_a,ribosome,1,2\n"
    with pytest.raises(CziiInputError, match=r"missing column\(s\) z") as err:
        read_solution(_write(tmp_path, text))
    assert "s.csv" in str(err.value)
    text = "experiment,particle_type,x,y,z\nTS_a,ribosome,1,2,3\nTS_a,apo-ferritin,1,2,3\nTS_a,ribosom,1,2,nan\n"
    with pytest.raises(CziiInputError) as err:
        read_solution(_write(tmp_path, text))
    msg = str(err.value)
    assert "unknown particle_type 'ribosom' in row 2" in msg
    assert "z: missing or infinite value in row 2" in msg
    dup = "experiment,particle_type,x,y,z\nTS_a,ribosome,1,2,3\nTS_a,apo-ferritin,1,2,3\n"
    with pytest.raises(CziiInputError, match=r"repeated \(experiment, x, y, z\) point in rows 0, 1"):
        read_solution(_write(tmp_path, dup))


def test_a_folder_or_an_absurd_coordinate_is_named(tmp_path):
    with pytest.raises(CziiInputError, match="is a folder, not a CSV file"):
        read_solution(tmp_path)
    sub = tmp_path / "sub.csv"
    sub.write_text("id,experiment,particle_type,x,y,z\n0,TS_a,ribosome,1e300,2,3\n1,TS_a,ribosome,5,2,3e7\n")
    with pytest.raises(CziiInputError, match=r"sub.csv: invalid submission, 2 problem\(s\): x: coordinate beyond "
                                             r"1e\+06 Angstrom .* in row 0; z: coordinate beyond .* in row 1$"):
        validate_submission(sub)
