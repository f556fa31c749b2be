"""Preprocessing shared by training and inference: normalise, denoise, stack slices (2.5D).

The same :func:`preprocess_volume` and :func:`stack_slices` feed the dataset
builder and the detector, so a model always sees images made the same way.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import CziiInputError


@dataclass(frozen=True)
class PreprocessConfig:
    """Options of :func:`preprocess_volume` and :func:`stack_slices`.

    Attributes
    ----------
    clip_percentiles : (float, float)
        Intensities below / above these percentiles are clipped before scaling to 0..255.
    denoise : str
        ``"none"``, ``"gaussian"`` or ``"median"``.
    denoise_size_vox : float
        Gaussian sigma, or median window side, in voxels.
    slice_offset : int
        ``k``: the image of slice z stacks slices ``z - k, z, z + k`` (edge slices repeat).
        ``k = 0`` gives three copies of slice z.
    """

    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    denoise: str = "gaussian"
    denoise_size_vox: float = 0.7
    slice_offset: int = 1

    def __post_init__(self):
        lo, hi = self.clip_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"clip_percentiles must satisfy 0 <= lo < hi <= 100, got {self.clip_percentiles}")
        if self.denoise not in ("none", "gaussian", "median"):
            raise ValueError(f"denoise must be 'none', 'gaussian' or 'median', not {self.denoise!r}")
        if self.slice_offset < 0:
            raise ValueError(f"slice_offset must be >= 0, got {self.slice_offset}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        d = dict(d)
        if "clip_percentiles" in d:
            d["clip_percentiles"] = tuple(d["clip_percentiles"])
        return cls(**d)


def percentile_range(volume: np.ndarray, clip_percentiles=(0.5, 99.5), max_samples: int = 2_000_000):
    """Low and high intensity percentiles of ``volume``, from a regular subsample.

    A strided subsample of at most ``max_samples`` voxels keeps this fast on a
    184 x 630 x 630 volume (the percentiles of a smooth tomogram barely move).
    Non-finite voxels are ignored.
    """
    flat = volume.reshape(-1)
    step = max(1, flat.size // max_samples)
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(sample, clip_percentiles)
    return float(lo), float(hi)


def normalize(volume: np.ndarray, clip_percentiles=(0.5, 99.5), out: str = "uint8") -> np.ndarray:
    """Clip ``volume`` to its percentile range and scale it to 0..255 (uint8) or 0..1 (float32).

    A constant volume maps to all zeros rather than dividing by zero
    (:func:`preprocess_volume` refuses one instead).

    Parameters
    ----------
    volume : ndarray, any shape, float
    clip_percentiles : (float, float)
    out : ``"uint8"`` or ``"float"``
    """
    return _rescale(volume, *percentile_range(volume, clip_percentiles), out)


def _rescale(volume: np.ndarray, lo: float, hi: float, out: str = "uint8") -> np.ndarray:
    """``volume`` clipped to ``lo..hi`` and scaled to 0..255 (uint8) or 0..1 (float32)."""
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    x = np.clip((volume.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(scale), 0.0, 1.0)
    if out == "float":
        return x
    if out != "uint8":
        raise ValueError(f"out must be 'uint8' or 'float', not {out!r}")
    return np.rint(x * 255.0).astype(np.uint8)


def denoise(volume: np.ndarray, method: str = "gaussian", size_vox: float = 1.0) -> np.ndarray:
    """Light 3D noise reduction of a float volume (z, y, x); ``size_vox`` in voxels."""
    if method == "none" or size_vox <= 0:
        return volume
    v = volume.astype(np.float32, copy=False)
    if method == "gaussian":
        return ndimage.gaussian_filter(v, sigma=float(size_vox), mode="nearest")
    if method == "median":
        return ndimage.median_filter(v, size=max(1, int(round(size_vox))), mode="nearest")
    raise ValueError(f"unknown denoise method {method!r}")


def preprocess_volume(
    volume: np.ndarray, config: PreprocessConfig = PreprocessConfig(), source: str | Path | None = None
) -> np.ndarray:
    """Denoise then normalise a tomogram to uint8 (z, y, x).

    Raises :class:`CziiInputError` (naming ``source``, the file the volume came from)
    when the volume has no contrast: its clip percentiles are equal, so every image
    would be flat, yet a detector finds "particles" in flat images.
    """
    smooth = denoise(volume, config.denoise, config.denoise_size_vox)
    lo, hi = percentile_range(smooth, config.clip_percentiles)
    if not hi > lo:
        p_lo, p_hi = config.clip_percentiles
        raise CziiInputError(
            source,
            f"no contrast: the {p_lo:g} and {p_hi:g} intensity percentiles are both {lo:g} "
            "(a blank or nearly blank tomogram); no particle can be found in it",
        )
    return _rescale(smooth, lo, hi)


def stack_slices(volume_u8: np.ndarray, z_indices, slice_offset: int = 1) -> np.ndarray:
    """2.5D images: for each z in ``z_indices`` stack slices ``z - k, z, z + k`` as channels.

    Parameters
    ----------
    volume_u8 : ndarray (Z, Y, X)
        Preprocessed volume (normally uint8).
    z_indices : sequence of int
        Slices to make images of.
    slice_offset : int
        ``k``; neighbours beyond the volume repeat the edge slice.

    Returns
    -------
    ndarray (N, Y, X, 3)
        Channel-last images, the layout OpenCV and Ultralytics take.
    """
    z = np.asarray(z_indices, dtype=np.int64)
    n = volume_u8.shape[0]
    idx = np.stack([z - slice_offset, z, z + slice_offset], axis=-1).clip(0, n - 1)
    return np.ascontiguousarray(np.moveaxis(volume_u8[idx], 1, -1))
