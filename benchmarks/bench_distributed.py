"""Benchmark prediction on a local Dask cluster against one process, on the same simulated runs.

Simulates ``--n-runs`` small test tomograms, predicts them once in one process
(:func:`czii_kaggle.predict.predict_runs`, every CPU) and once on a local cluster of
``--workers`` processes (:func:`czii_kaggle.distributed.predict_runs_dask`), wall clock end to
end for both (model loading and cluster start included), checks that both found the same picks,
and measures the cluster's overhead per task with ``--noop-tasks`` empty tasks. Prints a table and
appends it, with the command and machine, to ``benchmarks/results/distributed.md``.
``--detectors`` (e.g. ``yolo,heatmap,heatmap_l0``, the shipped default) runs those and their
ensemble instead of YOLO alone, in one process and on the cluster, one task per tomogram with
every detector (:func:`czii_kaggle.workflow.predict_bundle`); the heatmap networks' windows want
full-size tomograms (``--shape 184 630 630``).

    .venv/bin/python benchmarks/bench_distributed.py --n-runs 8 --workers 2
    .venv/bin/python benchmarks/bench_distributed.py --n-runs 4 --workers 2 --shape 184 630 630 \
        --detectors yolo,heatmap,heatmap_l0
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as describe_machine  # noqa: E402

sys.path.insert(0, str(REPO))

from czii_kaggle import layout, metric  # noqa: E402
from czii_kaggle.submission import make_submission, read_solution  # noqa: E402
from czii_kaggle.distributed import connect, predict_runs_dask, run_tasks  # noqa: E402
from czii_kaggle.bundle import load_bundle  # noqa: E402
from czii_kaggle.predict import predict_runs, scored_only  # noqa: E402
from czii_kaggle.simulate import SimConfig, simulate_dataset  # noqa: E402
from czii_kaggle.workflow import predict_bundle  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "distributed.md"


def noop_overhead_s(n_workers: int, n_tasks: int) -> tuple[float, float]:
    """``(cluster start seconds, seconds per empty task)`` on a new local cluster."""
    t0 = time.perf_counter()
    client, cluster = connect(n_workers=n_workers)
    client.wait_for_workers(n_workers)
    start_s = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        out = run_tasks(client, time.sleep, {str(i): (0,) for i in range(n_tasks)}, progress=False)
        per_task = (time.perf_counter() - t1) / n_tasks
        assert all(err == "" for _, err in out.values())
    finally:
        client.close()
        cluster.close()
    return start_s, per_task


def matched_share(one, two, tol_A: float = 1.0) -> float:
    """The share of ``one``'s picks with a pick of ``two`` of the same run and type within ``tol_A``
    (both ways the smaller share): how far apart two predictions that should agree are."""
    from scipy.spatial import cKDTree

    def share(a, b) -> float:
        hits = 0
        for (run, ptype), g in a.picks.groupby(["experiment", "particle_type"]):
            h = b.picks[(b.picks["experiment"] == run) & (b.picks["particle_type"] == ptype)]
            if len(h):
                d, _ = cKDTree(h[["x", "y", "z"]].to_numpy()).query(g[["x", "y", "z"]].to_numpy())
                hits += int((d <= tol_A).sum())
        return hits / len(a.picks) if len(a.picks) else 1.0  # no picks: nothing to disagree on

    return min(share(one, two), share(two, one))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-runs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shape", type=int, nargs=3, default=(48, 256, 256), metavar=("Z", "Y", "X"))
    p.add_argument("--noop-tasks", type=int, default=200)
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--detectors", help="the shipped bundle's detectors to run (their ensemble), e.g. "
                                       "yolo,heatmap,heatmap_l0; default: YOLO alone")
    p.add_argument("--weights", type=Path, help="bundle folder (default: the shipped one)")
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    bundle = load_bundle(a.weights)
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate_dataset(tmp, n_train=0, n_test=a.n_runs, seed=a.seed,
                               config=SimConfig(shape_vox=tuple(a.shape), difficulty="medium"))
        tomograms = {r: layout.tomogram_path(sim.root, "test", r) for r in sim.test_runs}
        t0 = time.perf_counter()
        if a.detectors:
            one = predict_bundle(sim.root, "test", bundle=a.weights, detectors=a.detectors, progress=False)
        else:
            one = predict_runs(sim.root, "test", bundle=bundle, progress=False)
        one_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if a.detectors:
            two = predict_bundle(None, bundle=a.weights, detectors=a.detectors, progress=False, tomograms=tomograms,
                                 n_workers=a.workers)
        else:
            two = predict_runs_dask(tomograms, bundle, n_workers=a.workers, progress=False)
        two_s = time.perf_counter() - t0
        truth = read_solution(sim.solution_csv)
    fbeta = [metric.score(truth, make_submission(scored_only(p.picks))) for p in (one, two)]
    key = ["experiment", "particle_type", "x"]
    same = one.picks.sort_values(key).reset_index(drop=True)[key + ["y", "z", "score"]].round(3).equals(
        two.picks.sort_values(key).reset_index(drop=True)[key + ["y", "z", "score"]].round(3))
    start_s, per_task_s = noop_overhead_s(a.workers, a.noop_tasks)
    # a worker's first task loads the model; the others show its steady pace
    rep = two.report.assign(first=lambda d: ~d.duplicated("worker"))
    steady_s = rep.loc[~rep["first"], "total_s"].median()
    busiest_s = rep.groupby("worker")["total_s"].sum().max()
    rows = [
        ("one process: wall s (model load included)", one_s),
        (f"local cluster, {a.workers} workers: wall s (cluster start + model loads included)", two_s),
        ("throughput ratio cluster / one process", one_s / two_s),
        ("one process: median s per tomogram", one.report["total_s"].median()),
        ("cluster: first task per worker (model load), median s", rep.loc[rep["first"], "total_s"].median()),
        ("cluster: later tasks, median s per tomogram", steady_s),
        ("cluster: wall minus busiest worker's task seconds, s", two_s - busiest_s),
        ("local cluster start, s", start_s),
        (f"overhead per task, s ({a.noop_tasks} empty tasks)", per_task_s),
        ("tomograms per hour per worker at the steady pace", 3600 / steady_s),
        ("same picks (rounded to 1e-3 A)", float(same)),
        ("picks of one process within 1 A of a cluster pick of the same type, share", matched_share(one, two)),
        ("F-beta, one process", fbeta[0]),
        ("F-beta, cluster", fbeta[1]),
    ]
    table = "\n".join(["| measure | value |", "| --- | ---: |", *[f"| {k} | {v:.3f} |" for k, v in rows]])
    cmd = " ".join(shlex.quote(x) for x in [".venv/bin/python", sys.argv[0] if argv is None else __file__,
                                             *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join([
        f"## {datetime.datetime.now().isoformat(timespec='seconds')}", "",
        f"- command: `{cmd}`", f"- machine: {describe_machine(with_pace=True)}",
        f"- {a.n_runs} simulated test runs of shape {tuple(a.shape)} (z, y, x), medium difficulty, the shipped "
        f"model, {'detectors ' + a.detectors + ' (their ensemble)' if a.detectors else 'YOLO alone'}, backend "
        f"{one.report['backend'].iloc[0]}; {len(one.picks)} picks", "", table, "",
    ])
    print(text)
    a.results.parent.mkdir(parents=True, exist_ok=True)
    with open(a.results, "a") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
