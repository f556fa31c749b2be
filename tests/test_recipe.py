"""The shipped model's recipe (czii_kaggle/recipes/shipped.json): the library's defaults, the
training script, the command line and the shipped bundle's own record all agree with it."""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from czii_kaggle import cli, tune
from czii_kaggle.dataset import DatasetConfig, LabelConfig
from czii_kaggle.detect import DetectConfig
from czii_kaggle.errors import CziiInputError
from czii_kaggle.layout import KAGGLE_VOXEL_SIZE_A
from czii_kaggle.predict import DEFAULT_BUNDLE, load_bundle
from czii_kaggle.preprocess import PreprocessConfig
from czii_kaggle.recipe import load_recipe
from czii_kaggle.train import MODEL_YAML, TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipe():
    return load_recipe()


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_shipped_model", REPO / "scripts" / "train_shipped_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_library_defaults_are_the_recipe(recipe):
    assert PreprocessConfig() == recipe.dataset.preprocess and PreprocessConfig().slice_offset == 3
    assert LabelConfig() == recipe.dataset.labels
    assert DatasetConfig() == recipe.dataset
    assert TrainConfig() == recipe.train and recipe.train_config() == TrainConfig()
    assert Path(TrainConfig().model) == MODEL_YAML == recipe.model_yaml and MODEL_YAML.is_file()
    assert recipe.tuning.threshold_grid == tune.DEFAULT_THRESHOLD_GRID
    assert recipe.tuning.support_grid == tune.DEFAULT_SUPPORT_GRID
    assert recipe.tuning.share_grid == tune.DEFAULT_SHARE_GRID
    assert recipe.tuning.tta_views == DetectConfig().tta_views


def test_the_last_stage_is_the_shipped_bundle(recipe):
    """The shipped bundle's own files say what the recipe's last stage says."""
    stage = recipe.stage()
    assert stage.name == recipe.stages[-1].name == "stage5"
    cfg = json.loads((DEFAULT_BUNDLE / "czii_config.json").read_text())
    assert PreprocessConfig.from_dict(cfg["preprocess"]) == stage.dataset.preprocess
    assert LabelConfig(**cfg["labels"]) == stage.dataset.labels
    assert load_bundle().preprocess.slice_offset == 3
    assert stage.simulation.look_spec() == json.loads((DEFAULT_BUNDLE / "TRAINING.json").read_text())[
        "simulation"]["config"]["look"]


def test_every_stage_matches_its_training_record(recipe):
    """TRAINING.json nests the record of each stage in the one fine-tuned from it; each agrees with its stage."""
    record = json.loads((DEFAULT_BUNDLE / "TRAINING.json").read_text())
    records = []
    while record is not None:
        records.append(record)
        record = record.get("fine_tuned_from") or record.get("stage1")
    records.reverse()
    assert [s.name for s in recipe.stages] == [f"stage{i + 1}" for i in range(len(records))]
    for stage, rec in zip(recipe.stages, records):
        sim = stage.simulation
        assert rec["simulation"]["seed"] == sim.seed, stage.name
        assert len(rec["simulation"]["runs"]) == sim.n_runs, stage.name
        assert rec["simulation"]["val_runs"] == list(stage.val_runs), stage.name
        assert rec["simulation"].get("count_scale", {}) == sim.count_scale, stage.name
        assert np.allclose(sim.run_difficulties(), [_difficulty(d) for d in rec["simulation"]["train_difficulties"]])
        ds = dict(rec["dataset"], preprocess=dict(rec["dataset"]["preprocess"]))
        ds["preprocess"].setdefault("spectral", "none")  # recorded before the option existed
        ds["preprocess"].setdefault("voxel_size_A", KAGGLE_VOXEL_SIZE_A)  # the same
        assert ds == json.loads(json.dumps(stage.dataset.to_dict())), stage.name
        assert rec["train"]["epochs"] == stage.epochs, stage.name
        expected = {k: v for k, v in recipe.train.to_dict().items()
                    if k not in ("model", "epochs", "device", "workers", "stop_after_epochs")}
        rec_train = {"warmup_epochs": 3.0, **rec["train"]}  # recorded before the option: Ultralytics' default, 3
        assert {k: rec_train[k] for k in expected} == expected, stage.name
        assert (rec["train"]["model"].endswith(".yaml")) == (stage.init is None), stage.name
        tuned = [(t["root"].split("/")[1], t["runs"]) for t in rec["simulation"].get("tuned_also_on", [])]
        assert len(tuned) == len(stage.tune_more), stage.name


def _difficulty(d):
    from czii_kaggle.simulate import difficulty_value

    return difficulty_value(d)


def test_script_default_plan_is_the_last_stage(recipe, script, tmp_path):
    plan = script.parse_plan(["--runs-dir", str(tmp_path)])
    stage = recipe.stage()
    assert plan.stage == stage
    assert plan.dataset == stage.dataset and plan.dataset.preprocess.slice_offset == 3
    assert plan.work == tmp_path.resolve() / "stage5"
    assert plan.init == tmp_path.resolve() / "stage4" / "bundle" / "model.pt"
    assert plan.train == replace(recipe.train, model=str(plan.init), epochs=7, stop_after_epochs=5, workers=0)
    assert plan.tune_more == ((plan.work / "tune_sim_0" / "czii-cryo-et-object-identification",
                               ("TS_sim_13_0", "TS_sim_13_1")),)
    assert plan.stage.simulation.look_spec()["filter"] == ["none", "gaussian", "median", "lowpass"]
    assert plan.install and plan.tta_views == 1 and plan.overrides == {}


def test_script_stages_and_flags(recipe, script, tmp_path):
    first = script.parse_plan(["--stage", "stage1", "--runs-dir", str(tmp_path)])
    assert first.stage == recipe.stage("stage1") and first.init is None
    assert first.train.model == str(MODEL_YAML) and first.train.epochs == 60
    assert first.dataset.preprocess.slice_offset == 1 and first.stage.simulation.look == "classic"
    third = script.parse_plan(["--stage", "stage3", "--runs-dir", str(tmp_path)])
    assert third.tune_more[0][0] == tmp_path.resolve() / "stage2" / "sim" / "czii-cryo-et-object-identification"
    # flags replace the recipe's values, and say so
    plan = script.parse_plan(["--runs-dir", str(tmp_path), "--epochs", "2", "--slice-offset", "2", "--n-runs", "3",
                              "--difficulties", "easy", "--val-runs", "TS_6_6", "--init", str(tmp_path / "x.pt")])
    assert plan.train.epochs == 2 and plan.train.stop_after_epochs is None and plan.train.model.endswith("x.pt")
    assert plan.dataset.preprocess.slice_offset == 2 and plan.stage.simulation.n_runs == 3
    assert plan.stage.simulation.run_difficulties() == [0.2] * 3 and plan.stage.val_runs == ("TS_6_6",)
    assert set(plan.overrides) == {"epochs", "slice_offset", "n_runs", "difficulties", "val_runs", "init"}
    with pytest.raises(CziiInputError, match="no stage 'stage9'"):
        script.parse_plan(["--stage", "stage9"])


def test_cli_defaults_are_the_recipe(recipe):
    p = cli.build_parser()
    a = p.parse_args(["build-dataset", "--data", "x", "--out", "y"])
    assert (a.slice_step, a.slice_offset, a.tile, a.seed) == (3, 3, 320, 0)
    a = p.parse_args(["train", "--data-yaml", "x", "--out", "y"])
    assert Path(a.model) == recipe.model_yaml and (a.epochs, a.imgsz, a.batch) == (30, 320, 32)


def test_existing_bundles_load_their_own_settings(tmp_path):
    """A bundle's czii_config.json wins over the (changed) defaults."""
    import shutil

    b = tmp_path / "old"
    b.mkdir()
    shutil.copy2(DEFAULT_BUNDLE / "model.pt", b / "model.pt")
    old = {"preprocess": PreprocessConfig(slice_offset=1).to_dict()}
    (b / "czii_config.json").write_text(json.dumps(old))
    assert load_bundle(b).preprocess.slice_offset == 1
    shipped = json.loads((DEFAULT_BUNDLE / "czii_config.json").read_text())
    assert load_bundle().preprocess == PreprocessConfig.from_dict(shipped["preprocess"])


def test_a_bad_recipe_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"recipe_version": 1, "dataset": {}}))
    with pytest.raises(CziiInputError, match="invalid recipe"):
        load_recipe(bad)
    bad.write_text(json.dumps({"recipe_version": 99}))
    with pytest.raises(CziiInputError, match="not a recipe of version 1"):
        load_recipe(bad)


def test_build_dataset_slice_offset(tmp_path):
    """`build-dataset --slice-offset 2` stacks slices z-2, z, z+2 and records the offset for training."""
    import cv2
    import yaml

    from czii_kaggle import layout, omezarr
    from czii_kaggle.preprocess import preprocess_volume, stack_slices
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(tmp_path / "sim", n_train=2, n_test=0, seed=5, config=SimConfig(shape_vox=(24, 64, 64)),
                          count_scale=20.0)
    out = tmp_path / "ds"
    rc = cli.main(["build-dataset", "--data", str(ds.root), "--out", str(out), "--slice-offset", "2",
                   "--tile", "0", "--slice-step", "5", "--val-runs", ds.train_runs[-1]])
    assert rc == 0
    meta = yaml.safe_load((out / "data.yaml").read_text())["czii"]
    assert meta["config"]["preprocess"]["slice_offset"] == 2 and meta["config"]["slice_step"] == 5
    run = ds.train_runs[-1]
    volume, _ = omezarr.read_tomogram(layout.tomogram_path(ds.root, "train", run))
    vol_u8 = preprocess_volume(volume, PreprocessConfig(slice_offset=2))
    images = sorted((out / "images" / "val").glob(f"{run}_z*.png"))
    assert images
    for path in images:  # validation images are never rotated
        z = int(path.stem.rsplit("_z", 1)[1][:3])
        assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), stack_slices(vol_u8, [z], 2)[0])
        assert not np.array_equal(stack_slices(vol_u8, [z], 2)[0], stack_slices(vol_u8, [z], 3)[0])
    with pytest.raises(SystemExit) as err:
        cli.main(["build-dataset", "--data", str(ds.root), "--out", str(tmp_path / "neg"), "--slice-offset", "-1"])
    assert err.value.code == 2


@pytest.mark.slow
def test_script_runs_two_stages_of_the_recipe_in_order(script, tmp_path, real_root):
    """Stage 1 from the yaml, then stage 2 from stage 1's bundle (tiny runs, 1 epoch each)."""
    tiny = ["--runs-dir", str(tmp_path), "--shape", "64", "256", "256", "--n-runs", "3", "--val-runs", "TS_6_4",
            "--epochs", "1", "--imgsz", "128", "--batch", "8", "--device", "cpu", "--no-install"]
    assert script.main(["--stage", "stage1", *tiny]) == 0
    assert script.main(["--stage", "stage2", *tiny]) == 0
    first = json.loads((tmp_path / "stage1" / "bundle" / "TRAINING.json").read_text())
    second = json.loads((tmp_path / "stage2" / "bundle" / "TRAINING.json").read_text())
    assert first["recipe"]["stage"] == "stage1" and second["recipe"]["stage"] == "stage2"
    assert first["train"]["model"] == "czii_kaggle/model_cfg/yolo11p-czii.yaml"
    assert second["train"]["model"] == str(tmp_path / "stage1" / "bundle" / "model.pt")
    assert second["fine_tuned_from"]["recipe"]["stage"] == "stage1"
    assert first["dataset"]["preprocess"]["slice_offset"] == 1  # the recipe's stages 1-3
    assert first["simulation"]["runs"] == ["TS_5_4", "TS_69_2", "TS_6_4"] and first["simulation"]["seed"] == 7
    assert set(first["recipe"]["overrides"]) == {"shape", "n_runs", "val_runs", "epochs", "imgsz", "batch"}
    assert 0.0 <= second["validation_score"] <= 1.0 and second["validation_tuned_table"]
    cfg = json.loads((tmp_path / "stage2" / "bundle" / "czii_config.json").read_text())
    assert cfg["preprocess"]["slice_offset"] == 1 and "aggregate" in cfg


def test_fine_tune_defaults_equal_the_recipe():
    from czii_kaggle.finetune import FineTuneConfig

    assert FineTuneConfig() == FineTuneConfig.from_recipe()


def test_count_floor_is_the_real_runs_mean_picks(recipe, real_root):
    """The recipe's floor is the mean picks per run of the real training runs, and the shipped bundle holds it."""
    from czii_kaggle import layout, picks

    real = picks.read_all_picks(real_root, layout.list_pick_runs(real_root))
    mean = real.groupby("particle_type").size() / real["experiment"].nunique()
    assert recipe.tuning.floor_per_run == pytest.approx(mean.round(1).to_dict())
    assert recipe.tuning.floor_factor == 1.0
    floor = recipe.tuning.min_keep()
    assert floor == {n: int(round(v)) for n, v in mean.items()}
    assert recipe.tuning.min_keep(0.0) == {n: 0 for n in floor}
    for name in floor:
        assert load_bundle().aggregate[name].min_keep == floor[name]


def test_relative_scores_rank_on_the_floors_counts_and_the_shipped_bundle_is_tuned_with_them(recipe):
    from czii_kaggle.bundle import DEFAULT_BUNDLE, load_ensemble, load_heatmap_bundle

    assert recipe.tuning.relative_factor == 1.0
    ranks = recipe.tuning.ref_rank()
    assert ranks == {n: max(1, k) for n, k in recipe.tuning.min_keep(1.0).items()}
    assert recipe.tuning.ref_rank(0.0) == {n: 0 for n in ranks}
    assert recipe.tuning.ref_rank(0.01)["beta-galactosidase"] == 1  # never below the best
    with pytest.raises(ValueError, match="relative"):
        recipe.tuning.ref_rank(-1.0)
    for agg in (load_bundle().aggregate, load_heatmap_bundle(DEFAULT_BUNDLE).aggregate):
        assert {n: agg[n].ref_rank for n in ranks} == ranks
    assert dict(load_ensemble(DEFAULT_BUNDLE).ref_rank) == ranks
