"""The Kaggle data layout: the only module that builds data paths.

::

    {root}/{split}/static/ExperimentRuns/{run}/VoxelSpacing10.000/{type}.zarr
    {root}/train/overlay/ExperimentRuns/{run}/Picks/{particle}.json

``split`` is ``"train"`` or ``"test"``; ``type`` is ``"denoised"``, ``"wbp"``,
``"ctfdeconvolved"`` or ``"isonetcorrected"`` on Kaggle.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CziiInputError

#: Where Kaggle mounts the competition data inside a kernel.
KAGGLE_ROOT = Path("/kaggle/input/czii-cryo-et-object-identification")
#: The folder name of the 10 Angstrom voxel-spacing tomograms (a name, not the spacing:
#: the true spacing, 10.012444 Angstrom, is read from each zarr's ``.zattrs``).
VOXEL_SPACING_DIR = "VoxelSpacing10.000"
#: Kaggle's level-0 voxel size (Angstrom) in ``denoised.zarr/.zattrs``: what the shipped models were
#: trained at, and the simulator's default.
KAGGLE_VOXEL_SIZE_A = 10.012444537618887
SPLITS = ("train", "test")
DEFAULT_TOMOGRAM_TYPE = "denoised"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")


def runs_dir(root: str | Path, split: str) -> Path:
    """``{root}/{split}/static/ExperimentRuns``."""
    _check_split(split)
    return Path(root) / split / "static" / "ExperimentRuns"


def overlay_runs_dir(root: str | Path) -> Path:
    """``{root}/train/overlay/ExperimentRuns`` (ground-truth picks live here)."""
    return Path(root) / "train" / "overlay" / "ExperimentRuns"


def list_runs(root: str | Path, split: str) -> list[str]:
    """Names of the runs of ``split`` under ``root``, sorted.

    Raises :class:`CziiInputError` when the folder is missing or holds no run.
    """
    d = runs_dir(root, split)
    if not d.is_dir():
        raise CziiInputError(d, f"no {split!r} runs folder: is {root} a Kaggle-layout data root?")
    runs = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not runs:
        raise CziiInputError(d, f"the {split!r} runs folder holds no run")
    return runs


def list_pick_runs(root: str | Path) -> list[str]:
    """Names of the runs that have a ``Picks`` folder in the training overlay, sorted."""
    d = overlay_runs_dir(root)
    if not d.is_dir():
        raise CziiInputError(d, "no training overlay (picks) folder")
    return sorted(p.name for p in d.iterdir() if (p / "Picks").is_dir())


def run_dir(root: str | Path, split: str, run: str) -> Path:
    """``{root}/{split}/static/ExperimentRuns/{run}/VoxelSpacing10.000``."""
    return runs_dir(root, split) / run / VOXEL_SPACING_DIR


def tomogram_path(
    root: str | Path, split: str, run: str, tomo_type: str = DEFAULT_TOMOGRAM_TYPE
) -> Path:
    """Path of a run's ``{tomo_type}.zarr`` (it may not exist)."""
    return run_dir(root, split, run) / f"{tomo_type}.zarr"


def run_tomogram(root: str | Path | None, split: str, run: str, tomo_type: str = DEFAULT_TOMOGRAM_TYPE,
                 tomograms: dict[str, str | Path] | None = None) -> Path:
    """The zarr of ``run``: ``tomograms[run]`` where a ``{run: zarr path}`` mapping is given (a copick
    project's runs), else its :func:`tomogram_path` under ``root``."""
    return Path(tomograms[run]) if tomograms is not None else tomogram_path(root, split, run, tomo_type)


def tomogram_types(root: str | Path, split: str, run: str) -> list[str]:
    """The tomogram types present for a run (``denoised``, ``wbp``, ...), sorted."""
    d = run_dir(root, split, run)
    if not d.is_dir():
        raise CziiInputError(d, f"run {run!r} has no {VOXEL_SPACING_DIR} folder")
    return sorted(p.name[: -len(".zarr")] for p in d.iterdir() if p.name.endswith(".zarr"))


def picks_dir(root: str | Path, run: str) -> Path:
    """``{root}/train/overlay/ExperimentRuns/{run}/Picks``."""
    return overlay_runs_dir(root) / run / "Picks"


def picks_path(root: str | Path, run: str, particle: str) -> Path:
    """``{root}/train/overlay/ExperimentRuns/{run}/Picks/{particle}.json``."""
    return picks_dir(root, run) / f"{particle}.json"
