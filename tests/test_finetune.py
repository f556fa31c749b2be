"""The Kaggle fine-tuning's plan (czii_kaggle.finetune): folds, time estimate, settings, refusals.
The whole flow runs in tests/test_notebooks.py (train notebook in Kaggle's layout)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from czii_kaggle import finetune
from czii_kaggle.errors import CziiInputError
from czii_kaggle.finetune import FineTuneConfig, estimate_s, make_folds
from czii_kaggle.recipe import load_recipe

RUNS = ["TS_5_4", "TS_69_2", "TS_6_4", "TS_6_6", "TS_73_6", "TS_86_3", "TS_99_9"]


@pytest.mark.parametrize("k", [2, 3, 4, 7])
def test_folds_hold_each_run_out_once(k):
    folds = make_folds(RUNS, k, seed=3)
    assert len(folds) == k
    held = [r for f in folds for r in f.val_real]
    assert sorted(held) == sorted(RUNS)  # each run held out by exactly one fold
    sizes = [len(f.val_real) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for f in folds:
        assert set(f.train_real) | set(f.val_real) == set(RUNS) and not set(f.train_real) & set(f.val_real)
    assert make_folds(RUNS, k, seed=3) == folds  # seeded
    if k == len(RUNS):
        assert all(len(f.val_real) == 1 for f in folds)  # leave-one-run-out


def test_folds_refuse_impossible_k():
    with pytest.raises(CziiInputError, match="k_folds = 8"):
        make_folds(RUNS, 8)
    with pytest.raises(ValueError, match="k_folds must be >= 2"):
        FineTuneConfig(k_folds=1)


def test_config_comes_from_the_recipe_and_none_keeps_it():
    ft = load_recipe().fine_tune
    cfg = FineTuneConfig.from_recipe(k_folds=None, fold_epochs=3, sim_shape_vox=[48, 128, 128])
    assert cfg.k_folds == ft["k_folds"] and cfg.final_epochs == ft["final_epochs"]
    assert cfg.fold_epochs == 3 and cfg.sim_shape_vox == (48, 128, 128)
    assert cfg.sim_look == "random" and cfg.n_sim_runs == ft["sim"]["n_runs"]


def test_estimate_counts_steps_of_every_training():
    cfg = FineTuneConfig(k_folds=7, fold_epochs=2, final_epochs=3, n_sim_runs=4, sim_val_runs=1, batch=32)
    est = estimate_s(cfg, 7, images_per_run=64, step_s=1.0, predict_s_per_run=10.0, sim_s_per_run=5.0,
                     dataset_s_per_run=2.0, heatmap_s_per_run=3.0)
    # folds: 6 real + 3 simulated training runs = 576 images = 18 steps, 1 held-out run = 2 val batches / 3
    fold = 2 * (18 + 2 / 3) + finetune.TRAIN_OVERHEAD_S
    final = 3 * (20 + 2 / 3) + finetune.TRAIN_OVERHEAD_S  # 7 + 3 runs = 20 steps; 1 simulated val run
    assert est["train_s"] == pytest.approx(7 * fold + final)
    assert est["simulate_s"] == 20 and est["dataset_s"] == 22 and est["predict_s"] == 7 * (2 * 10 + 3)
    assert est["fit_s"] == pytest.approx(7 * 7 * finetune.FIT_S_PER_RUN)  # 7 fits on 6 runs, 1 on all 7
    assert est["total_s"] == pytest.approx(sum(v for k, v in est.items() if k != "total_s"))
    # the heatmap's fine-tuning: its steps in each of the 8 trainings, then its statistics on their real runs
    hm = estimate_s(replace(cfg, heatmap_steps=100), 7, heatmap_step_s=0.5)["heatmap_train_s"]
    assert hm == pytest.approx(8 * 100 * 0.5 + (7 * 6 + 7) * finetune.HEATMAP_RECAL_S_PER_RUN)
    assert estimate_s(replace(cfg, heatmap_steps=0), 7)["heatmap_train_s"] == 0
    # a second network at level 0 (and the ensemble of three beside that of two): its steps, statistics,
    # prediction and fits counted at its level's figures
    two = estimate_s(replace(cfg, heatmap_steps=100), 7, heatmap_step_s=0.5, heatmap_levels=(1, 0), n_ensembles=2,
                     heatmap_s_per_run={0: 5.0, 1: 3.0}, predict_s_per_run=10.0)
    assert two["heatmap_train_s"] == pytest.approx(hm + 8 * 100 * 0.5 + (7 * 6 + 7) * finetune.HEATMAP_RECAL_S_PER_RUN_BY_LEVEL[0])
    assert two["predict_s"] == 7 * (2 * 10 + 3 + 5)
    assert two["fit_s"] == pytest.approx(49 * (finetune.FIT_S_PER_RUN + finetune.FIT_HEATMAP_S_PER_RUN
                                               + finetune.FIT_ENSEMBLE_S_PER_RUN))
    assert estimate_s(cfg, 7, heatmap_levels=())["predict_s"] == 7 * 2 * finetune.T4_PREDICT_S_PER_RUN
    more = estimate_s(FineTuneConfig(k_folds=7, fold_epochs=4, final_epochs=3, n_sim_runs=4), 7)
    assert more["train_s"] > estimate_s(FineTuneConfig(k_folds=7, fold_epochs=2, final_epochs=3, n_sim_runs=4), 7)[
        "train_s"]


def test_the_recipe_plan_fits_nine_hours_on_a_t4():
    est = estimate_s(FineTuneConfig.from_recipe(), 7)
    assert est["total_s"] < 9 * 3600


def _kaggle_root(tmp_path, runs):
    from czii_kaggle import layout

    root = tmp_path / "czii-cryo-et-object-identification"
    for run in runs:
        layout.tomogram_path(root, "train", run).mkdir(parents=True)
        layout.picks_dir(root, run).mkdir(parents=True)
    return root


def test_plan_refuses_before_the_long_work(tmp_path):
    root = _kaggle_root(tmp_path, RUNS)
    plan = finetune.plan_fine_tune(root, FineTuneConfig(k_folds=7))
    assert plan.real_runs == tuple(RUNS) and len(plan.folds) == 7 and plan.final.train_real == tuple(RUNS)
    assert plan.dataset.preprocess.slice_offset == 3  # the start bundle's preprocessing
    assert plan.sim_val == (plan.sim_runs[-1],)
    assert "estimate on one T4" in plan.summary()
    record = json.loads(json.dumps(finetune.plan_record(plan)))  # plain JSON
    assert record["folds"][0]["val_real"] == list(plan.folds[0].val_real)
    with pytest.raises(CziiInputError, match="over max_hours = 0.1"):
        finetune.plan_fine_tune(root, FineTuneConfig(max_hours=0.1))
    with pytest.raises(CziiInputError, match="needs at least 2 runs with picks"):
        finetune.plan_fine_tune(_kaggle_root(tmp_path / "one", RUNS[:1]), FineTuneConfig())
    with pytest.raises(CziiInputError, match="weights file not found"):
        finetune.plan_fine_tune(root, FineTuneConfig(init=str(tmp_path / "nothing")))


def test_finish_bundle_never_replaces_a_foreign_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    plan = finetune.plan_fine_tune(_kaggle_root(tmp_path, RUNS[:2]), FineTuneConfig(k_folds=2))
    with pytest.raises(CziiInputError, match="not replacing it"):
        finetune.finish_bundle(tmp_path, out, None, plan)
    assert (out / "notes.txt").read_text() == "mine"


def test_default_dirs():
    work, out = finetune.default_dirs(True)
    assert str(out) == "/kaggle/working/czii_finetuned" and work.name == "czii_finetune"
    assert finetune.default_dirs(False) == (finetune.Path("finetune_work"), finetune.Path("finetuned_bundle"))
    assert finetune.default_dirs(True, "w", "o") == (finetune.Path("w"), finetune.Path("o"))


def test_a_kept_fold_of_another_plan_is_refused(tmp_path):
    """A re-run keeps the folds already trained, but never one trained on other runs or epochs."""
    root = _kaggle_root(tmp_path, RUNS)
    plan = finetune.plan_fine_tune(root, FineTuneConfig(k_folds=7, fold_epochs=2))
    fold = plan.folds[0]
    bundle = tmp_path / "work" / fold.name / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "model.pt").write_bytes(b"")
    sim_train = [r for r in plan.sim_runs if r not in plan.sim_val]
    cfg = {"train_runs": [*fold.train_real, *sim_train], "val_runs": list(fold.val_real), "train": {"epochs": 2}}
    (bundle / "czii_config.json").write_text(json.dumps(cfg))
    assert finetune.train_fold(plan, None, fold, bundle.parent) == bundle  # the same plan: kept
    other = finetune.plan_fine_tune(root, FineTuneConfig(k_folds=3, fold_epochs=2))
    with pytest.raises(CziiInputError, match="was trained for another plan"):
        finetune.train_fold(other, None, other.folds[0], bundle.parent)


@pytest.mark.slow
def test_every_heatmap_network_and_ensemble_is_fitted_on_the_real_runs_and_shipped(tmp_path, capsys):
    """A start bundle with YOLO and two heatmap networks (``heatmap`` and ``heatmap_l0``, as shipped) and
    the shipped ensemble file (YOLO + both as main, YOLO + heatmap as an alternative): each network's
    thresholds and each ensemble are fitted on the real runs (or the start's kept where they score
    higher), the default detectors are the best of YOLO, each network and each ensemble there, each run
    scored by thresholds fitted on the others, and the fine-tuned bundle ships all of it and predicts
    with them by default. A start bundle without a heatmap gives a YOLO-only bundle, and says so."""
    import shutil

    import pandas as pd

    from czii_kaggle import layout, picks
    from czii_kaggle.aggregate import select
    from czii_kaggle.bundle import (DEFAULT_BUNDLE, default_detectors, file_sha256, load_bundle, load_ensemble,
                                    load_ensembles, load_heatmap_bundle, save_heatmap_json)
    from czii_kaggle.cli import main
    from czii_kaggle.simulate import SimConfig, simulate_dataset
    from czii_kaggle.tune import tune_thresholds

    ds = simulate_dataset(tmp_path / "kaggle", n_train=2, n_test=1, seed=4,
                          config=SimConfig(shape_vox=(64, 192, 192), difficulty="easy"))
    runs = layout.list_pick_runs(ds.root)
    start = tmp_path / "start"
    start.mkdir()
    for name in ("model.pt", "czii_config.json", "ensemble.json"):
        shutil.copy(DEFAULT_BUNDLE / name, start / name)
    for net in ("heatmap", "heatmap_l0"):  # the shipped networks, in windows these runs hold
        for ext in ("pt", "onnx", "json"):
            shutil.copy(DEFAULT_BUNDLE / f"{net}.{ext}", start / f"{net}.{ext}")
        shipped = load_heatmap_bundle(DEFAULT_BUNDLE, net).config
        save_heatmap_json(start, net, config=replace(shipped, window_vox=(32, 96, 96), overlap_vox=16).to_dict())
    plan = finetune.plan_fine_tune(ds.root, FineTuneConfig(k_folds=2, init=str(start)))
    # the estimate counts both networks (their levels) and both ensembles
    assert plan.estimate == estimate_s(plan.config, 2, heatmap_levels=(1, 0), n_ensembles=2)
    assert plan.estimate["predict_s"] > estimate_s(plan.config, 2)["predict_s"]
    oof, _ = finetune.run_candidates(ds.root, runs, start)  # stands in for the folds' out-of-fold candidates
    tuned, _ = finetune.tune_oof(ds.root, oof, plan.init_weights)

    fit = finetune.fit_heatmap_ensemble(ds.root, plan, oof)
    three, both = "yolo,heatmap,heatmap_l0", "yolo,heatmap"
    assert set(fit.aggregates) == {"heatmap", "heatmap_l0"} and set(fit.ensembles) == {three, both}
    assert fit.ensembles[three].detectors == ("yolo", "heatmap", "heatmap_l0")
    honest = fit.held_out  # each run selected by thresholds fitted on the other run
    assert set(honest) == {"yolo", "heatmap", "heatmap_l0", three, both}
    assert fit.default == tuple(max(honest, key=lambda k: (honest[k], -k.count(","))).split(","))
    assert all(0 <= v <= 1.0 for v in honest.values()) and honest[both] > 0
    truth = picks.read_all_picks(ds.root, runs)
    left_out = finetune.leave_one_run_out({"yolo": oof}, truth, lambda c, t: (
        lambda m, cfg=tune_thresholds(c["yolo"], t, load_bundle(start).aggregate)[0]: select(m["yolo"], cfg)))
    assert honest["yolo"] == pytest.approx(finetune._score_picks(truth, left_out))
    for net in ("heatmap", "heatmap_l0"):
        tuned_hm, start_hm = (v for k, v in fit.scores.items() if k.startswith(f"{net} of the start bundle"))
        assert honest[net] == max(tuned_hm, start_hm)
        if start_hm > tuned_hm:  # the start's thresholds kept where they score higher left out
            assert fit.aggregates[net] == load_heatmap_bundle(start, net).aggregate and fit.tuned_on[net] is None
            assert f"{net}'s thresholds: the start's" in fit.note
    for key in (three, both):  # each ensemble's floor carried from the start's of its set
        assert [fit.ensembles[key].aggregate[n].min_keep for n in ("ribosome", "apo-ferritin")] == [
            load_ensemble(start, key.split(",")).aggregate[n].min_keep for n in ("ribosome", "apo-ferritin")]

    out = finetune.finish_bundle(start, tmp_path / "out", tuned, plan, heatmap=fit)
    assert {"model.pt", "czii_config.json", "heatmap.pt", "heatmap.onnx", "heatmap.json", "heatmap_l0.pt",
            "heatmap_l0.onnx", "heatmap_l0.json", "ensemble.json", "FINETUNE.json"} <= {p.name for p in out.iterdir()}
    assert default_detectors(out) == list(fit.default)
    for net in ("heatmap", "heatmap_l0"):
        assert load_heatmap_bundle(out, net).aggregate.to_dict() == fit.aggregates[net].to_dict()
        assert load_heatmap_bundle(out, net).onnx is not None  # the ONNX copy still matches its weights
        start_tuned_on = json.loads((start / f"{net}.json").read_text()).get("tuned_on")  # kept with the start's
        assert json.loads((out / f"{net}.json").read_text()).get("tuned_on") == (
            start_tuned_on if fit.tuned_on[net] is None else [{"root": str(ds.root), "runs": runs}])
    shipped = {",".join(e.detectors): e.to_dict() for e in load_ensembles(out)}
    assert shipped == {k: e.to_dict() for k, e in fit.ensembles.items()}
    if len(fit.default) > 1:  # the default detectors' ensemble is the main one
        assert sorted(load_ensembles(out)[0].detectors) == sorted(fit.default)
    record = json.loads((out / "FINETUNE.json").read_text())
    assert record["default_detectors"] == list(fit.default) and set(fit.scores) <= set(record["scores"])
    for csv, named in (("default.csv", []), ("named.csv", ["--detectors", ",".join(fit.default)]),
                       ("three.csv", ["--detectors", three])):
        assert main(["predict", "--data", str(ds.root), "--weights", str(out), "--out", str(tmp_path / csv),
                     "--backend", "torch", *named]) == 0
    default, named = (pd.read_csv(tmp_path / f) for f in ("default.csv", "named.csv"))
    assert len(default) > 0 and default.drop(columns="id").equals(named.drop(columns="id"))

    # every network fine-tuned per fold (out-of-fold candidates, thresholds) and in the final fit (shipped)
    ft = finetune.plan_fine_tune(ds.root, FineTuneConfig(k_folds=2, init=str(start), n_sim_runs=0, sim_val_runs=0,
                                                         heatmap_steps=2, heatmap_patch_vox=(16, 32, 32)))
    assert ft.estimate["heatmap_train_s"] > 0
    dirs = [finetune.train_heatmap_fold(ft, ds.root, None, f, tmp_path / "ft" / f.name) for f in ft.folds]
    assert all(set(d) == {"heatmap", "heatmap_l0"} for d in dirs)
    for net in ("heatmap", "heatmap_l0"):
        fine = load_heatmap_bundle(dirs[0][net])
        assert fine.record["runs"] == [f"{ds.root}/{r}" for r in ft.folds[0].train_real] and fine.record["steps"] == 2
        assert fine.record["init"] == str(start / f"{net}.pt")
        assert fine.record["recalibration"]["runs"] == len(ft.folds[0].train_real)
        assert fine.config.level == load_heatmap_bundle(start, net).config.level
        assert fine.config.bn_adapt == load_heatmap_bundle(start, net).config.bn_adapt
    kept = (dirs[0]["heatmap_l0"] / "heatmap.pt").stat().st_mtime_ns  # a fold done before is kept, another plan's refused
    assert finetune.train_heatmap_fold(ft, ds.root, None, ft.folds[0], tmp_path / "ft" / "fold0") == dirs[0]
    assert (dirs[0]["heatmap_l0"] / "heatmap.pt").stat().st_mtime_ns == kept
    with pytest.raises(CziiInputError, match="was trained for another plan"):
        finetune.train_heatmap_fold(replace(ft, config=replace(ft.config, heatmap_steps=3)), ds.root, None,
                                    ft.folds[0], tmp_path / "ft" / "fold0")
    fit = finetune.fit_heatmap_ensemble(ds.root, ft, oof, heatmap_dirs=dirs)
    assert fit.fine_tuned == {"heatmap": True, "heatmap_l0": True}
    assert any(k.startswith("fine-tuned heatmap_l0 out of fold") for k in fit.scores)
    with pytest.raises(CziiInputError, match="final fit's failed"):
        finetune.finish_bundle(start, tmp_path / "out3", tuned, ft, heatmap=fit)
    final = finetune.train_heatmap_fold(ft, ds.root, None, ft.final, tmp_path / "ft" / "final")
    out = finetune.finish_bundle(start, tmp_path / "out3", tuned, ft, heatmap=fit, heatmap_dir=final)
    for net in ("heatmap", "heatmap_l0"):
        assert file_sha256(out / f"{net}.pt") == file_sha256(final[net] / "heatmap.pt") != file_sha256(
            start / f"{net}.pt")
        assert load_heatmap_bundle(out, net).onnx is not None
    assert json.loads((out / "FINETUNE.json").read_text())["heatmap_fine_tuned"] == fit.fine_tuned
    assert main(["predict", "--data", str(ds.root), "--weights", str(out), "--out", str(tmp_path / "ft.csv"),
                 "--backend", "torch", "--detectors", three]) == 0
    # a fold whose runs are smaller than a patch: said, and the start's networks are used; YOLO's work is kept
    big = replace(ft, config=replace(ft.config, heatmap_patch_vox=(96, 256, 256)))  # more than either level holds
    capsys.readouterr()
    assert finetune.train_heatmap_fold(big, ds.root, None, big.folds[0], tmp_path / "big" / "fold0") == {
        "heatmap": None, "heatmap_l0": None}
    assert "the fine-tuning of heatmap_l0 in fold0 failed" in capsys.readouterr().err
    fit = finetune.fit_heatmap_ensemble(ds.root, big, oof, heatmap_dirs=[{"heatmap": None, "heatmap_l0": None}] * 2)
    assert fit.fine_tuned == {"heatmap": False, "heatmap_l0": False}
    assert "heatmap is the start bundle's: no fine-tuned heatmap" in fit.note

    yolo_only = tmp_path / "yolo_only"
    yolo_only.mkdir()
    shutil.copy(DEFAULT_BUNDLE / "model.pt", yolo_only / "model.pt")
    shutil.copy(DEFAULT_BUNDLE / "czii_config.json", yolo_only / "czii_config.json")
    plan = finetune.plan_fine_tune(ds.root, FineTuneConfig(k_folds=2, init=str(yolo_only)))
    fit = finetune.fit_heatmap_ensemble(ds.root, plan, oof)
    assert not fit.aggregates and fit.aggregate is None and "holds no heatmap detector" in fit.note
    out = finetune.finish_bundle(yolo_only, tmp_path / "out2", tuned, plan, heatmap=fit)
    assert not (out / "ensemble.json").exists() and default_detectors(out) == ["yolo"]


def test_leave_one_run_out_selects_each_run_with_a_fit_that_never_saw_it():
    import pandas as pd

    cands = pd.DataFrame({"experiment": ["a", "a", "b", "c", "c"], "particle_type": "ribosome",
                          "x": 1.0, "y": 2.0, "z": 3.0, "score": [0.9, 0.1, 0.5, 0.4, 0.3]})
    truth = cands[["experiment", "particle_type", "x", "y", "z"]].drop_duplicates("experiment")
    seen = []

    def fit(c, t):
        assert set(c["d"]["experiment"]) == set(t["experiment"])
        seen.append(sorted(set(t["experiment"])))
        return lambda m: m["d"].assign(fitted_on=",".join(seen[-1]))

    out = finetune.leave_one_run_out({"d": cands}, truth, fit)
    assert seen == [["b", "c"], ["a", "c"], ["a", "b"]]
    assert len(out) == len(cands) and not any(r in f.split(",") for r, f in zip(out["experiment"], out["fitted_on"]))
