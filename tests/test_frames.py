"""The frames' columns and the one validator (czii_kaggle.frames)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import aggregate, detect, frames, metric, picks, submission
from czii_kaggle.errors import CziiInputError


def _picks(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"experiment": ["TS_1"] * n, "particle_type": ["ribosome"] * n,
                         "x": np.arange(n) * 100.0 + 50, "y": [60.0] * n, "z": [70.0] * n})


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_columns_are_declared_once_and_reexported():
    assert picks.PICKS_COLUMNS is frames.PICKS_COLUMNS
    assert submission.SUBMISSION_COLUMNS is frames.SUBMISSION_COLUMNS
    assert detect.DETECTION_COLUMNS is frames.DETECTION_COLUMNS
    assert aggregate.CANDIDATE_COLUMNS is frames.CANDIDATE_COLUMNS
    assert frames.SUBMISSION_COLUMNS == ["id", *frames.PICKS_COLUMNS]
    assert frames.CANDIDATES.required == ("experiment", "particle_type", "x", "y", "z", "score")
    for frame in (frames.PICKS, frames.SOLUTION, frames.SUBMISSION, frames.DETECTIONS, frames.CANDIDATES):
        assert set(frame.columns) <= set(frames.COLUMN_KINDS), frame.name


@pytest.mark.parametrize("frame", [frames.PICKS, frames.SUBMISSION, frames.DETECTIONS, frames.CANDIDATES])
def test_empty_frames_validate_and_keep_their_dtypes(frame):
    empty = frames.empty(frame)
    assert list(empty.columns) == list(frame.columns) and len(empty) == 0
    out = frames.validate(empty, frame)
    assert list(out.columns) == list(frame.columns)
    for col in ("x", "id", "class_id", "n_slices"):
        if col in frame.columns:
            assert out[col].dtype == (np.float64 if col == "x" else np.int64)


def test_a_good_frame_comes_back_with_clean_dtypes_and_extra_columns():
    df = _picks().assign(x=lambda d: d["x"].astype(str), score=[0.1, 0.2, 0.3])
    df.index = [7, 8, 9]
    out = frames.validate(df, frames.PICKS)
    assert out["x"].dtype == np.float64 and out["x"].tolist() == [50.0, 150.0, 250.0]
    assert list(out.columns) == [*frames.PICKS_COLUMNS, "score"] and list(out.index) == [0, 1, 2]
    assert df["x"].tolist() == ["50.0", "150.0", "250.0"]  # the input is not changed


def test_missing_columns_name_the_file_and_the_frame(tmp_path):
    with pytest.raises(CziiInputError) as exc:
        frames.validate(_picks().drop(columns=["z", "particle_type"]), frames.PICKS, tmp_path / "p.csv")
    assert _one_line(exc) == (f"{tmp_path / 'p.csv'}: invalid picks, 1 problem(s): missing column(s) particle_type, "
                              "z; needs experiment, particle_type, x, y, z")
    assert exc.value.path == tmp_path / "p.csv"


def test_nan_and_infinite_coordinates_are_listed_with_rows():
    df = _picks(4)
    df.loc[1, "y"] = np.nan
    df.loc[3, "y"] = np.inf
    with pytest.raises(CziiInputError) as exc:
        frames.validate(df, frames.PICKS, what="truth")
    assert _one_line(exc) == "invalid truth, 1 problem(s): y: missing or infinite value in rows 1, 3"


def test_wrong_types_are_problems_not_tracebacks():
    df = _picks().assign(x=["a", "2", "3"], z=[True, False, True], particle_type=["ribosome", 5, "ribosome"])
    with pytest.raises(CziiInputError) as exc:
        frames.validate(df, frames.PICKS, what="candidates of detector yolo")
    msg = _one_line(exc)
    assert msg.startswith("invalid candidates of detector yolo, 3 problem(s): ")
    assert "unknown particle_type '5' in row 1" in msg
    assert "x: not a number in row 0" in msg and "z: true/false values, not numbers" in msg
    with pytest.raises(CziiInputError, match="^picks must be a pandas DataFrame, not list$"):
        frames.validate([1, 2], frames.PICKS)


def test_every_problem_is_reported_at_once_in_one_line():
    df = pd.DataFrame({"experiment": ["a", " ", "a"], "z": [0.0, 1.0, 2.0], "x": [0.0, 1e300, 2.0],
                       "y": [0.0, 1.0, 2.0], "w": [1.0, -1.0, 1.0], "h": [1.0, 1.0, 1.0],
                       "confidence": [0.5, 0.5, 0.5], "class_id": [0, 2.5, 9]})
    with pytest.raises(CziiInputError) as exc:
        frames.validate(df, frames.DETECTIONS)
    msg = _one_line(exc)
    for problem in ("empty experiment name in row 1", "x: coordinate beyond 1e+06 Angstrom", "w: negative value in row 1",
                    "class_id: not an integer in row 1", "class_id: outside 0..5 in row 2"):
        assert problem in msg
    assert msg.startswith("invalid detections, 5 problem(s): ")


def test_repeated_columns_and_an_exact_frame():
    df = _picks()
    with pytest.raises(CziiInputError, match=r"repeated column\(s\) 'x'"):
        frames.validate(pd.concat([df, df[["x"]]], axis=1), frames.PICKS)
    sub = submission.make_submission(df)
    assert frames.validate(sub, frames.SUBMISSION)["id"].tolist() == [0, 1, 2]
    with pytest.raises(CziiInputError, match=r"unexpected column\(s\) 'score'; the first column must be 'id'"):
        frames.validate(sub[[*frames.PICKS_COLUMNS, "id"]].assign(score=1.0), frames.SUBMISSION)
    with pytest.raises(CziiInputError, match="x: negative coordinate in row 0"):
        frames.validate(sub.assign(x=[-1.0, 1.0, 2.0]), frames.SUBMISSION)
    frames.validate(df.assign(x=[-1.0, 1.0, 2.0]), frames.PICKS)  # picks may lie outside a volume


def test_optional_columns_when_needed():
    cands = _picks().assign(score=0.5)
    assert "n_slices" not in frames.validate(cands, frames.CANDIDATES).columns
    with pytest.raises(CziiInputError, match=r"missing column\(s\) n_slices"):
        frames.validate(cands, frames.CANDIDATES, need=("n_slices",))
    with pytest.raises(CziiInputError, match="n_slices: negative value in row 0"):
        frames.validate(cands.assign(n_slices=[-1, 1, 2]), frames.CANDIDATES)


def test_the_stages_raise_the_frames_error():
    df = _picks()
    with pytest.raises(CziiInputError, match="^invalid solution, 1 problem"):
        metric.score(df.assign(z=np.nan), df)
    with pytest.raises(CziiInputError, match=r"^invalid candidates, 1 problem\(s\): missing column\(s\) score"):
        aggregate.select(df.assign(n_slices=1))
    with pytest.raises(CziiInputError, match=r"^invalid candidates of detector heatmap, 1 problem"):
        from czii_kaggle.ensemble import EnsembleConfig, combine

        combine({"heatmap": df.assign(score="high")}, EnsembleConfig(detectors=("heatmap",)))
