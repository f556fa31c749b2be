"""The YOLO slice dataset: per-slice boxes from picks, images + labels + ``data.yaml``.

A particle is labelled on slice z when its centre lies within
``center_fraction * radius`` of that slice; its box is either the full
diameter or the cross-section of the sphere at that z. Validation is split
by run, never by slice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from . import layout, particles, picks as picks_io
from .errors import CziiInputError
from .outputs import atomic_dir
from .preprocess import PreprocessConfig, preprocess_volume, read_volume, stack_slices

BOX_COLUMNS = ["experiment", "particle_type", "class_id", "z_index", "x", "y", "w", "h"]


@dataclass(frozen=True)
class LabelConfig:
    """How picks become per-slice boxes.

    Attributes
    ----------
    center_fraction : float
        A particle gets a box on slice z when ``|z - z_centre| <= center_fraction * radius``.
    box_mode : str
        ``"diameter"``: every box is the full diameter; ``"section"``: the sphere's
        cross-section at that z, never smaller than ``min_box_fraction`` of the diameter.
    min_box_fraction : float
        Smallest ``"section"`` box side as a fraction of the diameter.
    box_scale : float
        Multiplies every box side (1.0: the particle's own size).
    """

    center_fraction: float = 0.6
    box_mode: str = "diameter"
    min_box_fraction: float = 0.5
    box_scale: float = 1.0

    def __post_init__(self):
        if self.box_mode not in ("diameter", "section"):
            raise ValueError(f"box_mode must be 'diameter' or 'section', not {self.box_mode!r}")
        if not 0 < self.center_fraction <= 1:
            raise ValueError(f"center_fraction must be in (0, 1], got {self.center_fraction}")


def slice_boxes(
    picks: pd.DataFrame, voxel_size_A: float, n_slices: int, config: LabelConfig = LabelConfig()
) -> pd.DataFrame:
    """Boxes of every particle on every slice it is labelled on.

    Parameters
    ----------
    picks : DataFrame
        ``experiment, particle_type, x, y, z`` in Angstrom.
    voxel_size_A : float
        Angstrom per voxel; slice ``i`` lies at ``z = i * voxel_size_A``.
    n_slices : int
        Number of z slices of the tomogram (slices outside are dropped).

    Returns
    -------
    DataFrame
        :data:`BOX_COLUMNS`: ``z_index`` (int slice), box centre ``x, y`` and size ``w, h``,
        all in Angstrom; ``class_id`` indexes :data:`particles.PARTICLES`.
    """
    if len(picks) == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in BOX_COLUMNS}).astype(
            {"experiment": object, "particle_type": object, "class_id": "int64", "z_index": "int64"}
        )
    for name in set(picks["particle_type"]):
        particles.get(name)  # a clear error for an unknown type
    radius_A = picks["particle_type"].map(particles.RADII_A).to_numpy(float)
    z_vox = picks["z"].to_numpy(float) / voxel_size_A
    reach_vox = config.center_fraction * radius_A / voxel_size_A
    z_lo = np.maximum(np.ceil(z_vox - reach_vox), 0).astype(np.int64)
    z_hi = np.minimum(np.floor(z_vox + reach_vox), n_slices - 1).astype(np.int64)
    count = np.maximum(z_hi - z_lo + 1, 0)
    owner = np.repeat(np.arange(len(picks)), count)
    z_index = z_lo[owner] + (np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count))
    side_A = 2.0 * radius_A[owner]
    if config.box_mode == "section":
        dz_A = z_index * voxel_size_A - picks["z"].to_numpy(float)[owner]
        chord = 2.0 * np.sqrt(np.clip(radius_A[owner] ** 2 - dz_A**2, 0.0, None))
        side_A = np.maximum(chord, config.min_box_fraction * side_A)
    side_A = side_A * config.box_scale
    names = picks["particle_type"].to_numpy()[owner]
    return pd.DataFrame(
        {
            "experiment": picks["experiment"].to_numpy()[owner],
            "particle_type": names,
            "class_id": picks["particle_type"].map(particles.CLASS_IDS).to_numpy(np.int64)[owner],
            "z_index": z_index.astype(np.int64),
            "x": picks["x"].to_numpy(float)[owner],
            "y": picks["y"].to_numpy(float)[owner],
            "w": side_A,
            "h": side_A,
        }
    )


def yolo_labels(
    boxes: pd.DataFrame,
    voxel_size_A: float,
    origin_vox: tuple[int, int],
    size_vox: tuple[int, int],
    min_visible: float = 0.4,
) -> np.ndarray:
    """YOLO label rows ``class xc yc w h`` (normalised) of boxes inside one image window.

    Parameters
    ----------
    boxes : DataFrame
        Boxes of one slice (:func:`slice_boxes` rows), Angstrom.
    origin_vox : (y0, x0)
        Top-left voxel of the window in the full slice.
    size_vox : (height, width)
        Window size in voxels.
    min_visible : float
        Boxes with less than this fraction of their area inside the window are dropped.

    Returns
    -------
    ndarray (N, 5) float
    """
    if len(boxes) == 0:
        return np.zeros((0, 5))
    (y0, x0), (hh, ww) = origin_vox, size_vox
    cx = boxes["x"].to_numpy(float) / voxel_size_A - x0
    cy = boxes["y"].to_numpy(float) / voxel_size_A - y0
    bw = boxes["w"].to_numpy(float) / voxel_size_A
    bh = boxes["h"].to_numpy(float) / voxel_size_A
    x1, x2 = np.clip(cx - bw / 2, 0, ww), np.clip(cx + bw / 2, 0, ww)
    y1, y2 = np.clip(cy - bh / 2, 0, hh), np.clip(cy + bh / 2, 0, hh)
    visible = (x2 - x1) * (y2 - y1) / np.maximum(bw * bh, 1e-9)
    keep = visible >= min_visible
    return np.column_stack(
        [
            boxes["class_id"].to_numpy()[keep],
            ((x1 + x2) / 2 / ww)[keep],
            ((y1 + y2) / 2 / hh)[keep],
            ((x2 - x1) / ww)[keep],
            ((y2 - y1) / hh)[keep],
        ]
    )


def tile_origins(length: int, tile: int | None, overlap: int = 0) -> list[int]:
    """Evenly spaced start offsets of windows of side ``tile`` covering ``length``.

    Neighbouring windows overlap by at least ``overlap``; the first starts at 0 and the
    last ends flush with ``length``. ``tile=None`` (or a tile as long as ``length``) gives ``[0]``.
    """
    if tile is None or tile >= length:
        return [0]
    n = int(np.ceil((length - tile) / max(1, tile - overlap))) + 1
    return [int(v) for v in np.rint(np.linspace(0, length - tile, n))]


@dataclass(frozen=True)
class DatasetConfig:
    """Options of :func:`build_dataset`; the defaults are the shipped model's recipe
    (``czii_kaggle/recipes/shipped.json``, :mod:`czii_kaggle.recipe`).

    Attributes
    ----------
    preprocess : PreprocessConfig
    labels : LabelConfig
    tomo_type : str
        Which tomogram of each run (``denoised`` on Kaggle).
    slice_step : int
        Use every ``slice_step``-th slice (neighbouring slices are nearly identical).
    tile_vox : int or None
        Cut each slice into ``tile_vox`` square crops (fast CPU training); None: whole slices.
    tile_overlap_vox : int
    empty_fraction : float
        Fraction of crops without any box that are kept (background examples).
    rot90 : bool
        Write each image at a random multiple of 90 degrees in x-y (with flips at train
        time this covers every x-y symmetry a tomogram has).
    seed : int
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE
    slice_step: int = 3
    tile_vox: int | None = 320
    tile_overlap_vox: int = 0
    empty_fraction: float = 0.05
    rot90: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.slice_step < 1:
            raise ValueError(f"slice_step must be >= 1, not {self.slice_step}")
        if self.tile_vox is not None and self.tile_vox < 1:
            raise ValueError(f"tile_vox must be >= 1 or None (whole slices), not {self.tile_vox}")
        if self.tile_overlap_vox < 0 or (self.tile_vox is not None and self.tile_overlap_vox >= self.tile_vox):
            raise ValueError(f"tile_overlap_vox must be >= 0 and below tile_vox, not {self.tile_overlap_vox}")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in 0..1, not {self.empty_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)


#: What :func:`build_dataset` writes in its folder (Ultralytics adds ``labels/*.cache`` inside).
DATASET_ENTRIES = frozenset({"images", "labels", "data.yaml"})


def _is_our_dataset(out_dir: Path) -> bool:
    """``out_dir`` holds a dataset :func:`build_dataset` wrote, and nothing else."""
    if not set(p.name for p in out_dir.iterdir()) <= DATASET_ENTRIES:
        return False
    try:
        meta = yaml.safe_load((out_dir / "data.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("czii"), dict)


def _check_output_folder(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that is not empty, unless ``overwrite`` and it holds only a previous dataset of ours."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CziiInputError(out_dir, "exists and is a file; the dataset is a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise CziiInputError(out_dir, "folder is not empty: new images beside old ones would mix runs between "
                                      "train and val; give a new folder, or overwrite=True (--overwrite) to "
                                      "replace a previous dataset")
    if not _is_our_dataset(out_dir):
        others = sorted(p.name for p in out_dir.iterdir() if p.name not in DATASET_ENTRIES)
        what = f"it also holds {', '.join(others[:5])}" if others else "its data.yaml was not written by build_dataset"
        raise CziiInputError(out_dir, f"is not a slice dataset of ours ({what}); not replacing it")


def _rot90_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """Rotate normalised YOLO labels like ``np.rot90(image, k)`` (counter-clockwise)."""
    out = labels.copy()
    for _ in range(k % 4):
        c, xc, yc, w, h = out.T
        out = np.column_stack([c, yc, 1.0 - xc, h, w])
    return out


def build_dataset(
    root: str | Path,
    out_dir: str | Path,
    val_runs: list[str] | None = None,
    runs: list[str] | None = None,
    config: DatasetConfig = DatasetConfig(),
    overwrite: bool = False,
) -> Path:
    """Write a YOLO dataset from the training runs of a Kaggle-layout root.

    Writes ``{out_dir}/images/{train,val}/*.png``, ``{out_dir}/labels/{train,val}/*.txt``
    and ``{out_dir}/data.yaml`` (class names in :data:`particles.PARTICLES` order). The
    folder is built beside ``out_dir`` under a temporary name and renamed when complete.

    Parameters
    ----------
    root : path
        Kaggle-layout data root with ``train/static`` tomograms and ``train/overlay`` picks.
    out_dir : path
        A new or empty folder.
    val_runs : list of str
        Runs held out for validation (whole runs). Default: the last run.
    runs : list of str
        Runs to use; default every training run with picks.
    overwrite : bool
        Replace a previous dataset of ours at ``out_dir`` (a folder holding only
        ``images/``, ``labels/`` and a ``data.yaml`` this function wrote). Anything else
        there is never deleted: a folder that is not empty is refused.

    Returns
    -------
    Path of ``data.yaml``.

    Raises
    ------
    CziiInputError
        Before any tomogram is read: no runs, a run without a tomogram or picks, a
        validation run not among the runs (or every run held out), ``out_dir`` not
        empty (without ``overwrite``) or not a dataset of ours.
    """
    import cv2

    out_dir = Path(out_dir)
    runs = list(runs) if runs is not None else layout.list_pick_runs(root)
    if not runs:
        raise CziiInputError(root, "no training runs with picks")
    val_runs = list(val_runs) if val_runs is not None else runs[-1:]
    unknown = sorted(set(val_runs) - set(runs))
    if unknown:
        raise CziiInputError(root, f"validation runs {unknown} are not among the training runs {runs}")
    if set(runs) <= set(val_runs):
        raise CziiInputError(root, f"every run is a validation run ({runs}): none is left to train on")
    for run in runs:
        tomo = layout.tomogram_path(root, "train", run, config.tomo_type)
        if not tomo.exists():
            raise CziiInputError(tomo, f"run {run!r} has no {config.tomo_type} tomogram")
        if not layout.picks_dir(root, run).is_dir():
            raise CziiInputError(layout.picks_dir(root, run), f"run {run!r} has no Picks folder")
    _check_output_folder(out_dir, overwrite)
    with atomic_dir(out_dir, replace=overwrite) as tmp:
        n_images = _write_images(root, tmp, runs, val_runs, config, cv2)
        (tmp / "data.yaml").write_text(
            yaml.safe_dump(
                {
                    "path": str(out_dir.resolve()),
                    "train": "images/train",
                    "val": "images/val",
                    "names": dict(enumerate(particles.NAMES)),
                    "czii": {"train_runs": [r for r in runs if r not in val_runs], "val_runs": val_runs,
                             "images": n_images, "config": config.to_dict()},
                },
                sort_keys=False,
            )
        )
    return out_dir / "data.yaml"


def _write_images(root, out_dir: Path, runs: list[str], val_runs: list[str], config: DatasetConfig, cv2) -> dict:
    """Write every run's images and labels under ``out_dir``; returns the image count per split."""
    rng = np.random.default_rng(config.seed)
    n_images = {"train": 0, "val": 0}
    for split in n_images:
        (out_dir / "images" / split).mkdir(parents=True)
        (out_dir / "labels" / split).mkdir(parents=True)
    for run in tqdm(runs, desc="dataset", unit="run"):
        split = "val" if run in val_runs else "train"
        tomo = layout.tomogram_path(root, "train", run, config.tomo_type)
        volume, voxel_size_A = read_volume(tomo, config.preprocess)
        vol_u8 = preprocess_volume(volume, config.preprocess, source=tomo)
        del volume
        boxes = slice_boxes(picks_io.read_run_picks(root, run), voxel_size_A, vol_u8.shape[0], config.labels)
        by_slice = dict(tuple(boxes.groupby("z_index")))
        ny, nx = vol_u8.shape[1:]
        # validation images are cut like training ones (Ultralytics validates at the training
        # imgsz; a whole slice would be shrunk), but never rotated
        tile = config.tile_vox
        ys, xs = tile_origins(ny, tile, config.tile_overlap_vox), tile_origins(nx, tile, config.tile_overlap_vox)
        th, tw = (min(tile, ny), min(tile, nx)) if tile else (ny, nx)
        for z in range(0, vol_u8.shape[0], config.slice_step):
            image = stack_slices(vol_u8, [z], config.preprocess.slice_offset)[0]
            z_boxes = by_slice.get(z, boxes.iloc[:0])
            for y0 in ys:
                for x0 in xs:
                    labels = yolo_labels(z_boxes, voxel_size_A, (y0, x0), (th, tw))
                    if len(labels) == 0 and rng.random() >= config.empty_fraction:
                        continue
                    crop = image[y0 : y0 + th, x0 : x0 + tw]
                    if split == "train" and config.rot90:
                        k = int(rng.integers(4))
                        crop, labels = np.rot90(crop, k), _rot90_labels(labels, k)
                    stem = f"{run}_z{z:03d}_y{y0:03d}_x{x0:03d}"
                    image_path = out_dir / "images" / split / f"{stem}.png"
                    if not cv2.imwrite(str(image_path), np.ascontiguousarray(crop)):
                        raise OSError(f"{image_path}: OpenCV could not write the image")
                    np.savetxt(
                        out_dir / "labels" / split / f"{stem}.txt",
                        labels,
                        fmt=["%d", "%.6f", "%.6f", "%.6f", "%.6f"],
                    )
                    n_images[split] += 1
    return n_images
