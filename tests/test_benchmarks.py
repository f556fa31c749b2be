"""The benchmark scripts run end to end on tiny simulated runs (their figures are theirs to record; here
only that they still run and print their tables: a bench broken by a change in the library is found here,
not the next time someone needs its figures)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_bundle_and_runs(tmp_path_factory):
    """:func:`conftest.make_tiny_bundle`'s bundle; 2 easy test runs of 64 x 192 x 192 voxels."""
    from conftest import make_tiny_bundle
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    tmp = tmp_path_factory.mktemp("bench")
    bundle = make_tiny_bundle(tmp / "bundle")
    ds = simulate_dataset(tmp / "sim", n_train=0, n_test=2, seed=3,
                          config=SimConfig(shape_vox=(64, 192, 192), difficulty="easy"))
    return bundle, ds, tmp


@pytest.mark.slow
def test_bench_ensemble_runs_and_prints_every_table(tiny_bundle_and_runs, capsys):
    bundle, ds, tmp = tiny_bundle_and_runs
    bench = _bench("bench_ensemble")
    code = bench.main(["--weights", str(bundle), "--data", str(ds.root), "--solution", str(ds.solution_csv),
                       "--no-memory", "--no-write", "--n-boot", "20", "--work", str(tmp / "work")])
    out = capsys.readouterr().out
    assert code == 0
    assert "| set | detector | score |" in out and "The ensemble's lead over each detector" in out
    seconds = out[out.index("**Seconds per full tomogram**"):]
    assert "| yolo |" in seconds and "| heatmap |" in seconds and "ensemble (yolo + heatmap + merge)" in seconds


def test_bench_voxel_size_simulates_kaggles_field_of_view_with_the_noise_per_volume():
    from czii_kaggle.layout import KAGGLE_VOXEL_SIZE_A
    from czii_kaggle.simulate import FULL_SHAPE_VOX, SimConfig

    bench = _bench("bench_voxel_size")
    same = bench.sim_config(KAGGLE_VOXEL_SIZE_A, "medium", "classic")
    assert same.shape_vox == FULL_SHAPE_VOX and same.noise_scale == pytest.approx(1.0)
    assert same.denoise_sigma_vox == pytest.approx(SimConfig().denoise_sigma_vox)
    fine = bench.sim_config(7.84, "medium", "classic")
    assert all(abs(n * 7.84 - m * KAGGLE_VOXEL_SIZE_A) <= 7.84 for n, m in zip(fine.shape_vox, FULL_SHAPE_VOX))
    assert fine.noise_scale == pytest.approx((KAGGLE_VOXEL_SIZE_A / 7.84) ** 1.5)  # finer voxels, more noise each
    assert fine.denoise_sigma_vox * 7.84 == pytest.approx(SimConfig().denoise_sigma_vox * KAGGLE_VOXEL_SIZE_A)


@pytest.mark.slow
def test_bench_candidates_and_bench_detection_run_on_tiny_runs(tiny_bundle_and_runs, capsys):
    bundle, ds, tmp = tiny_bundle_and_runs
    code = _bench("bench_candidates").main(["--weights", str(bundle), "--data", str(ds.root), "--solution",
                                            str(ds.solution_csv), "--no-write"])
    out = capsys.readouterr().out
    assert code == 0 and "| ensemble (yolo + heatmap) | ribosome |" in out
    code = _bench("bench_detection").main(["--weights", str(bundle), "--n-runs", "1", "--shape", "64", "192", "192",
                                           "--difficulties", "easy", "--no-write", "--work", str(tmp / "det")])
    out = capsys.readouterr().out
    assert code in (None, 0) and "| read_s | preprocess_s | inference_s |" in out


@pytest.mark.slow
def test_bench_signal_score_says_in_one_line_when_no_signal_can_be_measured(tiny_bundle_and_runs):
    bundle, ds, tmp = tiny_bundle_and_runs  # 2 tiny runs: too few particles per type for two halves
    with pytest.raises(SystemExit, match="no type had its signal measured on any set"):
        _bench("bench_signal_score").main(["--weights", str(bundle), "--data", str(ds.root), "--solution",
                                           str(ds.solution_csv), "--no-write", "--work", str(tmp / "ss")])


@pytest.mark.slow
def test_bench_distributed_runs_the_ensemble_on_a_cluster_and_records_it(tmp_path, capsys):
    """``--detectors``: the bundle's ensemble in one process and on a local cluster of one worker (the CPU
    threads of one process: the same picks), its table with the F-beta of both written to ``--results``."""
    from conftest import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle", keep_all=True)  # picks whatever the untrained scores
    results = tmp_path / "distributed.md"
    assert _bench("bench_distributed").main(["--n-runs", "2", "--workers", "1", "--shape", "64", "192", "192",
                                             "--noop-tasks", "3", "--detectors", "yolo,heatmap",
                                             "--weights", str(bundle), "--results", str(results)]) == 0
    text = results.read_text()
    assert "detectors yolo,heatmap (their ensemble)" in text and text in capsys.readouterr().out
    assert int(text.split("medium difficulty")[1].split(" picks")[0].split("; ")[-1]) > 0
    assert "| same picks (rounded to 1e-3 A) | 1.000 |" in text
    assert "| picks of one process within 1 A of a cluster pick of the same type, share | 1.000 |" in text
    one, two = (float(text.split(f"| F-beta, {k} | ")[1].split(" |")[0]) for k in ("one process", "cluster"))
    assert one == two


def test_matched_share_counts_picks_within_tolerance_of_the_same_type():
    from types import SimpleNamespace

    import pandas as pd

    def pred(rows):
        return SimpleNamespace(picks=pd.DataFrame(rows, columns=["experiment", "particle_type", "x", "y", "z"]))

    a = pred([("r", "ribosome", 0.0, 0.0, 0.0), ("r", "ribosome", 100.0, 0.0, 0.0), ("r", "apo-ferritin", 0, 0, 0)])
    b = pred([("r", "ribosome", 0.5, 0.0, 0.0), ("r", "ribosome", 103.0, 0.0, 0.0), ("r", "ribosome", 0, 50, 0),
              ("r", "thyroglobulin", 0, 0, 0)])
    share = _bench("bench_distributed").matched_share
    assert share(a, b) == pytest.approx(1 / 4)  # b's 4: one within 1 A of a's same-type pick
    assert share(a, b, tol_A=5.0) == pytest.approx(2 / 4)
    assert share(a, a) == 1.0 and share(pred([]), pred([])) == 1.0 and share(a, pred([])) == 0.0
