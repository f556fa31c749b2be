"""Outputs appear whole or not at all; output places are checked before long work (czii_kaggle.outputs)."""
import json
import os

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from czii_kaggle import aggregate, omezarr, outputs, picks, submission, viz
from czii_kaggle.errors import CziiInputError

PICKS = pd.DataFrame({"experiment": ["TS_1"], "particle_type": ["ribosome"], "x": [1.0], "y": [2.0], "z": [3.0]})


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _figure():
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    return fig


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    for error in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with outputs.atomic_path(target) as tmp:
                assert tmp.parent == tmp_path and tmp.suffix == ".csv" and tmp != target
                tmp.write_text("half")
                raise error
        assert target.read_text() == "old" and _leftovers(tmp_path) == []
    with outputs.atomic_path(tmp_path / "new" / "out.csv") as tmp:
        tmp.write_text("whole")
    assert (tmp_path / "new" / "out.csv").read_text() == "whole"
    assert outputs.finished_outputs()[-1] == tmp_path / "new" / "out.csv"


@pytest.mark.parametrize("writer", ["submission", "picks", "figure", "aggregate config", "detections"])
def test_an_interrupted_writer_never_destroys_the_previous_output(tmp_path, monkeypatch, writer):
    """Every library writer goes through a temporary name: a crash mid-write leaves the old file."""
    name = {"figure": "fig.png", "picks": "ribosome.json", "aggregate config": "agg.json"}.get(writer, "out.csv")
    target = tmp_path / name
    target.write_bytes(b"previous output")

    def half_then_interrupt(self, path, *args, **kwargs):
        with open(path, "w") as fh:
            fh.write("half")
        raise KeyboardInterrupt

    def half_text_then_interrupt(self, text, *args, **kwargs):
        half_then_interrupt(None, self)

    if writer == "submission":
        monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_interrupt)
        call = lambda: submission.write_submission(PICKS, target)  # noqa: E731
    elif writer == "detections":
        monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_interrupt)

        def call():
            with outputs.atomic_path(target) as tmp:
                PICKS.to_csv(tmp)
    elif writer == "figure":
        monkeypatch.setattr(Figure, "savefig", half_then_interrupt)
        call = lambda: viz.save_figure(_figure(), target)  # noqa: E731
    else:
        monkeypatch.setattr(type(target), "write_text", half_text_then_interrupt)
        if writer == "picks":
            call = lambda: picks.write_picks_file(target, "TS_1", "ribosome", [[1.0, 2.0, 3.0]])  # noqa: E731
        else:
            call = lambda: aggregate.save_config(aggregate.AggregateConfig(), target)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        call()
    assert target.read_bytes() == b"previous output"
    assert _leftovers(tmp_path) == []


def test_writers_replace_whole_files(tmp_path):
    sub = tmp_path / "submission.csv"
    sub.write_text("old")
    submission.write_submission(PICKS, sub)
    assert submission.validate_submission(sub)["x"].tolist() == [1.0]
    fig = viz.save_figure(_figure(), tmp_path / "f.pdf")
    assert fig.read_bytes().startswith(b"%PDF")  # the format follows the final name, not the temporary one
    f = picks.write_picks_file(tmp_path / "p.json", "TS_1", "ribosome", [[1.0, 2.0, 3.0]])
    assert json.loads(f.read_text())["points"][0]["location"] == {"x": 1.0, "y": 2.0, "z": 3.0}
    assert _leftovers(tmp_path) == []


def test_atomic_dir_swaps_in_only_a_complete_folder(tmp_path):
    target = tmp_path / "t.zarr"
    omezarr.write_tomogram(target, np.arange(64, dtype=np.float32).reshape(4, 4, 4), 10.0, n_levels=1)
    with pytest.raises(KeyboardInterrupt):
        with outputs.atomic_dir(target, replace=True) as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert omezarr.read_tomogram(target)[0][3, 3, 3] == 63 and _leftovers(tmp_path) == []
    with pytest.raises(CziiInputError, match="t.zarr: folder exists and is not empty"):
        with outputs.atomic_dir(target):
            pass
    assert os.access(target, os.R_OK) and _leftovers(tmp_path) == []


def test_check_writable(tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert outputs.check_writable(tmp_path / "new" / "deeper" / "out.csv") == tmp_path / "new" / "deeper" / "out.csv"
    assert not (tmp_path / "new").exists()  # nothing is created
    with pytest.raises(CziiInputError, match=r"a_file/out.csv: cannot be created: .*a_file is a file, not a folder"):
        outputs.check_writable(tmp_path / "a_file" / "out.csv")
    with pytest.raises(CziiInputError, match="is a folder: give a file name"):
        outputs.check_writable(tmp_path)
    with pytest.raises(CziiInputError, match="exists and is a file; this output is a folder"):
        outputs.check_writable(tmp_path / "a_file", folder=True)
    outputs.check_writable(tmp_path, folder=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(CziiInputError, match=r"ro/out.csv: cannot write in .*ro"):
            outputs.check_writable(ro / "out.csv")
    finally:
        ro.chmod(0o755)


def test_figure_format_checked_by_suffix(tmp_path):
    assert viz.figure_format(tmp_path / "a.PNG") == "png"
    for bad in ("x.txt", "noext"):
        with pytest.raises(CziiInputError, match="cannot save a figure here"):
            viz.save_figure(_figure(), tmp_path / bad)
        assert not (tmp_path / bad).exists()
