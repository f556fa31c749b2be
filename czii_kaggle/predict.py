"""The prediction pipeline: runs of a Kaggle-layout root -> particles -> submission.

read zarr -> preprocess -> YOLO per slice -> 3D aggregation -> thresholds + NMS.
A run that fails (bad zarr, NaNs everywhere, ...) is reported and skipped; the
other runs' predictions are kept, and :func:`run_problems` says which runs failed or
found nothing, and why. On GPUs the runs are shared out over every usable device (one
model per device, one worker thread each; a GPU the installed torch cannot run is left
out); on CPU every core serves one run at a time. Each worker reads and preprocesses
the next run in a thread of its own while its model works on the current one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import omezarr, layout, outputs, particles, picks as picks_io, runtime
from .aggregate import AggregateConfig, aggregate, empty_candidates
from .detect import (BACKENDS, DetectConfig, detect_volume, empty_detections, export_onnx, load_model,
                     onnxruntime_available)
from .errors import CziiInputError, CziiRunError
from .preprocess import PreprocessConfig, preprocess_volume
from .submission import write_submission
from .train import CONFIG_FILE, MODEL_FILE
from .tune import tune_thresholds

#: The shipped model bundle (weights + the configs it was trained and tuned with).
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models"
#: ONNX Runtime copy of a bundle's ``model.pt`` (:func:`export_bundle_onnx`).
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class Bundle:
    """A trained model and the configs that go with it.

    ``weights``: the YOLO ``.pt``; the configs are read from ``czii_config.json`` beside it
    (keys ``preprocess``, ``detect``, ``aggregate``), defaults where a key is absent.
    ``onnx``: the ONNX Runtime copy of ``weights`` when the bundle holds one made from
    these very weights (``czii_config.json`` key ``onnx`` records their sha256), else None.
    """

    weights: Path
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    onnx: Path | None = None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _matching_onnx(weights: Path, record: dict | None) -> Path | None:
    """The bundle's ONNX file when ``record`` (``czii_config.json``'s ``onnx``) says it was
    exported from ``weights`` as they are now; a stale copy is ignored with a warning."""
    if not record or record.get("source", weights.name) != weights.name:  # no copy, or another file's copy
        return None
    path = weights.parent / str(record.get("file", ONNX_FILE))
    if not path.is_file():
        return None
    if record.get("source_sha256") != file_sha256(weights):
        warnings.warn(f"{path} was exported from other weights than {weights.name} (sha256 differs); "
                      "it is not used: re-export it with `czii-kaggle export-onnx`", RuntimeWarning, stacklevel=3)
        return None
    return path


def load_bundle(path: str | Path | None = None) -> Bundle:
    """Load a bundle from a folder (``model.pt`` + ``czii_config.json``), a ``.pt`` file or an
    ``.onnx`` file (run by ONNX Runtime); the configs come from ``czii_config.json`` beside it.

    ``None`` loads the shipped default bundle.
    """
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    weights = path / MODEL_FILE if path.is_dir() else path
    if not weights.is_file():
        raise CziiInputError(weights, "weights file not found (pass --weights, or reinstall czii_kaggle for the shipped model)")
    cfg_path = weights.parent / CONFIG_FILE
    cfg = {}
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise CziiInputError(cfg_path, f"not valid JSON ({exc})") from None
        if not isinstance(cfg, dict):
            raise CziiInputError(cfg_path, f"holds a {type(cfg).__name__}, not an object of settings")
        for key in ("preprocess", "detect", "aggregate"):
            if key in cfg and not isinstance(cfg[key], dict):
                raise CziiInputError(cfg_path, f"{key!r} is {cfg[key]!r}, not an object of settings")
    try:  # the config classes check every value
        configs = dict(
            preprocess=PreprocessConfig.from_dict(cfg["preprocess"]) if "preprocess" in cfg else PreprocessConfig(),
            detect=DetectConfig.from_dict(cfg["detect"]) if "detect" in cfg else DetectConfig(),
            aggregate=AggregateConfig.from_dict(cfg["aggregate"]) if "aggregate" in cfg else AggregateConfig(),
        )
    except (TypeError, ValueError) as exc:
        raise CziiInputError(cfg_path, f"invalid settings: {exc}") from None
    return Bundle(weights=weights, **configs,
                  onnx=weights if weights.suffix == ".onnx" else _matching_onnx(weights, cfg.get("onnx")))


def export_bundle_onnx(bundle_dir: str | Path | None = None, imgsz: int | None = None) -> Path:
    """Export a bundle's weights (its ``model.pt``, or the ``.pt`` file given) to ONNX, for
    ONNX Runtime on the CPU; returns the path of ``{weights stem}.onnx`` beside them.

    Only the copy of these very weights is replaced: the export is made in a temporary
    folder and renamed onto ``{stem}.onnx`` when complete, and the ``onnx`` record of the
    bundle's ``czii_config.json`` (file, sha256 of the ``.pt`` it came from, image size;
    :func:`load_bundle` uses the copy only while that sha256 matches) is written only when
    it is free or already describes these weights. Exporting ``other.pt`` beside
    ``model.pt`` thus writes ``other.onnx`` (run it with ``--weights other.onnx``) and
    leaves ``model.onnx`` and its record alone. ``imgsz`` defaults to the bundle's
    ``detect.max_imgsz``.
    """
    import shutil
    import tempfile

    path = Path(bundle_dir) if bundle_dir is not None else DEFAULT_BUNDLE
    bundle = load_bundle(path)
    weights = bundle.weights
    if weights.suffix != ".pt":
        raise CziiInputError(weights, "only a PyTorch .pt model can be exported to ONNX")
    imgsz = imgsz or bundle.detect.max_imgsz
    target = weights.with_suffix(".onnx")
    cfg_path = weights.parent / CONFIG_FILE
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    record = cfg.get("onnx") or {}
    owner = record.get("source", MODEL_FILE) if record else weights.name
    if owner != weights.name and record.get("file", ONNX_FILE) == target.name:
        raise CziiInputError(target, f"is the ONNX copy of {owner} (czii_config.json records it); exporting "
                                     f"{weights.name} would replace it: give {weights.name} another name")
    work = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=weights.parent))
    try:
        shutil.copy2(weights, work / weights.name)
        os.replace(export_onnx(work / weights.name, imgsz=imgsz), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if owner == weights.name:
        cfg["onnx"] = {"file": target.name, "source": weights.name, "source_sha256": file_sha256(weights),
                       "imgsz": imgsz, "dynamic": True}
        outputs.write_text(cfg_path, json.dumps(cfg, indent=2))
    return target


def choose_backend(bundle: Bundle, backend: str = "auto", devices: list[str] | None = None) -> str:
    """``"torch"`` or ``"onnx"``: how ``bundle`` runs on ``devices``.

    ``"auto"``: ONNX Runtime when every device is the CPU, the bundle holds an up-to-date
    ONNX copy and onnxruntime is installed (faster on CPU: see ``benchmarks/``); else torch.
    ``"onnx"`` insists (a clear error when it cannot), and always runs on the CPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if bundle.weights.suffix == ".onnx":  # given an ONNX file itself: nothing else to run
        if backend == "torch":
            raise CziiInputError(bundle.weights, "is an ONNX model: the torch backend needs the .pt weights")
        return "onnx"
    if backend == "torch":
        return "torch"
    if backend == "onnx":
        if bundle.onnx is None:
            raise CziiInputError(bundle.weights.parent / ONNX_FILE,
                                 f"no ONNX copy of {bundle.weights.name} made from these weights; "
                                 f"run `czii-kaggle export-onnx --weights {bundle.weights.parent}`")
        if not onnxruntime_available():
            raise CziiInputError(bundle.onnx, "the onnx backend needs onnxruntime, which is not installed")
        return "onnx"
    on_cpu = all(d == "cpu" for d in (devices or visible_devices()))
    return "onnx" if on_cpu and bundle.onnx is not None and onnxruntime_available() else "torch"


def with_slice_step(bundle: Bundle, slice_step: int) -> Bundle:
    """The bundle run on every ``slice_step``-th slice: faster, at some recall cost.

    Minimum slice supports were tuned with every slice, so they shrink by the same
    factor (rounded up, at least 1); scores already account for the step.
    """
    if slice_step < 1:
        raise ValueError(f"slice_step must be >= 1, not {slice_step}")
    old = bundle.detect.slice_step
    agg = bundle.aggregate
    for name in particles.NAMES:
        support = agg[name].min_support * old
        agg = agg.with_params(name, min_support=max(1, math.ceil(support / slice_step)))
    return replace(bundle, detect=replace(bundle.detect, slice_step=slice_step), aggregate=agg)


def with_tta(bundle: Bundle, tta_views: int) -> Bundle:
    """The bundle with ``tta_views`` test-time views per slice (see :class:`DetectConfig`).

    A bundle's thresholds fit the views it was tuned with (its ``czii_config.json``
    ``detect.tta_views``); more views raise the scores a little, so re-tune when it matters.
    """
    return replace(bundle, detect=replace(bundle.detect, tta_views=tta_views))


def visible_devices() -> list[str]:
    """Every usable CUDA device (``cuda:0``, ``cuda:1``...), else ``["cpu"]``; a GPU the installed
    torch cannot run is left out (:func:`czii_kaggle.runtime.plan_devices`)."""
    return runtime.plan_devices().devices


def prepare_run(zarr_path: str | Path, bundle: Bundle) -> tuple[np.ndarray, float, dict]:
    """Read and preprocess one tomogram: the uint8 volume ``(Z, Y, X)`` the model sees, the
    voxel size in Angstrom, and the seconds spent reading (``read_s``) and preprocessing."""
    t0 = time.perf_counter()
    volume, voxel_size_A = omezarr.read_tomogram(zarr_path)
    t1 = time.perf_counter()
    vol_u8 = preprocess_volume(volume, bundle.preprocess, source=zarr_path)
    return vol_u8, voxel_size_A, {"read_s": t1 - t0, "preprocess_s": time.perf_counter() - t1}


def infer_prepared(model, vol_u8: np.ndarray, voxel_size_A: float, experiment: str, bundle: Bundle,
                   device: str = "cpu", progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Raw per-slice detections of one prepared run (:func:`prepare_run`), with the seconds of
    inference (``inference_s``) and the slice spacing in Angstrom (``slice_step_A``)."""
    t0 = time.perf_counter()
    dets = detect_volume(model, vol_u8, voxel_size_A, experiment, bundle.detect, bundle.preprocess.slice_offset,
                         device, progress)
    return dets, {"inference_s": time.perf_counter() - t0, "slice_step_A": voxel_size_A * bundle.detect.slice_step}


def detect_run(model, zarr_path: str | Path, experiment: str, bundle: Bundle, device: str = "cpu",
               progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Raw detections of one tomogram (read, preprocessed, inferred), with each stage's seconds
    and ``slice_step_A``."""
    vol_u8, voxel_size_A, times = prepare_run(zarr_path, bundle)
    dets, more = infer_prepared(model, vol_u8, voxel_size_A, experiment, bundle, device, progress)
    return dets, {**times, **more}


def _aggregated(dets: pd.DataFrame, times: dict, bundle: Bundle) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``(dets, 3D picks, times + aggregate_s)``: the bundle's aggregation of one run's detections."""
    t0 = time.perf_counter()
    found = aggregate(dets, bundle.aggregate, slice_step_A=times["slice_step_A"])
    return dets, found, {**times, "aggregate_s": time.perf_counter() - t0}


def detect_prepared(model, vol_u8: np.ndarray, voxel_size_A: float, experiment: str, bundle: Bundle,
                    device: str = "cpu", progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Raw detections and 3D picks of one prepared run (:func:`prepare_run`), with the seconds
    of inference and aggregation and the slice spacing in Angstrom (``slice_step_A``)."""
    return _aggregated(*infer_prepared(model, vol_u8, voxel_size_A, experiment, bundle, device, progress), bundle)


def predict_one(model, zarr_path: str | Path, experiment: str, bundle: Bundle, device: str = "cpu",
                progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """One tomogram read, preprocessed, detected and aggregated: ``(detections, picks, stage seconds)``."""
    return _aggregated(*detect_run(model, zarr_path, experiment, bundle, device, progress), bundle)


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


def select_runs(root: str | Path, split: str, runs: list[str] | None = None) -> list[str]:
    """``runs`` (each once, in order), checked against the runs of ``split`` under ``root``;
    every run there when ``None``. An unknown name is a :class:`CziiInputError` naming it."""
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


def bundle_files(bundle: Bundle) -> list[Path]:
    """The files a bundle is made of (weights, configs, ONNX copy): inputs, never outputs."""
    files = [bundle.weights, bundle.weights.parent / CONFIG_FILE, bundle.weights.with_suffix(".onnx")]
    return files + ([bundle.onnx] if bundle.onnx is not None else [])


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
    if tomograms is not None:
        runs = list(dict.fromkeys(runs if runs is not None else tomograms))
        unknown = [r for r in runs if r not in tomograms]
        if unknown:
            raise CziiInputError(None, f"no tomogram given for run(s) {', '.join(map(repr, unknown))}")
    else:
        runs = select_runs(root, split, runs)
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
    weights = (bundle.onnx or bundle.weights) if backend == "onnx" else bundle.weights
    models = [load_model(weights) for _ in devices]  # one model per worker, never shared between threads
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
            path = tomograms[run] if tomograms is not None else layout.tomogram_path(root, split, run, tomo_type)
            return (run, *prepare_run(path, bundle), None)
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


def save_aggregate_config(bundle_dir: str | Path, config: AggregateConfig, detect: DetectConfig | None = None) -> Path:
    """Write ``config`` under the ``aggregate`` key of the bundle's ``czii_config.json``
    (and ``detect``, the inference settings the thresholds were tuned with, when given)."""
    path = Path(bundle_dir) / CONFIG_FILE
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    cfg["aggregate"] = config.to_dict()
    if detect is not None:
        cfg["detect"] = detect.to_dict()
    return outputs.write_text(path, json.dumps(cfg, indent=2))


def run_candidates(root: str | Path, runs: list[str], bundle: Bundle, devices: list[str] | None = None,
                   progress: bool = False, backend: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every 3D candidate (no threshold applied) of training ``runs`` predicted with ``bundle``, and the
    run report; a run that fails stops it (:class:`CziiInputError` naming the root and the runs)."""
    pred = predict_runs(root, "train", runs=runs, bundle=bundle, devices=devices, progress=progress, backend=backend)
    failed = pred.report[pred.report["status"] != "ok"]
    if len(failed):
        raise CziiInputError(Path(root), f"cannot tune: runs {list(failed['experiment'])} failed "
                                         f"({'; '.join(failed['error'].astype(str))})")
    candidates = aggregate(pred.detections, bundle.aggregate, apply_thresholds=False,
                           slice_step_A=pred.report["slice_step_A"].median())
    return candidates, pred.report


def tune_bundle(
    root: str | Path, runs: list[str], bundle_dir: str | Path, devices: list[str] | None = None,
    progress: bool = True, tta_views: int | None = None,
    more: list[tuple[str | Path, list[str]]] | None = None, backend: str = "auto",
) -> pd.DataFrame:
    """Tune a bundle's per-class thresholds on training runs with picks; save them beside the weights.

    Predicts ``runs`` of the ``train`` split, keeps every 3D candidate, picks per class the
    threshold and minimum support that maximise the metric against the runs' picks
    (:func:`czii_kaggle.tune.tune_thresholds`) and writes them into the bundle's
    ``czii_config.json``. ``tta_views`` (default: the bundle's) is saved with them, so
    inference runs as tuned. ``more``: further ``(root, runs)`` pooled with the first
    (runs of the same name in two roots stay apart). ``backend``: as :func:`predict_runs`.
    Returns the per-class table.
    """
    bundle = load_bundle(bundle_dir)
    outputs.check_writable(bundle.weights.parent / CONFIG_FILE)  # before the runs are predicted
    if tta_views is not None:
        bundle = with_tta(bundle, tta_views)
    all_candidates, all_truth = [], []
    for i, (src, src_runs) in enumerate([(root, runs), *(more or [])]):
        candidates, _ = run_candidates(src, src_runs, bundle, devices, progress, backend)
        truth = picks_io.read_all_picks(src, src_runs)
        prefix = f"{i}/" if more else ""
        all_candidates.append(candidates.assign(experiment=prefix + candidates["experiment"].astype(str)))
        all_truth.append(truth.assign(experiment=prefix + truth["experiment"].astype(str)))
    config, table = tune_thresholds(pd.concat(all_candidates, ignore_index=True),
                                    pd.concat(all_truth, ignore_index=True), bundle.aggregate)
    save_aggregate_config(bundle.weights.parent, config, detect=bundle.detect)
    return table
