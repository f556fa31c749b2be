"""The ``czii-kaggle`` command line: thin wrappers, clear errors, exit codes."""
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
