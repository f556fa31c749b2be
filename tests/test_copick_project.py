"""copick projects in and out: predictions written as copick picks (read back with copick's own
API), bad projects, runs without the requested tomogram, training roots from copick picks."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

copick = pytest.importorskip("copick")

from czii_kaggle import cli, copick_project, omezarr, layout, particles, picks as picks_io  # noqa: E402
from czii_kaggle.errors import CziiInputError  # noqa: E402
from czii_kaggle.predict import predict_runs  # noqa: E402
from czii_kaggle.simulate import SimConfig, simulate_dataset  # noqa: E402
from czii_kaggle.workflow import predict_sources, resolve_sources  # noqa: E402


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return simulate_dataset(out, n_train=2, n_test=2, config=SimConfig(shape_vox=(40, 224, 224), difficulty="easy"),
                            seed=13)


def _project(tmp_path, sim, split="test"):
    return copick_project.write_config(tmp_path / "copick.json", sim.root / split / "static", tmp_path / "overlay")


def _copick_picks(config, run, user="czii-kaggle", session="0") -> pd.DataFrame:
    """Picks as copick's own API reads them: experiment, particle_type, x, y, z, score."""
    root = copick.from_file(str(config))
    rows = []
    for p in root.get_run(run).get_picks(user_id=user, session_id=session):
        xyz, _ = p.numpy()
        rows += [{"experiment": run, "particle_type": p.pickable_object_name, "x": a, "y": b, "z": c, "score": s}
                 for (a, b, c), s in zip(xyz, p.scores())]
    return pd.DataFrame(rows, columns=["experiment", "particle_type", "x", "y", "z", "score"])


@pytest.mark.slow
def test_predict_copick_writes_scored_picks_that_copick_reads_back(tmp_path, sim):
    config = _project(tmp_path, sim)
    yolo = ["--detectors", "yolo"]  # the copick path here; the bundle's default ensemble: the test below
    assert cli.main(["predict", "--copick", str(config), "--user-id", "czii-kaggle", "--session-id", "0", *yolo]) == 0
    want = predict_runs(sim.root, "test", progress=False).picks  # the Kaggle-layout path, same tomograms
    assert len(want) > 5
    root = copick.from_file(str(config))
    for run in sim.test_runs:
        sets = root.get_run(run).get_picks(user_id="czii-kaggle", session_id="0")
        assert sorted(p.pickable_object_name for p in sets) == sorted(particles.NAMES)  # one set per type
        got = _copick_picks(config, run).sort_values(["particle_type", "x"]).reset_index(drop=True)
        exp = want[want["experiment"] == run].sort_values(["particle_type", "x"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, exp[got.columns], check_dtype=False, atol=1e-6)
    # an existing user/session is never overwritten without --overwrite, and nothing is touched
    pick_file = next((tmp_path / "overlay").rglob("czii-kaggle_0_ribosome.json"))
    before = pick_file.read_bytes()
    pick_file.write_text(pick_file.read_text())  # same bytes; mtime is what we watch next
    mtime = pick_file.stat().st_mtime_ns
    assert cli.main(["predict", "--copick", str(config), *yolo]) == 2
    assert pick_file.read_bytes() == before and pick_file.stat().st_mtime_ns == mtime
    # another session is a new pick set beside the first; --overwrite replaces
    assert cli.main(["predict", "--copick", str(config), "--session-id", "1", "--runs", sim.test_runs[0], *yolo]) == 0
    assert len(_copick_picks(config, sim.test_runs[0], session="1")) == (want["experiment"] == sim.test_runs[0]).sum()
    assert cli.main(["predict", "--copick", str(config), "--overwrite", "--runs", sim.test_runs[0], *yolo]) == 0


def test_bad_copick_configs_and_runs(tmp_path, sim, capsys):
    with pytest.raises(CziiInputError, match="copick config not found"):
        copick_project.open_project(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CziiInputError, match="broken.json: copick config is not valid JSON"):
        copick_project.open_project(broken)
    empty = copick_project.write_config(tmp_path / "empty.json", tmp_path / "nothing", tmp_path / "ov")
    with pytest.raises(CziiInputError, match="names no runs"):
        resolve_sources(copick=empty)
    assert cli.main(["predict", "--copick", str(empty)]) == 2
    assert "names no runs" in capsys.readouterr().err
    config = _project(tmp_path, sim)
    with pytest.raises(CziiInputError, match=r"runs \['TS_nope'\] are not in the copick project"):
        resolve_sources(copick=config, runs=["TS_nope"])
    with pytest.raises(CziiInputError, match="exactly one of --data"):
        resolve_sources()
    # Kaggle's training overlay names pick files {object}.json, which copick cannot list
    kaggle = copick_project.write_config(tmp_path / "k.json", sim.root / "train" / "static",
                                         sim.root / "train" / "overlay")
    with pytest.raises(CziiInputError, match=r"k.json: copick cannot list the picks of run .*read it with --data"):
        copick_project.read_picks(copick_project.open_project(kaggle))


def test_run_without_the_tomogram_is_reported_not_lost(tmp_path, sim):
    config = _project(tmp_path, sim)
    # one run gets a second voxel spacing holding only a wbp tomogram
    first, second = sim.test_runs
    vs7 = sim.root / "test" / "static" / "ExperimentRuns" / second / "VoxelSpacing7.000"
    omezarr.write_tomogram(vs7 / "wbp.zarr", np.zeros((8, 64, 64), np.float32), 7.0)
    src = resolve_sources(copick=config, voxel_spacing_A=7.0, tomo_type="wbp")
    assert set(src.tomograms) == {second} and set(src.errors) == {first}
    assert "has no voxel spacing 7 A (it has [10.0])" in src.errors[first]
    src = resolve_sources(copick=config, tomo_type="wbp")
    assert not src.tomograms and "has no 'wbp' tomogram at voxel spacing 10 A (it has ['denoised'])" in src.errors[first]
    pred = predict_sources(src, progress=False)  # nothing readable: every run reported, none silently dropped
    assert list(pred.report["experiment"]) == sim.test_runs and (pred.report["status"] == "failed").all()
    shutil.rmtree(vs7)


def test_training_root_from_copick_picks(tmp_path, sim):
    """Picks written into a copick project come back as a Kaggle-layout training root
    (tomograms linked, picks equal) that build_dataset reads."""
    config = copick_project.write_config(tmp_path / "train.json", sim.root / "train" / "static", tmp_path / "overlay")
    root = copick_project.open_project(config)
    runs = list(sim.train_runs)  # two: build-dataset keeps one to validate on
    run = runs[0]
    truth = picks_io.read_all_picks(sim.root, runs)
    copick_project.write_picks(root, truth, runs, user_id="curation", session_id="0")
    back = copick_project.read_picks(root, user_id="curation")
    assert (back["score"] == 1.0).all()
    key = ["experiment", "particle_type", "x"]
    pd.testing.assert_frame_equal(back[picks_io.PICKS_COLUMNS].sort_values(key).reset_index(drop=True),
                                  truth.sort_values(key).reset_index(drop=True))
    out = copick_project.training_root(root, tmp_path / "kaggle", user_id="curation")
    assert layout.list_pick_runs(out) == sorted(runs)
    truth = truth[truth["experiment"] == run]
    linked = layout.tomogram_path(out, "train", run)
    assert linked.is_symlink()
    assert omezarr.open_level(linked).shape == omezarr.open_level(layout.tomogram_path(sim.root, "train", run)).shape
    got = picks_io.read_all_picks(out, [run])
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  truth.sort_values(key).reset_index(drop=True))
    with pytest.raises(CziiInputError, match="already exists"):
        copick_project.training_root(root, tmp_path / "kaggle", user_id="curation")
    with pytest.raises(CziiInputError, match="have no picks of user nobody"):
        copick_project.training_root(root, tmp_path / "k2", user_id="nobody")
    assert json.loads(config.read_text())["pickable_objects"][0]["name"] == particles.NAMES[0]
    # the CLI trains from it: build-dataset --copick
    ds = tmp_path / "ds"
    assert cli.main(["build-dataset", "--copick", str(config), "--user-id", "curation", "--out", str(ds)]) == 0
    labels = [f.read_text() for f in (ds / "labels" / "val").glob("*.txt")]
    assert (ds / "data.yaml").is_file() and sum(len(t.splitlines()) for t in labels) > 0


def test_the_competitions_real_copick_config_reads_and_takes_our_picks(tmp_path, sim, real_root):
    """The competition's own copick config (real pickable objects, no config_type), pointed at
    simulated runs: its runs resolve and our picks are written under its objects."""
    doc = json.loads((real_root / "copick_config.json").read_text())
    assert {o["name"] for o in doc["pickable_objects"]} == set(particles.NAMES)
    doc.update(static_root=str(sim.root / "test" / "static"), overlay_root=str(tmp_path / "overlay"))
    config = tmp_path / "real.json"
    config.write_text(json.dumps(doc))
    with pytest.warns(DeprecationWarning, match="config_type"):
        src = resolve_sources(copick=config)
    assert src.runs == sim.test_runs and not src.errors
    picks = pd.DataFrame({"experiment": sim.test_runs[0], "particle_type": "ribosome",
                          "x": [1000.0], "y": [1200.0], "z": [150.0], "score": [0.75]})
    done = copick_project.write_picks(src.copick_root, picks, [sim.test_runs[0]], "czii-kaggle", "0")
    assert done["n_picks"].sum() == 1 and len(done) == len(particles.NAMES)
    back = copick_project.read_picks(copick_project.open_project(config), user_id="czii-kaggle")
    pd.testing.assert_frame_equal(back[picks.columns], picks, check_dtype=False)


@pytest.mark.slow
def test_a_copick_project_at_another_voxel_spacing_is_read_at_the_models(tmp_path):
    """A run of a copick project at 7.84 A (a CryoET Data Portal spacing): YOLO reads it resampled onto its
    10.012 A grid, and its picks land on the truth in Angstrom better than reading it as it comes."""
    import dataclasses

    from czii_kaggle import metric, submission
    from czii_kaggle.predict import load_bundle, scored_only

    vs = 7.84
    ds = simulate_dataset(tmp_path / "sim", n_train=0, n_test=1, seed=13,
                          config=SimConfig(shape_vox=(51, 286, 286), voxel_size_A=vs, difficulty="easy",
                                           noise_scale=(10.012444537618887 / vs) ** 1.5))
    run_dir = ds.root / "test" / "static" / "ExperimentRuns" / ds.test_runs[0]
    (run_dir / layout.VOXEL_SPACING_DIR).rename(run_dir / "VoxelSpacing7.840")
    config = copick_project.write_config(tmp_path / "copick.json", ds.root / "test" / "static", tmp_path / "overlay")
    truth = pd.read_csv(ds.solution_csv, dtype={"experiment": str})
    bundle = load_bundle()
    as_it_comes = dataclasses.replace(bundle, preprocess=dataclasses.replace(bundle.preprocess, voxel_size_A=None))
    scores = {}
    for name, b in (("resampled", bundle), ("as it comes", as_it_comes)):
        pred = predict_sources(resolve_sources(copick=config, voxel_spacing_A=vs), bundle=b, progress=False)
        assert list(pred.report["status"]) == ["ok"], name
        scores[name] = metric.score(truth, submission.make_submission(scored_only(pred.picks)))
    assert scores["resampled"] >= 0.65 and scores["resampled"] > scores["as it comes"] + 0.05, scores


@pytest.mark.slow
def test_predict_copick_with_named_detectors_runs_their_ensemble(tmp_path, sim, capsys):
    """``--copick`` without ``--detectors`` runs the bundle's default (here the ensemble of YOLO and the heatmap)
    and writes its picks into the project: those the Kaggle-layout path gives for the same tomograms;
    ``--format star`` takes named detectors too, and so does a local Dask cluster (``--workers``): the same
    picks again."""
    from conftest import make_tiny_bundle
    from czii_kaggle.bundle import ENSEMBLE_FILE, default_detectors, update_json
    from czii_kaggle.workflow import predict_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle", keep_all=True)
    config = _project(tmp_path, sim)
    update_json(bundle / ENSEMBLE_FILE, {"default_detectors": ["yolo", "heatmap"]})  # what it ships to run
    assert default_detectors(bundle) == ["yolo", "heatmap"]
    assert cli.main(["predict", "--copick", str(config), "--weights", str(bundle),
                     "--user-id", "ens", "--session-id", "0"]) == 0
    assert "detectors: yolo + heatmap" in capsys.readouterr().out
    want = predict_bundle(sim.root, "test", bundle=bundle, detectors="yolo,heatmap", progress=False).picks
    assert len(want) > 5
    for run in sim.test_runs:
        got = _copick_picks(config, run, user="ens").sort_values(["particle_type", "x"]).reset_index(drop=True)
        exp = want[want["experiment"] == run].sort_values(["particle_type", "x"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, exp[got.columns], check_dtype=False, atol=1e-4)
    star_dir = tmp_path / "star"
    capsys.readouterr()
    assert cli.main(["predict", "--data", str(sim.root), "--weights", str(bundle), "--detectors", "yolo,heatmap",
                     "--format", "star", "--out", str(star_dir)]) == 0
    assert "detectors: yolo + heatmap" in capsys.readouterr().out
    assert {p.stem for p in star_dir.glob("*.star")} == set(want["particle_type"])
    assert cli.main(["predict", "--copick", str(config), "--weights", str(bundle), "--detectors", "yolo,heatmap",
                     "--user-id", "ens", "--session-id", "1", "--workers", "1"]) == 0
    for run in sim.test_runs:
        on_dask = _copick_picks(config, run, user="ens", session="1")
        in_process = _copick_picks(config, run, user="ens", session="0")
        pd.testing.assert_frame_equal(on_dask, in_process, check_dtype=False, atol=1e-4)
