"""Inference: YOLO on every (or every n-th) slice of a tomogram, in batches.

Returns raw per-slice detections in Angstrom; :mod:`czii_kaggle.aggregate`
turns them into 3D particles. Images are never rescaled beyond letterboxing
to a multiple of 32 (a particle keeps its size in pixels, as in training), so a
tomogram smaller than the model's usual input works unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import frames, offline, particles
from .errors import CziiInputError
from .frames import DETECTION_COLUMNS  # noqa: F401  (re-exported: raw per-slice detections, Angstrom)
from .preprocess import stack_slices

#: Test-time views as ``(flip x, flip y)``: the slice itself, turned 180 degrees, x flipped,
#: y flipped (flips in x-y are symmetries of a tomogram slice, as in training).
TTA_FLIPS: tuple[tuple[bool, bool], ...] = ((False, False), (True, True), (True, False), (False, True))

#: Smallest slice side (voxels) the detector accepts: below it no particle fits.
MIN_SIDE_VOX = 32

#: How the model runs: ``"torch"`` (the ``.pt``, CPU or GPU) or ``"onnx"`` (an ONNX Runtime
#: copy made by :func:`export_onnx`, CPU); ``"auto"`` lets :mod:`czii_kaggle.predict` choose.
BACKENDS = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class DetectConfig:
    """Options of :func:`detect_volume`.

    Attributes
    ----------
    max_imgsz : int
        Largest image side given to the model, pixels; larger slices are letterboxed down.
    conf : float
        Raw per-box confidence floor (keep it low: thresholds are applied after 3D merging).
    iou : float
        Per-slice NMS IoU.
    batch : int
        Slices per forward pass.
    slice_step : int
        Run on every ``slice_step``-th slice (2 halves the time, at some recall cost).
    max_det : int
        Most boxes per slice.
    half : bool
        fp16 on CUDA devices.
    tta_views : int
        Test-time augmentation: each slice is also seen in ``tta_views - 1`` flipped
        copies (:data:`TTA_FLIPS`, in order: turned 180 degrees, x flipped, y flipped),
        the boxes are flipped back and kept side by side; aggregation takes the best
        box per slice, so a particle seen in any view counts. 1 (off) .. 4; time grows
        in proportion.
    """

    max_imgsz: int = 640
    conf: float = 0.01
    iou: float = 0.5
    batch: int = 16
    slice_step: int = 1
    max_det: int = 300
    half: bool = True
    tta_views: int = 1

    def __post_init__(self) -> None:
        if not 1 <= int(self.tta_views) <= len(TTA_FLIPS):
            raise ValueError(f"tta_views must be 1..{len(TTA_FLIPS)}, not {self.tta_views}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DetectConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def empty_detections() -> pd.DataFrame:
    """An empty raw-detections frame with the right columns and dtypes."""
    return frames.empty(frames.DETECTIONS)


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported here, without importing it."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime can be imported here (it is an optional dependency)."""
    return _installed("onnxruntime")


def load_model(weights: str | Path):
    """Load a YOLO detection model from a local weights file (never downloads).

    ``weights`` is a PyTorch ``.pt`` or an ONNX export of one (``.onnx``, run by ONNX
    Runtime on the CPU). Raises :class:`CziiInputError` when the file is missing,
    unreadable, not a detection model, or its classes are not the six particle types.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise CziiInputError(weights, "weights file not found")
    if weights.suffix == ".onnx" and not onnxruntime_available():
        raise CziiInputError(weights, "an ONNX model needs onnxruntime, which is not installed "
                                      "(pip install onnxruntime, or use the .pt weights)")
    ultralytics = offline.import_ultralytics()
    try:
        model = ultralytics.YOLO(str(weights), task="detect")
        names = [model.names[i] for i in sorted(model.names)]  # an ONNX file is only opened here
    except Exception as exc:  # noqa: BLE001 - anything a broken file raises
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CziiInputError(weights, f"not a loadable YOLO model ({type(exc).__name__}: {first})") from None
    if getattr(model, "task", None) != "detect":
        raise CziiInputError(weights, f"is a {model.task!r} model, not a detection model")
    if names != list(particles.NAMES):
        raise CziiInputError(weights, f"model classes {names} are not the particle types {list(particles.NAMES)}")
    return model


def export_onnx(weights: str | Path, imgsz: int = 640, simplify: bool = True) -> Path:
    """Export a YOLO ``.pt`` to ONNX for ONNX Runtime on the CPU, offline.

    Dynamic batch and image size (any slice up to ``imgsz`` pixels, as
    :func:`detect_volume` letterboxes it), fp32, the class names in its metadata.
    Needs the ``onnx`` package (and ``onnxslim`` for ``simplify``; without it the
    graph is exported unsimplified). Writes ``{weights stem}.onnx`` beside ``weights``.

    Returns
    -------
    Path of the ``.onnx`` file.
    """
    model = load_model(weights)  # a clear error for a missing or wrong .pt
    if Path(weights).suffix != ".pt":
        raise CziiInputError(weights, "only a PyTorch .pt model can be exported to ONNX")
    if not _installed("onnx"):
        raise CziiInputError(weights, "exporting to ONNX needs the onnx package (pip install onnx onnxslim)")
    simplify = simplify and _installed("onnxslim")
    out = model.export(format="onnx", imgsz=imgsz, dynamic=True, simplify=simplify, device="cpu", verbose=False)
    return Path(out)


def image_size(shape_yx: tuple[int, int], max_imgsz: int = 640) -> int:
    """Model input side for slices of ``shape_yx``: the longest side rounded up to 32, at most ``max_imgsz``."""
    return min(max_imgsz, 32 * math.ceil(max(shape_yx) / 32))


def detect_volume(
    model,
    volume_u8: np.ndarray,
    voxel_size_A: float,
    experiment: str,
    config: DetectConfig = DetectConfig(),
    slice_offset: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Run the detector on the slices of one preprocessed tomogram.

    Parameters
    ----------
    model : ultralytics.YOLO
    volume_u8 : ndarray (Z, Y, X) uint8
        Output of :func:`czii_kaggle.preprocess.preprocess_volume`.
    voxel_size_A : float
        Angstrom per voxel.
    slice_offset : int
        2.5D neighbour offset, as the model was trained with.
    device : str
        ``"cpu"``, ``"cuda:0"``, ...

    Returns
    -------
    DataFrame
        :data:`DETECTION_COLUMNS`; ``z, x, y`` box centre and ``w, h`` box size in Angstrom.
    """
    if volume_u8.ndim != 3:
        raise ValueError(f"volume must be (z, y, x), got shape {volume_u8.shape}")
    nz, ny, nx = volume_u8.shape
    if min(ny, nx) < MIN_SIDE_VOX:
        raise ValueError(f"slices of {ny} x {nx} voxels are too small to detect particles (min {MIN_SIDE_VOX})")
    imgsz = image_size((ny, nx), config.max_imgsz)
    z_all = np.arange(0, nz, max(1, config.slice_step))
    precision = {"quantize": 16} if config.half and str(device).startswith("cuda") else {}
    parts = []
    batches = range(0, len(z_all), config.batch)
    for b in tqdm(batches, desc=experiment, unit="batch", disable=not progress, leave=False):
        zs = z_all[b : b + config.batch]
        images = stack_slices(volume_u8, zs, slice_offset)  # (b, y, x, 3)
        views = TTA_FLIPS[: config.tta_views]
        batch = [np.ascontiguousarray(images[:, ::-1 if fy else 1, ::-1 if fx else 1]) for fx, fy in views]
        results = model.predict(
            [im for view in batch for im in view],
            imgsz=imgsz,
            conf=config.conf,
            iou=config.iou,
            max_det=config.max_det,
            device=device,
            verbose=False,
            **precision,
        )
        for k, r in enumerate(results):
            z = zs[k % len(zs)]
            fx, fy = views[k // len(zs)]
            boxes = r.boxes
            if boxes is None or len(boxes) == 0:
                continue
            xywh = boxes.xywh.cpu().numpy().astype(np.float64)
            if fx:  # back to the slice's own frame: pixel edges 0..nx map to nx..0
                xywh[:, 0] = nx - xywh[:, 0]
            if fy:
                xywh[:, 1] = ny - xywh[:, 1]
            xywh *= voxel_size_A
            parts.append(
                pd.DataFrame(
                    {
                        "experiment": experiment,
                        "z": float(z) * voxel_size_A,
                        "x": xywh[:, 0],
                        "y": xywh[:, 1],
                        "w": xywh[:, 2],
                        "h": xywh[:, 3],
                        "confidence": boxes.conf.cpu().numpy().astype(np.float64),
                        "class_id": boxes.cls.cpu().numpy().astype(np.int64),
                    }
                )
            )
    if not parts:
        return empty_detections()
    return pd.concat(parts, ignore_index=True)[DETECTION_COLUMNS]
