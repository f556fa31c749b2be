"""The 3D heatmap detector: tomogram -> per-class Gaussian heatmaps -> scored 3D candidates.

read the zarr's level 1 (~20 A/voxel) -> percentile-normalise -> :class:`HeatmapUNet`
over overlapping windows (optional flipped views) -> per-class probability maps on
the network's output grid (~40 A) -> peaks by 3D max-filtering with a window of half
the particle's radius, refined to sub-voxel by the local centre of mass ->
candidates ``experiment, particle_type, x, y, z, score, n_slices, share`` (Angstrom),
the same frame :mod:`czii_kaggle.aggregate` makes from YOLO's boxes. ``n_slices`` is
1 (the heatmap has no slices); ``share`` is :func:`czii_kaggle.aggregate.class_share`.
Per-class thresholds and 3D NMS are :func:`czii_kaggle.aggregate.select`'s, tuned by
:func:`czii_kaggle.tune.tune_thresholds`.

Coordinates: voxel ``j`` of level ``L`` (size ``s_L = 2**L * s_0``) is the mean of
level-0 voxels ``2**L * j ... 2**L * j + 2**L - 1`` (:func:`czii_kaggle.omezarr.downsample2`),
so its centre lies at ``j * s_L + (s_L - s_0) / 2`` Angstrom; an output voxel ``k``
of the network (stride 2) covers input voxels ``2k, 2k + 1``. Training targets and
inference use the same mapping (:func:`grid_to_A`, :func:`A_to_grid`).

A bundle holds the weights as ``heatmap.pt`` (state dict), optionally ``heatmap.onnx``
(ONNX Runtime, CPU) and ``heatmap.json`` (config, thresholds, ONNX record, training
record); :mod:`czii_kaggle.bundle` reads and writes them (``load_heatmap_bundle``,
``export_heatmap_onnx``). See :mod:`czii_kaggle.train_heatmap` for training.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage

from ..aggregate import AggregateConfig, ClassParams, class_share, empty_candidates, select
from ..errors import CziiInputError
from ..particles import NAMES, PARTICLES
from ..preprocess import SPECTRAL, binned_origin_A, percentile_range, read_at_voxel_size, spectral_filter

if TYPE_CHECKING:  # the bundle module opens detectors; a detector only reads a loaded bundle
    from ..bundle import HeatmapBundle

_FLIPS = [(), (4,), (3,), (3, 4)]
#: Sliding window (z, y, x) per zarr level read: level 1 covers a Kaggle tomogram (92 x 315 x 315,
#: padded to 96 x 320 x 320) with 1 x 2 x 2 windows, level 0 (184 x 630 x 630) with 1 x 3 x 3.
LEVEL_WINDOWS = {1: (96, 168, 168), 0: (184, 224, 224)}
# test-time views of a (1, 1, Z, Y, X) window: (axes flipped, x and y swapped after the flip)
VIEWS = {n: [(f, False) for f in _FLIPS[:n]] for n in (1, 2, 3, 4)}
VIEWS[8] = VIEWS[4] + [(f, True) for f in _FLIPS]
VIEWS[16] = VIEWS[8] + [((2, *f), t) for f, t in VIEWS[8]]
#: What the network runs in (:attr:`HeatmapConfig.precision`).
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class HeatmapConfig:
    """Options of the heatmap detector (saved with its weights).

    Attributes
    ----------
    level : int
        Zarr multiscale level read (1: ~20 A per voxel).
    voxel_size_A : float
        The level's voxel size the weights were trained at; a tomogram whose level
        differs by more than 10 % is refused.
    channels : (int, int, int)
        Network widths (:class:`czii_kaggle.detectors.heatmap_net.HeatmapUNet`).
    classes : tuple of str
        Output channels, in order (all six types, beta-amylase included).
    sigma_fraction : float
        Gaussian sigma of the training targets, as a fraction of the radius.
    clip_percentiles : (float, float)
        Intensity percentiles mapped to -0.5 .. 0.5 (clipped outside).
    window_vox : (int, int, int)
        Sliding-window size ``(z, y, x)`` in voxels of ``level``; multiples of 8. The default
        covers a Kaggle tomogram's level 1 (92 x 315 x 315, padded to 96 x 320 x 320) with
        1 x 2 x 2 windows.
    overlap_vox : int
        Minimum overlap of neighbouring windows (voxels of ``level``).
    tta_views : int
        Test-time views: 1: the window as is; 2: also flipped along x; 3: also along y;
        4: also along x and y; 8: those 4 and each with x and y swapped (a transpose: with the
        flips, all 8 symmetries of the square x-y window); 16: those 8 and each flipped along z.
        The training patches take every one of them (flips along each axis, 90-degree turns in
        x-y). Probabilities of the views are averaged (about ``tta_views`` times the inference
        seconds); 8 and 16 need a window square in x-y.
    peak_fraction : float
        Half-width of the max-filter window as a fraction of the radius.
    min_peak : float
        Peaks below this probability are not candidates.
    bn_adapt : float
        Test-time adaptation of batch normalisation (0: off). Each tomogram's own activation
        statistics, gathered over its windows (one view), are blended with the training
        statistics with this weight (1: the tomogram's alone) before it is predicted
        (:func:`adapt_batchnorm`): a look the network never saw shifts its features' scales, and
        this puts them back where the later layers expect them. Runs with torch (ONNX Runtime's
        graph has the statistics folded in); about one more view's seconds.
    bn_adapt_every : int
        The adaptation's pass reads every k-th sliding window (raster order) and gathers the
        statistics over those: 1 (the default) reads all; 2 reads 5 of the 9 windows of a Kaggle
        tomogram at level 0 (the corners and the centre), about half the adaptation's seconds.
    spectral : str
        Per-tomogram spectral step on the level read, before the percentile clip
        (:func:`czii_kaggle.preprocess.spectral_filter`): ``"none"``, ``"whiten"``, ``"whiten_zxy"``
        or ``"bandpass"``. Part of the input, so training and prediction apply the same one.
    precision : str
        ``"float32"`` (the records before it) or ``"bfloat16"``: torch runs the network, and the
        test-time adaptation's pass, in bfloat16 (``torch.autocast``) where the device does
        bfloat16 natively (a CPU with AVX512-BF16 or AMX; a GPU torch says supports it, not a T4),
        else in float32 (:func:`autocast_dtype`). Probabilities and peaks stay float32; ONNX
        Runtime runs float32.
    """

    level: int = 1
    voxel_size_A: float = 20.024889075237774
    channels: tuple[int, int, int] = (12, 24, 32)
    classes: tuple[str, ...] = NAMES
    sigma_fraction: float = 0.4
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    window_vox: tuple[int, int, int] = LEVEL_WINDOWS[1]
    overlap_vox: int = 16
    tta_views: int = 1
    peak_fraction: float = 0.5
    min_peak: float = 0.02
    bn_adapt: float = 0.0
    bn_adapt_every: int = 1
    spectral: str = "none"
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.spectral not in SPECTRAL:
            raise ValueError(f"spectral must be one of {SPECTRAL}, not {self.spectral!r}")
        if any(w <= 0 or w % 8 for w in self.window_vox):
            raise ValueError(f"window_vox must be positive multiples of 8, not {self.window_vox}")
        if not 0 <= self.overlap_vox < min(self.window_vox):
            raise ValueError(f"overlap_vox must be in 0..{min(self.window_vox) - 1}, not {self.overlap_vox}")
        if self.tta_views not in VIEWS:
            raise ValueError(f"tta_views must be one of {tuple(VIEWS)}, not {self.tta_views}")
        if self.tta_views > 4 and self.window_vox[1] != self.window_vox[2]:
            raise ValueError(f"tta_views {self.tta_views} swaps x and y: window_vox must be square in y-x, "
                             f"not {self.window_vox}")
        if not 0.0 <= self.bn_adapt <= 1.0:
            raise ValueError(f"bn_adapt must be in 0..1, not {self.bn_adapt}")
        if not (isinstance(self.bn_adapt_every, int) and self.bn_adapt_every >= 1):
            raise ValueError(f"bn_adapt_every must be a whole number >= 1, not {self.bn_adapt_every!r}")
        unknown = [c for c in self.classes if c not in NAMES]
        if unknown:
            raise ValueError(f"unknown particle types {unknown} in heatmap classes")

    def to_dict(self) -> dict:
        return asdict(self)

    def at_level(self, level: int) -> HeatmapConfig:
        """This config reading zarr level ``level`` instead: its voxel size scaled by ``2 ** (level -
        self.level)`` and the sliding window of :data:`LEVEL_WINDOWS` (level 0: the whole depth of a
        Kaggle tomogram, 3 x 3 windows in y-x); everything else kept. Targets, peaks and radii are in
        Angstrom, so they follow; a network trained at one level reads particles at its scale only."""
        if level not in LEVEL_WINDOWS:
            raise ValueError(f"level must be one of {tuple(LEVEL_WINDOWS)}, not {level!r}")
        return replace(self, level=level, voxel_size_A=self.voxel_size_A * 2.0 ** (level - self.level),
                       window_vox=LEVEL_WINDOWS[level])

    @classmethod
    def from_dict(cls, d: dict) -> HeatmapConfig:
        d = dict(d)
        for key in ("channels", "classes", "clip_percentiles", "window_vox"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def default_aggregate_config() -> AggregateConfig:
    """Selection options for heatmap candidates: no slice support (``n_slices`` is 1), NMS at
    one radius, a low starting threshold that :func:`czii_kaggle.tune.tune_thresholds` replaces."""
    return AggregateConfig({p.name: ClassParams(min_support=1, conf_threshold=0.2) for p in PARTICLES})


# --------------------------------------------------------------------------- coordinates


def grid_to_A(index: np.ndarray, voxel_size_A: float, level: int, stride: int = 1) -> np.ndarray:
    """Angstrom of output-grid positions ``index`` (float, voxels of a grid ``stride`` level-``level``
    voxels apart; see the module docstring)."""
    s0 = voxel_size_A / 2**level
    level_index = np.asarray(index, dtype=float) * stride + (stride - 1) / 2.0
    return level_index * voxel_size_A + (voxel_size_A - s0) / 2.0


def A_to_grid(xyz_A: np.ndarray, voxel_size_A: float, level: int, stride: int = 1) -> np.ndarray:
    """Inverse of :func:`grid_to_A`."""
    s0 = voxel_size_A / 2**level
    level_index = (np.asarray(xyz_A, dtype=float) - (voxel_size_A - s0) / 2.0) / voxel_size_A
    return (level_index - (stride - 1) / 2.0) / stride


def normalise(volume: np.ndarray, clip_percentiles=(0.5, 99.5)) -> np.ndarray:
    """``volume`` scaled so its percentiles map to -0.5 .. 0.5 (clipped), float32."""
    lo, hi = percentile_range(volume, clip_percentiles)
    scale = 1.0 / max(float(hi - lo), 1e-6)
    out = (volume.astype(np.float32) - np.float32(lo)) * np.float32(scale) - np.float32(0.5)
    return np.clip(out, -0.5, 0.5, out=out)


def read_input(zarr_path: str | Path, config: HeatmapConfig) -> tuple[np.ndarray, float]:
    """The normalised volume the network reads (after ``config.spectral``) and its voxel size
    (Angstrom): level ``config.level`` of a tomogram of the weights' resolution; a tomogram of
    another is resampled onto the grid of ``config.voxel_size_A`` voxels that level would have
    (:func:`~czii_kaggle.preprocess.read_at_voxel_size`; data coarser than twice that raises
    :class:`CziiInputError`)."""
    base_A = config.voxel_size_A / 2**config.level
    volume, voxel_size_A = read_at_voxel_size(zarr_path, config.voxel_size_A,
                                              origin_A=binned_origin_A(config.voxel_size_A, base_A))
    return normalise(spectral_filter(volume, config.spectral), config.clip_percentiles), voxel_size_A


# --------------------------------------------------------------------------- models


def autocast_dtype(device: str, precision: str = "float32"):
    """The torch dtype the network runs in on ``device`` for ``precision`` (:attr:`HeatmapConfig.precision`):
    ``torch.bfloat16`` where asked for and the device does it natively, else None (float32)."""
    import torch

    if precision != "bfloat16":
        return None
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    native = [getattr(torch.cpu, f, lambda: False) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.bfloat16 if any(f() for f in native) else None


def _autocast(device, precision: str):
    """``torch.autocast`` to :func:`autocast_dtype` on ``device``, or nothing (float32)."""
    import contextlib

    import torch

    dtype = autocast_dtype(str(device), precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=dtype)


class TorchHeatmapModel:
    """Callable ``(N, 1, Z, Y, X) float32 -> (N, C, Z/2, Y/2, X/2)`` probabilities with torch on ``device``
    (``"cpu"`` or ``"cuda:N"``), the network in ``precision`` (:attr:`HeatmapConfig.precision`); numpy in
    and float32 out."""

    def __init__(self, net, device: str = "cpu", precision: str = "float32"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.precision = precision
        self.net = net.eval().to(self.device, memory_format=torch.channels_last_3d)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad(), _autocast(self.device, self.precision):
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            logits = self.net(x)
        return torch.sigmoid(logits.float()).cpu().contiguous().numpy()


class OnnxHeatmapModel:
    """The same with ONNX Runtime (CPU); the graph outputs logits."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 0
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return 1.0 / (1.0 + np.exp(-logits))


def build_net(config: HeatmapConfig):
    from .heatmap_net import HeatmapUNet

    return HeatmapUNet(len(config.classes), config.channels)


def load_net(bundle: HeatmapBundle):
    """The torch network of ``bundle`` (its ``weights`` and ``config``) with its weights; weights of
    another class count or network width than the config names are a clear error."""
    import torch

    try:
        state = torch.load(bundle.weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CziiInputError(bundle.weights, f"cannot read heatmap weights: {exc}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    net = build_net(bundle.config)
    head = state.get("head.weight") if isinstance(state, dict) else None
    if head is None:
        raise CziiInputError(bundle.weights, "not heatmap weights (no head.weight tensor)")
    if head.shape[0] != len(bundle.config.classes):
        raise CziiInputError(bundle.weights, f"weights predict {head.shape[0]} classes but the config names "
                                             f"{len(bundle.config.classes)} ({', '.join(bundle.config.classes)})")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CziiInputError(bundle.weights, f"weights do not fit the configured network: {str(exc).splitlines()[0]}") from None
    return net


def heatmap_device(backend: str = "auto", devices: list[str] | None = None) -> str:
    """Where the heatmap network runs: the first usable GPU of ``devices`` (default: this machine's,
    :func:`czii_kaggle.runtime.plan_devices`) unless ``backend`` is ``"onnx"`` (ONNX Runtime: the
    CPU), else ``"cpu"``."""
    if backend == "onnx":
        return "cpu"
    if devices is None:
        from ..runtime import plan_devices

        devices = plan_devices().devices
    return next((d for d in devices if d.startswith("cuda")), "cpu")


def load_model(bundle: HeatmapBundle, backend: str = "auto", device: str = "cpu"):
    """A callable model: ONNX Runtime when ``backend`` is ``"onnx"`` (or ``"auto"``, ``device`` the CPU and
    the bundle has an up-to-date ``heatmap.onnx`` and onnxruntime is installed), else torch on ``device``.
    With ``config.bn_adapt`` the model is torch's (the adaptation changes the network per tomogram);
    ``"onnx"`` is then an error."""
    from ..detect import onnxruntime_available

    adapt = bundle.config.bn_adapt > 0
    if backend == "onnx" and adapt:
        raise CziiInputError(bundle.weights.parent / "heatmap.json", "bn_adapt needs the torch backend "
                                                                     "(ONNX Runtime's graph has fixed statistics)")
    if backend == "onnx" and bundle.onnx is None:
        raise CziiInputError(bundle.weights.with_suffix(".onnx"), "no up-to-date ONNX copy of the heatmap weights "
                                                                  "(run `czii-kaggle export-onnx --detector heatmap`)")
    wants_onnx = backend == "onnx" or (backend == "auto" and device == "cpu" and not adapt)
    if wants_onnx and bundle.onnx is not None and onnxruntime_available():
        return OnnxHeatmapModel(bundle.onnx)
    return TorchHeatmapModel(load_net(bundle), device, bundle.config.precision)


# --------------------------------------------------------------------------- inference


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Start indices of windows of ``window`` voxels covering ``0 .. length`` with at least ``overlap``."""
    if length < window:
        raise ValueError(f"length {length} is smaller than one window ({window})")
    n = 1 if length == window else math.ceil((length - overlap) / (window - overlap))
    return sorted({int(round(s)) for s in np.linspace(0, length - window, max(n, 1))})


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1D blending weight of a window: linear ramps over ``overlap / 2`` at both ends, > 0 everywhere."""
    width = max(overlap // 2, 1)
    i = np.arange(n, dtype=np.float32)
    return np.minimum(1.0, np.minimum(i + 1, n - i) / (width + 1)).astype(np.float32)


def pad_to_windows(volume: np.ndarray, config: HeatmapConfig, path) -> np.ndarray:
    """``volume`` edge-padded to a multiple of 8 per axis; smaller than one window: :class:`CziiInputError`."""
    shape = volume.shape
    padded = tuple(s + (-s) % 8 for s in shape)
    if any(p < w for p, w in zip(padded, config.window_vox)):
        raise CziiInputError(path, f"tomogram level {config.level} is {shape} voxels, smaller than one heatmap "
                                   f"window {config.window_vox}")
    if padded != shape:
        volume = np.pad(volume, [(0, p - s) for p, s in zip(padded, shape)], mode="edge")
    return volume


def _windows(padded: np.ndarray, config: HeatmapConfig):
    """``((z0, y0, x0), window)`` of every sliding window of a padded volume. Windows start on even
    voxels, so every window's output grid is a slice of the whole one."""
    stride = 2
    starts = [[stride * s0 for s0 in window_starts(s // stride, w // stride, config.overlap_vox // stride)]
              for s, w in zip(padded.shape, config.window_vox)]
    wz, wy, wx = config.window_vox
    for z0 in starts[0]:
        for y0 in starts[1]:
            for x0 in starts[2]:
                yield (z0, y0, x0), padded[z0:z0 + wz, y0:y0 + wy, x0:x0 + wx]


def adapt_batchnorm(net, volumes, config: HeatmapConfig, weight: float = 1.0, path=None):
    """A copy of ``net`` whose batch-norm statistics blend its own with those of ``volumes``.

    ``volumes``: normalised (:func:`normalise`) tomograms, or one. Every window of each (one
    view; every ``config.bn_adapt_every``-th) goes through the copy in training mode with cumulative statistics, so each layer's
    mean and variance are those of these tomograms (each layer seeing the layers before it
    already adapted); then ``(1 - weight) * own + weight * theirs``, per channel. ``net`` is
    unchanged. One tomogram with ``weight = config.bn_adapt`` is the detector's test-time
    adaptation; many training tomograms with ``weight = 1`` re-estimate the statistics on whole
    tomograms (training saw patches near particles), see ``czii-kaggle recalibrate-heatmap``.
    """
    import copy

    import torch

    if isinstance(volumes, np.ndarray):
        volumes = [volumes]
    adapted = copy.deepcopy(net)
    norms = [m for m in adapted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    source = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the windows
    adapted.train()
    device = next(adapted.parameters()).device
    with torch.no_grad(), _autocast(device, config.precision):
        for volume in volumes:
            for k, (_, win) in enumerate(_windows(pad_to_windows(volume, config, path), config)):
                if k % config.bn_adapt_every:
                    continue
                x = torch.from_numpy(np.ascontiguousarray(win[None, None], dtype=np.float32)).to(device)
                adapted(x.contiguous(memory_format=torch.channels_last_3d))
    a = float(weight)
    for m, (mean, var, momentum) in zip(norms, source):
        m.running_mean.mul_(a).add_(mean, alpha=1.0 - a)
        m.running_var.mul_(a).add_(var, alpha=1.0 - a)
        m.momentum = momentum
    return adapted.eval()


def predict_heatmaps(model, volume: np.ndarray, config: HeatmapConfig, path: str | Path | None = None) -> np.ndarray:
    """Per-class probabilities on the output grid: ``(C, ceil(Z/2), ceil(Y/2), ceil(X/2))`` float32.

    ``volume``: normalised ``(Z, Y, X)`` (:func:`normalise`), edge-padded to a multiple of 8
    (at most 7 voxels per axis); windows of ``config.window_vox`` with at least
    ``config.overlap_vox`` overlap, blended with linear ramps; with ``config.tta_views`` > 1
    flipped (and x-y swapped) copies are predicted, turned back and averaged (:data:`VIEWS`).
    A volume smaller than one window (after that padding) raises :class:`CziiInputError`
    naming ``path``.
    """
    shape = volume.shape
    volume = pad_to_windows(volume, config, path)
    padded = volume.shape
    stride = 2
    out_shape = tuple(s // stride for s in padded)
    win_out = tuple(w // stride for w in config.window_vox)
    acc = np.zeros((len(config.classes), *out_shape), dtype=np.float32)
    wsum = np.zeros(out_shape, dtype=np.float32)
    ramp_vox = config.overlap_vox // stride
    weight = (_ramp(win_out[0], ramp_vox)[:, None, None] * _ramp(win_out[1], ramp_vox)[None, :, None]
              * _ramp(win_out[2], ramp_vox)[None, None, :])
    views = VIEWS[config.tta_views]
    for (z0, y0, x0), win in _windows(volume, config):
        prob = np.zeros((len(config.classes), *win_out), dtype=np.float32)
        for axes, swap in views:
            batch = np.flip(win[None, None], axis=axes) if axes else win[None, None]
            batch = batch.swapaxes(3, 4) if swap else batch
            p = model(np.ascontiguousarray(batch, dtype=np.float32))[0]
            p = p.swapaxes(2, 3) if swap else p
            prob += np.flip(p, axis=tuple(a - 1 for a in axes)) if axes else p
        if len(views) > 1:
            prob /= len(views)
        oz, oy, ox = z0 // stride, y0 // stride, x0 // stride
        sl = (slice(oz, oz + win_out[0]), slice(oy, oy + win_out[1]), slice(ox, ox + win_out[2]))
        acc[(slice(None), *sl)] += prob * weight
        wsum[sl] += weight
    acc /= np.maximum(wsum, 1e-6)
    keep = tuple(slice(0, -(-s // stride)) for s in shape)
    return acc[(slice(None), *keep)]


def find_peaks(prob: np.ndarray, radius_vox: float, config: HeatmapConfig) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of one class's probability map ``(Z, Y, X)``.

    A voxel is a peak when it is the maximum of the cube of half-width
    ``max(1, round(peak_fraction * radius_vox))`` around it and at least ``min_peak``.
    Returns ``(zyx, score)``: ``(n, 3)`` float positions refined to the probability-weighted
    centre of the 3x3x3 neighbourhood (grid voxels), and the peak probabilities.
    """
    half = max(1, int(round(config.peak_fraction * radius_vox)))
    local_max = ndimage.maximum_filter(prob, size=2 * half + 1, mode="constant", cval=0.0)
    idx = np.argwhere((prob == local_max) & (prob >= config.min_peak))
    if not len(idx):
        return np.zeros((0, 3)), np.zeros(0)
    score = prob[tuple(idx.T)].astype(float)
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    nb = idx[:, None, :] + offsets[None]
    inside = ((nb >= 0) & (nb < np.array(prob.shape))).all(-1)
    nb_c = np.clip(nb, 0, np.array(prob.shape) - 1)
    w = prob[tuple(nb_c.reshape(-1, 3).T)].reshape(len(idx), -1) * inside
    zyx = idx + (w[..., None] * offsets[None]).sum(1) / np.maximum(w.sum(1), 1e-9)[:, None]
    return zyx, score


def heatmap_candidates(prob: np.ndarray, voxel_size_A: float, experiment: str, config: HeatmapConfig) -> pd.DataFrame:
    """Every peak of every class as candidates (:data:`czii_kaggle.aggregate.CANDIDATE_COLUMNS`), no threshold."""
    stride = 2
    grid_A = voxel_size_A * stride
    rows = []
    for c, name in enumerate(config.classes):
        radius_A = PARTICLES[NAMES.index(name)].radius_A
        zyx, score = find_peaks(prob[c], radius_A / grid_A, config)
        xyz_A = grid_to_A(zyx[:, ::-1], voxel_size_A, config.level, stride)
        rows.append(pd.DataFrame({"experiment": experiment, "particle_type": name, "x": xyz_A[:, 0],
                                  "y": xyz_A[:, 1], "z": xyz_A[:, 2], "score": score, "n_slices": 1}))
    out = pd.concat(rows, ignore_index=True) if rows else empty_candidates()
    if out.empty:
        return empty_candidates()
    cls = pd.Categorical(out["particle_type"], categories=list(NAMES)).codes.astype(np.int64)
    out["n_slices"] = out["n_slices"].astype(np.int64)
    out["share"] = class_share(out[["x", "y", "z"]].to_numpy(float), np.zeros(len(out), np.int64), cls,
                               out["score"].to_numpy(float))
    out = out.sort_values(["particle_type", "score"], ascending=[True, False], kind="stable")
    return out.reset_index(drop=True)


class HeatmapDetector:
    """The heatmap detector behind :class:`czii_kaggle.detectors.Detector`'s interface."""

    def __init__(self, bundle: HeatmapBundle, backend: str = "auto", tta_views: int | None = None,
                 bn_adapt: float | None = None, device: str | None = None, precision: str | None = None):
        """``device``: ``"cpu"``, ``"cuda:N"`` or None: the first usable GPU, else the CPU (:func:`heatmap_device`).
        ``tta_views``, ``bn_adapt``, ``precision``: the bundle's config's unless given.
        The detector's name is the bundle's (``heatmap``, or ``heatmap_<tag>`` for a further network)."""
        self.bundle = bundle
        self.name = bundle.name
        if tta_views is not None:
            self.bundle = replace(self.bundle, config=replace(self.bundle.config, tta_views=tta_views))
        if bn_adapt is not None:
            self.bundle = replace(self.bundle, config=replace(self.bundle.config, bn_adapt=float(bn_adapt)))
        if precision is not None:
            self.bundle = replace(self.bundle, config=replace(self.bundle.config, precision=precision))
        self.device = device or heatmap_device(backend)
        self.model = load_model(self.bundle, backend, self.device)
        self.aggregate = self.bundle.aggregate

    def candidates(self, zarr_path: str | Path, experiment: str) -> tuple[pd.DataFrame, dict]:
        """Unthresholded candidates of one tomogram and the seconds of each stage."""
        t0 = time.perf_counter()
        volume, voxel_size_A = read_input(zarr_path, self.bundle.config)
        times = {"read_s": time.perf_counter() - t0}
        prob, more = self.probabilities(volume, zarr_path)
        del volume
        times.update(more)
        t = time.perf_counter()
        cands = heatmap_candidates(prob, voxel_size_A, experiment, self.bundle.config)
        times["peaks_s"] = time.perf_counter() - t
        return cands, times

    def probabilities(self, volume: np.ndarray, zarr_path: str | Path | None = None) -> tuple[np.ndarray, dict]:
        """The per-class probability maps of a volume read by :func:`read_input` (after the test-time
        batch-norm adaptation when the bundle has one) and the seconds of each stage."""
        times = {}
        model = self.model
        if self.bundle.config.bn_adapt > 0:
            t = time.perf_counter()
            model = TorchHeatmapModel(adapt_batchnorm(self.model.net, volume, self.bundle.config,
                                                      self.bundle.config.bn_adapt, zarr_path), self.device,
                                      self.bundle.config.precision)
            times["adapt_s"] = time.perf_counter() - t
        t = time.perf_counter()
        prob = predict_heatmaps(model, volume, self.bundle.config, zarr_path)
        times["inference_s"] = time.perf_counter() - t
        return prob, times

    def select(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """Thresholds + NMS of the bundle."""
        return select(candidates, self.aggregate)
