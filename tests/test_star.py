"""RELION 5 STAR export: centred Angstrom coordinates, read back to the same positions, by us and
by copick's own RELION converter."""
import numpy as np
import pandas as pd
import pytest

starfile = pytest.importorskip("starfile")

from czii_kaggle import cli, omezarr, layout  # noqa: E402
from czii_kaggle.errors import CziiInputError  # noqa: E402
from czii_kaggle.star import CENTERED_COLUMNS, read_star, relion_table, tomogram_centers_A, write_star  # noqa: E402


def _picks():
    rng = np.random.default_rng(0)
    rows = []
    for run in ("TS_a", "TS_b"):
        for t in ("ribosome", "apo-ferritin"):
            xyz = rng.uniform(0, 900, size=(5, 3))
            rows += [{"experiment": run, "particle_type": t, "x": x, "y": y, "z": z, "score": rng.random()}
                     for x, y, z in xyz]
    return pd.DataFrame(rows)


def test_tomogram_centre_is_half_the_extent(tmp_path):
    path = tmp_path / "t.zarr"
    omezarr.write_tomogram(path, np.zeros((16, 64, 96), np.float32), 10.0)
    assert tomogram_centers_A({"r": path}) == {"r": (480.0, 320.0, 80.0)}  # (x, y, z) = shape / 2 * 10 A


def test_star_round_trip_and_copick_reads_the_same_positions(tmp_path):
    picks = _picks()
    centers = {"TS_a": (480.0, 320.0, 80.0), "TS_b": (3153.9, 3153.9, 921.1)}
    paths = write_star(picks, tmp_path / "star", centers)
    assert sorted(p.name for p in paths) == ["apo-ferritin.star", "ribosome.star"]
    text = (tmp_path / "star" / "ribosome.star").read_text()
    assert "data_particles" in text and "_rlnCenteredCoordinateXAngst" in text and "_rlnTomoName" in text
    back = pd.concat([read_star(p, centers) for p in paths], ignore_index=True)
    key = ["experiment", "particle_type", "x"]
    want = picks.drop(columns="score").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True), want, atol=1e-5, check_dtype=False)
    # copick's converter (RELION 5 rule: centred Angstrom + tomogram centre) gives the same positions
    from copick.util.formats import build_relion_particles_df, relion_coordinates_to_angstrom

    table = starfile.read(tmp_path / "star" / "ribosome.star")
    xyz = relion_coordinates_to_angstrom(table, tomogram_centers=centers, relion_version="relion5")
    sel = picks[picks["particle_type"] == "ribosome"]
    np.testing.assert_allclose(xyz, sel[["x", "y", "z"]].to_numpy(), atol=1e-5)
    # ... and copick's writer gives the same centred columns
    a = sel[sel["experiment"] == "TS_b"]
    ref = build_relion_particles_df(a[["x", "y", "z"]].to_numpy(), np.tile(np.eye(4), (len(a), 1, 1)),
                                    tomo_name="TS_b", tomogram_center=centers["TS_b"])
    ours = relion_table(a, centers)
    np.testing.assert_allclose(ours[CENTERED_COLUMNS].to_numpy(), ref[CENTERED_COLUMNS].to_numpy(), atol=1e-9)


def test_star_per_run_and_pixel_coordinates(tmp_path):
    picks = _picks()
    centers = {"TS_a": (0.0, 0.0, 0.0), "TS_b": (1.0, 2.0, 3.0)}
    paths = write_star(picks, tmp_path / "s", centers, per_run=True, tilt_series_pixel_size_A=1.5)
    assert len(paths) == 4 and (tmp_path / "s" / "TS_b" / "ribosome.star").is_file()
    t = starfile.read(tmp_path / "s" / "TS_b" / "ribosome.star")
    sel = picks[(picks["experiment"] == "TS_b") & (picks["particle_type"] == "ribosome")]
    np.testing.assert_allclose(t["rlnCoordinateX"], sel["x"] / 1.5)
    np.testing.assert_allclose(t["rlnAutopickFigureOfMerit"], sel["score"], atol=1e-6)
    assert not list(tmp_path.rglob("*.tmp*"))  # written atomically: no temporary left
    with pytest.raises(ValueError, match=r"no tomogram centre for runs \['TS_b'\]"):
        relion_table(picks, {"TS_a": (0, 0, 0)})
    with pytest.raises(CziiInputError, match="has no particles table"):
        bad = tmp_path / "bad.star"
        starfile.write({"x": pd.DataFrame({"rlnFoo": [1.0]})}, bad)
        read_star(bad, centers)


@pytest.mark.slow
def test_cli_predict_format_star(tmp_path):
    """predict --format star on a Kaggle root: files readable back to the prediction's positions."""
    from czii_kaggle.bundle import load_bundle
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    sim = simulate_dataset(tmp_path / "sim", n_train=0, n_test=1,
                           config=SimConfig(shape_vox=(32, 192, 192), difficulty="easy"), seed=3)
    out = tmp_path / "star"
    assert cli.main(["predict", "--data", str(sim.root), "--format", "star", "--out", str(out),
                     "--detections-out", str(tmp_path / "d.csv")]) == 0
    assert (tmp_path / "d.csv").is_file()
    run = sim.test_runs[0]
    centers = tomogram_centers_A({run: layout.tomogram_path(sim.root, "test", run)})
    back = pd.concat([read_star(p, centers) for p in sorted(out.glob("*.star"))], ignore_index=True)
    from czii_kaggle.predict import predict_runs

    want = predict_runs(sim.root, "test", bundle=load_bundle(), progress=False).picks
    assert len(back) == len(want) > 0
    key = ["particle_type", "x"]
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True),
                                  want[back.columns].sort_values(key).reset_index(drop=True), atol=1e-4)


def test_star_out_that_is_a_file_is_refused_before_predicting(tmp_path, capsys):
    root = tmp_path / "data"
    omezarr.write_tomogram(layout.tomogram_path(root, "test", "TS_x"), np.zeros((8, 64, 64), np.float32), 10.0)
    taken = tmp_path / "taken.csv"
    taken.write_text("keep me")
    assert cli.main(["predict", "--data", str(root), "--format", "star", "--out", str(taken)]) == 2
    assert "writes a folder" in capsys.readouterr().err and taken.read_text() == "keep me"
