"""The ``czii-kaggle`` command line: thin wrappers, clear errors, exit codes."""
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import particles, submission
from czii_kaggle.cli import main
from czii_kaggle.picks import read_all_picks, write_run_picks


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


def test_simulate_count_scale_multiplies_a_types_count(tmp_path, capsys):
    import json

    import pandas as pd

    counts = {}
    for name, extra in (("plain", []), ("more", ["--count-scale", "beta-galactosidase=4", "ribosome=0"])):
        assert main(["simulate", "--out", str(tmp_path / name), "--n-train", "0", "--n-test", "2",
                     "--shape", "64", "320", "320", "--seed", "3", *extra]) == 0
        counts[name] = pd.read_csv(tmp_path / name / "test_solution.csv")["particle_type"].value_counts()
    assert counts["plain"].get("beta-galactosidase", 0) > 0
    assert counts["more"]["beta-galactosidase"] > 2 * counts["plain"]["beta-galactosidase"]
    assert "ribosome" in counts["plain"] and "ribosome" not in counts["more"]
    scale = json.loads((tmp_path / "more" / "simulation.json").read_text())["count_scale"]
    assert scale["beta-galactosidase"] == 4.0 and scale["thyroglobulin"] == 1.0
    code, err = _run(["simulate", "--out", tmp_path / "bad", "--count-scale", "ribosomes=2"], capsys)
    assert code == 2 and "--count-scale takes TYPE=FACTOR" in err and not (tmp_path / "bad").exists()


def _run(argv, capsys):
    """``main(argv)``'s exit code (argparse's usage errors included) and its stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def tiny_root(tmp_path):
    """Two training runs with picks: a small Kaggle-layout root."""
    from czii_kaggle import omezarr, layout

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for run in ("TS_a", "TS_b"):
        omezarr.write_tomogram(layout.tomogram_path(root, "train", run), rng.normal(size=(8, 64, 64)).astype(np.float32), 10.0)
        write_run_picks(root, pd.DataFrame({"experiment": [run], "particle_type": ["ribosome"],
                                            "x": [300.0], "y": [300.0], "z": [40.0]}))
    return root


def test_bad_arguments_are_one_line_exit_2(tmp_path, capsys, tiny_root, monkeypatch):
    """Every bad argument a user may type ends in one line and exit code 2, never a traceback."""
    import czii_kaggle.predict

    def must_not_run(*a, **k):
        raise AssertionError("the long work started before the arguments were checked")

    monkeypatch.setattr(czii_kaggle.predict, "predict_runs", must_not_run)
    (tmp_path / "a_file").write_text("x")
    sol, sub = tmp_path / "sol.csv", tmp_path / "sub.csv"
    sol.write_text("experiment,particle_type,x,y,z\nTS_a,ribosome,1,2,3\nTS_a,ribosome,1000,2,3\n")
    sub.write_text("id,experiment,particle_type,x,y,z\n0,TS_a,ribosome,1e300,2,3\n1,TS_a,ribosome,5,2,3\n")
    sim = ["simulate", "--out", tmp_path / "sim"]
    cases = [
        (["build-dataset", "--data", tiny_root, "--out", tmp_path / "ds", "--slice-step", "-1"], "--slice-step: must be >= 1"),
        (["build-dataset", "--data", tiny_root, "--out", tmp_path / "ds", "--val-runs", "nope"], "['nope'] are not among"),
        (["build-dataset", "--data", tiny_root, "--out", tmp_path / "ds", "--tile", "-5"], "--tile: must be >= 0"),
        ([*sim, "--n-test", "-1"], "--n-test: must be >= 0, not -1"),
        ([*sim, "--n-train", "two"], "--n-train: 'two' is not a whole number"),
        ([*sim, "--n-train", "0", "--n-test", "0"], "nothing to simulate"),
        ([*sim, "--shape", "0", "64", "64"], "--shape: must be >= 1, not 0"),
        ([*sim, "--shape", "4", "64", "64"], "shape_vox must be 3 sizes"),
        ([*sim, "--difficulty", "hard2"], "difficulty"),
        (["predict", "--data", tiny_root, "--slice-step", "-2"], "--slice-step: must be >= 1, not -2"),
        (["predict", "--data", tiny_root, "--out", tmp_path / "a_file" / "s.csv"], "a_file is a file, not a folder"),
        (["predict", "--data", tiny_root, "--out", tmp_path], "is a folder: give a file name"),
        (["predict", "--data", tiny_root, "--detections-out", tmp_path / "a_file" / "d.csv"], "a_file is a file"),
        (["train", "--data-yaml", tmp_path / "none.yaml", "--out", tmp_path / "b"], "none.yaml: no such dataset file"),
        (["train", "--data-yaml", sol, "--out", tmp_path / "b", "--epochs", "0"], "--epochs: must be >= 1"),
        (["score", "--solution", sol, "--submission", sub], "sub.csv: invalid submission, 1 problem(s): x: coordinate beyond"),
        (["show", "--data", tiny_root, "--run", "TS_a", "--out", tmp_path / "x.txt"], "'.txt' is not an image format"),
        (["export-onnx", "--imgsz", "0"], "--imgsz: must be >= 1"),
        (["demo", "--n-test", "0"], "--n-test: must be >= 1"),
        (["demo", "--difficulty", "hard2", "--out", tmp_path / "demo"], "demo: difficulty"),
        ([*sim, "--seed", "-1"], "--seed: must be >= 0"),
    ]
    for argv, message in cases:
        code, err = _run(argv, capsys)
        assert code == 2, (argv, err)
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    for made in ("sim", "ds", "x.txt", "demo"):
        assert not (tmp_path / made).exists(), made


def test_random_file_as_weights_is_one_line(tmp_path, capsys, tiny_root):
    pytest.importorskip("onnxruntime")
    for name in ("model.onnx", "model.pt"):
        junk = tmp_path / name
        junk.write_bytes(np.random.default_rng(0).bytes(2000))
        code, err = _run(["predict", "--data", tiny_root, "--split", "train", "--weights", junk,
                          "--out", tmp_path / "s.csv"], capsys)
        assert code == 2 and f"{junk}: not a loadable YOLO model" in err and err.count("\n") == 1
    assert not (tmp_path / "s.csv").exists()


def test_build_dataset_refuses_a_used_folder_unless_overwrite(tmp_path, capsys, tiny_root):
    ds = tmp_path / "ds"
    base = ["build-dataset", "--data", tiny_root, "--out", ds, "--tile", "0", "--slice-step", "4"]
    assert _run(base, capsys)[0] == 0
    code, err = _run([*base, "--val-runs", "TS_a"], capsys)
    assert code == 2 and "folder is not empty" in err and "--overwrite" in err
    assert _run([*base, "--val-runs", "TS_a", "--overwrite"], capsys)[0] == 0
    assert {p.name[:4] for p in (ds / "images" / "val").iterdir()} == {"TS_a"}
    assert {p.name[:4] for p in (ds / "images" / "train").iterdir()} == {"TS_b"}


def test_a_library_message_over_several_lines_is_printed_as_one(tmp_path, capsys, monkeypatch):
    from czii_kaggle.errors import CziiInputError

    def fail(path):
        raise CziiInputError(path, "cannot open it:\n  zarr says no\n")

    monkeypatch.setattr(submission, "read_solution", fail)
    code, err = _run(["score", "--solution", tmp_path / "s.csv", "--submission", tmp_path / "t.csv"], capsys)
    assert code == 2 and err == f"czii-kaggle: error: {tmp_path / 's.csv'}: cannot open it: zarr says no\n"


def test_interrupt_is_one_line_exit_130(tmp_path, capsys, monkeypatch):
    from czii_kaggle import outputs

    def write_then_interrupt(solution):
        outputs.write_text(tmp_path / "done.txt", "whole")
        raise KeyboardInterrupt

    monkeypatch.setattr(submission, "read_solution", write_then_interrupt)
    try:
        code, err = _run(["score", "--solution", tmp_path / "s.csv", "--submission", tmp_path / "t.csv"], capsys)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert code == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("czii-kaggle: interrupted (Ctrl-C) during score; finished: ") and "done.txt" in err


@pytest.mark.slow
def test_ctrl_c_with_worker_threads_running(tmp_path):
    """A real SIGINT while daemon threads write to stderr (as prediction workers do): one line, 130."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, threading, time\n"
        "from czii_kaggle import cli\n"
        "def busy(a):\n"
        "    def chatter():\n"
        "        while True:\n"
        "            sys.stderr.write('.'); sys.stderr.flush(); time.sleep(0.001)\n"
        "    for _ in range(4):\n"
        "        threading.Thread(target=chatter, daemon=True).start()\n"
        "    print('ready', flush=True)\n"
        "    for _ in range(1200):\n"  # short waits, as predict_runs joins its workers: the
        "        time.sleep(0.05)\n"  # signal may land on a chattering thread, not the main one
        "cli._cmd_score = busy\n"
        "sys.argv = ['czii-kaggle', 'score', '--solution', 'a.csv', '--submission', 'b.csv']\n"
        "raise SystemExit(cli.main())\n"
    )
    import signal

    # SIGINT as a terminal delivers it: a shell's background job (a CI runner's, say) starts its
    # children with SIGINT ignored, and Python then keeps ignoring it
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    last = err.replace(".", "").strip()  # the threads' dots may land anywhere; the line itself has none
    assert last.endswith("czii-kaggle: interrupted (Ctrl-C) during score; no output was finished; "
                         "nothing was left half-written") and "Traceback" not in err


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory):
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


def test_predict_never_writes_among_its_inputs(tmp_path, capsys, sim_root):
    from czii_kaggle import layout

    zattrs = layout.tomogram_path(sim_root, "test", "TS_sim_4_0") / ".zattrs"
    before = zattrs.read_bytes()
    assert _predict(sim_root, "--out", zattrs) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"czii-kaggle: error: {zattrs}: is inside {sim_root}") and err.count("\n") == 1
    assert zattrs.read_bytes() == before
    out = tmp_path / "sub.csv"
    assert _predict(sim_root, "--out", out, "--detections-out", out) == 2
    assert "is given as two outputs" in capsys.readouterr().err and not out.exists()


def test_predict_exit_status_and_nothing_replaced_by_an_empty_result(tmp_path, capsys, sim_root):
    out = tmp_path / "submission.csv"
    out.write_text("an earlier submission\n")
    # a typo in --runs: one line up front, the earlier submission untouched
    assert _predict(sim_root, "--out", out, "--runs", "TS_sim_4_O") == 2
    err = capsys.readouterr().err
    assert "no run named 'TS_sim_4_O'" in err and err.count("\n") == 1
    # every run failing: one line naming the cause, nothing written (YOLO alone; the default ensemble:
    # one line per detector)
    assert _predict(sim_root, "--out", out, "--runs", "TS_broken", "--detectors", "yolo") == 2
    err = _lines(capsys.readouterr().err)
    assert err[0].startswith("TS_broken: failed: ") and "denoised.zarr" in err[0]
    assert len(err) == 2 and err[-1].startswith(f"czii-kaggle: error: {out}: not written: every run failed")
    assert _predict(sim_root, "--out", out, "--runs", "TS_broken") == 2
    err = _lines(capsys.readouterr().err)
    assert [e.split(":")[0] for e in err[:3]] == ["TS_broken (yolo)", "TS_broken (heatmap)", "TS_broken (heatmap_l0)"]
    assert len(err) == 4 and err[-1].startswith(f"czii-kaggle: error: {out}: not written: every run failed in every")
    assert out.read_text() == "an earlier submission\n"
    # the heatmap's adaptation asked of YOLO alone: one line, nothing run
    assert _predict(sim_root, "--out", out, "--detectors", "yolo", "--bn-adapt", "0.5") == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "--bn-adapt adapts the heatmap detectors, and yolo alone runs none" in err[0]
    assert out.read_text() == "an earlier submission\n"
    assert _predict(sim_root, "--out", out, "--detectors", "yolo", "--precision", "float32") == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "--precision sets the heatmap networks', and yolo alone runs none" in err[0]
    assert out.read_text() == "an earlier submission\n"


@pytest.mark.slow
def test_predict_writes_the_other_runs_and_exits_1_when_one_fails(tmp_path, capsys, sim_root):
    out = tmp_path / "submission.csv"
    assert _predict(sim_root, "--out", out, "--detectors", "yolo") == 1  # the shipped YOLO model
    captured = capsys.readouterr()
    sub = submission.validate_submission(out)
    assert len(sub) > 0 and set(sub["experiment"]) == {"TS_sim_4_0"}
    last = _lines(captured.err)[-1]
    assert last.startswith("czii-kaggle: 1 of 2 runs failed or gave no picks (TS_broken;")
    assert f"wrote {len(sub)} picks of 1/2 runs" in captured.out
    assert re.search(r"1/2 runs predicted in .* the model waited for data \d+% of its time", captured.out)


def test_simulate_real_layouts_take_the_root_given(tmp_path, capsys, real_root):
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--n-train", "1", "--n-test", "0",
                 "--shape", "16", "96", "96", "--real-layouts", str(real_root)]) == 0
    assert "TS_5_4" in capsys.readouterr().out
    assert main(["simulate", "--out", str(tmp_path / "sim2"), "--n-train", "1", "--n-test", "0",
                 "--shape", "16", "96", "96", "--real-layouts", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/train/overlay/ExperimentRuns: no training overlay (picks) folder" in capsys.readouterr().err


def test_yolo_only_options_run_yolo_alone_when_the_detectors_are_the_bundles_default(tmp_path, capsys, sim_root):
    """The shipped bundle's default is the ensemble of three; --detections-out (YOLO's slice detections) then runs
    YOLO alone and says so; named explicitly, the ensemble with it is refused in one line."""
    out, det = tmp_path / "sub.csv", tmp_path / "det.csv"
    assert _predict(sim_root, "--out", out, "--runs", "TS_sim_4_0", "--detections-out", det) == 0
    captured = capsys.readouterr()
    assert "detectors: yolo (--detections-out: the YOLO detector alone, not the bundle's default yolo+heatmap+heatmap_l0)" \
        in captured.out
    assert len(pd.read_csv(det)) > 0 and len(submission.validate_submission(out)) > 0
    assert _predict(sim_root, "--out", tmp_path / "s2.csv", "--detectors", "yolo,heatmap", "--detections-out", det) == 2
    assert "run the YOLO detector alone, not yolo+heatmap" in capsys.readouterr().err


@pytest.fixture(scope="module")
def labelled_root(tmp_path_factory):
    """Four small labelled (train split) runs of one look, and a fifth whose tomogram is missing."""
    import shutil

    from czii_kaggle import layout
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(tmp_path_factory.mktemp("labelled"), n_train=5, n_test=0, seed=11,
                          config=SimConfig(shape_vox=(64, 192, 192), difficulty="easy"))
    runs = layout.list_pick_runs(ds.root)
    shutil.rmtree(layout.tomogram_path(ds.root, "train", runs[-1]))
    return ds.root, runs


def test_signal_measures_the_readable_runs_and_reports_the_rest(tmp_path, capsys, labelled_root):
    from czii_kaggle.stats import look_signal

    root, runs = labelled_root
    out = tmp_path / "signal.csv"
    assert main(["signal", "--data", str(root), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"skipped {root}:{runs[-1]}:" in captured.err and "over 4 runs" in captured.out
    table = pd.read_csv(out).set_index("particle_type")
    # the same as the library on the four good runs alone: the broken run changed nothing but the report
    direct, report = look_signal([(root, runs[:-1])])
    assert list(report["status"]) == ["ok"] * 4
    pd.testing.assert_series_equal(table["snr"], direct["snr"], check_names=False)
    # large, clean particles stand well out of the background at the easy noise
    assert table.loc["ribosome", "snr"] > 3 and np.isfinite(table["snr"]).all()


def test_signal_needs_two_readable_runs(tmp_path, capsys, labelled_root):
    root, runs = labelled_root
    assert main(["signal", "--data", f"{root}:{runs[0]},{runs[-1]}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("czii-kaggle: error: ") and str(root) in err and "at least 2" in err
    assert len(err.strip().splitlines()) == 1 and f"skipped {runs[-1]}: " in err  # one line, saying why


def test_signal_reads_runs_of_other_voxel_sizes_on_the_curves_grid(tmp_path, labelled_root):
    """Two of four runs rewritten at 8 A (resampled from their own voxels): measured, not skipped, on the
    same 20 A grid, giving about the same signal as the four at 10 A."""
    import shutil

    from czii_kaggle import layout, omezarr
    from czii_kaggle.preprocess import resample
    from czii_kaggle.stats import look_signal

    root, runs = labelled_root
    good = runs[:-1]
    mixed = tmp_path / "mixed"
    shutil.copytree(root, mixed)
    for run in good[:2]:
        path = layout.tomogram_path(mixed, "train", run)
        vol, vs = omezarr.read_tomogram(path)
        shutil.rmtree(path)
        omezarr.write_tomogram(path, resample(vol, vs, 8.0), 8.0)
    same, _ = look_signal([(root, good)])
    table, report = look_signal([(mixed, good)])
    assert list(report["status"]) == ["ok"] * 4
    assert np.allclose(table["snr"], same["snr"], rtol=0.25), (table["snr"], same["snr"])
