"""The ``czii-kaggle`` command line: thin wrappers, clear errors, exit codes."""
import re
import subprocess
import sys

import pandas as pd
import pytest

from czii_kaggle import particles, submission
from czii_kaggle.cli import main
from czii_kaggle.picks import read_all_picks


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "czii_kaggle", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ["simulate", "score", "build-dataset", "train", "predict", "tune", "show", "demo"]:
        assert cmd in out.stdout


def test_score_real_picks_against_themselves(tmp_path, capsys, real_root):
    truth = read_all_picks(real_root)
    sol = tmp_path / "solution.csv"
    truth.to_csv(sol, index=False)
    sub = tmp_path / "submission.csv"
    submission.write_submission(truth, sub)
    assert main(["score", "--solution", str(sol), "--submission", str(sub)]) == 0
    out = capsys.readouterr().out
    assert "score: 1.0000" in out
    for name in particles.SCORED:
        assert name in out
    # drop half the ribosomes: recall and the score fall
    pd.read_csv(sub).query("particle_type != 'ribosome' or id % 2 == 0").to_csv(sub, index=False)
    assert main(["score", "--solution", str(sol), "--submission", str(sub)]) == 0
    score = float(capsys.readouterr().out.split("score:")[1])
    assert 0.8 < score < 1.0


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    sub = tmp_path / "bad.csv"
    sub.write_text("id,experiment,particle_type,x,y,z\n0,TS_1,ferritin,1,2,3\n")
    sol = tmp_path / "sol.csv"
    sol.write_text("experiment,particle_type,x,y,z\nTS_1,ribosome,1,2,3\n")
    assert main(["score", "--solution", str(sol), "--submission", str(sub)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("czii-kaggle: error: ") and str(sub) in err and "ferritin" in err
    assert main(["predict", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err


def test_simulate_then_show(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--n-train", "1", "--n-test", "1",
                 "--shape", "32", "192", "192", "--difficulty", "0.3", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "TS_sim_3_0" in out and "TS_sim_3_1" in out
    root = tmp_path / "sim" / "czii-cryo-et-object-identification"
    assert (tmp_path / "sim" / "test_solution.csv").exists()
    png = tmp_path / "fig.png"
    assert main(["show", "--data", str(root), "--run", "TS_sim_3_0", "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(["simulate"])  # --out is required: argparse's usage error


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """One small simulated test run (easy) beside one run whose zarr is missing."""
    from czii_kaggle import layout
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(tmp_path_factory.mktemp("sim"), n_train=0, n_test=1, seed=4,
                          config=SimConfig(shape_vox=(48, 256, 256), difficulty="easy"))
    layout.run_dir(ds.root, "test", "TS_broken").mkdir(parents=True)
    return ds.root


def _lines(stderr: str) -> list[str]:
    """stderr's lines without the progress bars."""
    lines = (line.strip() for line in stderr.replace("\r", "\n").splitlines())
    return [line for line in lines if line and not line.startswith("runs:")]


def _predict(root, *args) -> int:
    return main(["predict", "--data", str(root), *map(str, args)])


def test_predict_never_writes_among_its_inputs(tmp_path, capsys, tiny_root):
    from czii_kaggle import layout

    zattrs = layout.tomogram_path(tiny_root, "test", "TS_sim_4_0") / ".zattrs"
    before = zattrs.read_bytes()
    assert _predict(tiny_root, "--out", zattrs) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"czii-kaggle: error: {zattrs}: is inside {tiny_root}") and err.count("\n") == 1
    assert zattrs.read_bytes() == before
    out = tmp_path / "sub.csv"
    assert _predict(tiny_root, "--out", out, "--detections-out", out) == 2
    assert "is given as two outputs" in capsys.readouterr().err and not out.exists()


def test_predict_exit_status_and_nothing_replaced_by_an_empty_result(tmp_path, capsys, tiny_root):
    out = tmp_path / "submission.csv"
    out.write_text("an earlier submission\n")
    # a typo in --runs: one line up front, the earlier submission untouched
    assert _predict(tiny_root, "--out", out, "--runs", "TS_sim_4_O") == 2
    err = capsys.readouterr().err
    assert "no run named 'TS_sim_4_O'" in err and err.count("\n") == 1
    # every run failing: one line naming the cause, nothing written
    assert _predict(tiny_root, "--out", out, "--runs", "TS_broken") == 2
    err = _lines(capsys.readouterr().err)
    assert err[0].startswith("TS_broken: failed: ") and "denoised.zarr" in err[0]
    assert len(err) == 2 and err[-1].startswith(f"czii-kaggle: error: {out}: not written: every run failed")
    assert out.read_text() == "an earlier submission\n"


@pytest.mark.slow
def test_predict_writes_the_other_runs_and_exits_1_when_one_fails(tmp_path, capsys, tiny_root):
    out = tmp_path / "submission.csv"
    assert _predict(tiny_root, "--out", out) == 1  # the shipped model
    captured = capsys.readouterr()
    sub = submission.validate_submission(out)
    assert len(sub) > 0 and set(sub["experiment"]) == {"TS_sim_4_0"}
    last = _lines(captured.err)[-1]
    assert last.startswith("czii-kaggle: 1 of 2 runs failed or gave no picks (TS_broken;")
    assert f"wrote {len(sub)} picks of 1/2 runs" in captured.out
    assert re.search(r"1/2 runs predicted in .* the model waited for data \d+% of its time", captured.out)
