"""Prediction on a local Dask cluster: same result as one process, a corrupt tomogram reported,
a dead worker's task reported (never lost), a scheduler that does not answer."""
import os
import shutil
import sys
import time

import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from czii_kaggle import cli, layout  # noqa: E402
from czii_kaggle.copick_project import open_project, read_picks, write_config  # noqa: E402
from czii_kaggle.distributed import connect, run_tasks  # noqa: E402
from czii_kaggle.errors import CziiInputError  # noqa: E402
from czii_kaggle.predict import predict_runs  # noqa: E402
from czii_kaggle.simulate import SimConfig, simulate_dataset  # noqa: E402
from czii_kaggle.workflow import CopickTarget, predict_sources, resolve_sources, write_outputs  # noqa: E402


@pytest.mark.slow
def test_local_cluster_equals_one_process_and_reports_the_corrupt_run(tmp_path):
    """A copick project of 4 simulated runs, one corrupt, predicted on a local cluster of 2 workers
    and written back as copick picks: the same picks as one process, the corrupt run reported."""
    pytest.importorskip("copick")
    sim = simulate_dataset(tmp_path / "sim", n_train=0, n_test=4,
                           config=SimConfig(shape_vox=(32, 192, 192), difficulty="easy"), seed=21)
    runs = sim.test_runs
    broken = layout.tomogram_path(sim.root, "test", runs[2])
    shutil.rmtree(broken / "0")  # corrupt: level 0 listed in .zattrs but absent
    one = predict_runs(sim.root, "test", progress=False)
    config = write_config(tmp_path / "copick.json", sim.root / "test" / "static", tmp_path / "overlay")
    sources = resolve_sources(copick=config)
    two = predict_sources(sources, n_workers=2, progress=False)
    write_outputs(two, sources, copick=CopickTarget("czii-kaggle", "0"))
    assert list(two.report["experiment"]) == runs
    assert list(two.report["status"]) == list(one.report["status"]) == ["ok", "ok", "failed", "ok"]
    assert str(broken) in two.report.loc[2, "error"]
    assert two.report["worker"].nunique() == 2  # both workers served runs
    ok = two.report[two.report["status"] == "ok"]
    loads = ok.groupby("worker")["model_s"].apply(lambda t: int((t > 0.5).sum()))
    assert (loads <= 1).all() and (ok["model_s"] < 0.5).any()  # each worker loaded its model once at most
    assert len(one.picks) > 5
    key = ["experiment", "particle_type", "x"]
    pd.testing.assert_frame_equal(two.picks.sort_values(key).reset_index(drop=True),
                                  one.picks.sort_values(key).reset_index(drop=True), atol=1e-4)
    assert list(two.report["n_picks"]) == list(one.report["n_picks"])
    back = read_picks(open_project(config), user_id="czii-kaggle", session_id="0")
    assert set(back["experiment"]) == set(one.picks["experiment"]) and len(back) == len(one.picks)
    pd.testing.assert_frame_equal(back[one.picks.columns[:6]].sort_values(key).reset_index(drop=True),
                                  one.picks[one.picks.columns[:6]].sort_values(key).reset_index(drop=True),
                                  atol=1e-4, check_dtype=False)


@pytest.mark.slow
def test_the_ensemble_on_a_local_cluster_equals_one_process_and_keeps_a_run_one_detector_failed(tmp_path):
    """YOLO + heatmap on a local Dask cluster, one task per tomogram with both detectors: the
    same candidates, picks and statuses as in one process; a run whose level 0 is gone fails in YOLO
    (which reads it) and keeps the heatmap's picks (level 1); a run with no tomogram fails in both and
    is reported, the others kept; the worker opens the detectors once."""
    from conftest import make_tiny_bundle
    from czii_kaggle.aggregate import AggregateConfig, ClassParams, select
    from czii_kaggle.bundle import save_heatmap_json
    from czii_kaggle.particles import PARTICLES
    from czii_kaggle.predict import predict_detectors

    bundle = make_tiny_bundle(tmp_path / "bundle", keep_all=True)
    keep = AggregateConfig({p.name: ClassParams(min_support=1, conf_threshold=0.0) for p in PARTICLES})
    save_heatmap_json(bundle, aggregate=keep.to_dict())  # the heatmap's own selection keeps picks too
    sim = simulate_dataset(tmp_path / "sim", n_train=0, n_test=4,
                           config=SimConfig(shape_vox=(32, 192, 192), difficulty="easy"), seed=23)
    runs = sim.test_runs
    shutil.rmtree(layout.tomogram_path(sim.root, "test", runs[1]) / "0")  # YOLO's level: gone
    shutil.rmtree(layout.tomogram_path(sim.root, "test", runs[2]))  # no tomogram at all
    one = predict_detectors(sim.root, "test", bundle_dir=bundle, detectors=["yolo", "heatmap"], progress=False)
    # one worker: it gets this process's CPU threads, so the same float sums (another thread count moves
    # the untrained network's near-equal scores by 1e-6, enough to add or drop a candidate at its floor)
    two = predict_detectors(sim.root, "test", bundle_dir=bundle, detectors=["yolo", "heatmap"], progress=False,
                            n_workers=1)
    status = {(r.experiment, r.detector): r.status for r in two.report.itertuples()}
    assert status == {(r.experiment, r.detector): r.status for r in one.report.itertuples()}
    assert status == {(runs[0], "yolo"): "ok", (runs[0], "heatmap"): "ok", (runs[1], "yolo"): "failed",
                      (runs[1], "heatmap"): "ok", (runs[2], "yolo"): "failed", (runs[2], "heatmap"): "failed",
                      (runs[3], "yolo"): "ok", (runs[3], "heatmap"): "ok"}
    assert str(layout.tomogram_path(sim.root, "test", runs[2])) in \
        two.report.set_index(["experiment", "detector"]).loc[(runs[2], "heatmap"), "error"]
    assert set(two.report["worker"].dropna()) == {"0"}
    opened = two.report.drop_duplicates("experiment")["model_s"]
    assert (opened > 0.5).sum() == 1 and (opened < 0.5).sum() == 3  # the worker opened the detectors once
    key = ["experiment", "particle_type", "x", "y", "z"]
    for name in ("yolo", "heatmap"):
        pd.testing.assert_frame_equal(two.candidates[name].sort_values(key).reset_index(drop=True),
                                      one.candidates[name].sort_values(key).reset_index(drop=True), atol=1e-4)
    assert set(two.picks["experiment"]) == {runs[0], runs[1], runs[3]}
    alone = two.candidates["heatmap"]  # runs[1], where YOLO failed: the heatmap's own selection
    pd.testing.assert_frame_equal(two.picks[two.picks["experiment"] == runs[1]].reset_index(drop=True),
                                  select(alone[alone["experiment"] == runs[1]], keep).reset_index(drop=True))
    pd.testing.assert_frame_equal(two.picks.sort_values(key).reset_index(drop=True),
                                  one.picks.sort_values(key).reset_index(drop=True), atol=1e-4)


def _die_on(key, value, marker=None):
    """A task that kills its own worker process (a worker dying mid-run): always for ``TS_dies``,
    the first time only for ``TS_once`` (``marker`` records that it did)."""
    if key == "TS_dies":
        os._exit(1)
    if key == "TS_once" and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return value * 2


@pytest.mark.slow
def test_a_dead_workers_task_is_retried_or_reported_and_the_others_kept(tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test file
    client, cluster = connect(n_workers=2, allowed_failures=1)
    marker = str(tmp_path / "died_once")
    try:
        # a worker dies once mid-run: its run is rerun elsewhere and finishes, the other is kept
        out = run_tasks(client, _die_on, {"TS_a": ("TS_a", 1), "TS_once": ("TS_once", 4, marker)}, progress=False)
        # a run that kills every worker it lands on is reported once its retries are spent ...
        out |= run_tasks(client, _die_on, {"TS_dies": ("TS_dies", 2)}, progress=False)
        # ... and the cluster goes on serving runs
        out |= run_tasks(client, _die_on, {"TS_b": ("TS_b", 3)}, progress=False)
    finally:
        client.close()
        cluster.close()
    assert out["TS_a"] == (2, "") and out["TS_b"] == (6, "")
    assert os.path.exists(marker) and out["TS_once"] == (8, "")  # its worker died once; the retry finished it
    assert out["TS_dies"][0] is None and "worker died" in out["TS_dies"][1]


def test_a_scheduler_that_does_not_answer_is_a_clear_error_and_nothing_is_written(tmp_path, capsys):
    t0 = time.perf_counter()
    with pytest.raises(CziiInputError, match=r"Dask scheduler tcp://127.0.0.1:9 did not answer within 2 s"):
        connect("tcp://127.0.0.1:9", timeout_s=2)
    assert time.perf_counter() - t0 < 30
    with pytest.raises(CziiInputError, match="'foo' is not a Dask scheduler address"):
        connect("foo", timeout_s=2)
    empty = distributed.LocalCluster(n_workers=0, dashboard_address=None)  # a scheduler with no worker
    try:
        with pytest.raises(CziiInputError, match="has no worker after 2 s"):
            connect(empty.scheduler_address, timeout_s=2)
    finally:
        empty.close()
    sim = simulate_dataset(tmp_path / "sim", n_train=0, n_test=1,
                           config=SimConfig(shape_vox=(16, 128, 128), difficulty="easy"), seed=1)
    out = tmp_path / "sub.csv"
    rc = cli.main(["predict", "--data", str(sim.root), "--scheduler", "tcp://127.0.0.1:9",
                   "--connect-timeout", "2", "--out", str(out)])
    assert rc == 2 and "did not answer" in capsys.readouterr().err
    assert not out.exists()
    pytest.importorskip("copick")  # the same through a copick project: no pick written
    config = write_config(tmp_path / "copick.json", sim.root / "test" / "static", tmp_path / "overlay")
    assert cli.main(["predict", "--copick", str(config), "--scheduler", "tcp://127.0.0.1:9",
                     "--connect-timeout", "2"]) == 2
    assert not list((tmp_path / "overlay").rglob("*.json"))
