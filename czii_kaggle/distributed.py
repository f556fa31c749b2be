"""Prediction on a Dask distributed cluster: one task per tomogram (``pip install czii_kaggle[distributed]``).

The YOLO detector alone (:func:`predict_runs_dask`), or any detectors of a bundle folder and their
ensemble (:func:`run_candidates_dask`, through :func:`czii_kaggle.predict.predict_detectors`): each task
runs every detector on its tomogram, and the client fits their candidates together.

``predict --scheduler tcp://HOST:8786`` uses an existing cluster, ``predict --workers N`` starts a
local one (N worker processes, one task at a time each). Each worker process loads the model once
and keeps it for every task it runs; a GPU worker uses one GPU (the one ``CUDA_VISIBLE_DEVICES``
leaves it, or GPU ``name % count`` when its name is a number, as in a local cluster). Results come
back to the client, which writes one submission or one copick write. A run that fails is reported
and the others kept; a run whose worker dies is retried on another worker by Dask and reported
as failed once its retries are spent (``allowed_failures``), never silently lost.

The weights and tomograms must be readable at the same paths on every worker (a shared
filesystem, or the shipped model that every install carries).
"""
from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm.auto import tqdm

from .errors import CziiInputError

#: Seconds a client waits for a scheduler to answer before giving up.
DEFAULT_CONNECT_TIMEOUT_S = 10.0

_MODELS: dict = {}  # (weights, backend, device) -> model: one per worker process, loaded once
_MODELS_LOCK = threading.Lock()


def _distributed():
    try:
        import distributed
    except ImportError:
        raise CziiInputError(None, "--scheduler / --workers need Dask: "
                                   "pip install 'czii_kaggle[distributed]'") from None
    return distributed


def connect(scheduler: str | None = None, n_workers: int | None = None,
            timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, allowed_failures: int | None = None):
    """A Dask client: to the scheduler at ``scheduler``, or to a new local cluster of ``n_workers``
    processes (one thread each). Returns ``(client, cluster)``, ``cluster`` None for a remote one.

    A scheduler that does not answer within ``timeout_s`` raises :class:`CziiInputError`.
    ``allowed_failures`` (local cluster only): how often a task may lose its worker before it is
    reported as failed (Dask's default: 3).
    """
    distributed = _distributed()
    import dask

    if (scheduler is None) == (n_workers is None):
        raise ValueError("give exactly one of scheduler and n_workers")
    if scheduler is not None:
        failure = ""
        try:
            client = distributed.Client(scheduler, timeout=timeout_s, set_as_default=False)
        except ValueError as exc:
            failure = f"{scheduler!r} is not a Dask scheduler address ({exc})"
        except (OSError, TimeoutError) as exc:
            failure = (f"Dask scheduler {scheduler} did not answer within {timeout_s:g} s "
                       f"({type(exc).__name__}); start one with `dask scheduler`")
        if failure:
            # The half-made Client closes in its __del__: let it do so here, once the exception that
            # held it is gone, not at a later garbage collection that may fall inside another event
            # loop's start (a deadlock in distributed's LoopRunner).
            gc.collect()
            raise CziiInputError(None, failure)
        try:
            client.wait_for_workers(1, timeout=timeout_s)
        except (OSError, TimeoutError):
            client.close()
            raise CziiInputError(None, f"Dask scheduler {scheduler} has no worker after {timeout_s:g} s; "
                                       f"start some with `dask worker {scheduler}`") from None
        return client, None
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, not {n_workers}")
    extra = {} if allowed_failures is None else {"distributed.scheduler.allowed-failures": allowed_failures}
    with dask.config.set(extra):
        cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
    return distributed.Client(cluster, set_as_default=False), cluster


def _worker_identity() -> tuple[str, str]:
    """``(worker name, device)`` of the calling Dask worker (``cpu`` when it sees no GPU)."""
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        name = "0"
    import torch

    if not torch.cuda.is_available():
        return name, "cpu"
    count = torch.cuda.device_count()
    return name, f"cuda:{int(name) % count if name.isdigit() else 0}"


def _worker_cached(key: tuple, load: Callable, device: str, cpu_threads: int | None):
    """``load()`` once per worker process and ``key``, kept for every later task (CPU threads set first)."""
    with _MODELS_LOCK:
        if key not in _MODELS:
            if device == "cpu":
                from . import offline

                offline.set_cpu_threads(cpu_threads)
            _MODELS[key] = load()
        return _MODELS[key]


def worker_model(bundle, backend: str, device: str, cpu_threads: int | None = None):
    """The model of ``bundle`` for this worker process, loaded on first use and kept."""
    from .detectors.yolo import load_yolo

    weights = (bundle.onnx or bundle.weights) if backend == "onnx" else bundle.weights
    return _worker_cached((str(weights), backend, device), lambda: load_yolo(bundle, backend), device, cpu_threads)


def worker_detectors(bundle_dir: str | Path, names: list[str], backend: str, device: str,
                     options: dict | None = None, cpu_threads: int | None = None) -> list:
    """The named detectors of the bundle folder ``bundle_dir`` on this worker's ``device``, opened on
    first use and kept (:func:`czii_kaggle.bundle.load_detectors`; ``options``: its ``tta_views``,
    ``bn_adapt``, ``precision``)."""
    from .bundle import load_detectors

    options = dict(options or {})
    key = ("detectors", str(bundle_dir), tuple(names), backend, device, tuple(sorted(options.items())))
    return _worker_cached(key, lambda: load_detectors(bundle_dir, list(names), backend, device=device, **options),
                          device, cpu_threads)


def predict_task(run: str, zarr_path: str | Path, bundle, backend: str = "auto",
                 cpu_threads: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """One tomogram on the calling worker: ``(detections, picks or None, report row)``.

    Runs as :func:`czii_kaggle.predict.predict_runs` does for one run (read, preprocess,
    detect, aggregate); an error in the run becomes a ``failed`` row, not an exception.
    """
    from .detect import empty_detections
    from .detectors.yolo import choose_backend, predict_one

    t0 = time.perf_counter()
    worker, device = _worker_identity()
    used = choose_backend(bundle, backend, [device])
    device = "cpu" if used == "onnx" else device
    try:
        model = worker_model(bundle, used, device, cpu_threads)
        model_s = time.perf_counter() - t0  # ~0 unless this task loaded the worker's model
        dets, found, times = predict_one(model, zarr_path, run, bundle, device, progress=False)
        info = {"status": "ok", "error": "", **times, "model_s": model_s}
    except Exception as exc:  # noqa: BLE001 - one bad run must not lose the others
        msg = str(exc) if isinstance(exc, ValueError) else traceback.format_exc(limit=3)
        dets, found, info = empty_detections(), None, {"status": "failed", "error": msg.strip()}
    info.update(total_s=time.perf_counter() - t0, backend=used, device=device, worker=worker)
    return dets, found, info


def detectors_task(run: str, zarr_path: str | Path, bundle_dir: str | Path, names: list[str],
                   backend: str = "auto", options: dict | None = None,
                   cpu_threads: int | None = None) -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """One tomogram through the named detectors on the calling worker: ``({detector: unthresholded
    candidates}, report rows)`` (:func:`czii_kaggle.detectors.candidates_of_run`); each row adds the
    ``worker`` and ``model_s``, the seconds the task spent getting the worker's detectors (opening them
    the first time, about 0 after). A detector that fails on the run is a ``failed`` row."""
    from .detectors import candidates_of_run

    t0 = time.perf_counter()
    worker, device = _worker_identity()
    dets = worker_detectors(bundle_dir, names, backend, device, options, cpu_threads)
    model_s = time.perf_counter() - t0
    cands, rows = candidates_of_run(dets, run, zarr_path)
    return cands, [{**r, "worker": worker, "model_s": model_s} for r in rows]


def run_tasks(client, fn: Callable, args: dict[str, tuple], progress: bool = True,
              desc: str = "runs") -> dict[str, tuple[object, str]]:
    """Run ``fn(*args[key])`` for every key, one task each, at most one per worker thread at a time.

    Returns ``{key: (result, "")}`` or ``{key: (None, error)}``: a task that raised, or whose
    worker died more often than the scheduler allows (Dask's ``KilledWorker``; Dask reruns it on
    another worker until then), is reported with its error, and the other tasks' results are kept.
    Tasks are handed out only as threads free up, because Dask counts a worker's death against
    every task that worker holds: so only the run it was busy with is ever charged, never a
    queued one. Each result is released from the cluster once fetched.
    """
    distributed = _distributed()
    token = uuid.uuid4().hex[:8]
    slots = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
    pending = list(args.items())
    futures: dict = {}
    done = distributed.as_completed(loop=client.loop)

    def submit_next() -> None:
        key, a = pending.pop(0)
        fut = client.submit(fn, *a, key=f"czii-{key}-{token}", pure=False)
        futures[fut] = key
        done.add(fut)

    for _ in range(min(slots, len(pending))):
        submit_next()
    out: dict[str, tuple[object, str]] = {}
    bar = tqdm(total=len(args), desc=desc, unit="run", disable=not progress)
    for fut in done:
        key = futures.pop(fut)
        try:
            out[key] = (fut.result(), "")
        except distributed.KilledWorker as exc:
            out[key] = (None, f"its worker died while running it, on every retry ({exc})")
        except Exception as exc:  # noqa: BLE001 - reported per task, the others are kept
            out[key] = (None, f"{type(exc).__name__}: {exc}")
        fut.release()
        if out[key][1]:
            tqdm.write(f"[czii_kaggle] run {key} failed: {out[key][1].splitlines()[0]}")
        bar.update(1)
        if pending:
            submit_next()
    bar.close()
    return out


def predict_runs_dask(tomograms: dict[str, str | Path], bundle=None, scheduler: str | None = None,
                      n_workers: int | None = None, backend: str = "auto", progress: bool = True,
                      timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, cpu_threads: int | None = None,
                      allowed_failures: int | None = None):
    """Predict ``{run: zarr path}`` on a Dask cluster, one task per tomogram.

    Parameters
    ----------
    bundle : Bundle, path or None
        As for :func:`czii_kaggle.predict.predict_runs` (``None``: the shipped model).
    scheduler, n_workers :
        An existing scheduler's address, or the size of a local cluster to start (and stop).
    cpu_threads : int, optional
        Torch threads per CPU worker; default: the machine's CPUs shared by the local
        cluster's workers, or all of them on a remote worker.

    Returns
    -------
    :class:`czii_kaggle.predict.Prediction`, runs in the order of ``tomograms``; ``worker``
    is the Dask worker's name; an extra report column ``model_s`` is the time the task spent
    getting its worker's model (loading it the first time, about 0 after).
    """
    from .aggregate import empty_candidates
    from .detect import empty_detections
    from .bundle import Bundle, load_bundle
    from .predict import REPORT_COLUMNS, Prediction

    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    runs = list(tomograms)
    cpu_threads = _cpu_threads(cpu_threads, n_workers)
    args = {run: (run, str(tomograms[run]), bundle, backend, cpu_threads) for run in runs}
    results = _on_cluster(predict_task, args, scheduler, n_workers, timeout_s, allowed_failures, progress)
    rows, picks, dets = [], [], []
    for run in runs:
        value, error = results[run]
        if value is None:
            rows.append({"experiment": run, "status": "failed", "n_detections": 0, "n_picks": 0, "error": error})
            continue
        d, found, info = value
        rows.append({"experiment": run, "n_detections": len(d), "n_picks": 0 if found is None else len(found), **info})
        if found is not None and len(found):
            picks.append(found)
        if len(d):
            dets.append(d)
    return Prediction(
        picks=pd.concat(picks, ignore_index=True) if picks else empty_candidates(),
        detections=pd.concat(dets, ignore_index=True) if dets else empty_detections(),
        report=pd.DataFrame(rows).reindex(columns=[*REPORT_COLUMNS, "model_s"]),
    )


def _cpu_threads(cpu_threads: int | None, n_workers: int | None) -> int | None:
    """Torch threads per CPU worker: as given, else the machine's CPUs shared by a local cluster's workers."""
    if cpu_threads is None and n_workers:
        import os

        return max(1, len(os.sched_getaffinity(0)) // n_workers)
    return cpu_threads


def _on_cluster(fn: Callable, args: dict[str, tuple], scheduler: str | None, n_workers: int | None,
                timeout_s: float, allowed_failures: int | None, progress: bool) -> dict[str, tuple[object, str]]:
    """:func:`run_tasks` on the cluster :func:`connect` gives, closed (a local one stopped) after."""
    client, cluster = connect(scheduler, n_workers, timeout_s, allowed_failures)
    try:
        return run_tasks(client, fn, args, progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_candidates_dask(tomograms: dict[str, str | Path], bundle_dir: str | Path, names: list[str],
                        backend: str = "auto", options: dict | None = None, scheduler: str | None = None,
                        n_workers: int | None = None, progress: bool = True,
                        timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, cpu_threads: int | None = None,
                        allowed_failures: int | None = None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The named detectors of a bundle folder over ``{run: zarr path}`` on a Dask cluster, one task per
    tomogram with every detector (:func:`detectors_task`; each worker opens the detectors once):
    ``({detector: unthresholded candidates}, report)`` as :func:`czii_kaggle.detectors.run_candidates`
    gives them, the report with each row's ``worker`` and ``model_s``. A run whose task failed or whose
    worker died on every retry is a ``failed`` row for every detector; the other runs are kept. The
    ensemble and the selection are the caller's (:func:`czii_kaggle.predict.predict_detectors`)."""
    from .aggregate import empty_candidates

    args = {run: (run, str(path), str(bundle_dir), list(names), backend, dict(options or {}),
                  _cpu_threads(cpu_threads, n_workers)) for run, path in tomograms.items()}
    results = _on_cluster(detectors_task, args, scheduler, n_workers, timeout_s, allowed_failures, progress)
    found: dict[str, list[pd.DataFrame]] = {n: [] for n in names}
    rows: list[dict] = []
    for run in tomograms:
        value, error = results[run]
        if value is None:
            rows += [{"experiment": run, "detector": n, "status": "failed", "n_candidates": 0, "seconds": 0.0,
                      "error": error} for n in names]
            continue
        cands, more = value
        for n, c in cands.items():
            if len(c):
                found[n].append(c)
        rows += more
    return {n: pd.concat(v, ignore_index=True) if v else empty_candidates() for n, v in found.items()}, pd.DataFrame(rows)
