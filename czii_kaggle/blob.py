"""A training-free floor: a scale-space (difference-of-Gaussians) blob detector, one size window per type.

Tomogram in, scored 3D candidates per class out, in the same frame as the YOLO path's
:func:`czii_kaggle.aggregate.aggregate` (``apply_thresholds=False``), so the same
:func:`czii_kaggle.aggregate.select` (thresholds, minimum share, 3D NMS) and
:func:`czii_kaggle.tune.tune_thresholds` apply. Nothing is learnt but the per-class
thresholds, so it measures what the data give away to size alone, on any look.

For each type of radius ``r``: the tomogram (read at a coarser zarr level, ~20 A at level
1) is negated (dense = dark in a tomogram), robustly standardised and clipped (gold beads
would dominate), then band-passed with a difference of Gaussians of sigmas
``inner_fraction * r`` and ``outer_fraction * r`` (0.6 and 1.2: of 0.45 / 0.9, 0.6 / 1.2
and 0.8 / 1.6 it put the most apo-ferritin and thyroglobulin centres within the match
radius on a classic medium run; level 0 did no better at ten times the time): a particle of about that size gives a
peak at its centre. The response is standardised again (robust z over the volume); its
local maxima within ``0.5 r`` above ``min_z`` are the type's candidates, with
``score = z / (z + score_half_z)`` (0..1). A candidate's ``share`` is its z against the
best other type's z at the same voxel (scale selection: the size window that fits best
wins), so ``min_share`` tuning picks the type from the size. ``n_slices`` is 1 (the
detector has no per-slice support): tune with ``min_support = 1``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from . import omezarr, layout
from .aggregate import CANDIDATE_COLUMNS, AggregateConfig, empty_candidates
from .particles import NAMES, PARTICLES


@dataclass(frozen=True)
class BlobConfig:
    """Options of :func:`blob_candidates`.

    Attributes
    ----------
    level : int
        Zarr level read (0: 10 A, 1: 20 A, 2: 40 A voxels).
    inner_fraction, outer_fraction : float
        Sigmas of the difference of Gaussians as fractions of the type's radius.
    clip_sigma : float
        The standardised tomogram is clipped to +- this before filtering.
    min_z : float
        A local maximum is a candidate when its standardised response exceeds this.
    score_half_z : float
        ``score = z / (z + score_half_z)``: the z of score 0.5.
    max_per_type : int
        At most this many candidates per type per tomogram (the highest).
    """

    level: int = 1
    inner_fraction: float = 0.6
    outer_fraction: float = 1.2
    clip_sigma: float = 4.0
    min_z: float = 1.5
    score_half_z: float = 5.0
    max_per_type: int = 600

    def __post_init__(self) -> None:
        if not 0 < self.inner_fraction < self.outer_fraction:
            raise ValueError(f"need 0 < inner_fraction < outer_fraction, not {self.inner_fraction}, "
                             f"{self.outer_fraction}")
        if self.level not in (0, 1, 2):
            raise ValueError(f"level must be 0, 1 or 2, not {self.level!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def start_config() -> AggregateConfig:
    """The aggregate config the blob detector's thresholds are tuned from: ``min_support`` 1, no threshold."""
    cfg = AggregateConfig()
    for name in NAMES:
        cfg = cfg.with_params(name, min_support=1, conf_threshold=0.0)
    return cfg


def _robust_z(volume: np.ndarray, max_samples: int = 1_000_000) -> tuple[float, float]:
    """Median and robust std (1.4826 MAD) of a volume from a regular subsample."""
    flat = volume.reshape(-1)
    sample = flat[:: max(1, flat.size // max_samples)]
    sample = sample[np.isfinite(sample)]
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med))) * 1.4826
    return med, max(mad, 1e-12)


def blob_candidates(
    volume: np.ndarray, voxel_size_A: float, experiment: str, config: BlobConfig = BlobConfig(),
    origin_A: float = 0.0,
) -> pd.DataFrame:
    """Scored 3D candidates of every type in one tomogram.

    Parameters
    ----------
    volume : ndarray (z, y, x), float
        The tomogram at voxel size ``voxel_size_A`` (any level); dense = dark.
    voxel_size_A : float
        Its voxel size in Angstrom.
    experiment : str
        Run name written into the ``experiment`` column.
    config : BlobConfig
    origin_A : float
        Position (Angstrom) of voxel 0's centre: 0 at level 0; a level binned ``b`` times by
        mean (Kaggle's levels) has it at ``(b - 1) / 2`` level-0 voxels.

    Returns
    -------
    DataFrame
        :data:`czii_kaggle.aggregate.CANDIDATE_COLUMNS` (``x, y, z`` Angstrom, voxel index
        ``i`` at ``origin_A + i * voxel_size_A``; ``score`` and ``share`` in 0..1; ``n_slices`` 1).
    """
    v = np.asarray(volume, dtype=np.float32)
    med, sd = _robust_z(v)
    v = (np.float32(med) - v) / np.float32(sd)  # negate: particles positive
    np.clip(v, -config.clip_sigma, config.clip_sigma, out=v)
    blurred: dict[float, np.ndarray] = {}

    def blur(sigma_vox: float) -> np.ndarray:
        key = round(sigma_vox, 1)
        if key not in blurred:
            blurred[key] = ndimage.gaussian_filter(v, key, mode="nearest", truncate=3.0)
        return blurred[key]

    z_maps = []
    for p in PARTICLES:
        r_vox = p.radius_A / voxel_size_A
        d = blur(config.inner_fraction * r_vox) - blur(config.outer_fraction * r_vox)
        m, s = _robust_z(d)
        d -= np.float32(m)
        d /= np.float32(s)
        z_maps.append(d)
    blurred.clear()
    return map_candidates(z_maps, voxel_size_A, experiment, config, origin_A)


def map_candidates(
    z_maps: list[np.ndarray], voxel_size_A: float, experiment: str, config: BlobConfig = BlobConfig(),
    origin_A: float = 0.0,
) -> pd.DataFrame:
    """Candidates of every type from one standardised response map per type (in :data:`PARTICLES`' order):
    local maxima within ``0.5 r`` above ``config.min_z``, at most ``config.max_per_type`` per type, scored
    ``z / (z + config.score_half_z)``, with their ``share`` against the best other type's z at the same voxel.
    The frame and coordinates of :func:`blob_candidates`, whose second half this is."""
    if len(z_maps) != len(PARTICLES):
        raise ValueError(f"need one map per type ({len(PARTICLES)}), not {len(z_maps)}")
    rows = []
    for k, p in enumerate(PARTICLES):
        d = z_maps[k]
        r_vox = p.radius_A / voxel_size_A
        size = 2 * max(1, int(round(0.5 * r_vox))) + 1
        peaks = (d == ndimage.maximum_filter(d, size=size, mode="nearest")) & (d > config.min_z)
        idx = np.argwhere(peaks)
        z = d[peaks]
        if len(z) > config.max_per_type:
            top = np.argsort(-z)[: config.max_per_type]
            idx, z = idx[top], z[top]
        others = np.max([z_maps[j][tuple(idx.T)] for j in range(len(PARTICLES)) if j != k], axis=0) if len(idx) else z
        share = np.where(z + np.maximum(others, 0) > 0, z / (z + np.maximum(others, 0)), 1.0)
        rows.append(pd.DataFrame({
            "experiment": experiment, "particle_type": p.name,
            "x": origin_A + idx[:, 2] * voxel_size_A, "y": origin_A + idx[:, 1] * voxel_size_A,
            "z": origin_A + idx[:, 0] * voxel_size_A,
            "score": z / (z + config.score_half_z), "n_slices": np.ones(len(z), np.int64), "share": share,
        }))
    out = pd.concat(rows, ignore_index=True) if rows else empty_candidates()
    out = out.astype({"x": float, "y": float, "z": float, "score": float, "share": float, "experiment": object,
                      "particle_type": object})
    out = out.sort_values(["experiment", "particle_type", "score"], ascending=[True, True, False], kind="stable")
    return out[list(CANDIDATE_COLUMNS)].reset_index(drop=True)


def blob_candidates_runs(
    root: str | Path, split: str, runs: list[str] | None = None, config: BlobConfig = BlobConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`blob_candidates` of every run of a Kaggle-layout root (at ``config.level``).

    Returns the candidates of all runs and a report (``experiment, read_s, detect_s, total_s``).
    """
    runs = layout.list_runs(root, split) if runs is None else list(runs)
    frames, report = [], []
    for run in runs:
        t0 = time.perf_counter()
        volume, vs = omezarr.read_tomogram(layout.tomogram_path(root, split, run), level=config.level)
        t1 = time.perf_counter()
        bin_factor = 2**config.level
        frames.append(blob_candidates(volume, vs, run, config, origin_A=0.5 * (bin_factor - 1) * vs / bin_factor))
        t2 = time.perf_counter()
        report.append({"experiment": run, "read_s": t1 - t0, "detect_s": t2 - t1, "total_s": t2 - t0})
    cands = pd.concat(frames, ignore_index=True) if frames else empty_candidates()
    return cands, pd.DataFrame(report)
