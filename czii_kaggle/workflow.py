"""Prediction beyond the Kaggle kernel: runs from a Kaggle root or a copick project, predicted in
this process or on a Dask cluster, written as a Kaggle CSV, RELION 5 STAR files or copick picks.

``czii-kaggle predict`` calls :func:`predict_sources` then :func:`write_outputs`; a notebook can too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import layout
from .errors import CziiInputError

FORMATS = ("csv", "star")


@dataclass(frozen=True)
class CopickTarget:
    """Where predicted picks go in a copick project: one pick set per run and type of
    ``user_id`` / ``session_id``; existing ones are replaced only with ``overwrite``."""

    user_id: str = "czii-kaggle"
    session_id: str = "0"
    overwrite: bool = False


@dataclass
class Sources:
    """Runs to predict: ``tomograms`` (run -> local zarr), ``errors`` (run -> why it cannot be
    read), ``runs`` (all, in order), and the opened copick project (None for a Kaggle root)."""

    runs: list[str]
    tomograms: dict[str, Path]
    errors: dict[str, str] = field(default_factory=dict)
    copick_root: object = None
    copick_config: Path | None = None


def resolve_sources(data: str | Path | None = None, split: str = "test", copick: str | Path | None = None,
                    runs: list[str] | None = None, voxel_spacing_A: float = 10.0,
                    tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE) -> Sources:
    """The runs of a Kaggle-layout root (``data``, ``split``) or of a copick project (``copick``:
    its JSON config; ``voxel_spacing_A`` and ``tomo_type`` select the tomogram)."""
    if (data is None) == (copick is None):
        raise CziiInputError(None, "give exactly one of --data (a Kaggle-layout root) and --copick (a copick config)")
    if data is not None:
        runs = list(runs) if runs else layout.list_runs(data, split)
        return Sources(runs, {r: layout.tomogram_path(data, split, r, tomo_type) for r in runs})
    from . import copick_project

    root = copick_project.open_project(copick)
    runs = copick_project.project_runs(root, runs or None, copick)
    tomograms, errors = copick_project.tomogram_sources(root, runs, voxel_spacing_A, tomo_type)
    return Sources(runs, tomograms, errors, root, Path(copick))


def check_copick_target(sources: Sources, target: CopickTarget) -> None:
    """Raise before any prediction when the copick write would be refused (existing picks of
    the same user and session without ``overwrite``; particle types the project lacks)."""
    from .copick_project import check_writable

    check_writable(sources.copick_root, sources.runs, target.user_id, target.session_id, target.overwrite,
                   sources.copick_config)


def check_out(out: str | Path | None, fmt: str = "csv") -> None:
    """Raise before any prediction when ``out`` cannot take ``fmt`` (a STAR folder that is a file,
    a CSV path that is a folder)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    out = None if out is None else Path(out)
    if out is not None and fmt == "star" and out.exists() and not out.is_dir():
        raise CziiInputError(out, "--format star writes a folder, and this is a file")
    if out is not None and fmt == "csv" and out.is_dir():
        raise CziiInputError(out, "is a folder: --format csv writes one file")


def predict_sources(sources: Sources, bundle=None, backend: str = "auto", scheduler: str | None = None,
                    n_workers: int | None = None, connect_timeout_s: float = 10.0, progress: bool = True,
                    detectors: list[str] | None = None, **options):
    """Predict ``sources`` in this process (every visible GPU, or the CPU) or, with ``scheduler``
    or ``n_workers``, on a Dask cluster (:mod:`czii_kaggle.distributed`). Runs that could not be
    resolved are ``failed`` rows of the report. Returns a :class:`czii_kaggle.predict.Prediction`.

    The YOLO detector alone by default; ``detectors`` (e.g. ``["yolo", "heatmap", "heatmap_l0"]``, with
    ``bundle`` a bundle folder or None) runs those and their ensemble (:func:`predict_bundle`; ``options``:
    its ``tta_views``, ``bn_adapt``, ``precision``), in this process or on Dask, one task per tomogram."""
    from .aggregate import empty_candidates
    from .copick_project import with_failed_runs
    from .detect import empty_detections
    from .bundle import load_bundle
    from .predict import REPORT_COLUMNS, Prediction

    on_dask = scheduler is not None or n_workers is not None
    several = detectors is not None and list(detectors) != ["yolo"]
    if not several:  # the YOLO bundle, loaded once for this process or for the Dask workers
        bundle = load_bundle(bundle) if bundle is None or isinstance(bundle, (str, Path)) else bundle
    if not sources.tomograms:  # no run could be read: nothing to predict, every run reported
        if on_dask:  # still check the scheduler answers, so a wrong address never passes silently
            from .distributed import connect

            client, cluster = connect(scheduler, n_workers, connect_timeout_s)
            client.close()
            if cluster is not None:
                cluster.close()
        pred = Prediction(empty_candidates(), empty_detections(), pd.DataFrame(columns=REPORT_COLUMNS))
    else:  # the named detectors and their ensemble, or (a loaded bundle) YOLO alone; here or on Dask
        pred = predict_bundle(None, bundle=bundle, detectors=",".join(detectors) if several else None, backend=backend,
                              progress=progress, tomograms=sources.tomograms, scheduler=scheduler,
                              n_workers=n_workers, connect_timeout_s=connect_timeout_s, **options)
    pred.report = with_failed_runs(pred.report, sources.errors, order=sources.runs)
    return pred


def write_outputs(pred, sources: Sources, out: str | Path | None = None, fmt: str = "csv",
                  copick: CopickTarget | None = None, star_per_run: bool = False,
                  tilt_series_pixel_size_A: float | None = None) -> list[str]:
    """Write what ``pred`` found: ``out`` as a Kaggle submission (``fmt="csv"``, scored types) or a
    folder of RELION 5 STAR files (``"star"``, every type), and/or picks into the copick project
    (``copick``; only runs that succeeded). Returns one line per thing written."""
    from .predict import scored_only

    check_out(out, fmt)
    ok = [r for r, s in zip(pred.report["experiment"], pred.report["status"]) if s == "ok"]
    lines = []
    if out is not None and fmt == "csv":
        from .submission import write_submission

        sub = write_submission(scored_only(pred.picks), out)
        lines.append(f"wrote {len(sub)} picks of {len(ok)}/{len(pred.report)} runs to {out}")
    elif out is not None:
        from .star import tomogram_centers_A, write_star

        centers = tomogram_centers_A({r: sources.tomograms[r] for r in ok})
        paths = write_star(pred.picks, out, centers, per_run=star_per_run,
                           tilt_series_pixel_size_A=tilt_series_pixel_size_A)
        lines.append(f"wrote {len(pred.picks)} picks of {len(ok)}/{len(pred.report)} runs to {len(paths)} STAR "
                     f"files under {out}")
    if copick is not None:
        from .copick_project import write_picks

        done = write_picks(sources.copick_root, pred.picks, ok, copick.user_id, copick.session_id, copick.overwrite,
                           sources.copick_config)
        lines.append(f"wrote {int(done['n_picks'].sum())} picks of {len(ok)}/{len(pred.report)} runs into "
                     f"{sources.copick_config} as user {copick.user_id}, session {copick.session_id}")
    return lines


def predict_bundle(root: str | Path | None, split: str = "test", bundle=None, detectors: str | None = None,
                   runs: list[str] | None = None, backend: str = "auto", progress: bool = True,
                   tomograms: dict[str, str | Path] | None = None, scheduler: str | None = None,
                   n_workers: int | None = None, connect_timeout_s: float = 10.0, **options):
    """Predict runs with a bundle's detectors, as one :class:`~czii_kaggle.predict.Prediction`.

    Parameters
    ----------
    bundle : Bundle, bundle folder, ``.pt``/``.onnx`` path or None
        The model bundle; None: the one shipped in the package.
    detectors : str, optional
        ``"yolo"``, ``"heatmap"``, ``"heatmap_l0"`` (a further heatmap network the bundle holds) or
        several joined by commas (their ensemble, fitted in the bundle's ``ensemble.json``, e.g.
        ``"yolo,heatmap,heatmap_l0"``); None: what the bundle ships (:func:`czii_kaggle.bundle.default_detectors`),
        as ``czii-kaggle predict --detectors``. A name the bundle does not hold is a clear error.
    tomograms : dict, optional
        ``{run: zarr path}`` predicted instead of the runs of ``root`` (a copick project's).
    scheduler, n_workers, connect_timeout_s
        A Dask scheduler's address or the size of a local cluster to start: the runs go there, one task
        per tomogram (:mod:`czii_kaggle.distributed`); the report adds ``model_s``.
    options
        ``tta_views``, ``bn_adapt``, ``precision``, as :func:`czii_kaggle.predict.predict_detectors` takes them.

    Returns
    -------
    Prediction
        YOLO alone: :func:`czii_kaggle.predict.predict_runs`'s. Otherwise
        :func:`czii_kaggle.predict.predict_detectors`'s picks, no slice detections, and one report
        row per run: ``status`` ok when some detector succeeded on it, ``n_detections`` the
        candidates of all detectors, ``inference_s`` their seconds, ``error`` which detector failed
        and why; ``notes`` names the detectors.
    """
    import time

    from . import frames
    from .bundle import weights_detectors
    from .predict import REPORT_COLUMNS, Prediction, predict_detectors, predict_runs, select_runs

    bundle_dir, names = weights_detectors(bundle, detectors)
    on_dask = scheduler is not None or n_workers is not None
    if names == ["yolo"] and on_dask:
        from .distributed import predict_runs_dask

        paths = {r: layout.run_tomogram(root, split, r, tomograms=tomograms)
                 for r in select_runs(root, split, runs, tomograms)}
        return predict_runs_dask(paths, bundle, scheduler, n_workers, backend, progress, connect_timeout_s)
    if names == ["yolo"]:
        return predict_runs(root, split, runs=runs, bundle=bundle, backend=backend, progress=progress,
                            tomograms=tomograms)
    if progress:
        print(f"detectors: {' + '.join(names)}", flush=True)
    t0 = time.perf_counter()
    pred = predict_detectors(root, split, runs=runs, bundle_dir=bundle_dir, detectors=names, backend=backend,
                             progress=progress, tomograms=tomograms, scheduler=scheduler, n_workers=n_workers,
                             connect_timeout_s=connect_timeout_s, **options)
    wall_s = time.perf_counter() - t0
    rows = []
    for run, rep in pred.report.groupby("experiment", sort=False):
        failed = rep[rep["status"] != "ok"]
        device = ",".join(sorted(set(rep["device"].dropna().astype(str)))) or None  # every detector's
        on_workers = {"worker": ",".join(sorted(set(rep["worker"].dropna().astype(str)))) or None,
                      "model_s": float(rep["model_s"].fillna(0.0).max())} if "worker" in rep else {}  # on Dask
        rows.append({"experiment": run, "status": "failed" if len(failed) == len(rep) else "ok",
                     "backend": backend, "device": device, **on_workers, "n_detections": int(rep["n_candidates"].sum()),
                     "n_picks": int((pred.picks["experiment"] == run).sum()),
                     "inference_s": float(rep["seconds"].sum()),
                     "total_s": float(rep["seconds"].sum()) + on_workers.get("model_s", 0.0),
                     "error": "; ".join(f"{r.detector}: {r.error}" for r in failed.itertuples()) or None})
    report = pd.DataFrame(rows).reindex(columns=[*REPORT_COLUMNS, *(["model_s"] if on_dask else [])])
    return Prediction(picks=pred.picks, detections=frames.empty(frames.DETECTIONS), report=report, wall_s=wall_s,
                      notes=[f"detectors: {' + '.join(names)}"],
                      inputs=[*([Path(root)] if root is not None else map(Path, tomograms.values())), bundle_dir])
