"""Copick projects in and out, through the ``copick`` library (``pip install czii_kaggle[copick]``).

A copick project (the format of the competition's own data, of the CryoET Data Portal and of
CZII's pickers) is named by its JSON config. This module

- resolves each run's tomogram (voxel spacing, tomogram type) to a local zarr that
  :func:`czii_kaggle.predict.predict_runs` (``tomograms=``) and :mod:`czii_kaggle.distributed` read;
- writes predicted picks back as copick picks of one user and session, one pick set per
  particle type and run, with scores, so they open in copick's viewers (napari-copick, ChimeraX);
- reads picks of a project (for training) and lays a project's runs out as a Kaggle-layout
  training root (tomograms linked, never copied) that :func:`czii_kaggle.dataset.build_dataset` reads.

The Kaggle layout is itself a copick filesystem project's static tree:
``{static_root}/ExperimentRuns/{run}/VoxelSpacing10.000/{type}.zarr``.
Coordinates stay in Angstrom throughout (copick picks are Angstrom too).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import frames, layout, particles
from .errors import CziiInputError

#: Copick's own default tomogram spacing for the competition data (a copick key, not the true
#: 10.012444 Angstrom, which is read from each zarr's ``.zattrs``).
DEFAULT_VOXEL_SPACING_A = 10.0
DEFAULT_USER_ID = "czii-kaggle"
DEFAULT_SESSION_ID = "0"


def _copick():
    try:
        import copick
    except ImportError:
        raise CziiInputError(None, "copick projects need the copick library: "
                                   "pip install 'czii_kaggle[copick]'") from None
    return copick


def open_project(config: str | Path):
    """Open the copick project of a JSON config; a clear error when it is missing or invalid."""
    config = Path(config)
    if not config.is_file():
        raise CziiInputError(config, "copick config not found")
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise CziiInputError(config, f"copick config is not valid JSON ({exc})") from None
    copick = _copick()
    try:
        root = copick.from_file(str(config))
    except Exception as exc:  # noqa: BLE001 - pydantic / fsspec errors of a bad config
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CziiInputError(config, f"not a usable copick config ({problem})") from None
    root._czii_config = str(config)  # so later errors can name the config file
    return root


def write_config(path: str | Path, static_root: str | Path, overlay_root: str | Path,
                 name: str = "czii-kaggle") -> Path:
    """Write a filesystem copick config for the six particle types (from :mod:`czii_kaggle.particles`)
    over ``static_root`` (read-only tomograms, e.g. a Kaggle layout's ``{root}/test/static``) and
    ``overlay_root`` (where picks are written). Returns ``path``."""
    doc = {
        "config_type": "filesystem", "name": name, "description": "written by czii_kaggle", "version": "1.0.0",
        "pickable_objects": [{"name": p.name, "is_particle": True, "pdb_id": p.pdb_id, "label": p.label,
                              "color": list(p.color), "radius": p.radius_A} for p in particles.PARTICLES],
        "overlay_root": str(overlay_root), "overlay_fs_args": {"auto_mkdir": True},
        "static_root": str(static_root),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
    return path


def _config_path(root) -> str:
    return getattr(root, "_czii_config", None) or "copick project"


def project_runs(root, runs: list[str] | None = None, config: str | Path | None = None) -> list[str]:
    """The project's run names (sorted), or ``runs`` after checking each exists."""
    where = config or _config_path(root)
    names = sorted(r.name for r in root.runs)
    if not names:
        raise CziiInputError(where, "the copick project names no runs (check static_root / overlay_root)")
    if runs is None:
        return names
    missing = [r for r in runs if r not in set(names)]
    if missing:
        raise CziiInputError(where, f"runs {missing} are not in the copick project (it has {len(names)} runs)")
    if not runs:
        raise CziiInputError(where, "no runs requested")
    return list(runs)


def _local_path(fs, path: str, where: str) -> Path:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if not {"file", "local"} & set(protocol):
        raise CziiInputError(where, f"is on {protocol[0]}://; only local (filesystem) copick projects can be read "
                                    "for prediction: copy the tomograms to a local static_root first")
    return Path(path)


def tomogram_zarr(root, run: str, voxel_spacing_A: float = DEFAULT_VOXEL_SPACING_A,
                  tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE) -> Path:
    """Local ``{type}.zarr`` folder of one run's tomogram.

    Raises :class:`CziiInputError` naming the run and what it has instead when it lacks
    the voxel spacing or the tomogram type.
    """
    r = root.get_run(run)
    if r is None:
        raise CziiInputError(run, "run not in the copick project")
    vs = r.get_voxel_spacing(voxel_spacing_A)
    if vs is None:
        have = sorted(v.voxel_size for v in r.voxel_spacings)
        raise CziiInputError(run, f"has no voxel spacing {voxel_spacing_A:g} A (it has {have or 'none'})")
    tomos = vs.get_tomograms(tomo_type)
    if not tomos:
        have = sorted(t.tomo_type for t in vs.tomograms)
        raise CziiInputError(run, f"has no {tomo_type!r} tomogram at voxel spacing {voxel_spacing_A:g} A "
                                  f"(it has {have or 'none'})")
    tomo = tomos[0]
    fs, path = (tomo.fs_static, tomo.static_path) if tomo.read_only else (tomo.fs_overlay, tomo.overlay_path)
    return _local_path(fs, path, f"run {run}")


def tomogram_sources(root, runs: list[str], voxel_spacing_A: float = DEFAULT_VOXEL_SPACING_A,
                     tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE) -> tuple[dict[str, Path], dict[str, str]]:
    """``(zarr path per run, error per run)``: every run lands in exactly one of the two, so a run
    without the requested tomogram is reported, never silently dropped."""
    paths, errors = {}, {}
    for run in runs:
        try:
            paths[run] = tomogram_zarr(root, run, voxel_spacing_A, tomo_type)
        except CziiInputError as exc:
            errors[run] = str(exc)
    return paths, errors


def with_failed_runs(report: pd.DataFrame, errors: dict[str, str], order: list[str] | None = None) -> pd.DataFrame:
    """``report`` (a :class:`czii_kaggle.predict.Prediction` report) with one ``failed`` row per
    run of ``errors`` (runs that never reached prediction), in ``order`` when given."""
    if not errors:
        return report
    rows = pd.DataFrame([{"experiment": r, "status": "failed", "n_picks": 0, "error": e} for r, e in errors.items()])
    out = pd.concat([report, rows.reindex(columns=report.columns)], ignore_index=True)
    if order is not None:
        out = out.set_index("experiment").loc[[r for r in order if r in set(out["experiment"])]].reset_index()
    return out


def _check_objects(root, names: list[str], config: str | Path | None) -> None:
    have = {o.name for o in root.pickable_objects}
    missing = sorted(set(names) - have)
    if missing:
        raise CziiInputError(config or _config_path(root), f"the copick project has no pickable objects {missing}")


def run_picks(root, run: str, **query) -> list:
    """``root.get_run(run).get_picks(**query)``, with a clear error where copick cannot list them
    (e.g. Kaggle's training overlay, whose files are ``Picks/{object}.json``, not copick's
    ``{user}_{session}_{object}.json``)."""
    try:
        return root.get_run(run).get_picks(**query)
    except (IndexError, ValueError, KeyError) as exc:
        raise CziiInputError(_config_path(root), f"copick cannot list the picks of run {run} ({type(exc).__name__}: "
                                                 f"{exc}); are its pick files named {{user}}_{{session}}_{{object}}"
                                                 ".json? (Kaggle's own overlay: read it with --data)") from None


def existing_picks(root, runs: list[str], user_id: str, session_id: str) -> list[str]:
    """``run/object`` of every pick set of ``user_id`` / ``session_id`` already in ``runs``."""
    found = []
    for run in runs:
        for p in run_picks(root, run, user_id=user_id, session_id=session_id):
            found.append(f"{run}/{p.pickable_object_name}")
    return found


def check_writable(root, runs: list[str], user_id: str, session_id: str, overwrite: bool = False,
                   config: str | Path | None = None) -> None:
    """Raise :class:`CziiInputError` when picks of ``user_id`` / ``session_id`` cannot be written
    into ``runs``: the project lacks a particle type, or such picks exist and not ``overwrite``."""
    where = config or _config_path(root)
    _check_objects(root, list(particles.NAMES), where)
    clash = existing_picks(root, runs, user_id, session_id)
    if clash and not overwrite:
        raise CziiInputError(where, f"picks of user {user_id!r} session {session_id!r} already exist "
                                    f"({', '.join(clash[:4])}{' ...' if len(clash) > 4 else ''}); "
                                    "pass --overwrite to replace them, or another --session-id")


def write_picks(root, picks: pd.DataFrame, runs: list[str], user_id: str = DEFAULT_USER_ID,
                session_id: str = DEFAULT_SESSION_ID, overwrite: bool = False,
                config: str | Path | None = None) -> pd.DataFrame:
    """Write predicted picks into a copick project: one pick set per (run, particle type).

    Parameters
    ----------
    picks : DataFrame
        ``experiment, particle_type, x, y, z`` in Angstrom, optional ``score``.
    runs : list of str
        The runs to write (every particle type gets a pick set, empty where nothing was found,
        so a viewer shows the run was predicted); picks of other runs are an error.
    overwrite : bool
        Whether pick sets of this user and session may be replaced. Without it, any existing
        one is an error raised before anything is written.

    Returns
    -------
    DataFrame ``experiment, particle_type, n_picks`` of what was written.
    """
    where = config or _config_path(root)
    picks = frames.validate(picks, frames.PICKS)
    names = list(particles.NAMES)
    other = sorted(set(picks["experiment"]) - set(runs))
    if other:
        raise CziiInputError(where, f"picks of runs {other} that are not being written")
    check_writable(root, runs, user_id, session_id, overwrite, where)
    rows = []
    groups = dict(tuple(picks.groupby(["experiment", "particle_type"])))
    for run in runs:
        r = root.get_run(run)
        for name in names:
            sel = groups.get((run, name), picks.iloc[:0])
            pick_set = r.new_picks(object_name=name, session_id=session_id, user_id=user_id, exist_ok=overwrite)
            scores = sel["score"].to_numpy(float) if "score" in sel else None
            pick_set.from_numpy(sel[["x", "y", "z"]].to_numpy(np.float64).reshape(-1, 3), scores=scores)
            rows.append({"experiment": run, "particle_type": name, "n_picks": len(sel)})
    return pd.DataFrame(rows, columns=["experiment", "particle_type", "n_picks"])


def read_picks(root, runs: list[str] | None = None, user_id: str | None = None,
               session_id: str | None = None) -> pd.DataFrame:
    """Picks of a copick project as ``experiment, particle_type, x, y, z, score, user_id, session_id``
    (Angstrom; particle centres, i.e. location plus the transform's shift). ``user_id`` /
    ``session_id`` select pick sets (default: all); only the six particle types are read."""
    runs = project_runs(root, runs)
    frames = []
    for run in runs:
        for p in run_picks(root, run, object_name=list(particles.NAMES), user_id=user_id, session_id=session_id):
            xyz = p.full_positions() if len(p.points) else np.zeros((0, 3))
            frames.append(pd.DataFrame({
                "experiment": run, "particle_type": p.pickable_object_name,
                "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "score": p.scores(),
                "user_id": p.user_id, "session_id": p.session_id}))
    cols = ["experiment", "particle_type", "x", "y", "z", "score", "user_id", "session_id"]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def training_root(root, out_root: str | Path, runs: list[str] | None = None, user_id: str | None = None,
                  session_id: str | None = None, voxel_spacing_A: float = DEFAULT_VOXEL_SPACING_A,
                  tomo_type: str = layout.DEFAULT_TOMOGRAM_TYPE) -> Path:
    """Lay a copick project's runs out as a Kaggle-layout training root under ``out_root``.

    Each tomogram is a symbolic link to the project's zarr (nothing copied); picks of
    ``user_id`` / ``session_id`` are written as ``train/overlay`` pick files. A run without
    the tomogram or without picks is an error naming it. Returns ``out_root``, ready for
    :func:`czii_kaggle.dataset.build_dataset` (``tomo_type`` as ``DatasetConfig.tomo_type``).
    """
    from .picks import write_run_picks

    out_root = Path(out_root)
    runs = project_runs(root, runs)
    picks = read_picks(root, runs, user_id, session_id)
    empty = [r for r in runs if r not in set(picks["experiment"])]
    if empty:
        raise CziiInputError(out_root, f"runs {empty} have no picks of user {user_id} session {session_id}")
    for run in runs:
        target = layout.tomogram_path(out_root, "train", run, tomo_type)
        if target.exists() or target.is_symlink():
            raise CziiInputError(target, "already exists: choose an empty --out folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(tomogram_zarr(root, run, voxel_spacing_A, tomo_type).resolve(), target)
    write_run_picks(out_root, picks[["experiment", "particle_type", "x", "y", "z"]])
    return out_root
