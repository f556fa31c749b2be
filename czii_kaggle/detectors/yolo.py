"""The YOLO 2.5D detector: tomogram -> preprocessed slices -> YOLO boxes per slice -> 3D candidates.

read the zarr (level 0) -> :func:`czii_kaggle.preprocess.preprocess_volume` (uint8,
2.5D slice stacks) -> :func:`czii_kaggle.detect.detect_volume` (raw per-slice boxes in
Angstrom) -> :func:`czii_kaggle.aggregate.aggregate` (3D particles, thresholds, NMS).
The functions take a loaded :class:`czii_kaggle.bundle.Bundle` (weights and configs);
:class:`YoloDetector` puts the path behind :class:`czii_kaggle.detectors.Detector`'s
interface (unthresholded candidates, own selection). :mod:`czii_kaggle.predict` schedules
these steps over runs and devices.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import runtime
from ..aggregate import aggregate, select
from ..detect import BACKENDS, detect_volume, load_model, onnxruntime_available
from ..errors import CziiInputError
from ..preprocess import preprocess_volume, read_volume

if TYPE_CHECKING:  # the bundle module opens detectors; a detector only reads a loaded bundle
    from ..bundle import Bundle


def visible_devices() -> list[str]:
    """Every usable CUDA device (``cuda:0``, ``cuda:1``...), else ``["cpu"]``; a GPU the installed
    torch cannot run is left out (:func:`czii_kaggle.runtime.plan_devices`)."""
    return runtime.plan_devices().devices


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
            raise CziiInputError(bundle.weights.with_suffix(".onnx"),
                                 f"no ONNX copy of {bundle.weights.name} made from these weights; "
                                 f"run `czii-kaggle export-onnx --weights {bundle.weights.parent}`")
        if not onnxruntime_available():
            raise CziiInputError(bundle.onnx, "the onnx backend needs onnxruntime, which is not installed")
        return "onnx"
    on_cpu = all(d == "cpu" for d in (devices or visible_devices()))
    return "onnx" if on_cpu and bundle.onnx is not None and onnxruntime_available() else "torch"


def load_yolo(bundle: Bundle, backend: str):
    """The model of ``bundle`` for ``backend`` (:func:`choose_backend`'s answer)."""
    return load_model((bundle.onnx or bundle.weights) if backend == "onnx" else bundle.weights)


def prepare_run(zarr_path: str | Path, bundle: Bundle) -> tuple[np.ndarray, float, dict]:
    """Read and preprocess one tomogram: the uint8 volume ``(Z, Y, X)`` the model sees (at the
    bundle's voxel size, :func:`~czii_kaggle.preprocess.read_volume`), its voxel size in Angstrom,
    and the seconds spent reading and resampling (``read_s``) and preprocessing."""
    t0 = time.perf_counter()
    volume, voxel_size_A = read_volume(zarr_path, bundle.preprocess)
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


class YoloDetector:
    """The 2.5D YOLO path behind the :class:`czii_kaggle.detectors.Detector` interface (CPU or one device).

    ``bundle``: a loaded :class:`czii_kaggle.bundle.Bundle` (:func:`czii_kaggle.bundle.load_detectors`
    opens a bundle folder's detectors). ``device``: ``"cpu"``, ``"cuda:N"``, or None: the first usable
    GPU, else the CPU (before 2026-12-04 it was always the CPU, so ``tune-ensemble`` and the benches
    ran YOLO there, with ONNX Runtime, even beside a GPU).
    """

    name = "yolo"

    def __init__(self, bundle: Bundle, backend: str = "auto", device: str | None = None):
        self.bundle = bundle
        device = device or visible_devices()[0]  # the first usable GPU, else the CPU
        self.backend = choose_backend(bundle, backend, [device])
        self.device = "cpu" if self.backend == "onnx" else device
        self.model = load_yolo(bundle, self.backend)
        self.aggregate = bundle.aggregate

    def candidates(self, zarr_path: str | Path, experiment: str) -> tuple[pd.DataFrame, dict]:
        """Unthresholded 3D candidates of one tomogram and the seconds of each stage."""
        dets, times = detect_run(self.model, zarr_path, experiment, self.bundle, self.device)
        t0 = time.perf_counter()
        cands = aggregate(dets, self.bundle.aggregate, apply_thresholds=False, slice_step_A=times.pop("slice_step_A"))
        times["aggregate_s"] = time.perf_counter() - t0
        return cands, times

    def select(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """The bundle's thresholds and 3D NMS."""
        return select(candidates, self.aggregate)
