"""Inference and the run-level pipeline: bad input, failure isolation, the shipped model."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import omezarr, layout, metric, particles, picks, submission
from czii_kaggle.aggregate import AggregateConfig
from czii_kaggle.detect import DETECTION_COLUMNS, DetectConfig, detect_volume, image_size, load_model
from czii_kaggle.errors import CziiInputError, CziiRunError
from czii_kaggle.bundle import DEFAULT_BUNDLE, export_bundle_onnx, file_sha256, load_bundle
from czii_kaggle.predict import (Prediction, predict_runs, raise_on_problems, run_problems, scored_only, stage_times,
                                 write_prediction)
from czii_kaggle.simulate import SimConfig, simulate_dataset

SHIPPED = DEFAULT_BUNDLE / "TRAINING.json"  # written only beside a really trained shipped model


@pytest.fixture(scope="module")
def untrained_bundle(tmp_path_factory):
    """A real (untrained) six-class YOLO saved from the project's yaml: fast, offline."""
    from czii_kaggle import offline

    YOLO = offline.import_ultralytics().YOLO
    d = tmp_path_factory.mktemp("bundle")
    model = YOLO(str(DEFAULT_BUNDLE.parent / "model_cfg" / "yolo11p-czii.yaml"))
    model.model.names = dict(enumerate(particles.NAMES))
    model.save(str(d / "model.pt"))
    return d


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return simulate_dataset(out, n_train=0, n_test=3, config=SimConfig(shape_vox=(48, 256, 256), difficulty="easy"),
                            seed=5)


def test_image_size_never_upscales():
    assert image_size((630, 630)) == 640
    assert image_size((100, 130)) == 160
    assert image_size((2000, 900), 640) == 640


def test_load_model_bad_weights(tmp_path, untrained_bundle):
    with pytest.raises(CziiInputError, match="weights file not found"):
        load_model(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CziiInputError, match="junk.pt: not a loadable YOLO model"):
        load_model(junk)
    # a real YOLO checkpoint whose classes are not the particle types
    from czii_kaggle import offline

    coco = tmp_path / "coco.pt"
    offline.import_ultralytics().YOLO("yolo11n.yaml").save(str(coco))
    with pytest.raises(CziiInputError, match="are not the particle types"):
        load_model(coco)
    assert load_model(untrained_bundle / "model.pt").task == "detect"


def test_load_bundle_reads_configs(tmp_path, untrained_bundle):
    b = tmp_path / "b"
    shutil.copytree(untrained_bundle, b)
    (b / "czii_config.json").write_text(json.dumps({"preprocess": {"slice_offset": 2}, "detect": {"batch": 4}}))
    bundle = load_bundle(b)
    assert bundle.preprocess.slice_offset == 2 and bundle.detect.batch == 4
    (b / "czii_config.json").write_text("{broken")
    with pytest.raises(CziiInputError, match="czii_config.json: not valid JSON"):
        load_bundle(b)
    with pytest.raises(CziiInputError, match="weights file not found"):
        load_bundle(tmp_path / "empty")


@pytest.mark.parametrize("cfg, message", [
    ({"preprocess": {"slice_offset": -1}}, "invalid settings: slice_offset must be >= 0"),
    ({"preprocess": {"bogus": 1}}, "invalid settings: .*'bogus'"),
    ({"aggregate": {"params": {"ribosome": {"threshold": 1}}}}, "invalid settings: .*'threshold'"),
    ({"detect": 5}, "'detect' is 5, not an object of settings"),
    ([1, 2], "holds a list, not an object of settings"),
])
def test_load_bundle_bad_settings_name_the_file(tmp_path, untrained_bundle, cfg, message):
    b = tmp_path / "b"
    shutil.copytree(untrained_bundle, b)
    (b / "czii_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CziiInputError, match=f"czii_config.json: {message}"):
        load_bundle(b)


def test_detect_volume_constant_and_small_inputs(untrained_bundle):
    model = load_model(untrained_bundle / "model.pt")
    flat = np.full((4, 64, 96), 128, np.uint8)  # all-constant slices: a correct empty result
    dets = detect_volume(model, flat, 10.0, "flat", DetectConfig(batch=2), progress=False)
    assert list(dets.columns) == DETECTION_COLUMNS
    with pytest.raises(ValueError, match="too small"):
        detect_volume(model, np.zeros((4, 16, 200), np.uint8), 10.0, "tiny", progress=False)


def test_one_bad_run_never_loses_the_others(tmp_path, small_dataset, untrained_bundle):
    root = tmp_path / "data"
    shutil.copytree(small_dataset.root, root)
    runs = layout.list_runs(root, "test")
    broken = layout.tomogram_path(root, "test", runs[1])
    shutil.rmtree(broken / "0")  # a zarr with no level 0
    pred = predict_runs(root, "test", bundle=untrained_bundle, progress=False)
    rep = pred.report.set_index("experiment")
    assert rep.loc[runs[1], "status"] == "failed"
    assert str(broken) in rep.loc[runs[1], "error"]
    assert (rep.drop(index=runs[1])["status"] == "ok").all()
    assert {"read_s", "preprocess_s", "wait_s", "inference_s", "aggregate_s"} <= set(rep.columns)
    # which runs failed and why, one line each; the untrained model's runs found nothing
    problems = run_problems(pred.report).set_index("experiment")["problem"]
    assert problems[runs[1]].startswith(f"failed: {broken}") and "\n" not in problems[runs[1]]
    assert all(problems[r].startswith("no picks: ") for r in runs if r != runs[1])
    with pytest.raises(CziiRunError, match=f"3 of 3 run\\(s\\) failed or gave no picks .*{runs[1]}.*allow_failed_runs"):
        raise_on_problems(pred.report)
    assert len(raise_on_problems(pred.report, allow=True)) == 3
    # the submission can still be written from what succeeded
    sub = write_prediction(pred, tmp_path / "submission.csv")
    assert set(sub["experiment"]) <= set(runs) - {runs[1]}


def test_runs_are_shared_out_over_the_devices(small_dataset, untrained_bundle):
    """The multi-GPU path (one worker and model per device, runs prefetched), on two CPU workers:
    every run is predicted once, by one of the workers, with the result one serial worker gives."""
    runs = small_dataset.test_runs
    one = predict_runs(small_dataset.root, "test", bundle=untrained_bundle, devices=["cpu"], progress=False,
                       prefetch=0)
    two = predict_runs(small_dataset.root, "test", bundle=untrained_bundle, devices=["cpu", "cpu"], progress=False)
    assert list(two.report["experiment"]) == runs and (two.report["status"] == "ok").all()
    assert set(two.report["worker"]) == {0, 1} and set(one.report["worker"]) == {0}
    assert (two.report["device"] == "cpu").all() and (two.report["backend"] == "torch").all()
    key = ["experiment", "z", "x", "y", "class_id"]
    pd.testing.assert_frame_equal(two.detections.sort_values(key).reset_index(drop=True),
                                  one.detections.sort_values(key).reset_index(drop=True))
    pd.testing.assert_frame_equal(two.picks, one.picks)
    times = stage_times(one)
    assert times["runs"] == 3 and 0 < times["wait_share"] < 1 and times["wall_s"] > 0
    # serial: the model waits exactly while its next run is read and preprocessed
    np.testing.assert_allclose(one.report["wait_s"], one.report["read_s"] + one.report["preprocess_s"], atol=0.05)


def test_reading_overlaps_the_model_work(monkeypatch):
    """With prefetch the next run is read while the model works on the current one; without, never."""
    import threading
    import time

    import czii_kaggle.detectors.yolo as yolo_mod
    import czii_kaggle.predict as predict_mod
    from czii_kaggle.detect import empty_detections

    spans = {"read": [], "model": []}
    lock = threading.Lock()

    def timed(kind, result):
        def fake(*args, **kwargs):
            t0 = time.perf_counter()
            time.sleep(0.15)
            with lock:
                spans[kind].append((t0, time.perf_counter()))
            return result() if callable(result) else result
        return fake

    monkeypatch.setattr(predict_mod, "select_runs", lambda root, split, runs, tomograms=None: ["a", "b", "c", "d"])
    monkeypatch.setattr(predict_mod, "load_yolo", lambda bundle, backend: None)
    monkeypatch.setattr(predict_mod, "prepare_run", timed(
        "read", lambda: (np.zeros((2, 40, 40), np.uint8), 10.0, {"read_s": 0.15, "preprocess_s": 0.0})))
    monkeypatch.setattr(yolo_mod, "detect_volume", timed("model", empty_detections))

    def overlaps() -> bool:
        return any(r0 < m1 and m0 < r1 for r0, r1 in spans["read"] for m0, m1 in spans["model"])

    bundle = load_bundle(DEFAULT_BUNDLE)
    serial = predict_runs("unused", bundle=bundle, devices=["cpu"], backend="torch", progress=False, prefetch=0)
    assert not overlaps() and stage_times(serial)["wait_share"] > 0.4
    spans["read"].clear(), spans["model"].clear()
    ahead = predict_runs("unused", bundle=bundle, devices=["cpu"], backend="torch", progress=False, prefetch=1)
    assert overlaps() and (ahead.report["status"] == "ok").all()
    assert (ahead.report["wait_s"].iloc[1:] < 0.1).all()  # after the first run, data is ready when the model is
    assert ahead.wall_s < serial.wall_s
    with pytest.raises(ValueError, match="prefetch"):
        predict_runs("unused", bundle=bundle, devices=["cpu"], backend="torch", progress=False, prefetch=-1)


def test_unknown_run_is_refused_before_anything_runs(small_dataset):
    with pytest.raises(CziiInputError, match=r"no run named 'TS_typo' in the 'test' split \(its 3 run\(s\): TS_"):
        predict_runs(small_dataset.root, "test", runs=[small_dataset.test_runs[0], "TS_typo"], bundle="nowhere.pt")


def _prediction(root, statuses: list[str], n_picks: int) -> Prediction:
    """A prediction as predict_runs returns it, for runs of the given statuses and picks in the first."""
    report = pd.DataFrame({"experiment": [f"TS_{i}" for i in range(len(statuses))], "status": statuses,
                           "error": ["" if s == "ok" else "data/TS: no such zarr" for s in statuses],
                           "n_picks": [n_picks] + [0] * (len(statuses) - 1), "n_detections": 0})
    picks = pd.DataFrame({"experiment": "TS_0", "particle_type": "ribosome", "x": np.arange(n_picks) * 500.0,
                          "y": 100.0, "z": 100.0})
    return Prediction(picks=picks, detections=pd.DataFrame(columns=DETECTION_COLUMNS), report=report,
                      inputs=[root])


def test_no_output_is_replaced_by_an_empty_result_or_written_among_inputs(tmp_path):
    root = tmp_path / "data"
    zattrs = root / "test" / "static" / "ExperimentRuns" / "TS_0" / "VoxelSpacing10.000" / "denoised.zarr" / ".zattrs"
    zattrs.parent.mkdir(parents=True)
    zattrs.write_text('{"multiscales": []}')
    out = tmp_path / "submission.csv"
    out.write_text("precious\n")
    # every run failed: nothing written, whatever existed stays
    with pytest.raises(CziiInputError, match=r"submission.csv: not written: every run failed \(2; TS_0: data/TS"):
        write_prediction(_prediction(root, ["failed", "failed"], 0), out)
    # runs ran but found nothing: an existing file is kept
    with pytest.raises(CziiInputError, match="kept as it was: this prediction found no particle"):
        write_prediction(_prediction(root, ["ok", "failed"], 0), out)
    assert out.read_text() == "precious\n"
    # outputs among the inputs, or twice the same path, are refused before anything is written
    good = _prediction(root, ["ok", "failed"], 3)
    with pytest.raises(CziiInputError, match=r"\.zattrs: is inside .*data: an input of this prediction"):
        write_prediction(good, zattrs)
    with pytest.raises(CziiInputError, match="is given as two outputs"):
        write_prediction(good, out, detections_out=tmp_path / "." / "submission.csv")
    with pytest.raises(CziiInputError, match="is a folder"):
        write_prediction(good, tmp_path)
    assert zattrs.read_text() == '{"multiscales": []}' and out.read_text() == "precious\n"
    # the runs that succeeded are written, detections beside them
    sub = write_prediction(good, out, detections_out=tmp_path / "detections.csv")
    assert len(sub) == 3 and len(submission.validate_submission(out)) == 3
    assert list(pd.read_csv(tmp_path / "detections.csv").columns) == DETECTION_COLUMNS
    # a result without picks may start a new file (nothing is replaced)
    write_prediction(_prediction(root, ["ok"], 0), tmp_path / "new.csv")
    assert len(pd.read_csv(tmp_path / "new.csv")) == 0


def test_run_with_nan_tomogram_is_handled(tmp_path, untrained_bundle):
    root = tmp_path / "data"
    vol = np.random.default_rng(0).normal(size=(16, 64, 64)).astype(np.float32)
    vol[3, 10:20, 10:20] = np.nan
    omezarr.write_tomogram(layout.tomogram_path(root, "test", "TS_nan"), vol, 10.0)
    omezarr.write_tomogram(layout.tomogram_path(root, "test", "TS_allnan"), np.full((8, 64, 64), np.nan, np.float32), 10.0)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        pred = predict_runs(root, "test", bundle=untrained_bundle, progress=False)
    rep = pred.report.set_index("experiment")
    assert rep.loc["TS_nan", "status"] == "ok"
    assert rep.loc["TS_allnan", "status"] == "failed" and "TS_allnan" in rep.loc["TS_allnan", "error"]


def test_blank_runs_fail_with_their_reason_others_go_on(tmp_path, untrained_bundle):
    """A tomogram with no contrast holds no particle: its run fails naming the file, no picks."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    omezarr.write_tomogram(layout.tomogram_path(root, "test", "TS_ok"), rng.normal(size=(16, 64, 64)).astype(np.float32), 10.0)
    omezarr.write_tomogram(layout.tomogram_path(root, "test", "TS_zero"), np.zeros((16, 64, 64), np.float32), 10.0)
    nearly = np.zeros((16, 128, 128), np.float32)
    nearly[8, 60:62, 60:62] = 5.0  # a speck: > 99.5 % of voxels one value
    omezarr.write_tomogram(layout.tomogram_path(root, "test", "TS_speck"), nearly, 10.0)
    missing = layout.tomogram_path(root, "test", "TS_nochunk")
    omezarr.write_tomogram(missing, rng.normal(size=(16, 64, 64)).astype(np.float32), 10.0, n_levels=1)
    (missing / "0" / "0" / "0" / "0").unlink()  # its only chunk: zarr reads zeros
    pred = predict_runs(root, "test", bundle=untrained_bundle, progress=False)
    rep = pred.report.set_index("experiment")
    assert rep.loc["TS_ok", "status"] == "ok"
    for run, why in [("TS_zero", "a blank tomogram"), ("TS_nochunk", "chunk files are absent"),
                     ("TS_speck", "0.5 and 99.5 intensity percentiles")]:
        assert rep.loc[run, "status"] == "failed" and rep.loc[run, "n_picks"] == 0
        error = rep.loc[run, "error"]
        assert str(layout.tomogram_path(root, "test", run)) in error and "no contrast" in error and why in error
    assert set(pred.picks["experiment"]) <= {"TS_ok"} and set(pred.detections["experiment"]) <= {"TS_ok"}


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model in czii_kaggle/models")
@pytest.mark.slow
def test_shipped_model_finds_particles(small_dataset):
    """The shipped model on unseen easy simulated runs: real detections, a real score."""
    pred = predict_runs(small_dataset.root, "test", progress=False)
    assert (pred.report["status"] == "ok").all()
    truth = submission.read_solution(small_dataset.solution_csv)
    sub = submission.make_submission(scored_only(pred.picks))
    table = metric.score_table(truth, sub)
    assert metric.score(truth, sub) > 0.5, table
    # the easy classes are found well
    easy = [p.name for p in particles.PARTICLES if p.difficulty == "easy" and p.name in set(truth.particle_type)]
    assert (table.loc[easy, "recall"] > 0.6).all(), table


def test_with_slice_step_scales_support(untrained_bundle):
    from czii_kaggle.bundle import with_slice_step

    b = load_bundle(untrained_bundle)
    b2 = with_slice_step(b, 2)
    assert b2.detect.slice_step == 2
    for name in particles.NAMES:
        assert b2.aggregate[name].min_support == max(1, -(-b.aggregate[name].min_support // 2))
    assert with_slice_step(b2, 1).aggregate[particles.NAMES[0]].min_support >= b2.aggregate[particles.NAMES[0]].min_support
    with pytest.raises(ValueError, match="slice_step"):
        with_slice_step(b, 0)


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model in czii_kaggle/models")
@pytest.mark.slow
def test_slice_step_trades_speed_for_recall(small_dataset):
    from czii_kaggle.bundle import with_slice_step

    bundle = with_slice_step(load_bundle(None), 2)
    pred = predict_runs(small_dataset.root, "test", bundle=bundle, progress=False)
    voxel = pred.report["slice_step_A"].iloc[0] / 2
    assert (np.rint(pred.detections["z"] / voxel) % 2 == 0).all()  # only every second slice ran
    truth = submission.read_solution(small_dataset.solution_csv)
    assert metric.score(truth, submission.make_submission(scored_only(pred.picks))) > 0.4


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model in czii_kaggle/models")
def test_tta_views_are_flipped_back_into_the_slice_frame(small_dataset):
    """Each TTA view's boxes equal the plain detector's on the flipped volume, flipped back."""
    from czii_kaggle.preprocess import preprocess_volume

    bundle = load_bundle(None)
    model = load_model(bundle.weights)
    run = small_dataset.test_runs[0]
    vol, vs = omezarr.read_tomogram(layout.tomogram_path(small_dataset.root, "test", run))
    vol = preprocess_volume(vol[:12], bundle.preprocess)
    nz, ny, nx = vol.shape

    def plain(v):
        return detect_volume(model, np.ascontiguousarray(v), vs, run, DetectConfig(tta_views=1), progress=False)

    expected = [plain(vol)]
    for flip_x, flip_y in [(True, True), (True, False)]:
        d = plain(vol[:, ::-1 if flip_y else 1, ::-1 if flip_x else 1])
        if flip_x:
            d["x"] = nx * vs - d["x"]
        if flip_y:
            d["y"] = ny * vs - d["y"]
        expected.append(d)
    key = ["z", "class_id", "x", "y"]
    want = pd.concat(expected).sort_values(key)[key + ["confidence"]].to_numpy(float)
    got = detect_volume(model, vol, vs, run, DetectConfig(tta_views=3), progress=False)
    got = got.sort_values(key)[key + ["confidence"]].to_numpy(float)
    assert len(want) > 10 and got.shape == want.shape
    np.testing.assert_allclose(got[:, :4], want[:, :4], atol=0.5)  # Angstrom
    np.testing.assert_allclose(got[:, 4], want[:, 4], atol=1e-3)  # confidence
    with pytest.raises(ValueError, match="tta_views"):
        DetectConfig(tta_views=5)


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model in czii_kaggle/models")
@pytest.mark.slow
def test_tune_bundle_pools_roots_and_saves_tta(tmp_path, real_root):
    """Runs of one name in two roots are tuned on side by side, not merged; the TTA setting is saved."""
    from czii_kaggle.tune import tune_bundle

    roots = []
    for seed in (11, 12):  # both roots hold a run called TS_5_4 (the first real layout, cropped)
        ds = simulate_dataset(tmp_path / f"sim{seed}", n_train=1, n_test=0, seed=seed, real_train_layouts=True,
                              real_root=real_root,
                              config=SimConfig(shape_vox=(64, 320, 320), difficulty="easy"))
        roots.append((ds.root, ds.train_runs))
    assert roots[0][1] == roots[1][1] == ["TS_5_4"]
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    table = tune_bundle(*roots[0], bundle, progress=False, tta_views=2, more=[roots[1]]).set_index("particle_type")
    n_truth = pd.concat([picks.read_all_picks(r, runs) for r, runs in roots])["particle_type"].value_counts()
    assert n_truth.sum() > 20
    for name, n in n_truth.items():  # every pick of both roots was a candidate's target
        assert table.loc[name, "tp"] + table.loc[name, "fn"] == n
    saved = load_bundle(bundle)
    assert saved.detect.tta_views == 2
    assert saved.aggregate == AggregateConfig.from_dict(json.loads((bundle / "czii_config.json").read_text())["aggregate"])


# --------------------------------------------------------------------------------------
# The ONNX Runtime backend (CPU)
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    """A copy of the shipped bundle with a fresh ONNX export, made through the command line."""
    from czii_kaggle import cli

    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    bundle = tmp_path_factory.mktemp("onnx") / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle, ignore=shutil.ignore_patterns("*.onnx"))
    cfg = json.loads((bundle / "czii_config.json").read_text())
    cfg.pop("onnx", None)
    (bundle / "czii_config.json").write_text(json.dumps(cfg))
    assert load_bundle(bundle).onnx is None
    assert cli.main(["export-onnx", "--weights", str(bundle)]) == 0
    return bundle


@pytest.mark.slow
def test_onnx_backend_predicts_what_torch_predicts(onnx_bundle, small_dataset):
    """ONNX Runtime gives the torch model's particles (same places, same scores) on real runs."""
    bundle = load_bundle(onnx_bundle)
    assert bundle.onnx == onnx_bundle / "model.onnx"
    saved = json.loads((onnx_bundle / "czii_config.json").read_text())["onnx"]
    assert saved["source_sha256"] == file_sha256(bundle.weights)
    runs = small_dataset.test_runs[:2]
    got = {be: predict_runs(small_dataset.root, "test", runs=runs, bundle=bundle, backend=be, progress=False)
           for be in ("torch", "onnx")}
    assert (got["onnx"].report["backend"] == "onnx").all() and (got["torch"].report["backend"] == "torch").all()
    key = ["experiment", "particle_type", "x", "y", "z", "score"]
    t = got["torch"].picks.sort_values(key[:5])[key].reset_index(drop=True)
    o = got["onnx"].picks.sort_values(key[:5])[key].reset_index(drop=True)
    assert len(t) > 20 and len(o) == len(t)
    pd.testing.assert_frame_equal(o[key[:2]], t[key[:2]])
    np.testing.assert_allclose(o[key[2:5]].to_numpy(float), t[key[2:5]].to_numpy(float), atol=1.0)  # Angstrom
    np.testing.assert_allclose(o["score"].to_numpy(float), t["score"].to_numpy(float), atol=1e-3)
    # "auto" on a CPU-only machine takes the ONNX copy
    auto = predict_runs(small_dataset.root, "test", runs=runs[:1], bundle=bundle, devices=["cpu"], progress=False)
    assert (auto.report["backend"] == "onnx").all()


def test_export_replaces_only_the_copy_of_its_own_weights(tmp_path, onnx_bundle, untrained_bundle):
    """export-onnx --weights other.pt beside model.pt writes other.onnx; model.onnx and its record stay."""
    from czii_kaggle import cli

    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    shutil.copy2(untrained_bundle / "model.pt", b / "other.pt")
    onnx_bytes, cfg_before = (b / "model.onnx").read_bytes(), (b / "czii_config.json").read_text()
    assert cli.main(["export-onnx", "--weights", str(b / "other.pt")]) == 0
    assert (b / "model.onnx").read_bytes() == onnx_bytes
    assert (b / "czii_config.json").read_text() == cfg_before
    assert load_bundle(b).onnx == b / "model.onnx"  # still the up-to-date copy of model.pt
    assert load_model(b / "other.onnx").names == load_model(b / "other.pt").names
    assert not list(b.glob(".onnx-export-*"))  # the temporary export folder is gone
    # a file named like another weights' recorded copy is never overwritten
    (b / "czii_config.json").write_text(json.dumps({**json.loads(cfg_before),
                                                    "onnx": {"file": "model.onnx", "source": "best.pt"}}))
    with pytest.raises(CziiInputError, match="model.onnx: is the ONNX copy of best.pt"):
        export_bundle_onnx(b)
    assert (b / "model.onnx").read_bytes() == onnx_bytes


def test_stale_or_missing_onnx_is_never_used(tmp_path, onnx_bundle, untrained_bundle, monkeypatch):
    from czii_kaggle.detectors.yolo import choose_backend

    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    assert choose_backend(load_bundle(b), "auto", ["cpu"]) == "onnx"
    assert choose_backend(load_bundle(b), "auto", ["cuda:0", "cuda:1"]) == "torch"  # GPUs run the .pt
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend(load_bundle(b), "tensorrt", ["cpu"])
    direct = load_bundle(b / "model.onnx")  # an .onnx file itself runs with ONNX Runtime, anywhere
    assert direct.onnx == b / "model.onnx" and choose_backend(direct, "auto", ["cuda:0"]) == "onnx"
    with pytest.raises(CziiInputError, match="model.onnx: is an ONNX model: the torch backend needs the .pt"):
        choose_backend(direct, "torch", ["cpu"])
    shutil.copy2(untrained_bundle / "model.pt", b / "model.pt")  # retrained weights, old export
    with pytest.warns(RuntimeWarning, match="model.onnx was exported from other weights"):
        stale = load_bundle(b)
    assert stale.onnx is None and choose_backend(stale, "auto", ["cpu"]) == "torch"
    with pytest.raises(CziiInputError, match=r"model.onnx: no ONNX copy of model.pt made from these weights"):
        choose_backend(stale, "onnx", ["cpu"])
    # without onnxruntime an ONNX model is a clear error, and auto falls back to torch
    import czii_kaggle.detect as detect_mod
    import czii_kaggle.detectors.yolo as yolo_mod

    monkeypatch.setattr(detect_mod, "onnxruntime_available", lambda: False)
    monkeypatch.setattr(yolo_mod, "onnxruntime_available", lambda: False)
    with pytest.raises(CziiInputError, match="model.onnx: an ONNX model needs onnxruntime"):
        load_model(onnx_bundle / "model.onnx")
    assert choose_backend(load_bundle(onnx_bundle), "auto", ["cpu"]) == "torch"


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model in czii_kaggle/models")
def test_shipped_bundle_has_an_up_to_date_onnx_copy():
    """The shipped model.onnx was exported from the shipped model.pt (sha256 recorded and equal)."""
    pytest.importorskip("onnxruntime")
    bundle = load_bundle(None)
    assert bundle.onnx == DEFAULT_BUNDLE / "model.onnx"
    assert load_model(bundle.onnx).names == load_model(bundle.weights).names


def test_yolo_reads_a_tomogram_of_another_voxel_size_at_its_own(tmp_path):
    """The shipped YOLO model was trained at Kaggle's 10.012 A: a 7.84 A tomogram is resampled onto that
    grid before its slices are made (positions stay in Angstrom); ``voxel_size_A = None`` reads it as it comes."""
    import dataclasses

    from czii_kaggle.detectors.yolo import prepare_run
    from czii_kaggle.layout import KAGGLE_VOXEL_SIZE_A

    bundle = load_bundle()
    assert bundle.preprocess.voxel_size_A == KAGGLE_VOXEL_SIZE_A  # the shipped model was trained at it
    shape = (30, 50, 52)
    path = omezarr.write_tomogram(tmp_path / "t.zarr", np.random.default_rng(0).random(shape), 7.84)
    vol_u8, vs, times = prepare_run(path, bundle)
    assert vs == KAGGLE_VOXEL_SIZE_A and vol_u8.dtype == np.uint8
    assert vol_u8.shape == tuple(int(np.floor((n - 1) * 7.84 / KAGGLE_VOXEL_SIZE_A)) + 1 for n in shape)
    raw = dataclasses.replace(bundle, preprocess=dataclasses.replace(bundle.preprocess, voxel_size_A=None))
    vol_u8, vs, _ = prepare_run(path, raw)
    assert vs == pytest.approx(7.84) and vol_u8.shape == shape
