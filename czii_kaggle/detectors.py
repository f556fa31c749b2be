"""One interface for every detector, and the pipeline that runs one or several of them.

A detector turns one tomogram into *unthresholded* scored 3D candidates per class
(:data:`czii_kaggle.aggregate.CANDIDATE_COLUMNS`: ``experiment, particle_type, x, y, z``
in Angstrom, ``score``, ``n_slices``, ``share``) and knows its own selection
(thresholds + 3D NMS):

- ``yolo``: the 2.5D YOLO path (:func:`czii_kaggle.predict.detect_run` then
  :func:`czii_kaggle.aggregate.aggregate`), weights ``model.pt`` / ``model.onnx``;
- ``heatmap``: the 3D heatmap network (:class:`czii_kaggle.heatmap.HeatmapDetector`),
  weights ``heatmap.pt`` / ``heatmap.onnx``.

A bundle folder may hold either or both, and ``ensemble.json`` (:mod:`czii_kaggle.ensemble`)
when both were calibrated together; its ``default_detectors`` key names what
``predict`` runs by default (else the YOLO detector alone, as before).
:func:`predict_detectors` runs the chosen detectors over runs: one detector, its own
selection; several, the ensemble's. A run that fails in one detector is reported,
and the other detector's own selection is used for it.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
from tqdm.auto import tqdm

from . import layout
from .aggregate import AggregateConfig, aggregate, empty_candidates, select
from .errors import CziiInputError

DETECTOR_NAMES: tuple[str, ...] = ("yolo", "heatmap")


class Detector(Protocol):
    """Tomogram in, scored 3D candidates out."""

    name: str
    aggregate: AggregateConfig

    def candidates(self, zarr_path: str | Path, experiment: str) -> tuple[pd.DataFrame, dict]:
        """Unthresholded candidates of one tomogram, and the seconds each stage took."""

    def select(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """The detector's own thresholds and NMS."""


class YoloDetector:
    """The 2.5D YOLO path behind the :class:`Detector` interface (CPU or one device)."""

    name = "yolo"

    def __init__(self, bundle=None, backend: str = "auto", device: str = "cpu", tta_views: int | None = None):
        from .detect import load_model
        from .predict import Bundle, choose_backend, load_bundle, with_tta

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if tta_views is not None:
            self.bundle = with_tta(self.bundle, tta_views)
        self.backend = choose_backend(self.bundle, backend, [device])
        self.device = "cpu" if self.backend == "onnx" else device
        self.model = load_model((self.bundle.onnx or self.bundle.weights) if self.backend == "onnx" else self.bundle.weights)
        self.aggregate = self.bundle.aggregate

    def candidates(self, zarr_path: str | Path, experiment: str) -> tuple[pd.DataFrame, dict]:
        from .predict import detect_run

        dets, times = detect_run(self.model, zarr_path, experiment, self.bundle, self.device)
        t0 = time.perf_counter()
        cands = aggregate(dets, self.bundle.aggregate, apply_thresholds=False, slice_step_A=times.pop("slice_step_A"))
        times["aggregate_s"] = time.perf_counter() - t0
        return cands, times

    def select(self, candidates: pd.DataFrame) -> pd.DataFrame:
        return select(candidates, self.aggregate)


def held_detectors(bundle_dir: str | Path) -> list[str]:
    """The detectors whose weights the bundle folder holds, in :data:`DETECTOR_NAMES` order."""
    from .heatmap import WEIGHTS_FILE
    from .train import MODEL_FILE

    d = Path(bundle_dir)
    held = {"yolo": (d / MODEL_FILE).is_file() or (d / "model.onnx").is_file(), "heatmap": (d / WEIGHTS_FILE).is_file()}
    return [n for n in DETECTOR_NAMES if held[n]]


def default_detectors(bundle_dir: str | Path) -> list[str]:
    """What the bundle ships to run by default: ``ensemble.json``'s ``default_detectors``, else ``["yolo"]``."""
    from .ensemble import ENSEMBLE_FILE

    path = Path(bundle_dir) / ENSEMBLE_FILE
    if path.is_file():
        try:
            names = json.loads(path.read_text()).get("default_detectors")
        except json.JSONDecodeError as exc:
            raise CziiInputError(path, f"not valid JSON ({exc})") from None
        if names:
            return list(names)
    return ["yolo"]


def parse_detectors(text: str | None, bundle_dir: str | Path) -> list[str]:
    """``"yolo,heatmap"`` -> names, checked against :data:`DETECTOR_NAMES` and the bundle's weights;
    ``None``: :func:`default_detectors`. A name the bundle does not hold is a clear error."""
    names = default_detectors(bundle_dir) if text is None else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in DETECTOR_NAMES]
    if unknown or not names:
        raise CziiInputError(bundle_dir, f"unknown detectors {unknown or names}; choose from {', '.join(DETECTOR_NAMES)}")
    held = held_detectors(bundle_dir)
    absent = [n for n in names if n not in held]
    if absent:
        raise CziiInputError(bundle_dir, f"names detector(s) {', '.join(absent)} but the bundle holds only "
                                         f"{', '.join(held) or 'none'}")
    return list(dict.fromkeys(names))


def load_detectors(bundle_dir: str | Path, names: list[str], backend: str = "auto",
                   tta_views: int | None = None) -> list[Detector]:
    """The named detectors of a bundle folder (checked by :func:`parse_detectors` first).

    ``tta_views`` (default: each detector's own setting): flipped test-time views, per slice
    for YOLO, per 3D window for the heatmap (1-4; thresholds were tuned for the bundle's own).
    """
    from .heatmap import HeatmapDetector

    names = parse_detectors(",".join(names), bundle_dir)
    out: list[Detector] = []
    for n in names:
        out.append(YoloDetector(bundle_dir, backend=backend, tta_views=tta_views) if n == "yolo"
                   else HeatmapDetector(bundle_dir, backend=backend, tta_views=tta_views))
    return out


@dataclass
class DetectorsPrediction:
    """What :func:`predict_detectors` returns.

    picks : selected candidates of every run (Angstrom).
    candidates : ``{detector: unthresholded candidates}``.
    report : one row per (run, detector): ``experiment, detector, status, n_candidates, seconds``
    and each stage's seconds, ``error``.
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


def run_candidates(detectors: list[Detector], root: str | Path, split: str, runs: list[str],
                   tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE, progress: bool = True,
                   cache: dict[str, Path] | None = None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Every detector's unthresholded candidates of every run, and the report (see :class:`DetectorsPrediction`).

    A run that fails in a detector is reported (``status`` ``failed``) and skipped for it only.
    ``cache``: ``{detector: folder}``: that detector's candidates and stage seconds of a run are
    read from ``folder/{run}.csv`` / ``.json`` when there, else computed and written there (for
    experiments that re-fit one detector beside another whose weights do not change).
    """
    found: dict[str, list[pd.DataFrame]] = {d.name: [] for d in detectors}
    rows = []
    for run in tqdm(runs, desc="runs", unit="run", disable=not progress):
        for det in detectors:
            t0 = time.perf_counter()
            try:
                cands, times = _cached_candidates(det, layout.tomogram_path(root, split, run, tomo_type), run,
                                                  (cache or {}).get(det.name))
                found[det.name].append(cands)
                seconds = times.pop("total_s", None) or time.perf_counter() - t0
                rows.append({"experiment": run, "detector": det.name, "status": "ok", "n_candidates": len(cands),
                             **times, "seconds": seconds, "error": ""})
            except Exception as exc:  # noqa: BLE001 - one bad run must not lose the others
                msg = str(exc) if isinstance(exc, (CziiInputError, ValueError)) else traceback.format_exc(limit=3)
                tqdm.write(f"[czii_kaggle] run {run} failed in the {det.name} detector: {msg.strip().splitlines()[-1]}")
                rows.append({"experiment": run, "detector": det.name, "status": "failed", "n_candidates": 0,
                             "seconds": time.perf_counter() - t0, "error": msg.strip()})
    cands = {k: pd.concat(v, ignore_index=True) if v else empty_candidates() for k, v in found.items()}
    return cands, pd.DataFrame(rows)


def predict_detectors(root: str | Path, split: str = "test", runs: list[str] | None = None,
                      bundle_dir: str | Path | None = None, detectors: list[str] | None = None,
                      backend: str = "auto", progress: bool = True,
                      tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE, tta_views: int | None = None
                      ) -> DetectorsPrediction:
    """Predict runs with one detector (its own thresholds) or several (the bundle's ensemble).

    ``tta_views``: as :func:`load_detectors`.

    Runs where some detector failed use the selection of a detector that succeeded.
    """
    from .ensemble import load_ensemble, select_ensemble
    from .predict import DEFAULT_BUNDLE

    bundle_dir = Path(bundle_dir) if bundle_dir is not None else DEFAULT_BUNDLE
    names = parse_detectors(None if detectors is None else ",".join(detectors), bundle_dir)
    ensemble = None
    if len(names) > 1:
        ensemble = load_ensemble(bundle_dir)
        if ensemble is None or sorted(ensemble.detectors) != sorted(names):
            raise CziiInputError(Path(bundle_dir) / "ensemble.json",
                                 f"no ensemble of {', '.join(names)} fitted in this bundle "
                                 "(run `czii-kaggle tune-ensemble`)")
    dets = load_detectors(bundle_dir, names, backend, tta_views)
    runs = list(runs) if runs is not None else layout.list_runs(root, split)
    cands, report = run_candidates(dets, root, split, runs, tomo_type, progress)
    picks = select_runs(cands, report, dets, runs, ensemble)
    return DetectorsPrediction(picks, cands, report)


def select_runs(candidates: dict[str, pd.DataFrame], report: pd.DataFrame, detectors: list[Detector],
                runs: list[str], ensemble=None) -> pd.DataFrame:
    """Selected picks of every run: the ensemble's where every detector succeeded on it, else the
    own selection of the first detector (in ``detectors`` order) that succeeded; none if all failed."""
    from .ensemble import select_ensemble

    names = {d.name for d in detectors}
    ok = report[report["status"] == "ok"].groupby("experiment")["detector"].apply(set).to_dict() if len(report) else {}
    picks = []
    for run in runs:
        got = ok.get(run, set())
        of_run = {n: c[c["experiment"] == run] for n, c in candidates.items()}
        if ensemble is not None and got == names:
            picks.append(select_ensemble(of_run, ensemble))
            continue
        for det in detectors:
            if det.name in got:
                picks.append(det.select(of_run[det.name]))
                break
    picks = [p for p in picks if len(p)]
    return pd.concat(picks, ignore_index=True) if picks else empty_candidates()


def tune_ensemble(sources: list[tuple[str | Path, list[str]]], bundle_dir: str | Path,
                  default: list[str] | None = None, backend: str = "auto",
                  cache: dict[str, Path] | None = None) -> dict[str, pd.DataFrame]:
    """Fit a bundle's heatmap thresholds and its YOLO + heatmap ensemble on runs with picks.

    Runs both detectors once over ``sources`` (``(root, runs)``, train split), tunes the
    heatmap's own per-class thresholds (saved in ``heatmap.json``), calibrates both
    detectors and tunes the merged candidates' thresholds (saved as ``ensemble.json``,
    with ``default_detectors`` = ``default`` when given). The YOLO thresholds are left as
    they are. ``cache``: as :func:`run_candidates` (one sub-folder per source). Returns the
    tuning tables ``{"heatmap": ..., "ensemble": ...}``.
    """
    from .ensemble import fit_ensemble, save_ensemble
    from .heatmap import save_heatmap_json
    from .picks import read_all_picks
    from .tune import tune_thresholds

    dets = load_detectors(bundle_dir, ["yolo", "heatmap"], backend)
    cands: dict[str, list[pd.DataFrame]] = {d.name: [] for d in dets}
    truth = []
    for i, (root, runs) in enumerate(sources):
        sub_cache = {k: Path(v) / str(i) for k, v in (cache or {}).items()}
        found, report = run_candidates(dets, root, "train", runs, progress=False, cache=sub_cache)
        failed = report[report["status"] != "ok"]
        if len(failed):
            raise CziiInputError(Path(root), f"cannot tune: {'; '.join(failed['error'].astype(str))}")
        for name in cands:
            cands[name].append(found[name].assign(experiment=f"{i}/" + found[name]["experiment"].astype(str)))
        truth.append(read_all_picks(root, runs).assign(experiment=lambda d, i=i: f"{i}/" + d["experiment"].astype(str)))
    pooled = {k: pd.concat(v, ignore_index=True) for k, v in cands.items()}
    solution = pd.concat(truth, ignore_index=True)
    heatmap = next(d for d in dets if d.name == "heatmap")
    hm_config, hm_table = tune_thresholds(pooled["heatmap"], solution, heatmap.aggregate, support_grid=None)
    tuned_on = [{"root": str(r), "runs": list(rs)} for r, rs in sources]
    save_heatmap_json(heatmap.bundle.weights.parent, aggregate=hm_config.to_dict(), tuned_on=tuned_on)
    config, table = fit_ensemble(pooled, solution)
    save_ensemble(bundle_dir, config, default_detectors=default, tuned_on=tuned_on)
    return {"heatmap": hm_table, "ensemble": table}
