"""MRC tomograms into the Kaggle layout (``czii-kaggle import-mrc``): the detectors see exactly the file's voxels,
bad files are reported while the others are written, and nothing is replaced or touched."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

mrcfile = pytest.importorskip("mrcfile")

from czii_kaggle import layout, omezarr  # noqa: E402
from czii_kaggle.cli import main  # noqa: E402
from czii_kaggle.errors import CziiInputError  # noqa: E402
from czii_kaggle.mrc import import_mrc, read_mrc, run_name  # noqa: E402


def _write_mrc(path, volume, voxel_size_A):
    with mrcfile.new(path, overwrite=False) as m:
        m.set_data(volume)
        m.voxel_size = voxel_size_A
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_mrc_gives_the_voxels_and_voxel_size_and_refuses_bad_files(tmp_path):
    vol = np.random.default_rng(0).integers(-100, 100, (12, 20, 24)).astype(np.int16)
    got, vs = read_mrc(_write_mrc(tmp_path / "a.mrc", vol, 7.84))
    assert got.dtype == np.float32 and np.array_equal(got, vol.astype(np.float32)) and vs == pytest.approx(7.84)
    assert read_mrc(tmp_path / "a.mrc", voxel_size_A=13.48)[1] == 13.48  # the caller's wins
    unset = _write_mrc(tmp_path / "unset.rec", vol, 1.0)  # IMOD's "no voxel size"
    with pytest.raises(CziiInputError, match=r"unset\.rec: its header gives no voxel size.*--voxel-size"):
        read_mrc(unset)
    assert read_mrc(unset, voxel_size_A=10.0)[1] == 10.0
    image = _write_mrc(tmp_path / "image.mrc", vol[0], 10.0)
    with pytest.raises(CziiInputError, match=r"image\.mrc: not a 3D tomogram"):
        read_mrc(image)
    flat = _write_mrc(tmp_path / "flat.mrc", np.zeros((4, 8, 8), np.float32), 10.0)
    with pytest.raises(CziiInputError, match=r"flat\.mrc: no contrast"):
        read_mrc(flat)
    (tmp_path / "text.mrc").write_text("not an MRC file at all")
    with pytest.raises(CziiInputError, match=r"text\.mrc: not a readable MRC file"):
        read_mrc(tmp_path / "text.mrc")
    with pytest.raises(CziiInputError, match="no such MRC file"):
        read_mrc(tmp_path / "absent.mrc")
    assert [run_name(n) for n in ("TS_01.rec", "a.b.mrc", "x.MRC", "y.tomo")] == ["TS_01", "a.b", "x", "y"]


def test_import_mrc_writes_runs_the_detectors_read_and_reports_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(16, 40, 48)).astype(np.float32)
    good = _write_mrc(tmp_path / "TS_a.mrc", vol, 7.84)
    (tmp_path / "TS_bad.mrc").write_bytes(b"\0" * 100)
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    root = tmp_path / "root"
    report = import_mrc([good, tmp_path / "TS_bad.mrc"], root)
    assert list(report["status"]) == ["ok", "failed"] and "TS_bad.mrc" in report.loc[1, "error"]
    assert report.loc[0, "shape"] == "16x40x48" and report.loc[0, "voxel_size_A"] == pytest.approx(7.84)
    assert layout.list_runs(root, "test") == ["TS_a"]
    back, vs = omezarr.read_tomogram(layout.tomogram_path(root, "test", "TS_a"))
    assert np.array_equal(back, vol) and vs == pytest.approx(7.84)  # the file's voxels and voxel size
    assert {p.name: _sha(p) for p in tmp_path.iterdir() if p.is_file()} == before  # inputs only read
    # never replaced: importing again is refused before anything is written
    with pytest.raises(CziiInputError, match="already exists"):
        import_mrc([good], root)
    assert np.array_equal(omezarr.read_tomogram(layout.tomogram_path(root, "test", "TS_a"))[0], vol)
    # two files naming one run: refused before anything is written
    (tmp_path / "other").mkdir()
    twin = _write_mrc(tmp_path / "other" / "TS_a.rec", vol, 7.84)
    with pytest.raises(CziiInputError, match="would be run 'TS_a'"):
        import_mrc([good, twin], tmp_path / "root2")
    assert not (tmp_path / "root2").exists()


@pytest.mark.slow
def test_import_mrc_then_predict_gives_the_picks_of_the_same_voxels(tmp_path, capsys):
    """A simulated run exported as MRC, imported and predicted, gives the picks its zarr gives: the detectors
    see the same voxels at the same voxel size. The CLI's exit codes: 0 all written, 1 some failed, 2 none."""
    from czii_kaggle.predict import predict_runs
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(tmp_path / "sim", n_train=0, n_test=1, seed=4,
                          config=SimConfig(shape_vox=(48, 192, 192), difficulty="easy"))
    run = ds.test_runs[0]
    vol, vs = omezarr.read_tomogram(layout.tomogram_path(ds.root, "test", run))
    mrc = _write_mrc(tmp_path / f"{run}.mrc", vol, vs)
    root = tmp_path / "imported"
    assert main(["import-mrc", str(mrc), "--out", str(root)]) == 0
    assert "predict them with: czii-kaggle predict --data" in capsys.readouterr().out
    want = predict_runs(ds.root, "test", progress=False).picks
    got = predict_runs(root, "test", progress=False).picks
    assert len(want) > 3
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), atol=1e-3)
    (tmp_path / "bad.mrc").write_text("no")
    assert main(["import-mrc", str(tmp_path / "bad.mrc"), str(mrc), "--out", str(tmp_path / "r2")]) == 1
    err = capsys.readouterr().err
    assert "failed bad: " in err and "bad.mrc" in err
    assert main(["import-mrc", str(tmp_path / "bad.mrc"), "--out", str(tmp_path / "r3")]) == 2
    assert "no tomogram was written" in capsys.readouterr().err


@pytest.mark.slow
def test_import_mrc_with_relion_star_picks_gives_a_training_root(tmp_path, capsys):
    """Labelled runs exported as MRC + RELION 5 STAR (our own writer, as RELION reads it) come back as
    training runs with the same picks (Angstrom), ready for build-dataset; bad --star uses write nothing."""
    pytest.importorskip("starfile")
    from czii_kaggle import picks as picks_io, star
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(tmp_path / "sim", n_train=2, n_test=0, seed=6, count_scale=4.0,
                          config=SimConfig(shape_vox=(32, 128, 128), difficulty="easy"))
    files, tomos = [], {}
    for run in ds.train_runs:
        path = layout.tomogram_path(ds.root, "train", run)
        vol, vs = omezarr.read_tomogram(path)
        files.append(_write_mrc(tmp_path / f"{run}.mrc", vol, vs))
        tomos[run] = path
    truth = picks_io.read_all_picks(ds.root)
    assert truth["particle_type"].nunique() >= 3
    stars = star.write_star(truth, tmp_path / "star", star.tomogram_centers_A(tomos))
    root = tmp_path / "labelled"
    args = ["import-mrc", *map(str, files), "--out", str(root), "--split", "train"]
    assert main([*args, "--star", *map(str, stars)]) == 0
    assert "train on them with: czii-kaggle build-dataset" in capsys.readouterr().out
    got = picks_io.read_all_picks(root)
    key = ["experiment", "particle_type", "x"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True)[truth.columns],
                                  truth.sort_values(key).reset_index(drop=True), atol=1e-4, check_dtype=False)
    assert layout.list_pick_runs(root) == sorted(ds.train_runs)
    # refusals, each before anything is written
    bad = tmp_path / "picks.star"
    bad.write_bytes(stars[0].read_bytes())
    out = tmp_path / "r"
    assert main(["import-mrc", *map(str, files), "--out", str(out), "--split", "train", "--star", str(bad)]) == 2
    assert "picks.star: names no particle type" in capsys.readouterr().err and not out.exists()
    assert main(["import-mrc", str(files[0]), "--out", str(tmp_path / "t"), "--star", str(stars[0])]) == 2
    assert "--split train" in capsys.readouterr().err and not (tmp_path / "t").exists()
