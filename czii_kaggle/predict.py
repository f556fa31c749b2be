"""The prediction pipeline: runs of a Kaggle-layout root -> particles -> submission.

This module schedules runs; what happens to one run is the detectors' (:mod:`czii_kaggle.detectors`),
what a model is, the bundle's (:mod:`czii_kaggle.bundle`).
:func:`predict_runs`: the YOLO detector (read zarr -> preprocess -> YOLO per slice -> 3D
aggregation -> thresholds + NMS; :mod:`czii_kaggle.detectors.yolo`) over runs and devices;
:func:`predict_detectors`: any of a bundle's detectors, alone or as their ensemble.
A run that fails (bad zarr, NaNs everywhere, ...) is reported and skipped; the
other runs' predictions are kept, and :func:`run_problems` says which runs failed or
found nothing, and why. On GPUs the runs are shared out over every usable device (one
model per device, one worker thread each; a GPU the installed torch cannot run is left
out); on CPU every core serves one run at a time. Each worker reads and preprocesses
the next run in a thread of its own while its model works on the current one.
"""
from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import layout, outputs, particles, runtime
from .aggregate import aggregate, empty_candidates
from .bundle import (DEFAULT_BUNDLE, ENSEMBLE_FILE, Bundle, bundle_files, load_bundle,
                     ensemble_of, load_detectors, load_ensembles, parse_detectors)
from .detect import empty_detections
from .detectors import DetectorsPrediction, run_candidates, select_picks
from .detectors.yolo import choose_backend, detect_prepared, load_yolo, prepare_run
from .errors import CziiInputError, CziiRunError
from .submission import write_submission


#: Columns of :attr:`Prediction.report`.
REPORT_COLUMNS = ["experiment", "status", "backend", "device", "worker", "n_detections", "n_picks", "read_s",
                  "preprocess_s", "wait_s", "inference_s", "aggregate_s", "total_s", "slice_step_A", "error"]


@dataclass
class Prediction:
    """What :func:`predict_runs` returns.

    picks : DataFrame ``experiment, particle_type, x, y, z, score, n_slices, share`` (Angstrom).
    detections : raw per-slice detections of every run.
    report : one row per run, :data:`REPORT_COLUMNS`: ``status`` ok / failed (``error`` says
        why), the device and worker that ran it, raw detections and picks found, seconds per
        stage (``wait_s``: how long the model waited for this run's data; the other stages of
        one worker overlap when runs are prefetched) and ``total_s``, their sum without the wait.
    wall_s : seconds from the first read to the last run's end.
    notes : lines about the devices (GPUs left out, CPU time estimate).
    inputs : the data root and the bundle's files: never to be written to.
    """

    picks: pd.DataFrame
    detections: pd.DataFrame
    report: pd.DataFrame
    wall_s: float = float("nan")
    notes: list[str] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)


def select_runs(root: str | Path | None, split: str, runs: list[str] | None = None,
                tomograms: dict[str, str | Path] | None = None) -> list[str]:
    """``runs`` (each once, in order), checked against the runs of ``split`` under ``root``, or against
    the keys of ``tomograms`` (``{run: zarr path}``) where given; every run there when ``None``. An
    unknown name is a :class:`CziiInputError` naming it."""
    if tomograms is not None:
        runs = list(dict.fromkeys(runs if runs is not None else tomograms))
        unknown = [r for r in runs if r not in tomograms]
        if unknown:
            raise CziiInputError(None, f"no tomogram given for run(s) {', '.join(map(repr, unknown))}")
        return runs
    available = layout.list_runs(root, split)
    if runs is None:
        return available
    runs = list(dict.fromkeys(runs))
    unknown = [r for r in runs if r not in set(available)]
    if unknown:
        shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
        raise CziiInputError(layout.runs_dir(root, split),
                             f"no run named {', '.join(map(repr, unknown))} in the {split!r} split "
                             f"(its {len(available)} run(s): {shown}); check the run names")
    if not runs:
        raise CziiInputError(layout.runs_dir(root, split), "no run selected (an empty run list)")
    return runs


def _one_line(error: str) -> str:
    """The line of an error text that says what went wrong (a traceback's last line)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1].strip() if lines[0].startswith("Traceback") else lines[0].strip()


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, (CziiInputError, ValueError)):
        return str(exc).strip()
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=3)).strip()


def predict_runs(
    root: str | Path,
    split: str = "test",
    runs: list[str] | None = None,
    bundle: Bundle | str | Path | None = None,
    devices: list[str] | None = None,
    tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE,
    progress: bool = True,
    backend: str = "auto",
    prefetch: int = 1,
    tomograms: dict[str, str | Path] | None = None,
) -> Prediction:
    """Predict every run of ``split`` under a Kaggle-layout ``root``.

    Parameters
    ----------
    runs : list of str, optional
        Run names (default: all of ``split``); an unknown name stops before anything runs.
    bundle : Bundle, path or None
        The model bundle; ``None``: the shipped default.
    devices : list of str
        Devices to share the runs over, one worker thread with its own model each
        (a device named twice gets two workers); default: every GPU the installed torch
        can run (:func:`czii_kaggle.runtime.plan_devices`), else the CPU.
    backend : ``"auto"``, ``"torch"`` or ``"onnx"``
        See :func:`choose_backend` (``"onnx"`` runs on the CPU).
    prefetch : int
        Runs each worker reads and preprocesses ahead, in a thread of its own, while its
        model works on the current one; 0 reads each run only when the model is free.
    tomograms : dict, optional
        ``{run: zarr path}`` read instead of the Kaggle layout (``root`` and ``split`` are then
        unused; ``runs`` defaults to its keys), e.g. a copick project's
        (:func:`czii_kaggle.copick_project.tomogram_sources`).
    """
    runs = select_runs(root, split, runs, tomograms)
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, not {prefetch}")
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    notes: list[str] = []
    if devices is None:
        plan = runtime.plan_devices()
        devices, notes = plan.devices, runtime.describe_plan(plan, len(runs))
        for line in notes if (progress or plan.left_out) else []:
            tqdm.write(f"[czii_kaggle] {line}")
    devices = list(devices)
    backend = choose_backend(bundle, backend, devices)
    on_cpu = all(d == "cpu" for d in devices)
    if backend == "onnx" and not on_cpu:
        devices, on_cpu = ["cpu"], True
    if on_cpu:
        from . import offline

        offline.set_cpu_threads()
    models = [load_yolo(bundle, backend) for _ in devices]  # one model per worker, never shared between threads
    todo: queue.Queue = queue.Queue()
    for run in runs:
        todo.put(run)
    results: dict[str, tuple] = {}
    bar = tqdm(total=len(runs), desc="runs", unit="run", disable=not progress)
    lock = threading.Lock()

    def next_prepared():
        """The next run's name, prepared volume, voxel size, stage times and error; None when done."""
        try:
            run = todo.get_nowait()
        except queue.Empty:
            return None
        try:
            return (run, *prepare_run(layout.run_tomogram(root, split, run, tomo_type, tomograms), bundle), None)
        except Exception as exc:  # noqa: BLE001 - one bad run must not lose the others
            return run, None, None, {}, exc

    def prefetcher(ready: queue.Queue) -> None:
        while True:
            item = next_prepared()
            ready.put(item)
            if item is None:
                return

    def worker(i: int) -> None:
        device = devices[i]
        if prefetch:
            ready: queue.Queue = queue.Queue(maxsize=prefetch)
            threading.Thread(target=prefetcher, args=(ready,), daemon=True).start()
            get_next = ready.get
        else:
            get_next = next_prepared
        while True:
            t_wait = time.perf_counter()
            item = get_next()
            if item is None:
                return
            waited = time.perf_counter() - t_wait
            run, vol_u8, voxel_size_A, times, error = item
            item = None
            dets, found = empty_detections(), None
            if error is None:
                try:
                    dets, found, more = detect_prepared(models[i], vol_u8, voxel_size_A, run, bundle, device,
                                                        progress and len(devices) == 1)
                    times.update(more)
                except Exception as exc:  # noqa: BLE001 - one bad run must not lose the others
                    error, dets = exc, empty_detections()
            vol_u8 = None
            row = {"status": "ok", "error": "", **times}
            if error is not None:
                row.update(status="failed", error=_error_text(error))
                tqdm.write(f"[czii_kaggle] run {run} failed and is skipped: {_one_line(row['error'])}")
            stages = [times.get(k, 0.0) for k in ("read_s", "preprocess_s", "inference_s", "aggregate_s")]
            row.update(wait_s=waited, total_s=sum(stages), backend=backend, device=device, worker=i,
                       n_detections=len(dets), n_picks=0 if found is None else len(found))
            with lock:
                results[run] = (dets, found, row)
                bar.update(1)

    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # short waits: Ctrl-C reaches the main thread even when the signal
            t.join(0.2)      # lands on a worker thread
    wall_s = time.perf_counter() - t_start
    bar.close()
    picks = [results[r][1] for r in runs if results[r][1] is not None and len(results[r][1])]
    dets = [results[r][0] for r in runs if len(results[r][0])]
    report = pd.DataFrame([{"experiment": r, **results[r][2]} for r in runs]).reindex(columns=REPORT_COLUMNS)
    return Prediction(
        picks=pd.concat(picks, ignore_index=True) if picks else empty_candidates(),
        detections=pd.concat(dets, ignore_index=True) if dets else empty_detections(),
        report=report,
        wall_s=wall_s,
        notes=notes,
        inputs=[*([Path(root)] if root is not None else map(Path, tomograms.values())), *bundle_files(bundle)],
    )


def stage_times(pred: Prediction) -> dict:
    """Seconds per stage summed over the runs, wall time, seconds per run, and the share of the
    models' time spent waiting for data (``wait_share``: waits / (waits + inference + aggregation))."""
    rep = pred.report
    sums = {k: float(rep[k].fillna(0).sum()) for k in ("read_s", "preprocess_s", "wait_s", "inference_s",
                                                        "aggregate_s")}
    busy = sums["wait_s"] + sums["inference_s"] + sums["aggregate_s"]
    return {"runs": len(rep), "wall_s": pred.wall_s, "wall_s_per_run": pred.wall_s / max(1, len(rep)), **sums,
            "wait_share": sums["wait_s"] / busy if busy > 0 else float("nan")}


def stage_line(pred: Prediction) -> str:
    """One line: runs predicted, wall time, each stage's mean seconds per run, the models' wait share."""
    t, rep = stage_times(pred), pred.report
    n = max(1, t["runs"])
    stages = ", ".join(f"{k[:-2]} {t[k] / n:.1f}" for k in ("read_s", "preprocess_s", "inference_s", "aggregate_s"))
    return (f"{int((rep['status'] == 'ok').sum())}/{len(rep)} runs predicted in {t['wall_s']:.1f} s "
            f"({t['wall_s_per_run']:.1f} s per run; per run {stages} s); the model waited for data "
            f"{100 * t['wait_share']:.0f}% of its time")


def run_problems(report: pd.DataFrame) -> pd.DataFrame:
    """The runs that failed or gave no pick, each with one line saying why.

    Returns a DataFrame ``experiment, problem`` (empty when every run gave picks).
    """
    rows = []
    for r in report.itertuples(index=False):
        if r.status != "ok":
            rows.append((r.experiment, f"failed: {_one_line(r.error)}"))
        elif not r.n_picks:
            why = ("the model found nothing in any slice (a blank tomogram, or one unlike the training data?)"
                   if not r.n_detections else
                   f"{int(r.n_detections)} slice detections, none passed the bundle's thresholds")
            rows.append((r.experiment, f"no picks: {why}"))
    return pd.DataFrame(rows, columns=["experiment", "problem"])


def raise_on_problems(report: pd.DataFrame, allow: bool = False) -> pd.DataFrame:
    """Raise :class:`CziiRunError` when a run failed or gave no pick, unless ``allow``.

    Returns :func:`run_problems` of ``report``.
    """
    problems = run_problems(report)
    if len(problems) and not allow:
        names = ", ".join(problems["experiment"].astype(str)[:5]) + (", ..." if len(problems) > 5 else "")
        raise CziiRunError(f"{len(problems)} of {len(report)} run(s) failed or gave no picks ({names}; first: "
                           f"{problems['problem'].iloc[0]}); fix the input, or set allow_failed_runs = True "
                           "to submit the other runs")
    return problems


def check_outputs(outputs: list[str | Path | None], inputs: list[str | Path]) -> None:
    """Refuse output paths that are an input, lie inside an input folder, are folders, or
    are given twice: a :class:`CziiInputError` naming the output. ``None`` entries are skipped."""
    seen: dict[Path, Path] = {}
    resolved_inputs = [(Path(p), Path(p).resolve()) for p in inputs]
    for out in outputs:
        if out is None:
            continue
        target = Path(out).resolve()
        for given, inp in resolved_inputs:
            if target == inp or inp in target.parents:
                where = "is" if target == inp else f"is inside {given}:"
                raise CziiInputError(out, f"{where} an input of this prediction; outputs are never written "
                                          "over or among the inputs: choose another path")
        if target.is_dir():
            raise CziiInputError(out, "is a folder: give a file name for the output")
        if target in seen:
            raise CziiInputError(out, f"is given as two outputs (also as {seen[target]}): "
                                      "give each output its own path")
        seen[target] = Path(out)


def write_prediction(pred: Prediction, out: str | Path, detections_out: str | Path | None = None) -> pd.DataFrame:
    """Write the submission (scored types only) of the runs that succeeded, and the raw
    detections when ``detections_out`` is given; returns the submission written.

    Raises :class:`CziiInputError`, writing nothing, when an output is an input of the
    prediction (:func:`check_outputs`), when every run failed, or when the result holds no
    pick and the file exists already: an empty result never replaces an output.
    """
    out = Path(out)
    check_outputs([out, detections_out], pred.inputs)
    report = pred.report
    ok = report["status"] == "ok"
    if not ok.any():
        first = report.iloc[0]
        raise CziiInputError(out, f"not written: every run failed ({len(report)}; {first['experiment']}: "
                                  f"{_one_line(first['error'])}); fix the input named there and run again")
    picks = scored_only(pred.picks)
    for path, rows in ((out, picks), (detections_out, pred.detections)):
        if path is not None and len(rows) == 0 and Path(path).exists():
            raise CziiInputError(path, "kept as it was: this prediction found no particle at all, and an empty "
                                       "result never replaces an existing file (see the run report)")
    sub = write_submission(picks, out)
    if detections_out is not None:
        with outputs.atomic_path(detections_out) as tmp:
            pred.detections.to_csv(tmp, index=False)
    return sub


def scored_only(picks: pd.DataFrame) -> pd.DataFrame:
    """The picks of scored particle types (beta-amylase is detected, never submitted)."""
    return picks[picks["particle_type"].isin(particles.SCORED)].reset_index(drop=True)


def predict_detectors(root: str | Path, split: str = "test", runs: list[str] | None = None,
                      bundle_dir: str | Path | None = None, detectors: list[str] | None = None,
                      backend: str = "auto", progress: bool = True,
                      tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE, tta_views: int | None = None,
                      bn_adapt: float | None = None, precision: str | None = None,
                      tomograms: dict[str, str | Path] | None = None, scheduler: str | None = None,
                      n_workers: int | None = None, connect_timeout_s: float = 10.0) -> DetectorsPrediction:
    """Predict runs with any of a bundle's detectors: one (its own thresholds) or several (the
    bundle's ensemble); ``detectors`` default: what the bundle ships (:func:`czii_kaggle.bundle.default_detectors`).
    ``tta_views``, ``bn_adapt``, ``precision``: as :func:`czii_kaggle.bundle.load_detectors`. ``tomograms``:
    ``{run: zarr path}`` predicted instead of the runs of ``root`` (a copick project's; ``root`` unused).
    ``scheduler`` (a Dask scheduler's address) or ``n_workers`` (a local Dask cluster of that many
    processes): the detectors run there, one task per tomogram with all of them
    (:func:`czii_kaggle.distributed.run_candidates_dask`; the report adds each run's ``worker`` and
    ``model_s``), and the ensemble is fitted here, as in one process.

    A run that fails in one detector is reported (a ``failed`` row of the report) and the
    ensemble of the detectors that succeeded on it, where the bundle holds one fitted, else the
    selection of a detector that succeeded, is used (:func:`czii_kaggle.detectors.select_picks`).
    YOLO's candidates come through :func:`predict_runs` (the next run read while the model works,
    one worker per device), the other detectors' run by run (:func:`czii_kaggle.detectors.run_candidates`).
    """
    bundle_dir = Path(bundle_dir) if bundle_dir is not None else DEFAULT_BUNDLE
    names = parse_detectors(None if detectors is None else ",".join(detectors), bundle_dir)
    ensemble, ensembles = None, []
    if len(names) > 1:
        ensembles = load_ensembles(bundle_dir)
        ensemble = ensemble_of(ensembles, names)
        if ensemble is None:
            fitted = "; ".join("+".join(e.detectors) for e in ensembles) or "none"
            raise CziiInputError(Path(bundle_dir) / ENSEMBLE_FILE,
                                 f"no ensemble of {', '.join(names)} fitted in this bundle (it holds: {fitted}; "
                                 f"run `czii-kaggle tune-ensemble --detectors {','.join(names)}`)")
    on_dask = scheduler is not None or n_workers is not None
    # on Dask, opened here (on the CPU) for their selections only, and to refuse a bad bundle before the cluster
    dets = load_detectors(bundle_dir, names, backend, tta_views, bn_adapt, precision, "cpu" if on_dask else None)
    # a run that fails in some detector: the ensemble of those that succeeded on it, where one is fitted
    fallbacks = [e for e in ensembles if set(e.detectors) < set(names)] if ensemble else []
    runs = select_runs(root, split, runs, tomograms)
    if on_dask:
        from .distributed import run_candidates_dask

        paths = {r: layout.run_tomogram(root, split, r, tomo_type, tomograms) for r in runs}
        options = {k: v for k, v in (("tta_views", tta_views), ("bn_adapt", bn_adapt), ("precision", precision))
                   if v is not None}
        cands, report = run_candidates_dask(paths, bundle_dir, names, backend, options, scheduler, n_workers,
                                            progress, connect_timeout_s)
        return DetectorsPrediction(select_picks(cands, report, dets, runs, ensemble, fallbacks), cands, report)
    others = [d for d in dets if d.name != "yolo"]
    cands, report = run_candidates(others, root, split, runs, tomo_type, progress, tomograms=tomograms)
    yolo = next((d for d in dets if d.name == "yolo"), None)
    if yolo is not None:  # through predict_runs: the next run read while the model works, every device used
        cands["yolo"], yolo_pred = yolo_run_candidates(root, split, runs, yolo.bundle, backend, tomo_type, progress,
                                                       tomograms=tomograms)
        yolo_report = _yolo_report(yolo_pred, cands["yolo"])
        order = {n: i for i, n in enumerate(names)}
        report = pd.concat([yolo_report, report], ignore_index=True)
        report = report.sort_values(["experiment", "detector"], key=lambda c: c.map(
            {r: i for i, r in enumerate(runs)} if c.name == "experiment" else order), kind="stable")
        report = report.reset_index(drop=True)
    return DetectorsPrediction(select_picks(cands, report, dets, runs, ensemble, fallbacks), cands, report)


def yolo_run_candidates(root: str | Path | None, split: str, runs: list[str] | None, bundle: Bundle,
                        backend: str = "auto", tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE, progress: bool = False,
                        devices: list[str] | None = None,
                        tomograms: dict[str, str | Path] | None = None) -> tuple[pd.DataFrame, Prediction]:
    """The YOLO bundle's unthresholded 3D candidates of every run that succeeded, each aggregated with
    its own slice spacing, through :func:`predict_runs` (prefetch, one worker per device); and that
    prediction (its report says which runs failed and why)."""
    pred = predict_runs(root, split, runs=runs, bundle=bundle, devices=devices, backend=backend,
                        tomo_type=tomo_type, progress=progress, tomograms=tomograms)
    by_run = dict(tuple(pred.detections.groupby("experiment", sort=False))) if len(pred.detections) else {}
    ok = pred.report[pred.report["status"] == "ok"]
    found = [aggregate(by_run.get(run, empty_detections()), bundle.aggregate, apply_thresholds=False,
                       slice_step_A=step) for run, step in zip(ok["experiment"], ok["slice_step_A"])]
    return (pd.concat(found, ignore_index=True) if found else empty_candidates()), pred


def _yolo_report(pred: Prediction, candidates: pd.DataFrame) -> pd.DataFrame:
    """YOLO's rows of :class:`~czii_kaggle.detectors.DetectorsPrediction`'s report, from its prediction."""
    counts = candidates["experiment"].value_counts()
    rows = []
    for rep in pred.report.itertuples(index=False):
        ok = rep.status == "ok"
        stages = {k: float(getattr(rep, k)) for k in ("read_s", "preprocess_s", "inference_s", "aggregate_s")
                  if ok and pd.notna(getattr(rep, k))}
        rows.append({"experiment": rep.experiment, "detector": "yolo", "status": "ok" if ok else "failed",
                     "backend": rep.backend, "device": rep.device,
                     "n_candidates": int(counts.get(rep.experiment, 0)) if ok else 0, **stages,
                     "seconds": float(rep.total_s) if pd.notna(rep.total_s) else 0.0,
                     "error": "" if ok else str(rep.error)})
    return pd.DataFrame(rows)
