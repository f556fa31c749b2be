"""Inference and the run-level pipeline: bad input, failure isolation, the shipped model."""
import json
import shutil

import numpy as np
import pytest

from czii_kaggle import io, layout, metric, particles, submission
from czii_kaggle.detect import DETECTION_COLUMNS, DetectConfig, detect_volume, image_size, load_model
from czii_kaggle.errors import CziiInputError
from czii_kaggle.predict import DEFAULT_BUNDLE, load_bundle, predict_runs, scored_only
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
    assert {"read_s", "preprocess_s", "inference_s", "aggregate_s"} <= set(rep.columns)
    # the submission can still be written from what succeeded
    sub = submission.write_submission(scored_only(pred.picks), tmp_path / "submission.csv")
    assert set(sub["experiment"]) <= set(runs) - {runs[1]}


def test_run_with_nan_tomogram_is_handled(tmp_path, untrained_bundle):
    root = tmp_path / "data"
    vol = np.random.default_rng(0).normal(size=(16, 64, 64)).astype(np.float32)
    vol[3, 10:20, 10:20] = np.nan
    io.write_tomogram(layout.tomogram_path(root, "test", "TS_nan"), vol, 10.0)
    io.write_tomogram(layout.tomogram_path(root, "test", "TS_allnan"), np.full((8, 64, 64), np.nan, np.float32), 10.0)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        pred = predict_runs(root, "test", bundle=untrained_bundle, progress=False)
    rep = pred.report.set_index("experiment")
    assert rep.loc["TS_nan", "status"] == "ok"
    assert rep.loc["TS_allnan", "status"] == "failed" and "TS_allnan" in rep.loc["TS_allnan", "error"]


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
    from czii_kaggle.predict import with_slice_step

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
    from czii_kaggle.predict import with_slice_step

    bundle = with_slice_step(load_bundle(None), 2)
    pred = predict_runs(small_dataset.root, "test", bundle=bundle, progress=False)
    voxel = pred.report["slice_step_A"].iloc[0] / 2
    assert (np.rint(pred.detections["z"] / voxel) % 2 == 0).all()  # only every second slice ran
    truth = submission.read_solution(small_dataset.solution_csv)
    assert metric.score(truth, submission.make_submission(scored_only(pred.picks))) > 0.4
