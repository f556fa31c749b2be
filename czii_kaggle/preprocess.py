"""Preprocessing shared by training and inference: resample, normalise, denoise, stack slices (2.5D).

The same :func:`read_at_voxel_size`, :func:`preprocess_volume` and :func:`stack_slices` feed the
dataset builder and the detectors, so a model always sees images made the same way, at the voxel
size it was trained at, whatever the tomogram's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import omezarr
from .errors import CziiInputError
from .layout import KAGGLE_VOXEL_SIZE_A


#: Per-tomogram spectral steps (see :func:`spectral_filter`).
SPECTRAL = ("none", "whiten", "whiten_zxy", "bandpass")


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
        ``k = 0`` gives three copies of slice z. Default 3 (30 A apart), the shipped model's
        (``czii_kaggle/recipes/shipped.json``); a bundle's own ``czii_config.json`` says its own.
    spectral : str
        Per-tomogram spectral step before the denoise and the percentile clip (:func:`spectral_filter`):
        ``"none"``, ``"whiten"`` (flat radial power spectrum), ``"whiten_zxy"`` (flat over
        depth and in-plane frequency apart) or ``"bandpass"`` (only the particles' scales, 20-400 A).
    voxel_size_A : float or None
        The voxel size (Angstrom) the model reads: a tomogram at another is resampled to it first
        (:func:`read_at_voxel_size`); ``None`` reads every tomogram as it comes. Default: Kaggle's,
        10.012444 A, which every shipped model was trained at (a bundle's ``czii_config.json``
        without the key means that too).
    """

    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    denoise: str = "gaussian"
    denoise_size_vox: float = 0.7
    slice_offset: int = 3
    spectral: str = "none"
    voxel_size_A: float | None = KAGGLE_VOXEL_SIZE_A

    def __post_init__(self):
        if self.voxel_size_A is not None and not (np.isfinite(self.voxel_size_A) and self.voxel_size_A > 0):
            raise ValueError(f"voxel_size_A must be a positive number or None, got {self.voxel_size_A!r}")
        lo, hi = self.clip_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"clip_percentiles must satisfy 0 <= lo < hi <= 100, got {self.clip_percentiles}")
        if self.denoise not in ("none", "gaussian", "median"):
            raise ValueError(f"denoise must be 'none', 'gaussian' or 'median', not {self.denoise!r}")
        if self.spectral not in SPECTRAL:
            raise ValueError(f"spectral must be one of {SPECTRAL}, not {self.spectral!r}")
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


#: A tomogram level whose voxel size is within this fraction of the wanted one is read as it is.
VOXEL_TOLERANCE = 0.02
#: Finer data than a model's is binned down to it at any ratio; coarser data is interpolated up by
#: at most this factor (beyond it the detail the model looks for is not in the tomogram).
MAX_UPSAMPLE = 2.0


def binned_origin_A(voxel_size_A: float, base_voxel_A: float) -> float:
    """Where voxel 0 of a mean-binned level lies (Angstrom), level 0's voxel ``i`` lying at
    ``i * base_voxel_A``: a level of ``voxel_size_A`` voxels averages level 0's from 0 on."""
    return (voxel_size_A - base_voxel_A) / 2.0


def resample(volume: np.ndarray, voxel_size_A: float, target_A: float, origin_in_A: float = 0.0,
             origin_out_A: float = 0.0) -> np.ndarray:
    """``volume`` on another voxel grid: linear interpolation, Gaussian anti-aliasing when coarser.

    Parameters
    ----------
    volume : ndarray, shape (nz, ny, nx)
        Voxel ``i`` (on every axis) lies at ``origin_in_A + i * voxel_size_A`` Angstrom.
    voxel_size_A, target_A : float
        The input's and the output's voxel sizes (Angstrom, isotropic).
    origin_in_A, origin_out_A : float
        Where the input's and the output's voxel 0 lie (Angstrom).

    Returns
    -------
    ndarray, float32
        Voxel ``j`` lies at ``origin_out_A + j * target_A``; as many voxels per axis as fit inside
        the input's extent. When the output is coarser, the input is first smoothed by a Gaussian of
        ``(target_A / voxel_size_A - 1) / 2`` input voxels (scikit-image's anti-aliasing rule).
    """
    if not (voxel_size_A > 0 and target_A > 0):
        raise ValueError(f"voxel sizes must be positive, got {voxel_size_A!r} and {target_A!r}")
    scale = target_A / voxel_size_A
    offset = (origin_out_A - origin_in_A) / voxel_size_A
    shape = tuple(int(np.floor((n - 1 - offset) / scale + 1e-9)) + 1 for n in volume.shape)
    if min(shape) < 1:
        raise ValueError(f"a volume of {volume.shape} voxels of {voxel_size_A:g} A holds no voxel of {target_A:g} A")
    src = np.asarray(volume, dtype=np.float32)
    if scale > 1.0:
        src = ndimage.gaussian_filter(src, sigma=(scale - 1.0) / 2.0)
    return ndimage.affine_transform(src, np.full(3, scale), offset=np.full(3, offset), output_shape=shape,
                                    order=1, mode="nearest", prefilter=False, output=np.float32)


def read_at_voxel_size(zarr_path: str | Path, voxel_size_A: float, origin_A: float = 0.0,
                       tolerance: float = VOXEL_TOLERANCE) -> tuple[np.ndarray, float]:
    """The tomogram at ``zarr_path`` on a grid of ``voxel_size_A`` voxels, whatever its own.

    It reads the coarsest level whose voxels are no larger than ``voxel_size_A`` (within
    ``tolerance``; level 0 when every level is coarser) and returns it as it is when its voxel size
    and voxel 0 match the wanted ones within ``tolerance`` (every Kaggle tomogram, for every shipped
    model); otherwise it :func:`resample` s that level onto the wanted grid.

    Parameters
    ----------
    zarr_path : str or Path
        The tomogram's ``{type}.zarr`` folder.
    voxel_size_A : float
        The voxel size the model reads (Angstrom).
    origin_A : float
        Where the wanted grid's voxel 0 lies, level 0's voxel ``i`` lying at ``i * (its size)``
        (:func:`binned_origin_A` for a model that reads a binned level, 0 for level 0).
    tolerance : float
        Relative voxel-size difference read as it is.

    Returns
    -------
    volume : ndarray, float32, shape (nz, ny, nx)
    voxel_size_A : float
        The voxel size returned: the level's own when read as it is, else ``voxel_size_A``.

    Raises
    ------
    CziiInputError
        As :func:`czii_kaggle.omezarr.read_tomogram`, or when even level 0 is coarser than
        :data:`MAX_UPSAMPLE` times ``voxel_size_A`` (naming both sizes).
    """
    zarr_path = Path(zarr_path)
    sizes = [omezarr.read_voxel_size(zarr_path, level) for level in range(omezarr.n_levels(zarr_path))]
    fine = [lv for lv, v in enumerate(sizes) if v <= voxel_size_A * (1.0 + tolerance)]
    level = max(fine, key=lambda lv: sizes[lv]) if fine else 0
    if sizes[level] > MAX_UPSAMPLE * voxel_size_A:
        raise CziiInputError(zarr_path, f"its finest voxels are {sizes[level]:.3f} A, more than {MAX_UPSAMPLE:g} times "
                                        f"the {voxel_size_A:.3f} A the model was trained at (wrong resolution)")
    origin_level_A = binned_origin_A(sizes[level], sizes[0])
    volume, size_A = omezarr.read_tomogram(zarr_path, level=level)
    if abs(size_A / voxel_size_A - 1.0) <= tolerance and abs(origin_level_A - origin_A) <= tolerance * size_A:
        return volume, size_A
    return resample(volume, size_A, voxel_size_A, origin_level_A, origin_A), float(voxel_size_A)


def read_volume(zarr_path: str | Path, config: PreprocessConfig) -> tuple[np.ndarray, float]:
    """Level 0 of the tomogram at ``zarr_path`` as ``config`` has a model read it: at
    ``config.voxel_size_A`` (:func:`read_at_voxel_size`), or as it comes where that is ``None``.
    Returns the volume and its voxel size (Angstrom)."""
    if config.voxel_size_A is None:
        return omezarr.read_tomogram(zarr_path)
    return read_at_voxel_size(zarr_path, config.voxel_size_A)


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
    """``volume`` clipped to ``lo..hi`` and scaled to 0..255 (uint8) or 0..1 (float32).

    One float32 copy, worked in place (a full tomogram: one 0.3 GB array instead of one per step, 0.11 s
    against 0.19 s here; the same float32 operations in the same order, so the same values bit for bit)."""
    if out not in ("uint8", "float"):
        raise ValueError(f"out must be 'uint8' or 'float', not {out!r}")
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    x = np.subtract(volume, np.float32(lo), dtype=np.float32)  # a new array: the input is never written
    x *= np.float32(scale)
    np.clip(x, 0.0, 1.0, out=x)
    if out == "float":
        return x
    x *= np.float32(255.0)
    return np.rint(x, out=x).astype(np.uint8)


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


def spectral_filter(volume: np.ndarray, method: str = "none", n_bins: int = 256) -> np.ndarray:
    """A per-tomogram spectral step, meant to make tomograms of different looks alike.

    ``"whiten"``: divide the spectrum by the square root of its own radially averaged
    power (``n_bins`` shells), so every scale carries the same power whatever the CTF,
    the noise colour or the reconstruction filter did. ``"whiten_zxy"``: the same over a
    grid of depth frequency ``|fz|`` (``n_bins / 4`` bins) by in-plane frequency
    ``sqrt(fy^2 + fx^2)`` (``n_bins / 2``), so a resolution that differs between z and x-y
    (an anisotropic filter, the elongation of the missing wedge) is evened out too, then a fixed
    Gaussian low-pass of 1 voxel, so every tomogram leaves with the same power spectrum. A linear
    filter scales signal and noise of a frequency alike, so whitening leaves each frequency's
    signal-to-noise ratio as it was and takes away only what the filter did to its power.
    ``"bandpass"``: keep the scales of the particles, a Gaussian band from 2 voxels (~20 A at
    level 0) to 40 voxels (~400 A), removing slow gradients and pixel noise. ``"none"``: the volume unchanged.
    Frequencies are in cycles per voxel, so the band is in voxels whatever the voxel size.
    Returns float32 (z, y, x).
    """
    if method == "none":
        return volume
    if method not in SPECTRAL:
        raise ValueError(f"spectral must be one of {SPECTRAL}, not {method!r}")
    import scipy.fft

    v = np.asarray(volume, dtype=np.float32)
    shape = v.shape
    spec = scipy.fft.rfftn(v - np.float32(v.mean()), workers=-1)
    # frequencies of one z-plane of the spectrum; the work goes plane by plane (no volume-sized
    # temporaries: about 20x faster than one bincount over the whole spectrum, and less memory)
    fz = np.fft.fftfreq(shape[0]).astype(np.float32)
    fy = np.fft.fftfreq(shape[1]).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(shape[2]).astype(np.float32)[None, :]
    fyx2 = fy * fy + fx * fx

    def f2(z: int) -> np.ndarray:  # squared frequency of plane z
        return fz[z] * fz[z] + fyx2

    if method in ("whiten", "whiten_zxy"):
        if method == "whiten":
            n_idx = 2 * n_bins

            def bins(z: int) -> np.ndarray:  # shells up to sqrt(3)/2 ~ 0.87
                return np.minimum((np.sqrt(f2(z)) * n_idx).astype(np.intp), n_idx - 1)
        else:
            nz, nxy = max(n_bins // 4, 1), max(n_bins // 2, 1)
            n_idx = nz * nxy
            iz = np.minimum((np.abs(fz) * 2 * nz).astype(np.intp), nz - 1)  # |fz| up to 0.5
            ixy = np.minimum((np.sqrt(fyx2) * np.float32(np.sqrt(2) * nxy)).astype(np.intp), nxy - 1)

            def bins(z: int) -> np.ndarray:  # |f_xy| up to sqrt(2)/2
                return iz[z] * nxy + ixy
        power_sum, count = np.zeros(n_idx), np.zeros(n_idx)
        for z, plane in enumerate(spec):
            b = bins(z).ravel()
            power_sum += np.bincount(b, (plane.real**2 + plane.imag**2).ravel(), n_idx)
            count += np.bincount(b, minlength=n_idx)
        gain = (1.0 / np.sqrt(np.maximum(power_sum / np.maximum(count, 1), 1e-30))).astype(np.float32)
        gain[0] = 0.0
        for z, plane in enumerate(spec):
            g = gain[bins(z)]
            if method == "whiten_zxy":  # the common target: a Gaussian of 1 voxel
                g *= np.exp(np.float32(-2 * np.pi**2) * f2(z))
            plane *= g
    else:
        lo_sigma, hi_sigma = 2.0, 40.0  # voxels
        for z, plane in enumerate(spec):
            ff = f2(z)
            plane *= (np.exp(-2 * np.pi**2 * lo_sigma**2 * ff) - np.exp(-2 * np.pi**2 * hi_sigma**2 * ff)).astype(np.float32)
    return scipy.fft.irfftn(spec, s=shape, workers=-1).astype(np.float32, copy=False)


def preprocess_volume(
    volume: np.ndarray, config: PreprocessConfig = PreprocessConfig(), source: str | Path | None = None
) -> np.ndarray:
    """Spectral step (none by default), denoise, then normalise a tomogram to uint8 (z, y, x).

    Raises :class:`CziiInputError` (naming ``source``, the file the volume came from)
    when the volume has no contrast: its clip percentiles are equal, so every image
    would be flat, yet a detector finds "particles" in flat images.
    """
    smooth = denoise(spectral_filter(volume, config.spectral), config.denoise, config.denoise_size_vox)
    lo, hi = percentile_range(smooth, config.clip_percentiles)
    if not hi > lo:
        p_lo, p_hi = config.clip_percentiles
        raise CziiInputError(
            source,
            f"no contrast: the {p_lo:g} and {p_hi:g} intensity percentiles are both {lo:g} "
            "(a blank or nearly blank tomogram); no particle can be found in it",
        )
    return _rescale(smooth, lo, hi)


def stack_slices(volume_u8: np.ndarray, z_indices, slice_offset: int = 3) -> np.ndarray:
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
