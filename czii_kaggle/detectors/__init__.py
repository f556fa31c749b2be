"""The detectors: each turns one tomogram into scored 3D candidates per class.

A detector (:class:`Detector`) turns one tomogram into *unthresholded* scored 3D
candidates per class (:data:`czii_kaggle.aggregate.CANDIDATE_COLUMNS`: ``experiment,
particle_type, x, y, z`` in Angstrom, ``score``, ``n_slices``, ``share``) and knows its
own selection (thresholds + 3D NMS). One module each:

- ``yolo`` (:mod:`czii_kaggle.detectors.yolo`): the 2.5D YOLO path (slices -> boxes ->
  :func:`czii_kaggle.aggregate.aggregate`), weights ``model.pt`` / ``model.onnx``;
- ``heatmap`` (:mod:`czii_kaggle.detectors.heatmap`, network in
  :mod:`czii_kaggle.detectors.heatmap_net`): the 3D heatmap network, weights
  ``heatmap.pt`` / ``heatmap.onnx``. A bundle may hold more heatmap networks beside it
  (another resolution, another training), each a detector of its own named
  ``heatmap_<tag>`` (:func:`detector_kind`), weights ``heatmap_<tag>.pt``.

A bundle folder (:mod:`czii_kaggle.bundle`) holds any of them and opens them
(:func:`czii_kaggle.bundle.load_detectors`); :func:`run_candidates` runs detectors over
runs (a run that fails in one detector is reported and skipped for it only) and
:func:`select_picks` selects each run's picks: one detector, its own selection; several,
the ensemble's (:mod:`czii_kaggle.ensemble`), or, where some detector failed on a run,
the own selection of one that succeeded. :func:`czii_kaggle.predict.predict_detectors`
does all three for a bundle folder.
"""
from __future__ import annotations

import json
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
from tqdm.auto import tqdm

from .. import layout
from ..aggregate import AggregateConfig, empty_candidates
from ..ensemble import EnsembleConfig, select_ensemble
from ..errors import CziiInputError
from ..omezarr import shared_reads

from .heatmap import HeatmapDetector
from .yolo import YoloDetector

#: The registry: each detector's name and class (built from a loaded bundle by
#: :func:`czii_kaggle.bundle.load_detectors`), in the order they are run and fall back to.
DETECTORS: dict[str, type] = {"yolo": YoloDetector, "heatmap": HeatmapDetector}
DETECTOR_NAMES: tuple[str, ...] = tuple(DETECTORS)
#: A further heatmap network of a bundle: ``heatmap_`` and a tag of lower-case letters, digits.
EXTRA_HEATMAP = re.compile(r"heatmap_[a-z0-9]+")


def detector_kind(name: str) -> str | None:
    """The kind (a key of :data:`DETECTORS`) of a detector name: ``yolo``, ``heatmap`` and
    ``heatmap_<tag>`` (a bundle's further heatmap networks) are heatmaps; None for another name."""
    if name in DETECTORS:
        return name
    return "heatmap" if EXTRA_HEATMAP.fullmatch(name) else None


class Detector(Protocol):
    """Tomogram in, scored 3D candidates out."""

    name: str
    aggregate: AggregateConfig
    device: str  # where its network runs ("cpu", "cuda:N"); "cpu" for one without a network

    def candidates(self, zarr_path: str | Path, experiment: str) -> tuple[pd.DataFrame, dict]:
        """Unthresholded candidates of one tomogram, and the seconds each stage took."""

    def select(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """The detector's own thresholds and NMS."""


@dataclass
class DetectorsPrediction:
    """What :func:`czii_kaggle.predict.predict_detectors` returns.

    picks : selected candidates of every run (Angstrom).
    candidates : ``{detector: unthresholded candidates}``.
    report : one row per (run, detector): ``experiment, detector, device, status, n_candidates,
    seconds`` and each stage's seconds, ``error``.
    """

    picks: pd.DataFrame
    candidates: dict[str, pd.DataFrame]
    report: pd.DataFrame


def _cached_candidates(det: Detector, zarr_path: Path, run: str, folder: Path | None) -> tuple[pd.DataFrame, dict]:
    if folder is None:
        return det.candidates(zarr_path, run)
    csv, js = Path(folder) / f"{run}.csv", Path(folder) / f"{run}.json"
    if csv.is_file() and js.is_file():
        cands = pd.read_csv(csv, dtype={"experiment": str})
        return (cands if len(cands) else empty_candidates()), json.loads(js.read_text())
    t0 = time.perf_counter()
    cands, times = det.candidates(zarr_path, run)
    times = {**times, "total_s": time.perf_counter() - t0}  # the seconds of the run that made the cache
    Path(folder).mkdir(parents=True, exist_ok=True)
    cands.to_csv(csv.with_suffix(".csv.tmp"), index=False)
    csv.with_suffix(".csv.tmp").replace(csv)
    js.write_text(json.dumps(times))
    return cands, times


def run_candidates(detectors: list[Detector], root: str | Path | None, split: str, runs: list[str],
                   tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE, progress: bool = True,
                   cache: dict[str, Path] | None = None,
                   tomograms: dict[str, str | Path] | None = None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Every detector's unthresholded candidates of every run, and the report (see :class:`DetectorsPrediction`).

    A run that fails in a detector is reported (``status`` ``failed``) and skipped for it only.
    ``cache``: ``{detector: folder}``: that detector's candidates and stage seconds of a run are
    read from ``folder/{run}.csv`` / ``.json`` when there, else computed and written there (for
    experiments that re-fit one detector beside another whose weights do not change). ``tomograms``:
    ``{run: zarr path}`` read instead of the Kaggle layout under ``root`` (a copick project's runs).
    """
    found: dict[str, list[pd.DataFrame]] = {d.name: [] for d in detectors}
    rows = []
    for run in tqdm(runs, desc="runs", unit="run", disable=not progress):
        with shared_reads():  # a level two detectors read is read once per run
            rows += _run_detectors(detectors, root, split, run, tomo_type, cache, tomograms, found)
    cands = {k: pd.concat(v, ignore_index=True) if v else empty_candidates() for k, v in found.items()}
    return cands, pd.DataFrame(rows)


def candidates_of_run(detectors: list[Detector], run: str,
                      zarr_path: str | Path) -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """One tomogram through every detector, each zarr level read once: ``({detector: unthresholded
    candidates}, report rows)`` as :func:`run_candidates` gives them for one run (a Dask task's work,
    :func:`czii_kaggle.distributed.detectors_task`). A detector that fails on it is a ``failed`` row."""
    found: dict[str, list[pd.DataFrame]] = {d.name: [] for d in detectors}
    with shared_reads():
        rows = _run_detectors(detectors, None, "", run, "", None, {run: zarr_path}, found)
    return {k: v[0] if v else empty_candidates() for k, v in found.items()}, rows


def _run_detectors(detectors, root, split, run, tomo_type, cache, tomograms, found) -> list[dict]:
    """One run through every detector: its report rows; its candidates appended to ``found``."""
    rows = []
    for det in detectors:
        where = {"experiment": run, "detector": det.name, "device": str(getattr(det, "device", "cpu"))}
        t0 = time.perf_counter()
        try:
            path = layout.run_tomogram(root, split, run, tomo_type, tomograms)
            cands, times = _cached_candidates(det, path, run, (cache or {}).get(det.name))
            found[det.name].append(cands)
            seconds = times.pop("total_s", None) or time.perf_counter() - t0
            rows.append({**where, "status": "ok", "n_candidates": len(cands),
                         **times, "seconds": seconds, "error": ""})
        except Exception as exc:  # noqa: BLE001 - one bad run must not lose the others
            msg = str(exc) if isinstance(exc, (CziiInputError, ValueError)) else traceback.format_exc(limit=3)
            tqdm.write(f"[czii_kaggle] run {run} failed in the {det.name} detector: {msg.strip().splitlines()[-1]}")
            rows.append({**where, "status": "failed", "n_candidates": 0,
                         "seconds": time.perf_counter() - t0, "error": msg.strip()})
    return rows


def select_picks(candidates: dict[str, pd.DataFrame], report: pd.DataFrame, detectors: list[Detector],
                runs: list[str], ensemble: EnsembleConfig | None = None,
                fallbacks: list[EnsembleConfig] | tuple = ()) -> pd.DataFrame:
    """Selected picks of every run: the ensemble's where every detector succeeded on it; else the
    ensemble among ``fallbacks`` of exactly the detectors that succeeded (e.g. YOLO + the heatmap
    where a further heatmap network failed on the run), else the own selection of the first
    detector (in ``detectors`` order) that succeeded; none if all failed."""
    names = {d.name for d in detectors}
    ok = report[report["status"] == "ok"].groupby("experiment")["detector"].apply(set).to_dict() if len(report) else {}
    picks = []
    for run in runs:
        got = ok.get(run, set())
        of_run = {n: c[c["experiment"] == run] for n, c in candidates.items()}
        fitted = ensemble if ensemble is not None and got == names else next(
            (e for e in fallbacks if len(got) > 1 and set(e.detectors) == got), None)
        if fitted is not None:
            picks.append(select_ensemble(of_run, fitted))
            continue
        for det in detectors:
            if det.name in got:
                picks.append(det.select(of_run[det.name]))
                break
    picks = [p for p in picks if len(p)]
    return pd.concat(picks, ignore_index=True) if picks else empty_candidates()
