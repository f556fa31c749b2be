"""The prediction pipeline: runs of a Kaggle-layout root -> particles -> submission.

read zarr -> preprocess -> YOLO per slice -> 3D aggregation -> thresholds + NMS.
A run that fails (bad zarr, NaNs everywhere, ...) is reported and skipped; the
other runs' predictions are kept. On GPUs the runs are shared out over every
visible device (one model per device, one worker thread each); on CPU every
core serves one run at a time.
"""
from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import io, layout, particles, picks as picks_io
from .aggregate import AggregateConfig, aggregate, empty_candidates
from .detect import (BACKENDS, DetectConfig, detect_volume, empty_detections, export_onnx, load_model,
                     onnxruntime_available)
from .errors import CziiInputError
from .preprocess import PreprocessConfig, preprocess_volume
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
    if not record:
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
    return Bundle(
        weights=weights,
        preprocess=PreprocessConfig.from_dict(cfg["preprocess"]) if "preprocess" in cfg else PreprocessConfig(),
        detect=DetectConfig.from_dict(cfg["detect"]) if "detect" in cfg else DetectConfig(),
        aggregate=AggregateConfig.from_dict(cfg["aggregate"]) if "aggregate" in cfg else AggregateConfig(),
        onnx=weights if weights.suffix == ".onnx" else _matching_onnx(weights, cfg.get("onnx")),
    )


def export_bundle_onnx(bundle_dir: str | Path | None = None, imgsz: int | None = None) -> Path:
    """Export a bundle's ``model.pt`` to ``model.onnx`` beside it, for ONNX Runtime on the CPU.

    Records the export (file, sha256 of the ``.pt`` it came from, image size) under the
    ``onnx`` key of the bundle's ``czii_config.json``; :func:`load_bundle` uses the copy
    only while that sha256 still matches, so retrained weights never run with a stale
    export. ``imgsz`` defaults to the bundle's ``detect.max_imgsz``. Returns the path.
    """
    path = Path(bundle_dir) if bundle_dir is not None else DEFAULT_BUNDLE
    bundle = load_bundle(path)
    imgsz = imgsz or bundle.detect.max_imgsz
    exported = export_onnx(bundle.weights, imgsz=imgsz)
    target = bundle.weights.parent / ONNX_FILE
    if exported != target:
        exported.replace(target)
    cfg_path = bundle.weights.parent / CONFIG_FILE
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["onnx"] = {"file": ONNX_FILE, "source": bundle.weights.name, "source_sha256": file_sha256(bundle.weights),
                   "imgsz": imgsz, "dynamic": True}
    cfg_path.write_text(json.dumps(cfg, indent=2))
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
    """Every visible CUDA device (``cuda:0``, ``cuda:1``...), else ``["cpu"]``."""
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def detect_run(model, zarr_path: str | Path, experiment: str, bundle: Bundle, device: str = "cpu",
               progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Raw detections of one tomogram, with the seconds spent in each stage and the
    slice spacing in Angstrom (``slice_step_A``) the aggregation needs."""
    t0 = time.perf_counter()
    volume, voxel_size_A = io.read_tomogram(zarr_path)
    t1 = time.perf_counter()
    vol_u8 = preprocess_volume(volume, bundle.preprocess)
    del volume
    t2 = time.perf_counter()
    dets = detect_volume(model, vol_u8, voxel_size_A, experiment, bundle.detect,
                         bundle.preprocess.slice_offset, device, progress)
    t3 = time.perf_counter()
    return dets, {"read_s": t1 - t0, "preprocess_s": t2 - t1, "inference_s": t3 - t2,
                  "slice_step_A": voxel_size_A * bundle.detect.slice_step}


@dataclass
class Prediction:
    """What :func:`predict_runs` returns.

    picks : DataFrame ``experiment, particle_type, x, y, z, score, n_slices, share`` (Angstrom).
    detections : raw per-slice detections of every run.
    report : one row per run: ``experiment, status, backend, device, worker, n_picks, read_s,
    preprocess_s, inference_s, aggregate_s, total_s, slice_step_A, error``.
    """

    picks: pd.DataFrame
    detections: pd.DataFrame
    report: pd.DataFrame


def predict_runs(
    root: str | Path,
    split: str = "test",
    runs: list[str] | None = None,
    bundle: Bundle | str | Path | None = None,
    devices: list[str] | None = None,
    tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE,
    progress: bool = True,
    backend: str = "auto",
    tomograms: dict[str, str | Path] | None = None,
) -> Prediction:
    """Predict every run of ``split`` under a Kaggle-layout ``root``.

    Parameters
    ----------
    bundle : Bundle, path or None
        The model bundle; ``None``: the shipped default.
    devices : list of str
        Devices to share the runs over, one worker thread with its own model each
        (a device named twice gets two workers); default :func:`visible_devices`.
    backend : ``"auto"``, ``"torch"`` or ``"onnx"``
        See :func:`choose_backend` (``"onnx"`` runs on the CPU).
    tomograms : dict, optional
        ``{run: zarr path}`` read instead of the Kaggle layout (``root`` and ``split`` are then
        unused; ``runs`` defaults to its keys), e.g. a copick project's
        (:func:`czii_kaggle.copick_project.tomogram_sources`).
    """
    if runs is None:
        runs = list(tomograms) if tomograms is not None else layout.list_runs(root, split)
    runs = list(runs)
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    devices = list(devices or visible_devices())
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

    def worker(i: int) -> None:
        device = devices[i]
        while True:
            try:
                run = todo.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            try:
                zarr_path = tomograms[run] if tomograms is not None else layout.tomogram_path(root, split, run, tomo_type)
                dets, times = detect_run(models[i], zarr_path,
                                         run, bundle, device, progress=progress and len(devices) == 1)
                t1 = time.perf_counter()
                found = aggregate(dets, bundle.aggregate, slice_step_A=times["slice_step_A"])
                times["aggregate_s"] = time.perf_counter() - t1
                out = (dets, found, {"status": "ok", "error": "", **times})
            except Exception as exc:  # noqa: BLE001 - one bad run must not lose the others
                msg = str(exc) if isinstance(exc, (CziiInputError, ValueError)) else traceback.format_exc(limit=3)
                out = (empty_detections(), None, {"status": "failed", "error": msg.strip()})
                tqdm.write(f"[czii_kaggle] run {run} failed and is skipped: {msg.strip().splitlines()[-1]}")
            out[2].update(total_s=time.perf_counter() - t0, backend=backend, device=device, worker=i)
            with lock:
                results[run] = out
                bar.update(1)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    picks = [results[r][1] for r in runs if results[r][1] is not None and len(results[r][1])]
    dets = [results[r][0] for r in runs if len(results[r][0])]
    report = pd.DataFrame(
        [{"experiment": r, "n_picks": 0 if results[r][1] is None else len(results[r][1]), **results[r][2]}
         for r in runs]
    )
    cols = ["experiment", "status", "backend", "device", "worker", "n_picks", "read_s", "preprocess_s",
            "inference_s", "aggregate_s", "total_s", "slice_step_A", "error"]
    report = report.reindex(columns=cols)
    return Prediction(
        picks=pd.concat(picks, ignore_index=True) if picks else empty_candidates(),
        detections=pd.concat(dets, ignore_index=True) if dets else empty_detections(),
        report=report,
    )


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
    path.write_text(json.dumps(cfg, indent=2))
    return path


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
    if tta_views is not None:
        bundle = with_tta(bundle, tta_views)
    all_candidates, all_truth = [], []
    for i, (src, src_runs) in enumerate([(root, runs), *(more or [])]):
        pred = predict_runs(src, "train", runs=src_runs, bundle=bundle, devices=devices, progress=progress,
                            backend=backend)
        failed = pred.report[pred.report["status"] != "ok"]
        if len(failed):
            raise CziiInputError(Path(src), f"cannot tune: runs {list(failed['experiment'])} failed "
                                            f"({'; '.join(failed['error'].astype(str))})")
        candidates = aggregate(pred.detections, bundle.aggregate, apply_thresholds=False,
                               slice_step_A=pred.report["slice_step_A"].median())
        truth = picks_io.read_all_picks(src, src_runs)
        prefix = f"{i}/" if more else ""
        all_candidates.append(candidates.assign(experiment=prefix + candidates["experiment"].astype(str)))
        all_truth.append(truth.assign(experiment=prefix + truth["experiment"].astype(str)))
    config, table = tune_thresholds(pd.concat(all_candidates, ignore_index=True),
                                    pd.concat(all_truth, ignore_index=True), bundle.aggregate)
    save_aggregate_config(bundle.weights.parent, config, detect=bundle.detect)
    return table
