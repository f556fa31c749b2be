"""The model bundle: one folder holding one or more detectors with the configs they were trained and tuned with.

=================  =============================================================================
``model.pt``       the YOLO detector's weights (Ultralytics)
``model.onnx``     its ONNX Runtime copy, made from these very weights (``czii_config.json`` ``onnx``)
``czii_config.json``  the YOLO detector's settings: ``preprocess``, ``detect``, ``aggregate``
                   (tuned thresholds), ``onnx`` (record of the copy), ``labels``, ``train``,
                   ``train_runs``, ``val_runs`` (how it was trained)
``heatmap.pt``     the 3D heatmap detector's weights (a torch state dict)
``heatmap.onnx``   its ONNX Runtime copy (``heatmap.json`` ``onnx``)
``heatmap.json``   its settings: ``config``, ``aggregate`` (tuned thresholds), ``onnx``,
                   ``training`` (record), ``tuned_on``
``heatmap_<tag>.*``  further heatmap networks (``.pt``, ``.onnx``, ``.json`` as above), each a
                   detector named ``heatmap_<tag>`` (e.g. ``heatmap_l0``, a network at the
                   zarr's level 0); put one in with :func:`add_heatmap`
``ensemble.json``  the ensemble of two or more of them (:class:`czii_kaggle.ensemble.EnsembleConfig`),
                   ``default_detectors``: what ``predict`` runs by default (else YOLO alone), and
                   ``alternatives``: ensembles of other sets of its detectors fitted before (each
                   with its ``tuned_on``), so that e.g. ``--detectors yolo,heatmap`` still runs
                   where the default is ``yolo,heatmap,heatmap_l0``
``TRAINING.json``  the shipped model's full training record (``scripts/train_shipped_model.py``)
=================  =============================================================================

This module is the only one that reads or writes these JSON files (one checker:
:func:`read_json`; one writer: :func:`update_json`), knows which detectors a folder
holds, opens them (:func:`load_detectors`) and exports ONNX copies. An export only
replaces the copy of the very weights it was made from: the record names the source
file and its sha256, and a copy whose sha256 no longer matches is not used.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import outputs, particles
from .aggregate import AggregateConfig
from .detect import DetectConfig, export_onnx
from .detectors import DETECTOR_NAMES, DETECTORS, detector_kind
from .detectors.heatmap import HeatmapConfig, default_aggregate_config, load_net
from .ensemble import EnsembleConfig
from .errors import CziiInputError
from .preprocess import PreprocessConfig

#: The shipped model bundle (weights + the configs they were trained and tuned with).
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models"
MODEL_FILE = "model.pt"
#: ONNX Runtime copy of a bundle's ``model.pt`` (:func:`export_bundle_onnx`).
ONNX_FILE = "model.onnx"
CONFIG_FILE = "czii_config.json"
HEATMAP_WEIGHTS_FILE = "heatmap.pt"
HEATMAP_ONNX_FILE = "heatmap.onnx"
HEATMAP_CONFIG_FILE = "heatmap.json"
ENSEMBLE_FILE = "ensemble.json"
#: The shipped model's training record.
RECORD_FILE = "TRAINING.json"


# --------------------------------------------------------------------------- JSON


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_json(path: str | Path, sections: tuple[str, ...] = ()) -> dict:
    """A bundle JSON file as a dict (``{}`` when absent); :class:`CziiInputError` naming the file
    when it is not valid JSON, not an object, or one of ``sections`` is present but not an object."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CziiInputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CziiInputError(path, f"holds a {type(doc).__name__}, not an object of settings")
    for key in sections:
        if key in doc and not isinstance(doc[key], dict):
            raise CziiInputError(path, f"{key!r} is {doc[key]!r}, not an object of settings")
    return doc


def update_json(path: str | Path, updates: dict) -> Path:
    """Merge ``updates`` (top-level keys) into a bundle JSON file, written atomically; other keys are kept."""
    doc = read_json(path)
    doc.update(updates)
    return outputs.write_text(path, json.dumps(doc, indent=2) + "\n")


# --------------------------------------------------------------------------- ONNX records


def _onnx_owner(record: dict, default_source: str) -> str:
    """The weights file an ``onnx`` record belongs to (old records name none: the bundle's own)."""
    return str(record.get("source", default_source))


def _matching_onnx(weights: Path, record: dict | None, default_source: str, default_file: str) -> Path | None:
    """The ONNX copy ``record`` describes when it was exported from ``weights`` as they are now;
    a stale copy is ignored with a warning."""
    if not record or _onnx_owner(record, default_source) != weights.name:  # no copy, or another file's copy
        return None
    path = weights.parent / str(record.get("file", default_file))
    if not path.is_file():
        return None
    if record.get("source_sha256") != file_sha256(weights):
        warnings.warn(f"{path} was exported from other weights than {weights.name} (sha256 differs); "
                      "it is not used: re-export it with `czii-kaggle export-onnx`", RuntimeWarning, stacklevel=3)
        return None
    return path


def _export_target(weights: Path, record: dict, default_source: str, default_file: str) -> tuple[Path, bool]:
    """Where an export of ``weights`` goes (``{stem}.onnx``) and whether it owns the bundle's record;
    a :class:`CziiInputError` when that file is the recorded copy of other weights."""
    target = weights.with_suffix(".onnx")
    owner = _onnx_owner(record, default_source) if record else weights.name
    if owner != weights.name and record.get("file", default_file) == target.name:
        raise CziiInputError(target, f"is the ONNX copy of {owner} (the bundle's JSON records it); exporting "
                                     f"{weights.name} would replace it: give {weights.name} another name")
    return target, owner == weights.name


def write_record(bundle_dir: str | Path, record: dict) -> Path:
    """Write a bundle's full training record, ``TRAINING.json`` (atomically)."""
    return outputs.write_text(Path(bundle_dir) / RECORD_FILE, json.dumps(record, indent=1, default=str))


# --------------------------------------------------------------------------- the YOLO detector


@dataclass(frozen=True)
class Bundle:
    """The YOLO detector of a bundle: weights and the configs that go with them.

    ``weights``: the YOLO ``.pt``; the configs are read from ``czii_config.json`` beside it
    (keys ``preprocess``, ``detect``, ``aggregate``), defaults where a key is absent.
    ``onnx``: the ONNX Runtime copy of ``weights`` when the bundle holds one made from
    these very weights (``czii_config.json`` key ``onnx`` records their sha256), else None.
    """

    weights: Path
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    onnx: Path | None = None


def load_bundle(path: str | Path | None = None) -> Bundle:
    """Load a bundle's YOLO detector from a folder (``model.pt`` + ``czii_config.json``), a ``.pt``
    file or an ``.onnx`` file (run by ONNX Runtime); the configs come from ``czii_config.json`` beside it.

    ``None`` loads the shipped default bundle.
    """
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    weights = path / MODEL_FILE if path.is_dir() else path
    if not weights.is_file():
        raise CziiInputError(weights, "weights file not found (pass --weights, or reinstall czii_kaggle for the shipped model)")
    cfg_path = weights.parent / CONFIG_FILE
    cfg = read_json(cfg_path, ("preprocess", "detect", "aggregate"))
    try:  # the config classes check every value
        configs = dict(
            preprocess=PreprocessConfig.from_dict(cfg["preprocess"]) if "preprocess" in cfg else PreprocessConfig(),
            detect=DetectConfig.from_dict(cfg["detect"]) if "detect" in cfg else DetectConfig(),
            aggregate=AggregateConfig.from_dict(cfg["aggregate"]) if "aggregate" in cfg else AggregateConfig(),
        )
    except (TypeError, ValueError) as exc:
        raise CziiInputError(cfg_path, f"invalid settings: {exc}") from None
    onnx = weights if weights.suffix == ".onnx" else _matching_onnx(weights, cfg.get("onnx"), MODEL_FILE, ONNX_FILE)
    return Bundle(weights=weights, **configs, onnx=onnx)


def bundle_files(bundle: Bundle) -> list[Path]:
    """The files a bundle is made of (weights, configs, ONNX copy): inputs, never outputs."""
    files = [bundle.weights, bundle.weights.parent / CONFIG_FILE, bundle.weights.with_suffix(".onnx")]
    return files + ([bundle.onnx] if bundle.onnx is not None else [])


def with_slice_step(bundle: Bundle, slice_step: int) -> Bundle:
    """The bundle run on every ``slice_step``-th slice: faster, at some recall cost.

    Minimum slice supports were tuned with every slice, so they shrink by the same
    factor (rounded up, at least 1); scores already account for the step.
    """
    if slice_step < 1:
        raise ValueError(f"slice_step must be >= 1, not {slice_step}")
    old = bundle.detect.slice_step
    agg = bundle.aggregate
    for name in particles.NAMES:
        support = agg[name].min_support * old
        agg = agg.with_params(name, min_support=max(1, math.ceil(support / slice_step)))
    return replace(bundle, detect=replace(bundle.detect, slice_step=slice_step), aggregate=agg)


def with_tta(bundle: Bundle, tta_views: int) -> Bundle:
    """The bundle with ``tta_views`` test-time views per slice (see :class:`DetectConfig`).

    A bundle's thresholds fit the views it was tuned with (its ``czii_config.json``
    ``detect.tta_views``); more views raise the scores a little, so re-tune when it matters.
    """
    return replace(bundle, detect=replace(bundle.detect, tta_views=tta_views))


def write_training_config(out_dir: str | Path, record: dict) -> Path:
    """Record how the YOLO weights of ``out_dir`` were trained (``preprocess``, ``labels``, ``train``,
    ``train_runs``, ``val_runs``) in its ``czii_config.json``; other keys are kept."""
    return update_json(Path(out_dir) / CONFIG_FILE, record)


def sources_record(sources) -> list[dict]:
    """``[(root, runs), ...]`` -> ``[{"root", "runs"}, ...]``: the runs a bundle file was tuned or
    trained on, as its ``tuned_on`` / ``sources`` keys record them (``runs`` None: every run)."""
    return [{"root": str(root), "runs": None if runs is None else list(runs)} for root, runs in sources]


def save_aggregate_config(bundle_dir: str | Path, config: AggregateConfig, detect: DetectConfig | None = None,
                          tuned_on: list[dict] | None = None) -> Path:
    """Write tuned thresholds ``config`` under the ``aggregate`` key of the bundle's ``czii_config.json``
    (and ``detect``, the inference settings the thresholds were tuned with, and ``tuned_on``, the
    ``{"root", "runs"}`` they were tuned on, when given)."""
    path = Path(bundle_dir) / CONFIG_FILE
    return update_json(path, {"aggregate": config.to_dict(), **({"detect": detect.to_dict()} if detect else {}),
                              **({"tuned_on": tuned_on} if tuned_on is not None else {})})


def export_bundle_onnx(bundle_dir: str | Path | None = None, imgsz: int | None = None) -> Path:
    """Export a bundle's YOLO weights (its ``model.pt``, or the ``.pt`` file given) to ONNX, for
    ONNX Runtime on the CPU; returns the path of ``{weights stem}.onnx`` beside them.

    Only the copy of these very weights is replaced: the export is made in a temporary
    folder and renamed onto ``{stem}.onnx`` when complete, and the ``onnx`` record of the
    bundle's ``czii_config.json`` (file, sha256 of the ``.pt`` it came from, image size;
    :func:`load_bundle` uses the copy only while that sha256 matches) is written only when
    it is free or already describes these weights. Exporting ``other.pt`` beside
    ``model.pt`` thus writes ``other.onnx`` (run it with ``--weights other.onnx``) and
    leaves ``model.onnx`` and its record alone. ``imgsz`` defaults to the bundle's
    ``detect.max_imgsz``.
    """
    path = Path(bundle_dir) if bundle_dir is not None else DEFAULT_BUNDLE
    bundle = load_bundle(path)
    weights = bundle.weights
    if weights.suffix != ".pt":
        raise CziiInputError(weights, "only a PyTorch .pt model can be exported to ONNX")
    imgsz = imgsz or bundle.detect.max_imgsz
    cfg_path = weights.parent / CONFIG_FILE
    target, owns = _export_target(weights, read_json(cfg_path).get("onnx") or {}, MODEL_FILE, ONNX_FILE)
    work = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=weights.parent))
    try:
        shutil.copy2(weights, work / weights.name)
        os.replace(export_onnx(work / weights.name, imgsz=imgsz), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if owns:
        update_json(cfg_path, {"onnx": {"file": target.name, "source": weights.name,
                                        "source_sha256": file_sha256(weights), "imgsz": imgsz, "dynamic": True}})
    return target


# --------------------------------------------------------------------------- the heatmap detector


@dataclass(frozen=True)
class HeatmapBundle:
    """A trained heatmap detector: weights, config, selection thresholds, optional ONNX copy,
    training record (``heatmap.json`` key ``training``) and its detector name (``heatmap``, or
    ``heatmap_<tag>`` for a bundle's further network)."""

    weights: Path
    config: HeatmapConfig = field(default_factory=HeatmapConfig)
    aggregate: AggregateConfig = field(default_factory=default_aggregate_config)
    onnx: Path | None = None
    record: dict = field(default_factory=dict)
    name: str = "heatmap"


def heatmap_files(name: str = "heatmap") -> tuple[str, str, str]:
    """``({name}.pt, {name}.json, {name}.onnx)``: the files of the bundle's heatmap detector ``name``
    (``heatmap`` or ``heatmap_<tag>``, :func:`czii_kaggle.detectors.detector_kind`)."""
    if detector_kind(name) != "heatmap":
        raise ValueError(f"{name!r} is not a heatmap detector's name (heatmap, or heatmap_ and a tag of "
                         "lower-case letters and digits)")
    return f"{name}.pt", f"{name}.json", f"{name}.onnx"


def load_heatmap_bundle(path: str | Path | None = None, name: str = "heatmap") -> HeatmapBundle:
    """Load the heatmap detector ``name`` (``{name}.pt`` + ``{name}.json``) from a bundle folder (or
    the ``.pt`` file itself, configured by ``{stem}.json`` beside it, else ``heatmap.json``; ``None``:
    the shipped bundle).

    :class:`CziiInputError` when the weights are absent or the JSON is malformed; the
    weights themselves are checked against the config (class count, network widths)
    when the network is built (:func:`czii_kaggle.detectors.heatmap.load_net`).
    """
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    weights = path / heatmap_files(name)[0] if path.is_dir() else path
    if not weights.is_file():
        raise CziiInputError(weights, "heatmap weights not found (train them with `czii-kaggle train-heatmap`)")
    if not path.is_dir():  # a weights file: its own name's files
        name = weights.stem if detector_kind(weights.stem) == "heatmap" else "heatmap"
    cfg_path = _heatmap_json_of(weights, name)
    doc = read_json(cfg_path, ("config", "aggregate", "onnx", "training"))
    try:
        config = HeatmapConfig.from_dict(doc.get("config", {}))
        agg = AggregateConfig.from_dict(doc["aggregate"]) if "aggregate" in doc else default_aggregate_config()
    except (TypeError, ValueError) as exc:
        raise CziiInputError(cfg_path, f"not a valid heatmap config: {exc}") from None
    onnx = _matching_onnx(weights, doc.get("onnx"), *_owned_files(cfg_path.name))
    return HeatmapBundle(weights, config, agg, onnx, doc.get("training", {}), name)


def _owned_files(json_file: str) -> tuple[str, str]:
    """The default weights and ONNX files an ``onnx`` record of ``json_file`` describes (old records name none)."""
    stem = Path(json_file).stem
    return f"{stem}.pt", f"{stem}.onnx"


def _heatmap_json_of(weights: Path, name: str) -> Path:
    """The JSON file that configures heatmap weights: ``{stem}.json`` beside them; for the detector
    ``heatmap`` whose weights have another name and no JSON of their own, ``heatmap.json``."""
    own = weights.with_suffix(".json")
    return own if own.is_file() or name != "heatmap" else weights.parent / HEATMAP_CONFIG_FILE


def heatmap_json(bundle: HeatmapBundle) -> Path:
    """The JSON file that configures a loaded heatmap detector."""
    return _heatmap_json_of(bundle.weights, bundle.name)


def save_heatmap_json(folder: str | Path, name: str = "heatmap", **updates) -> Path:
    """Merge ``updates`` (top-level keys: ``config``, ``aggregate``, ``onnx``, ``training``, ``tuned_on``)
    into the folder's ``{name}.json`` (``heatmap.json``)."""
    return update_json(Path(folder) / heatmap_files(name)[1], updates)


def export_heatmap_onnx(path: str | Path | None = None, name: str = "heatmap") -> Path:
    """Export a folder's heatmap detector ``name`` (``{name}.pt``; or the heatmap ``.pt`` given) to
    ``{stem}.onnx`` (dynamic spatial axes, logits out), recorded in its JSON with the weights' sha256.

    As :func:`export_bundle_onnx`: written under a temporary name and renamed, and only the
    copy of these very weights is replaced (the record is written only when it is free or
    already describes these weights).
    """
    import torch

    bundle = load_heatmap_bundle(path, name)
    weights = bundle.weights
    cfg_path = heatmap_json(bundle)
    target, owns = _export_target(weights, read_json(cfg_path).get("onnx") or {}, *_owned_files(cfg_path.name))
    net = load_net(bundle).eval()
    dummy = torch.zeros(1, 1, *bundle.config.window_vox)
    axes = {0: "n", 2: "z", 3: "y", 4: "x"}
    with outputs.atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript needed
        torch.onnx.export(net, dummy, str(tmp), input_names=["volume"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"volume": axes, "logits": axes}, dynamo=False)
    if owns:
        update_json(cfg_path, {"onnx": {"file": target.name, "source": weights.name,
                                        "source_sha256": file_sha256(weights)}})
    return target


def add_heatmap(source: str | Path, bundle_dir: str | Path, name: str) -> list[Path]:
    """Put the heatmap detector of folder ``source`` (its ``heatmap.pt``, ``heatmap.json`` and, when
    it is the recorded copy of these weights, ``heatmap.onnx``) into ``bundle_dir`` as the further
    detector ``name`` (``heatmap_<tag>``): ``{name}.pt``, ``{name}.json`` (its ``onnx`` record
    renamed with it; ``tuned_on`` and thresholds kept) and ``{name}.onnx``. Each file is written
    atomically; files of that name already in the bundle are a clear error (never replaced), and
    the source is only read. Returns the files written.
    """
    if name == "heatmap" or detector_kind(name) != "heatmap":
        raise CziiInputError(bundle_dir, f"a further heatmap detector is named heatmap_<tag> (lower-case letters "
                                         f"and digits), not {name!r}")
    src = load_heatmap_bundle(source)
    load_net(src)  # its weights fit its config (class count, widths): a clear error now, not at predict time
    d = Path(bundle_dir)
    if not d.is_dir():
        raise CziiInputError(d, "not a bundle folder")
    pt_file, json_file, onnx_file = heatmap_files(name)
    there = [d / f for f in (pt_file, json_file, onnx_file) if (d / f).exists()]
    if there:
        raise CziiInputError(there[0], f"is there already: the bundle holds a detector {name}; give another name")
    doc = read_json(heatmap_json(src))
    doc.pop("onnx", None)
    written = [outputs.copy_file(src.weights, d / pt_file)]
    if src.onnx is not None:
        written.append(outputs.copy_file(src.onnx, d / onnx_file))
        doc["onnx"] = {"file": onnx_file, "source": pt_file, "source_sha256": file_sha256(d / pt_file)}
    written.append(outputs.write_text(d / json_file, json.dumps(doc, indent=2) + "\n"))
    return written


# --------------------------------------------------------------------------- the ensemble and the detectors held


#: Keys of ``ensemble.json`` beside an ensemble's own (which :func:`save_ensemble` does not move with it).
_ENSEMBLE_FILE_KEYS = ("default_detectors", "alternatives")


def _ensemble_entries(path: Path) -> tuple[dict, list[tuple[dict, EnsembleConfig]]]:
    """``ensemble.json``'s document and each ensemble it holds (the main one first, then the
    ``alternatives``), as ``(entry, config)``; :class:`CziiInputError` when any is malformed."""
    doc = read_json(path, ("calibration", "weights", "aggregate"))
    alternatives = doc.get("alternatives", [])
    if not isinstance(alternatives, list) or not all(isinstance(a, dict) for a in alternatives):
        raise CziiInputError(path, f"alternatives is {alternatives!r}, not a list of ensemble configs")
    entries = []
    for entry in (doc, *alternatives):
        try:
            entries.append((entry, EnsembleConfig.from_dict(entry)))
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise CziiInputError(path, f"not a valid ensemble config: {exc}") from None
    return doc, entries


def load_ensemble(bundle_dir: str | Path, detectors=None) -> EnsembleConfig | None:
    """The bundle's ensemble (``ensemble.json``; None when absent); with ``detectors``, the one of
    exactly those (the main one or an alternative; None when none was fitted).
    :class:`CziiInputError` when the file is malformed."""
    ensembles = load_ensembles(bundle_dir)
    return (ensembles[0] if ensembles else None) if detectors is None else ensemble_of(ensembles, detectors)


def load_ensembles(bundle_dir: str | Path) -> list[EnsembleConfig]:
    """Every ensemble ``ensemble.json`` holds, the main one first, then its alternatives ([] when absent)."""
    path = Path(bundle_dir) / ENSEMBLE_FILE
    return [cfg for _, cfg in _ensemble_entries(path)[1]] if path.is_file() else []


def ensemble_of(ensembles: list[EnsembleConfig], detectors) -> EnsembleConfig | None:
    """The ensemble among ``ensembles`` of exactly ``detectors`` (in any order), else None."""
    return next((e for e in ensembles if sorted(e.detectors) == sorted(detectors)), None)


def save_ensemble(bundle_dir: str | Path, config: EnsembleConfig, **extra) -> Path:
    """Write ``ensemble.json`` (atomically): ``config`` as the main ensemble, ``extra`` keys (e.g.
    ``default_detectors``, ``tuned_on``) beside it. The ensembles of other detector sets the file held
    (its main one and its alternatives) are kept as ``alternatives``; one of the same set is replaced.
    ``default_detectors`` not given (or None): the file's are kept."""
    path = Path(bundle_dir) / ENSEMBLE_FILE
    keep = []
    if path.is_file():
        doc, entries = _ensemble_entries(path)
        for entry, cfg in entries:
            if sorted(cfg.detectors) != sorted(config.detectors):
                keep.append({k: v for k, v in entry.items() if k not in _ENSEMBLE_FILE_KEYS})
        if extra.get("default_detectors") is None and doc.get("default_detectors"):
            extra = {**extra, "default_detectors": doc["default_detectors"]}
    doc = {**config.to_dict(), **extra, **({"alternatives": keep} if keep else {})}
    return outputs.write_text(path, json.dumps(doc, indent=2) + "\n")


def set_count_floor(bundle_dir: str | Path, min_keep: Mapping[str, int]) -> list[Path]:
    """Write each type's floor (``min_keep``, see :class:`czii_kaggle.aggregate.ClassParams`) into every
    selection config the bundle folder holds: ``czii_config.json`` (YOLO), ``heatmap.json`` and
    ``ensemble.json``; thresholds and other settings are kept. Returns the files written.

    Each file is checked before any is written, so a malformed one changes none.
    """
    d = Path(bundle_dir)
    if not d.is_dir():
        raise CziiInputError(d, "not a bundle folder")
    found = []
    further = [heatmap_files(n)[1] for n in held_detectors(d) if detector_kind(n) == "heatmap" and n != "heatmap"]
    for name, default in ((CONFIG_FILE, AggregateConfig),
                          *((f, default_aggregate_config) for f in (HEATMAP_CONFIG_FILE, *further))):
        path = d / name
        if path.is_file():
            doc = read_json(path)
            try:
                found.append((path, AggregateConfig.from_dict(doc["aggregate"]) if "aggregate" in doc else default()))
            except (TypeError, ValueError, AttributeError) as exc:
                raise CziiInputError(path, f"invalid aggregate settings: {exc}") from None
    ensembles = _ensemble_entries(d / ENSEMBLE_FILE)[1] if (d / ENSEMBLE_FILE).is_file() else []
    if not found and not ensembles:
        raise CziiInputError(d, f"no {CONFIG_FILE}, {HEATMAP_CONFIG_FILE} or {ENSEMBLE_FILE} to set a floor in")
    try:
        updated = [(path, {"aggregate": agg.with_floor(min_keep).to_dict()}) for path, agg in found]
        if ensembles:  # the main ensemble and every alternative
            floored = [{**entry, "aggregate": cfg.aggregate.with_floor(min_keep).to_dict()} for entry, cfg in ensembles]
            updated.append((d / ENSEMBLE_FILE, {"aggregate": floored[0]["aggregate"],
                                                **({"alternatives": floored[1:]} if len(floored) > 1 else {})}))
    except ValueError as exc:
        raise CziiInputError(d, f"invalid count floor: {exc}") from None
    return [update_json(path, updates) for path, updates in updated]


def held_detectors(bundle_dir: str | Path) -> list[str]:
    """The detectors whose weights the bundle folder holds, in :data:`DETECTOR_NAMES` order, then its
    further heatmap networks (``heatmap_<tag>.pt``) by name."""
    d = Path(bundle_dir)
    held = {"yolo": (d / MODEL_FILE).is_file() or (d / ONNX_FILE).is_file(),
            "heatmap": (d / HEATMAP_WEIGHTS_FILE).is_file()}
    more = sorted(p.stem for p in d.glob("heatmap_*.pt") if detector_kind(p.stem) == "heatmap" and p.is_file())
    return [n for n in DETECTOR_NAMES if held[n]] + more


def default_detectors(bundle_dir: str | Path) -> list[str]:
    """What the bundle ships to run by default: ``ensemble.json``'s ``default_detectors``, else ``["yolo"]``."""
    path = Path(bundle_dir) / ENSEMBLE_FILE
    names = read_json(path).get("default_detectors")
    if names and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise CziiInputError(path, f"default_detectors is {names!r}, not a list of detector names")
    return list(names) if names else ["yolo"]


def parse_detectors(text: str | None, bundle_dir: str | Path) -> list[str]:
    """``"yolo,heatmap"`` -> names, checked against the detector kinds (:func:`czii_kaggle.detectors.detector_kind`)
    and the bundle's weights; ``None``: :func:`default_detectors`. A name the bundle does not hold is a clear error."""
    names = default_detectors(bundle_dir) if text is None else [n.strip() for n in text.split(",") if n.strip()]
    held = held_detectors(bundle_dir)
    unknown = [n for n in names if detector_kind(n) is None]
    if unknown or not names:
        raise CziiInputError(bundle_dir, f"unknown detectors {unknown or names}; choose from "
                                         f"{', '.join(held) or ', '.join(DETECTOR_NAMES)}")
    absent = [n for n in names if n not in held]
    if absent:
        raise CziiInputError(bundle_dir, f"names detector(s) {', '.join(absent)} but the bundle holds only "
                                         f"{', '.join(held) or 'none'}")
    return list(dict.fromkeys(names))


def weights_detectors(weights, detectors: str | None) -> tuple[Path | None, list[str]]:
    """The bundle folder of ``weights`` and the detectors to run with it (:func:`parse_detectors`).

    ``weights``: a bundle folder, a weights file or loaded :class:`Bundle` (YOLO alone: folder None),
    or None (the shipped bundle). Detectors other than YOLO named for a weights file are a clear error.
    """
    folder = DEFAULT_BUNDLE if weights is None else (Path(weights) if isinstance(weights, (str, Path)) else None)
    if folder is not None and folder.is_dir():
        return folder, parse_detectors(detectors, folder)
    if detectors not in (None, "yolo"):
        raise CziiInputError(folder, f"detectors {detectors!r} need a bundle folder as weights (a weights file "
                                     "is YOLO's alone)")
    return None, ["yolo"]


def describe_bundle(bundle_dir: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """What a bundle folder holds (``None``: the shipped one), as ``(detectors, ensembles)``: one row per
    detector (name, weights, whether its ONNX copy is up to date, level and voxel size, window, views,
    test-time adaptation, runs its thresholds were tuned on) and one per fitted ensemble (its detectors,
    whether ``predict`` runs it by default, runs it was fitted on). Every file is read, so a malformed one is
    a clear error here rather than at predict time."""
    d = Path(bundle_dir) if bundle_dir is not None else DEFAULT_BUNDLE
    if not d.is_dir():
        raise CziiInputError(d, "not a bundle folder")

    def n_runs(tuned_on) -> str:
        return "-" if not tuned_on else str(sum(len(t.get("runs") or []) for t in tuned_on))

    rows = []
    for name in held_detectors(d):
        if name == "yolo":
            b = load_bundle(d)
            rows.append({"detector": name, "weights": b.weights.name, "onnx": b.onnx.name if b.onnx else "-",
                         "level": 0, "voxel_size_A": "as it comes" if b.preprocess.voxel_size_A is None
                         else round(b.preprocess.voxel_size_A, 2), "window": f"slices, {b.detect.max_imgsz} px",
                         "views": b.detect.tta_views, "bn_adapt": "-",
                         "tuned_on_runs": n_runs(read_json(d / CONFIG_FILE).get("tuned_on"))})
        else:
            h = load_heatmap_bundle(d, name)
            rows.append({"detector": name, "weights": h.weights.name, "onnx": h.onnx.name if h.onnx else "-",
                         "level": h.config.level, "voxel_size_A": round(h.config.voxel_size_A, 2),
                         "window": "x".join(map(str, h.config.window_vox)), "views": h.config.tta_views,
                         "bn_adapt": h.config.bn_adapt, "tuned_on_runs": n_runs(read_json(heatmap_json(h)).get("tuned_on"))})
    ensembles = []
    path = d / ENSEMBLE_FILE
    if path.is_file():
        _, entries = _ensemble_entries(path)
        default = sorted(default_detectors(d))
        for entry, cfg in entries:
            ensembles.append({"ensemble": "+".join(cfg.detectors), "default": sorted(cfg.detectors) == default,
                              "fusion": cfg.fusion, "fitted_on_runs": n_runs(entry.get("tuned_on"))})
    return rows, ensembles


def check_views(bundle_dir: str | Path | None, names: list[str], tta_views: int | None) -> None:
    """8 or 16 test-time views (x-y swaps, z flips of a 3D window) are the heatmap's alone: asked of
    YOLO (1-4 views per slice) they are a clear error."""
    if tta_views is not None and tta_views > 4 and "yolo" in names:
        raise CziiInputError(bundle_dir, f"{tta_views} test-time views are the heatmap's alone (x-y swaps, z flips); "
                                         "YOLO takes 1-4 per slice: use --detectors heatmap")


def load_detectors(bundle_dir: str | Path, names: list[str], backend: str = "auto",
                   tta_views: int | None = None, bn_adapt: float | None = None,
                   precision: str | None = None, device: str | None = None) -> list:
    """The named detectors of a bundle folder (checked by :func:`parse_detectors` first), each
    behind :class:`czii_kaggle.detectors.Detector`'s interface, on ``device`` (``"cpu"``,
    ``"cuda:N"``; default: the first usable GPU, else the CPU).

    ``tta_views`` (default: each detector's own setting): flipped test-time views, per slice
    for YOLO (1-4), per 3D window for the heatmap (1-4, 8 and 16 with x-y swaps and z flips;
    thresholds were tuned for the bundle's own).
    ``bn_adapt`` (default: the heatmap's own): its test-time batch-norm adaptation, 0..1 (0: off).
    ``precision`` (default: each heatmap network's own): ``"float32"`` or ``"bfloat16"``
    (:attr:`czii_kaggle.detectors.heatmap.HeatmapConfig.precision`).
    """
    out = []
    names = parse_detectors(",".join(names), bundle_dir)
    check_views(bundle_dir, names, tta_views)
    for n in names:
        if n == "yolo":
            b = load_bundle(bundle_dir)
            out.append(DETECTORS[n](b if tta_views is None else with_tta(b, tta_views), backend=backend,
                                    device=device))
        else:
            out.append(DETECTORS[detector_kind(n)](load_heatmap_bundle(bundle_dir, n), backend=backend,
                                                   tta_views=tta_views, bn_adapt=bn_adapt, precision=precision,
                                                   device=device))
    return out
