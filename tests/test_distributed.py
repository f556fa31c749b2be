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
