"""The detector interface, the multi-detector pipeline and the ensemble (synthetic candidates)."""
from __future__ import annotations

import json
from dataclasses import replace
import shutil

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import metric
from czii_kaggle.aggregate import AggregateConfig, ClassParams, empty_candidates, select
from czii_kaggle.bundle import (DEFAULT_BUNDLE, default_detectors, held_detectors, load_detectors, load_ensemble,
                                parse_detectors, save_ensemble)
from czii_kaggle.detectors import run_candidates, select_picks
from czii_kaggle.ensemble import EnsembleConfig, combine, fit_logistic, is_true_positive
from czii_kaggle.errors import CziiInputError
from czii_kaggle.particles import NAMES, PARTICLES, SCORED, get
from czii_kaggle.tune import fit_ensemble


def _cands(rows, cols=("experiment", "particle_type", "x", "y", "z", "score")):
    df = pd.DataFrame(rows, columns=list(cols))
    df["n_slices"] = 3
    df["share"] = 1.0
    return df


def test_logistic_fit_recovers_a_known_slope():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(2.0 * x - 1.0)))
    a, b = fit_logistic(x, y)
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-1.0, abs=0.1)
    assert fit_logistic(x, np.zeros_like(x)) == (1.0, 0.0)  # nothing to fit: identity


def test_agreeing_detectors_merge_and_are_rewarded():
    r = get("ribosome").radius_A
    a = _cands([("r", "ribosome", 1000, 1000, 500, 0.8), ("r", "ribosome", 3000, 1000, 500, 0.8)])
    b = _cands([("r", "ribosome", 1000 + 0.3 * r, 1000, 500, 0.6), ("r", "apo-ferritin", 3000, 1000, 500, 0.9)])
    ident = {n: (1.0, 0.0) for n in NAMES}
    cfg = EnsembleConfig(("yolo", "heatmap"), {"yolo": ident, "heatmap": ident}, fusion="mean")
    out = combine({"yolo": a, "heatmap": b}, cfg)
    ribo = out[out["particle_type"] == "ribosome"].sort_values("x")
    assert len(ribo) == 2
    assert ribo["n_slices"].tolist() == [2, 1]
    assert ribo["score"].tolist() == pytest.approx([0.7, 0.4])  # mean over detectors, 0 where absent
    assert ribo["x"].iloc[0] == pytest.approx((0.8 * 1000 + 0.6 * (1000 + 0.3 * r)) / 1.4)
    apo = out[out["particle_type"] == "apo-ferritin"]
    assert apo["score"].tolist() == pytest.approx([0.45])
    # the apo-ferritin and the lone ribosome share a spot: each one's share sees the other
    assert ribo["share"].iloc[1] == pytest.approx(0.4 / (0.4 + 0.45))


def _scene(rng, n=40, spread=2000.0):
    rows = []
    for name in NAMES:
        for _ in range(n // 4):
            rows.append(("run", name, *rng.uniform(0, spread, 3)))
    return pd.DataFrame(rows, columns=["experiment", "particle_type", "x", "y", "z"])


def _noisy_detector(rng, truth, recall, n_fp, jitter_A=8.0):
    keep = truth[rng.random(len(truth)) < recall]
    tp = keep.assign(x=keep["x"] + rng.normal(0, jitter_A, len(keep)), score=rng.uniform(0.4, 1.0, len(keep)))
    fp = _scene(rng, n_fp)
    fp["score"] = rng.uniform(0.0, 0.7, len(fp))
    df = pd.concat([tp, fp], ignore_index=True)
    df["n_slices"] = 1
    df["share"] = 1.0
    return df


def test_fitted_ensemble_beats_each_detector_on_its_own():
    rng = np.random.default_rng(3)
    truth = _scene(rng, 60)
    a = _noisy_detector(rng, truth, 0.75, 40)
    b = _noisy_detector(rng, truth, 0.75, 40)
    assert is_true_positive(a, truth).sum() >= 0.6 * len(truth)
    config, table = fit_ensemble({"yolo": a, "heatmap": b}, truth)
    merged = select(combine({"yolo": a, "heatmap": b}, config), config.aggregate)
    alone = AggregateConfig({p.name: ClassParams(min_support=1, conf_threshold=0.4) for p in PARTICLES})
    scores = {k: metric.score(truth[truth["particle_type"].isin(SCORED)], select(c, alone)) for k, c in
              {"a": a, "b": b}.items()}
    ens = metric.score(truth[truth["particle_type"].isin(SCORED)], merged)
    assert ens > max(scores.values())
    assert set(table["particle_type"]) == set(NAMES)


def test_fit_ensemble_keeps_the_floor_it_starts_from():
    rng = np.random.default_rng(4)
    truth = _scene(rng, 40)
    cands = {"yolo": _noisy_detector(rng, truth, 0.7, 30), "heatmap": _noisy_detector(rng, truth, 0.7, 30)}
    start = EnsembleConfig().aggregate.with_floor({"ribosome": 7, "apo-ferritin": 3})
    config, _ = fit_ensemble(cands, truth, start=start)
    assert config.aggregate["ribosome"].min_keep == 7 and config.aggregate["apo-ferritin"].min_keep == 3
    assert config.aggregate["thyroglobulin"].min_keep == 0
    assert all(fit_ensemble(cands, truth)[0].aggregate[n].min_keep == 0 for n in NAMES)


def test_set_count_floor_writes_every_config_of_a_bundle(tmp_path):
    from czii_kaggle import cli
    from czii_kaggle.bundle import load_bundle, load_heatmap_bundle, set_count_floor

    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    before = {f: (b / f).read_text() for f in ("czii_config.json", "heatmap.json", "heatmap_l0.json", "ensemble.json")}
    written = set_count_floor(b, {"ribosome": 5, "thyroglobulin": 0})
    assert sorted(p.name for p in written) == ["czii_config.json", "ensemble.json", "heatmap.json", "heatmap_l0.json"]
    pair = ("yolo", "heatmap")  # the shipped ensemble of two, an alternative beside the default of three
    for agg, old in ((load_bundle(b).aggregate, load_bundle(DEFAULT_BUNDLE).aggregate),
                     (load_heatmap_bundle(b).aggregate, load_heatmap_bundle(DEFAULT_BUNDLE).aggregate),
                     (load_heatmap_bundle(b, "heatmap_l0").aggregate,
                      load_heatmap_bundle(DEFAULT_BUNDLE, "heatmap_l0").aggregate),
                     (load_ensemble(b).aggregate, load_ensemble(DEFAULT_BUNDLE).aggregate),
                     (load_ensemble(b, pair).aggregate, load_ensemble(DEFAULT_BUNDLE, pair).aggregate)):
        assert agg["ribosome"].min_keep == 5 and agg["thyroglobulin"].min_keep == 0
        assert agg["ribosome"].conf_threshold == old["ribosome"].conf_threshold  # thresholds kept
        assert agg["apo-ferritin"] == old["apo-ferritin"]
    # one malformed file: none is written
    (b / "heatmap.json").write_text(json.dumps({"aggregate": {"params": {"ribosome": {"min_keep": -1}}}}))
    snapshot = (b / "czii_config.json").read_text()
    with pytest.raises(CziiInputError, match="heatmap.json"):
        set_count_floor(b, {"ribosome": 9})
    assert (b / "czii_config.json").read_text() == snapshot
    # the CLI: the recipe's floor, or --factor 0 to turn it off
    c = tmp_path / "c"
    shutil.copytree(DEFAULT_BUNDLE, c)
    assert cli.main(["set-floor", "--weights", str(c), "--factor", "0"]) == 0
    assert all(load_ensemble(c).aggregate[n].min_keep == 0 for n in NAMES)
    assert all((DEFAULT_BUNDLE / f).read_text() == t for f, t in before.items())  # the shipped files untouched
    with pytest.raises(CziiInputError, match="not a bundle folder"):
        set_count_floor(tmp_path / "none", {"ribosome": 1})


def test_ensemble_config_round_trips(tmp_path):
    cfg = EnsembleConfig(("yolo", "heatmap"), {"yolo": {"ribosome": (1.5, -0.2)}},
                         AggregateConfig().with_params("ribosome", conf_threshold=0.33))
    save_ensemble(tmp_path, cfg, default_detectors=["yolo", "heatmap"])
    assert load_ensemble(tmp_path) == cfg
    assert default_detectors(tmp_path) == ["yolo", "heatmap"]
    (tmp_path / "ensemble.json").write_text("{not json")
    with pytest.raises(CziiInputError, match="ensemble"):
        load_ensemble(tmp_path)


def test_a_bundle_naming_a_detector_it_lacks_is_refused(tmp_path):
    shutil.copy(DEFAULT_BUNDLE / "model.pt", tmp_path / "model.pt")
    assert held_detectors(tmp_path) == ["yolo"]
    assert parse_detectors(None, tmp_path) == ["yolo"]
    with pytest.raises(CziiInputError, match="names detector.*heatmap.*holds only yolo"):
        parse_detectors("yolo,heatmap", tmp_path)
    (tmp_path / "ensemble.json").write_text(json.dumps({"default_detectors": ["yolo", "heatmap"]}))
    with pytest.raises(CziiInputError, match="holds only yolo"):
        parse_detectors(None, tmp_path)
    with pytest.raises(CziiInputError, match="unknown detectors"):
        parse_detectors("yolo,unet", tmp_path)
    (tmp_path / "ensemble.json").write_text(json.dumps({"default_detectors": "heatmap"}))
    with pytest.raises(CziiInputError, match="ensemble.json: default_detectors is 'heatmap', not a list"):
        parse_detectors(None, tmp_path)


class _Fake:
    """A detector that fails on the runs it is told to and finds one ribosome elsewhere."""

    def __init__(self, name, fails, score):
        self.name, self.fails, self.score = name, fails, score
        self.aggregate = AggregateConfig({p.name: ClassParams(min_support=1, conf_threshold=0.1) for p in PARTICLES})

    def candidates(self, zarr_path, experiment):
        if experiment in self.fails:
            raise CziiInputError(zarr_path, "broken tomogram")
        return _cands([(experiment, "ribosome", 500.0, 500.0, 300.0, self.score)]), {"inference_s": 0.0}

    def select(self, candidates):
        return select(candidates, self.aggregate)


def test_a_run_failing_in_one_detector_keeps_the_other_detectors_picks(tmp_path):
    dets = [_Fake("yolo", {"A"}, 0.9), _Fake("heatmap", {"B"}, 0.8)]
    runs = ["A", "B", "C", "D"]
    dets[1].device = "cuda:1"  # where its network ran; the one without the attribute counts as the CPU
    cands, report = run_candidates(dets, tmp_path, "test", runs, progress=False)
    assert report.groupby("detector")["device"].agg(set).to_dict() == {"yolo": {"cpu"}, "heatmap": {"cuda:1"}}
    failed = report[report["status"] == "failed"]
    assert sorted(zip(failed["experiment"], failed["detector"])) == [("A", "yolo"), ("B", "heatmap")]
    assert "broken tomogram" in failed["error"].iloc[0]
    ident = {n: (1.0, 0.0) for n in NAMES}
    ens = EnsembleConfig(("yolo", "heatmap"), {"yolo": ident, "heatmap": ident},
                         AggregateConfig({p.name: ClassParams(min_support=2, conf_threshold=0.5) for p in PARTICLES}))
    picks = select_picks(cands, report, dets, runs, ens)
    by_run = picks.set_index("experiment")["score"].to_dict()
    assert by_run["A"] == pytest.approx(0.8)  # heatmap alone (yolo failed), its own threshold
    assert by_run["B"] == pytest.approx(0.9)  # yolo alone
    assert by_run["C"] == pytest.approx(6 / 7)  # the ensemble: both agree (pooled odds: 9 and 4 give 6)
    assert set(picks["experiment"]) == {"A", "B", "C", "D"}
    assert select_picks({"yolo": empty_candidates(), "heatmap": empty_candidates()}, report.iloc[:0],
                       dets, runs, ens).empty

    # three detectors: where the third fails, the fitted ensemble of the two that succeeded (a fallback)
    dets3 = [*dets, _Fake("heatmap_l0", {"C", "D"}, 0.7)]
    cands3, report3 = run_candidates(dets3, tmp_path, "test", runs, progress=False)
    ens3 = EnsembleConfig(("yolo", "heatmap", "heatmap_l0"), {d.name: ident for d in dets3},
                          AggregateConfig({p.name: ClassParams(min_support=3, conf_threshold=0.5) for p in PARTICLES}))
    by_run = select_picks(cands3, report3, dets3, runs, ens3, [ens]).set_index("experiment")["score"].to_dict()
    assert by_run["C"] == pytest.approx(6 / 7) and by_run["D"] == pytest.approx(6 / 7)  # yolo + heatmap, fitted
    assert by_run["A"] == pytest.approx(0.8)  # heatmap + heatmap_l0 have no fitted ensemble: the first one's own
    without = select_picks(cands3, report3, dets3, runs, ens3).set_index("experiment")["score"].to_dict()
    assert without["C"] == pytest.approx(0.9)  # no fallback given: yolo's own selection


def test_detectors_of_one_run_read_its_tomogram_once(tmp_path, monkeypatch):
    """Two detectors that read the same level of a run read it from disk once (run_candidates reads
    each run inside omezarr.shared_reads); the next run is read afresh."""
    from czii_kaggle import layout, omezarr

    runs = ["A", "B"]
    for k, run in enumerate(runs):
        omezarr.write_tomogram(layout.tomogram_path(tmp_path, "test", run), np.random.default_rng(k).normal(
            size=(8, 16, 16)).astype(np.float32), 10.0, chunks=(8, 8, 8))
    calls = []
    real = omezarr._read_level
    monkeypatch.setattr(omezarr, "_read_level", lambda *a: calls.append(a[0].parent.parent.name) or real(*a))

    class Reader(_Fake):
        def candidates(self, zarr_path, experiment):
            volume, _ = omezarr.read_tomogram(zarr_path)
            return super().candidates(zarr_path, experiment)[0], {"read_s": float(volume.mean())}

    _, report = run_candidates([Reader("yolo", set(), 0.9), Reader("heatmap", set(), 0.8)], tmp_path, "test",
                               runs, progress=False)
    assert calls == runs and (report["status"] == "ok").all()
    assert report.groupby("experiment")["read_s"].nunique().eq(1).all()  # both saw the same voxels


def test_a_useless_detector_gets_no_weight():
    rng = np.random.default_rng(4)
    truth = _scene(rng, 60)
    good = _noisy_detector(rng, truth, 0.9, 20)
    noise = _scene(rng, 200).assign(score=lambda d: rng.uniform(0, 1, len(d)), n_slices=1, share=1.0)
    config, table = fit_ensemble({"yolo": good, "heatmap": noise}, truth)
    assert "weight" in table.columns
    assert all(config.class_weights(n)[0] >= 0.75 for n in NAMES)
    restored = EnsembleConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config


def _heatmap_only_bundle(tmp_path):
    """Two random test tomograms and a bundle holding an untrained heatmap net with no thresholds."""
    import torch

    from czii_kaggle import layout, omezarr
    from czii_kaggle.bundle import save_heatmap_json
    from czii_kaggle.detectors.heatmap import HeatmapConfig
    from czii_kaggle.detectors.heatmap_net import HeatmapUNet

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for run in ("TS_a", "TS_b"):
        omezarr.write_tomogram(layout.tomogram_path(root, "test", run), rng.random((40, 72, 72)).astype(np.float32),
                          10.012444537618887)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    torch.save(HeatmapUNet(6, (4, 8, 8)).state_dict(), bundle / "heatmap.pt")
    cfg = HeatmapConfig(channels=(4, 8, 8), window_vox=(16, 32, 32), overlap_vox=8, min_peak=0.0)
    keep_all = AggregateConfig({p.name: ClassParams(min_support=1, conf_threshold=0.0) for p in PARTICLES})
    save_heatmap_json(bundle, config=cfg.to_dict(), aggregate=keep_all.to_dict())
    return root, bundle


def test_cli_predict_with_the_heatmap_detector_and_clear_errors(tmp_path, capsys):
    from czii_kaggle.cli import main
    from czii_kaggle.submission import validate_submission

    root, bundle = _heatmap_only_bundle(tmp_path)
    out = tmp_path / "sub.csv"
    assert main(["predict", "--data", str(root), "--weights", str(bundle), "--out", str(out)]) == 2  # no YOLO held
    assert "holds only heatmap" in capsys.readouterr().err
    assert main(["predict", "--data", str(root), "--weights", str(bundle), "--out", str(out),
                 "--detectors", "heatmap"]) == 0
    sub = validate_submission(out)
    assert set(sub["experiment"]) == {"TS_a", "TS_b"}  # an untrained net, no thresholds: peaks everywhere
    assert "wrote" in capsys.readouterr().out
    # flipped test-time views of the 3D windows: averaged maps, so other scores than one view
    assert load_detectors(bundle, ["heatmap"], tta_views=3)[0].bundle.config.tta_views == 3
    out4 = tmp_path / "sub4.csv"
    assert main(["predict", "--data", str(root), "--weights", str(bundle), "--out", str(out4),
                 "--detectors", "heatmap", "--tta-views", "4"]) == 0
    one, four = pd.read_csv(out), validate_submission(out4)
    assert set(four["experiment"]) == {"TS_a", "TS_b"} and not one.equals(four)
    # 8 views (x-y swapped too) are the heatmap's; asked of YOLO (the shipped default ensemble) they are refused
    out8 = tmp_path / "sub8.csv"
    assert main(["predict", "--data", str(root), "--weights", str(bundle), "--out", str(out8),
                 "--detectors", "heatmap", "--tta-views", "8"]) == 0
    assert not four.equals(validate_submission(out8))
    capsys.readouterr()
    out_y8 = tmp_path / "sub_y8.csv"
    assert main(["predict", "--data", str(root), "--out", str(out_y8), "--tta-views", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "8 test-time views are the heatmap's alone" in err[0] and not out_y8.exists()
    # the networks' precision: float32 as the bundle says is the same run; bfloat16 is float32 bit for bit where
    # the CPU has no bfloat16 in hardware, and a submission either way
    from czii_kaggle.detectors.heatmap import autocast_dtype

    out32, out16 = tmp_path / "sub32.csv", tmp_path / "sub16.csv"
    assert main(["predict", "--data", str(root), "--weights", str(bundle), "--out", str(out32),
                 "--detectors", "heatmap", "--precision", "float32"]) == 0
    assert pd.read_csv(out32).equals(one)
    assert main(["predict", "--data", str(root), "--weights", str(bundle), "--out", str(out16),
                 "--detectors", "heatmap", "--precision", "bfloat16"]) == 0
    if autocast_dtype("cpu", "bfloat16") is None:
        assert pd.read_csv(out16).equals(one)
    assert set(validate_submission(out16)["experiment"]) == {"TS_a", "TS_b"}
    # test-time batch-norm adaptation: the tomogram's own statistics, so other scores again
    assert load_detectors(bundle, ["heatmap"], bn_adapt=0.5)[0].bundle.config.bn_adapt == 0.5
    out_bn = tmp_path / "sub_bn.csv"
    assert main(["predict", "--data", str(root), "--weights", str(bundle), "--out", str(out_bn),
                 "--detectors", "heatmap", "--bn-adapt", "1"]) == 0
    assert not one.equals(validate_submission(out_bn))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--data", str(root), "--weights", str(bundle), "--out", str(out_bn),
              "--detectors", "heatmap", "--bn-adapt", "1.5"])
    assert exit_.value.code == 2
    assert "argument --bn-adapt: must be in 0..1, not 1.5" in capsys.readouterr().err
    # options of the YOLO path alone are refused with the heatmap, in one line, before anything runs
    capsys.readouterr()
    out5 = tmp_path / "sub5.csv"
    assert main(["predict", "--data", str(root), "--weights", str(bundle), "--out", str(out5), "--detectors",
                 "heatmap", "--detections-out", str(tmp_path / "d.csv"), "--slice-step", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--detections-out, --slice-step run the YOLO detector alone, not heatmap" in err[0]
    assert not out5.exists()


def test_predict_bundle_passes_the_detectors_through(tmp_path):
    from czii_kaggle.predict import run_problems, write_prediction
    from czii_kaggle.workflow import predict_bundle

    root, bundle = _heatmap_only_bundle(tmp_path)
    with pytest.raises(CziiInputError, match="holds only heatmap"):
        predict_bundle(root, bundle=bundle)  # the default: YOLO, which this bundle lacks
    with pytest.raises(CziiInputError, match="need a bundle folder"):
        predict_bundle(root, bundle=bundle / "heatmap.pt", detectors="heatmap")
    pred = predict_bundle(root, bundle=bundle, detectors="heatmap", progress=False)
    assert pred.report["experiment"].tolist() == ["TS_a", "TS_b"] and (pred.report["status"] == "ok").all()
    assert pred.report["n_picks"].tolist() == [int((pred.picks["experiment"] == r).sum()) for r in ("TS_a", "TS_b")]
    assert (pred.report["n_picks"] > 0).all() and run_problems(pred.report).empty
    assert pred.notes == ["detectors: heatmap"] and pred.detections.empty
    sub = write_prediction(pred, tmp_path / "sub.csv")
    assert set(sub["experiment"]) == {"TS_a", "TS_b"}
    with pytest.raises(CziiInputError, match="is inside"):  # outputs among the inputs are refused
        write_prediction(pred, bundle / "sub.csv")


def test_predict_bundle_reports_every_detectors_device(tmp_path, monkeypatch):
    """The per-run report names where each detector ran (the heatmap on a GPU without YOLO: not 'cpu')."""
    import czii_kaggle.predict as predict
    from czii_kaggle.detectors import DetectorsPrediction
    from czii_kaggle.workflow import predict_bundle

    root, bundle = _heatmap_only_bundle(tmp_path)
    report = pd.DataFrame({"experiment": ["TS_a", "TS_a", "TS_b", "TS_b"], "detector": ["heatmap", "heatmap_l0"] * 2,
                           "device": ["cuda:0", "cuda:0", "cuda:0", "cpu"], "status": "ok", "n_candidates": 1,
                           "seconds": 1.0, "error": ""})
    monkeypatch.setattr(predict, "predict_detectors", lambda *a, **k: DetectorsPrediction(
        empty_candidates(), {}, report))
    pred = predict_bundle(root, bundle=bundle, detectors="heatmap", progress=False)
    assert pred.report.set_index("experiment")["device"].to_dict() == {"TS_a": "cuda:0", "TS_b": "cpu,cuda:0"}


@pytest.mark.slow
def test_the_yolo_detector_gives_the_pipelines_candidates(tmp_path):
    """The real YOLO detector (no stand-in): its unthresholded candidates, selected with the
    bundle's thresholds, are exactly the picks the prediction pipeline makes of the same run."""
    from czii_kaggle import layout
    from czii_kaggle.detect import load_model
    from czii_kaggle.bundle import load_bundle
    from czii_kaggle.detectors.yolo import YoloDetector, predict_one
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(tmp_path, n_train=0, n_test=1, seed=3,
                          config=SimConfig(shape_vox=(48, 224, 224), difficulty="easy"))
    run = ds.test_runs[0]
    zarr_path = layout.tomogram_path(ds.root, "test", run)
    bundle = load_bundle()
    det = YoloDetector(bundle, backend="torch")
    assert det.device == "cpu"  # the first usable device: no GPU here
    cands, times = det.candidates(zarr_path, run)
    assert {"read_s", "preprocess_s", "inference_s", "aggregate_s"} <= set(times)
    _, picks, _ = predict_one(load_model(bundle.weights), zarr_path, run, bundle)
    assert len(picks) > 0 and len(cands) >= len(picks)
    key = ["particle_type", "x", "y", "z"]
    got = det.select(cands)[key].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, picks[key].sort_values(key).reset_index(drop=True))
    # predict_detectors takes YOLO's candidates through predict_runs (prefetch, every device): the same
    # candidates, the same picks, and the report's YOLO row with its stage seconds
    from czii_kaggle.bundle import DEFAULT_BUNDLE
    from czii_kaggle.predict import predict_detectors

    pred = predict_detectors(ds.root, "test", bundle_dir=DEFAULT_BUNDLE, detectors=["yolo"], backend="torch",
                             progress=False)
    cols = key + ["score", "n_slices"]
    pd.testing.assert_frame_equal(pred.candidates["yolo"][cols].sort_values(key).reset_index(drop=True),
                                  cands[cols].sort_values(key).reset_index(drop=True))
    pd.testing.assert_frame_equal(pred.picks[key].sort_values(key).reset_index(drop=True),
                                  picks[key].sort_values(key).reset_index(drop=True))
    row = pred.report.iloc[0]
    assert (len(pred.report), row["detector"], row["status"], row["n_candidates"]) == (1, "yolo", "ok", len(cands))
    assert row["inference_s"] > 0 and row["seconds"] >= row["inference_s"]


@pytest.mark.slow
def test_a_run_the_heatmap_cannot_read_keeps_the_yolo_picks(tmp_path, capsys):
    """End to end with both real detectors: a tomogram smaller than one heatmap window fails in the
    heatmap detector only; it is reported (exit 1) and YOLO's own selection is what is written."""
    import torch

    from czii_kaggle import layout
    from czii_kaggle.bundle import load_bundle, save_heatmap_json
    from czii_kaggle.cli import main
    from czii_kaggle.detectors.heatmap import HeatmapConfig
    from czii_kaggle.detectors.heatmap_net import HeatmapUNet
    from czii_kaggle.detectors.yolo import YoloDetector
    from czii_kaggle.predict import scored_only
    from czii_kaggle.simulate import SimConfig, simulate_dataset
    from czii_kaggle.submission import validate_submission

    ds = simulate_dataset(tmp_path / "sim", n_train=0, n_test=1, seed=3,
                          config=SimConfig(shape_vox=(48, 224, 224), difficulty="easy"))
    run = ds.test_runs[0]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("model.pt", "czii_config.json"):
        shutil.copy(DEFAULT_BUNDLE / name, bundle / name)
    torch.save(HeatmapUNet(6, (4, 8, 8)).state_dict(), bundle / "heatmap.pt")
    # level 1 of a 48-slice tomogram is 24 voxels deep: less than this 32-voxel window
    save_heatmap_json(bundle, config=HeatmapConfig(channels=(4, 8, 8), window_vox=(32, 64, 64)).to_dict())
    ident = {n: (1.0, 0.0) for n in NAMES}
    save_ensemble(bundle, EnsembleConfig(("yolo", "heatmap"), {"yolo": ident, "heatmap": ident}))
    out = tmp_path / "sub.csv"
    code = main(["predict", "--data", str(ds.root), "--weights", str(bundle), "--out", str(out),
                 "--detectors", "yolo,heatmap", "--backend", "torch"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{run} (heatmap): failed" in err and "smaller than one heatmap window" in err
    yolo = YoloDetector(load_bundle(bundle), backend="torch")
    cands, _ = yolo.candidates(layout.tomogram_path(ds.root, "test", run), run)
    want = scored_only(yolo.select(cands))
    sub = validate_submission(out)
    assert len(want) > 0 and len(sub) == len(want)
    assert sub["particle_type"].value_counts().to_dict() == want["particle_type"].value_counts().to_dict()


def test_logit_pooling_rewards_agreement_and_old_files_keep_the_mean():
    """Two detectors at 0.9 on one spot pool to 0.9; one alone at 0.9 to almost nothing with equal
    weights, and to 0.9 where it has all the weight. An ensemble.json without ``fusion`` is the mean."""
    ident = {n: (1.0, 0.0) for n in NAMES}
    spot = pd.DataFrame({"experiment": ["r"], "particle_type": ["ribosome"], "x": [1000.0], "y": [1000.0],
                         "z": [500.0], "score": [0.9], "n_slices": [1], "share": [1.0]})
    far = spot.assign(x=5000.0)
    cands = {"yolo": pd.concat([spot, far], ignore_index=True), "heatmap": spot}
    cfg = EnsembleConfig(("yolo", "heatmap"), {"yolo": ident, "heatmap": ident})
    assert cfg.fusion == "logit"
    out = combine(cands, cfg).sort_values("x")["score"].tolist()
    assert out[0] == pytest.approx(0.9) and out[1] < 0.05  # sigmoid((logit(0.9) + logit(1e-4)) / 2)
    alone = EnsembleConfig(cfg.detectors, cfg.calibration, weights={"ribosome": (1.0, 0.0)})
    assert combine(cands, alone).sort_values("x")["score"].tolist() == pytest.approx([0.9, 0.9])
    mean = EnsembleConfig(cfg.detectors, cfg.calibration, fusion="mean")
    assert combine(cands, mean).sort_values("x")["score"].tolist() == pytest.approx([0.9, 0.45])
    # noisy-or: agreement at 0.9 stays 0.9, a lone 0.9 keeps 1 - 0.1 ** 0.5 (no penalty for the absent one)
    nor = EnsembleConfig(cfg.detectors, cfg.calibration, fusion="noisy_or")
    assert combine(cands, nor).sort_values("x")["score"].tolist() == pytest.approx([0.9, 1 - 0.1**0.5])
    both = {"yolo": spot.assign(score=0.5), "heatmap": spot.assign(score=0.8)}
    assert combine(both, nor)["score"].tolist() == pytest.approx([1 - (0.5 * 0.2) ** 0.5])
    old = {k: v for k, v in cfg.to_dict().items() if k != "fusion"}
    assert EnsembleConfig.from_dict(old).fusion == "mean"
    assert EnsembleConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="fusion"):
        EnsembleConfig(fusion="median")


@pytest.mark.slow
def test_tune_ensemble_tunes_each_detector_and_the_ensemble_on_the_same_runs(tmp_path, capsys):
    """``tune-ensemble`` writes YOLO's thresholds (czii_config.json), the heatmap's (heatmap.json)
    and the ensemble (ensemble.json), all from one pass of both detectors over the same runs: YOLO's
    saved thresholds are exactly what :func:`tune_thresholds` picks on YOLO's candidates of those
    runs, its floor is kept and the weights are not touched."""
    import torch

    from czii_kaggle import layout, picks as picks_io
    from czii_kaggle.bundle import file_sha256, load_bundle, save_heatmap_json
    from czii_kaggle.cli import main
    from czii_kaggle.detectors.heatmap import HeatmapConfig
    from czii_kaggle.detectors.heatmap_net import HeatmapUNet
    from czii_kaggle.detectors.yolo import YoloDetector
    from czii_kaggle.simulate import SimConfig, simulate_dataset
    from czii_kaggle.tune import tune_thresholds

    ds = simulate_dataset(tmp_path / "sim", n_train=2, n_test=0, seed=4,
                          config=SimConfig(shape_vox=(64, 192, 192), difficulty="easy"))
    runs = layout.list_runs(ds.root, "train")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("model.pt", "czii_config.json"):
        shutil.copy(DEFAULT_BUNDLE / name, bundle / name)
    torch.manual_seed(0)
    torch.save(HeatmapUNet(6, (4, 8, 8)).state_dict(), bundle / "heatmap.pt")
    save_heatmap_json(bundle, config=HeatmapConfig(channels=(4, 8, 8), window_vox=(32, 64, 64)).to_dict())
    before = load_bundle(bundle).aggregate
    assert any(before[n].min_keep > 0 for n in NAMES)  # the shipped floor
    weights_sha = file_sha256(bundle / "model.pt")

    code = main(["tune-ensemble", "--data", f"{ds.root}:{','.join(runs)}", "--weights", str(bundle),
                 "--cache-yolo", str(tmp_path / "cache"), "--backend", "torch", "--default", "yolo,heatmap"])
    out = capsys.readouterr().out
    assert code in (None, 0) and "yolo:" in out and "heatmap:" in out and "ensemble:" in out

    yolo = YoloDetector(load_bundle(DEFAULT_BUNDLE), backend="torch")
    cands = pd.concat([yolo.candidates(layout.tomogram_path(ds.root, "train", r), f"0/{r}")[0] for r in runs])
    truth = picks_io.read_all_picks(ds.root, runs).assign(experiment=lambda d: "0/" + d["experiment"].astype(str))
    want, _ = tune_thresholds(cands, truth, before)
    doc = json.loads((bundle / "czii_config.json").read_text())
    assert want.to_dict() != before.to_dict()  # these runs move YOLO's thresholds
    assert doc["aggregate"] == want.to_dict()
    assert doc["tuned_on"] == [{"root": str(ds.root), "runs": runs}]
    assert [load_bundle(bundle).aggregate[n].min_keep for n in NAMES] == [before[n].min_keep for n in NAMES]
    assert file_sha256(bundle / "model.pt") == weights_sha
    hm = json.loads((bundle / "heatmap.json").read_text())
    assert hm["tuned_on"] == doc["tuned_on"] and AggregateConfig.from_dict(hm["aggregate"]) is not None
    ens = load_ensemble(bundle)
    assert ens is not None and ens.detectors == ("yolo", "heatmap")
    assert default_detectors(bundle) == ["yolo", "heatmap"]

    # --relative: every selection (each detector alone, each detector's scores in the ensemble) is
    # tuned on scores relative to the run's own; YOLO's thresholds are tune_thresholds' from there
    from czii_kaggle.bundle import load_heatmap_bundle
    from czii_kaggle.recipe import load_recipe

    ranks = load_recipe().tuning.ref_rank(0.5)
    assert main(["tune-ensemble", "--data", f"{ds.root}:{','.join(runs)}", "--weights", str(bundle),
                 "--cache-yolo", str(tmp_path / "cache"), "--backend", "torch", "--relative", "0.5"]) in (None, 0)
    for agg in (load_bundle(bundle).aggregate, load_heatmap_bundle(bundle).aggregate):
        assert {n: agg[n].ref_rank for n in NAMES} == ranks
    assert load_ensemble(bundle).ref_rank == ranks
    relative, _ = tune_thresholds(cands, truth, want.with_ref_rank(ranks))  # from the first tuning's
    assert load_bundle(bundle).aggregate == relative


def test_relative_ensemble_scores_do_not_see_a_runs_scale():
    """With ``ref_rank`` each detector's scores are taken relative to the run's own before calibration:
    a run whose scores are all 0.3 times lower merges to the same scores; the fit keeps the ranks and
    they round-trip through ensemble.json."""
    rng = np.random.default_rng(6)
    truth = _scene(rng, 40)
    cands = {"yolo": _noisy_detector(rng, truth, 0.7, 30), "heatmap": _noisy_detector(rng, truth, 0.7, 30)}
    ranks = {n: 5 for n in NAMES}
    config, _ = fit_ensemble(cands, truth, ref_rank=ranks)
    assert config.ref_rank == ranks
    low = {k: v.assign(experiment="low", score=v["score"] * 0.3) for k, v in cands.items()}
    both = {k: pd.concat([cands[k], low[k]], ignore_index=True) for k in cands}
    out = combine(both, config)
    same = out[out["experiment"] == "run"].drop(columns="experiment").reset_index(drop=True)
    scaled = out[out["experiment"] == "low"].drop(columns="experiment").reset_index(drop=True)
    pd.testing.assert_frame_equal(same, scaled)
    absolute = combine(both, replace(config, ref_rank={}))
    assert absolute.loc[absolute["experiment"] == "low", "score"].max() < absolute.loc[absolute["experiment"] == "run", "score"].max()
    assert EnsembleConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="ref_rank"):
        EnsembleConfig(ref_rank={"ribosome": -1})


def test_a_bundle_holds_a_further_heatmap_network_as_a_detector_of_its_own(tmp_path, capsys):
    """``add-heatmap`` puts a second heatmap network into a bundle as ``heatmap_<tag>`` (its ONNX copy and
    record renamed with it, the source and the bundle's own files untouched); ``tune-ensemble --detectors``
    fits the ensemble of three, ``--own`` retuning only the newcomer's thresholds; ``predict`` runs the three
    by default and each alone; wrong names are clear errors."""
    import torch

    from czii_kaggle import layout
    from czii_kaggle.bundle import (describe_bundle, export_heatmap_onnx, file_sha256, load_heatmap_bundle,
                                    save_heatmap_json, set_count_floor)
    from czii_kaggle.cli import main
    from czii_kaggle.detectors.heatmap import HeatmapConfig
    from czii_kaggle.detectors.heatmap_net import HeatmapUNet
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(tmp_path / "sim", n_train=2, n_test=1, seed=5,
                          config=SimConfig(shape_vox=(64, 192, 192), difficulty="easy"))
    runs = layout.list_runs(ds.root, "train")
    bundle, source = tmp_path / "bundle", tmp_path / "other"
    bundle.mkdir(), source.mkdir()
    for name in ("model.pt", "czii_config.json"):
        shutil.copy(DEFAULT_BUNDLE / name, bundle / name)
    for folder, seed, channels in ((bundle, 0, (4, 8, 8)), (source, 1, (4, 8, 12))):
        torch.manual_seed(seed)
        torch.save(HeatmapUNet(6, channels).state_dict(), folder / "heatmap.pt")
        save_heatmap_json(folder, config=HeatmapConfig(channels=channels, window_vox=(32, 64, 64)).to_dict())
    export_heatmap_onnx(source)
    src_files = {p.name: file_sha256(p) for p in source.iterdir()}

    assert main(["add-heatmap", "--source", str(source), "--weights", str(bundle), "--name", "heatmap_b"]) in (None, 0)
    assert {p.name: file_sha256(p) for p in source.iterdir()} == src_files  # only read
    assert held_detectors(bundle) == ["yolo", "heatmap", "heatmap_b"]
    added = load_heatmap_bundle(bundle, "heatmap_b")
    assert added.name == "heatmap_b" and added.config.channels == (4, 8, 12)
    assert added.onnx == bundle / "heatmap_b.onnx"  # the copy's record names the renamed weights and matches them
    assert load_heatmap_bundle(bundle).config.channels == (4, 8, 8) and load_heatmap_bundle(bundle).onnx is None
    for bad, why in (("heatmap_b", "is there already"), ("heatmap", "named heatmap_<tag>"),
                     ("Heatmap_X", "named heatmap_<tag>"), ("blob", "named heatmap_<tag>")):
        assert main(["add-heatmap", "--source", str(source), "--weights", str(bundle), "--name", bad]) != 0
        assert why in capsys.readouterr().err, bad
    assert held_detectors(bundle) == ["yolo", "heatmap", "heatmap_b"]
    # weights that do not fit their config (another width): refused before anything is copied
    wrong = tmp_path / "wrong"
    shutil.copytree(source, wrong)
    save_heatmap_json(wrong, config=HeatmapConfig(channels=(4, 8, 16), window_vox=(32, 64, 64)).to_dict())
    assert main(["add-heatmap", "--source", str(wrong), "--weights", str(bundle), "--name", "heatmap_w"]) != 0
    assert "heatmap" in capsys.readouterr().err and not list(bundle.glob("heatmap_w*"))

    own_before = {f: (bundle / f).read_text() for f in ("czii_config.json", "heatmap.json")}
    code = main(["tune-ensemble", "--data", f"{ds.root}:{','.join(runs)}", "--weights", str(bundle), "--backend",
                 "torch", "--detectors", "yolo,heatmap,heatmap_b", "--own", "heatmap_b",
                 "--default", "yolo,heatmap,heatmap_b"])
    out = capsys.readouterr().out
    assert code in (None, 0) and "heatmap_b:" in out and "ensemble:" in out and "yolo:" not in out
    assert {f: (bundle / f).read_text() for f in own_before} == own_before  # --own: the others' thresholds kept
    assert json.loads((bundle / "heatmap_b.json").read_text())["tuned_on"] == [{"root": str(ds.root), "runs": runs}]
    ens = load_ensemble(bundle)
    assert ens.detectors == ("yolo", "heatmap", "heatmap_b") and set(ens.calibration) == set(ens.detectors)
    assert all(np.allclose(ens.class_weights(n), 1 / 3) for n in NAMES)  # three detectors: equal weights
    assert default_detectors(bundle) == ["yolo", "heatmap", "heatmap_b"]
    detectors, ensembles = describe_bundle(bundle)
    assert [r["detector"] for r in detectors] == ["yolo", "heatmap", "heatmap_b"]
    assert [(r["onnx"], r["tuned_on_runs"]) for r in detectors[1:]] == [("-", "-"), ("heatmap_b.onnx", str(len(runs)))]
    assert detectors[0]["voxel_size_A"] == 10.01  # YOLO reads at Kaggle's voxel size (its config's default)
    assert ensembles == [{"ensemble": "yolo+heatmap+heatmap_b", "default": True, "fusion": "logit",
                          "fitted_on_runs": str(len(runs))}]
    assert main(["bundle", "--weights", str(bundle)]) in (None, 0)
    listed = capsys.readouterr().out
    assert "heatmap_b.onnx" in listed and "yolo+heatmap+heatmap_b" in listed
    assert "heatmap_b.json" in {p.name for p in set_count_floor(bundle, {"ribosome": 3})}
    assert load_heatmap_bundle(bundle, "heatmap_b").aggregate["ribosome"].min_keep == 3

    # predict: the bundle's three by default (one report row per run and detector), any one alone, clear errors
    out_csv = tmp_path / "sub.csv"
    assert main(["predict", "--data", str(ds.root), "--weights", str(bundle), "--out", str(out_csv),
                 "--backend", "torch"]) in (None, 0)
    printed = capsys.readouterr().out
    assert "yolo+heatmap+heatmap_b" in printed and out_csv.read_text().startswith("id,experiment,particle_type")
    for n in ("yolo", "heatmap", "heatmap_b"):
        assert f" {n} " in printed or f" {n}\n" in printed, n
    alone = tmp_path / "alone.csv"
    assert main(["predict", "--data", str(ds.root), "--weights", str(bundle), "--out", str(alone),
                 "--backend", "torch", "--detectors", "heatmap_b"]) in (None, 0)
    assert "(heatmap_b)" in capsys.readouterr().out
    with pytest.raises(CziiInputError, match="names detector.*heatmap_zz.*holds only yolo, heatmap, heatmap_b"):
        parse_detectors("yolo,heatmap_zz", bundle)

    # an ensemble of another set beside it: the three stay as an alternative, and the default with them
    three = load_ensemble(bundle)
    own_before = {f: (bundle / f).read_text() for f in own_before}
    assert main(["tune-ensemble", "--data", f"{ds.root}:{','.join(runs)}", "--weights", str(bundle), "--backend",
                 "torch", "--detectors", "yolo,heatmap", "--own", "none"]) in (None, 0)
    capsys.readouterr()
    assert {f: (bundle / f).read_text() for f in own_before} == own_before
    assert load_ensemble(bundle).detectors == ("yolo", "heatmap")
    assert load_ensemble(bundle, ["heatmap_b", "yolo", "heatmap"]) == three
    assert default_detectors(bundle) == ["yolo", "heatmap", "heatmap_b"]  # kept: no --default given
    assert "ensemble.json" in {p.name for p in set_count_floor(bundle, {"ribosome": 4})}
    assert load_ensemble(bundle, three.detectors).aggregate["ribosome"].min_keep == 4  # the alternative's floor too
    assert load_ensemble(bundle).aggregate["ribosome"].min_keep == 4
    assert [(e["ensemble"], e["default"]) for e in describe_bundle(bundle)[1]] == [
        ("yolo+heatmap", False), ("yolo+heatmap+heatmap_b", True)]
    for detectors in ("yolo,heatmap", None):  # both ensembles run
        assert main(["predict", "--data", str(ds.root), "--weights", str(bundle), "--out", str(alone),
                     "--backend", "torch", *(["--detectors", detectors] if detectors else [])]) in (None, 0)
    capsys.readouterr()
    for args, why in ((["predict", "--data", str(ds.root), "--out", str(alone), "--detectors", "yolo,heatmap_b"],
                       "no ensemble of yolo, heatmap_b fitted in this bundle (it holds: yolo+heatmap; "
                       "yolo+heatmap+heatmap_b"),
                      (["tune-ensemble", "--data", f"{ds.root}:{runs[0]}", "--detectors", "heatmap"],
                       "an ensemble needs two or more detectors"),
                      (["tune-ensemble", "--data", f"{ds.root}:{runs[0]}", "--detectors", "heatmap,heatmap_b",
                        "--own", "yolo"], "--own names yolo, not among heatmap, heatmap_b")):
        assert main([*args, "--weights", str(bundle)]) != 0
        assert why in capsys.readouterr().err, why


def test_the_yolo_detector_takes_the_first_usable_gpu(monkeypatch):
    """Given no device, the YOLO detector runs on the first GPU torch can run (torch, not ONNX Runtime's CPU),
    as the prediction pipeline does; given one, that one; on a CPU-only machine the ONNX copy."""
    from czii_kaggle.bundle import load_bundle
    from czii_kaggle.detect import onnxruntime_available
    from czii_kaggle.detectors import yolo

    bundle = load_bundle()
    monkeypatch.setattr(yolo, "visible_devices", lambda: ["cuda:1", "cuda:0"])
    det = yolo.YoloDetector(bundle)
    assert (det.backend, det.device) == ("torch", "cuda:1")
    assert (yolo.YoloDetector(bundle, device="cpu").device, yolo.YoloDetector(bundle, backend="onnx").device) == \
        ("cpu", "cpu")
    monkeypatch.setattr(yolo, "visible_devices", lambda: ["cpu"])
    if bundle.onnx is not None and onnxruntime_available():
        assert yolo.YoloDetector(bundle).backend == "onnx"
