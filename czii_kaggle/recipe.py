"""The shipped model's recipe: one versioned file, ``czii_kaggle/recipes/shipped.json``.

It holds every setting the shipped bundle was made with: the slice dataset (the 2.5D slice
offset among them), the labels, the model yaml, the training options, the tuning grids and
count floor,
the held-out look families and the training stages in order (each with its start, epochs,
simulated data and validation runs), plus the defaults of the Kaggle fine-tuning
(:mod:`czii_kaggle.finetune`). ``scripts/train_shipped_model.py``, ``czii-kaggle
build-dataset`` / ``train`` and ``notebooks/train.ipynb`` read it through :func:`load_recipe`;
the library's config defaults equal it (``tests/test_recipe.py``), so a config built without
arguments is the recipe's.

A bundle keeps the settings it was trained with in its own ``czii_config.json``; those win
when it is loaded, whatever the recipe or the defaults say now.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CziiInputError

if TYPE_CHECKING:  # loaded lazily (the CLI reads the recipe without importing the training stack)
    from .dataset import DatasetConfig
    from .train import TrainConfig

#: A recipe's ``model_yaml`` is relative to this folder (the package's).
MODEL_YAML_DIR = Path(__file__).resolve().parent
#: The folder of the package's recipes.
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
#: The recipe of the shipped model.
SHIPPED_RECIPE = RECIPES_DIR / "shipped.json"
#: The recipe format this module reads.
RECIPE_VERSION = 1
#: Settings of the machine, not of the recipe: never read from it.
MACHINE_KEYS = ("device", "workers")


@dataclass(frozen=True)
class Simulation:
    """A stage's simulated training runs (:func:`czii_kaggle.simulate.simulate_dataset`).

    ``look``: ``"classic"``, ``"random"`` or a look spec; ``hold_out``: look families never
    simulated (``{family: value}``), applied to ``look`` by :meth:`look_spec`.
    ``difficulties`` repeat to ``n_runs``.
    """

    seed: int
    n_runs: int
    difficulties: tuple = ("medium",)
    look: str | dict = "classic"
    hold_out: dict = field(default_factory=dict)
    count_scale: dict = field(default_factory=dict)
    real_layouts: bool = True
    shape_vox: tuple[int, int, int] = (184, 630, 630)

    def run_difficulties(self) -> list[float]:
        """One difficulty (0..1) per run, ``difficulties`` repeated."""
        from .simulate import difficulty_value

        return [difficulty_value(self.difficulties[i % len(self.difficulties)]) for i in range(self.n_runs)]

    def look_spec(self) -> str | dict:
        """The look to simulate: ``look`` without the held-out families."""
        if not self.hold_out:
            return self.look
        from .simulate import hold_out

        return hold_out(self.look, self.hold_out)

    def sim_config(self):
        """The :class:`~czii_kaggle.simulate.SimConfig` of these runs."""
        from .simulate import SimConfig

        return SimConfig(look=self.look_spec(), shape_vox=tuple(self.shape_vox))


@dataclass(frozen=True)
class TuneSource:
    """Further runs a stage's thresholds are tuned on: ``runs`` of another stage's simulated
    root (``stage``), or of a simulation of their own (``simulate``, in the stage's look)."""

    runs: tuple[str, ...]
    stage: str | None = None
    simulate: Simulation | None = None


@dataclass(frozen=True)
class Stage:
    """One training stage: from ``init`` (None: the model yaml; a stage name: that stage's
    bundle; else a path) for ``epochs`` on ``simulation``'s runs, ``val_runs`` held out."""

    name: str
    init: str | None
    epochs: int
    simulation: Simulation
    val_runs: tuple[str, ...]
    dataset: DatasetConfig
    tune_more: tuple[TuneSource, ...] = ()
    stopped_after_epoch: int | None = None
    note: str = ""


@dataclass(frozen=True)
class TuneSettings:
    """Threshold tuning: test-time views and the grids of :func:`czii_kaggle.tune.tune_thresholds`."""

    tta_views: int
    threshold_grid: tuple[float, ...]
    support_grid: tuple[int, ...]
    share_grid: tuple[float, ...]
    #: the count floor: ``factor`` times the mean picks ``per_run`` of the real training runs
    floor_factor: float = 0.0
    floor_per_run: dict = field(default_factory=dict)
    #: relative scores: ``ref_rank`` = ``relative_factor`` times the same counts (0: absolute scores)
    relative_factor: float = 0.0

    def min_keep(self, factor: float | None = None) -> dict[str, int]:
        """Each type's floor (``min_keep``): ``round(factor * per_run)``, the recipe's factor by default."""
        f = self.floor_factor if factor is None else factor
        if f < 0:
            raise ValueError(f"count floor factor must be >= 0, not {f!r}")
        return {name: int(round(f * float(n))) for name, n in self.floor_per_run.items()}

    def ref_rank(self, factor: float | None = None) -> dict[str, int]:
        """Each type's ``ref_rank`` (relative scores, :func:`czii_kaggle.aggregate.relative_scores`):
        ``max(1, round(factor * per_run))`` of the count floor's counts, the recipe's factor by
        default; 0 for every type when the factor is 0 (absolute scores)."""
        f = self.relative_factor if factor is None else factor
        if f < 0:
            raise ValueError(f"relative scores factor must be >= 0, not {f!r}")
        return {name: max(1, int(round(f * float(n)))) if f else 0 for name, n in self.floor_per_run.items()}


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe file (:func:`load_recipe`)."""

    path: Path
    version: int
    model_yaml: Path
    dataset: DatasetConfig
    train: TrainConfig
    tuning: TuneSettings
    held_out_look_families: dict
    stages: tuple[Stage, ...]
    fine_tune: dict

    def stage(self, name: str | None = None) -> Stage:
        """The stage called ``name``; ``None``: the last one (the shipped model's)."""
        if name is None:
            return self.stages[-1]
        for s in self.stages:
            if s.name == name:
                return s
        raise CziiInputError(self.path, f"no stage {name!r} (stages: {', '.join(s.name for s in self.stages)})")

    def train_config(self, model: str | Path | None = None, **overrides) -> TrainConfig:
        """The recipe's :class:`TrainConfig` from ``model`` (default: the model yaml), ``overrides`` applied."""
        return replace(self.train, model=str(model or self.model_yaml), **overrides)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dataset_config(d: dict) -> DatasetConfig:
    """A :class:`DatasetConfig` from its dict (``DatasetConfig.to_dict`` / a recipe's ``dataset``)."""
    from .dataset import DatasetConfig, LabelConfig
    from .preprocess import PreprocessConfig

    d = dict(d)
    return DatasetConfig(preprocess=PreprocessConfig.from_dict(d.pop("preprocess", {})),
                         labels=LabelConfig(**d.pop("labels", {})), **d)


def _simulation(d: dict, held_out: dict) -> Simulation:
    d = dict(d)
    hold = d.pop("hold_out", {})
    if hold == "held_out_look_families":
        hold = held_out
    return Simulation(difficulties=tuple(d.pop("difficulties", ("medium",))), hold_out=dict(hold),
                      shape_vox=tuple(d.pop("shape_vox", (184, 630, 630))), **d)


def recipe_doc(path: str | Path = SHIPPED_RECIPE) -> dict:
    """The recipe file as JSON (no config classes imported: the command line's defaults)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CziiInputError(path, f"unreadable recipe: {exc}") from None
    if not isinstance(doc, dict) or doc.get("recipe_version") != RECIPE_VERSION:
        raise CziiInputError(path, f"not a recipe of version {RECIPE_VERSION} (its recipe_version: "
                                   f"{doc.get('recipe_version') if isinstance(doc, dict) else None!r})")
    return doc


def load_recipe(path: str | Path = SHIPPED_RECIPE) -> Recipe:
    """Read and check a recipe file; a bad one is a :class:`CziiInputError` naming it."""
    from .train import TrainConfig

    path = Path(path)
    doc = recipe_doc(path)
    try:
        held_out = dict(doc.get("held_out_look_families", {}))
        train = {k: v for k, v in doc["train"].items() if k not in MACHINE_KEYS}
        grid = doc["tuning"]["threshold_grid"]
        import numpy as np

        tuning = TuneSettings(
            tta_views=int(doc["tuning"]["tta_views"]),
            threshold_grid=tuple(np.round(np.linspace(grid["start"], grid["stop"], grid["num"]), 3)),
            support_grid=tuple(doc["tuning"]["support_grid"]), share_grid=tuple(doc["tuning"]["share_grid"]),
            floor_factor=float(doc["tuning"].get("count_floor", {}).get("factor", 0.0)),
            floor_per_run={k: float(v) for k, v in doc["tuning"].get("count_floor", {}).get("per_run", {}).items()},
            relative_factor=float(doc["tuning"].get("relative_scores", {}).get("factor", 0.0)))
        stages = []
        for s in doc["stages"]:
            sim = _simulation(s["simulation"], held_out)
            tune_more = tuple(
                TuneSource(runs=tuple(t["runs"]), stage=t.get("stage"),
                           simulate=replace(_simulation({"look": sim.look, "hold_out": sim.hold_out, **t["simulate"]},
                                                        held_out), count_scale={}) if "simulate" in t else None)
                for t in s.get("tune_more", []))
            stages.append(Stage(
                name=s["name"], init=s.get("init"), epochs=int(s["epochs"]), simulation=sim,
                val_runs=tuple(s["val_runs"]), dataset=dataset_config(_merge(doc["dataset"], s.get("dataset", {}))),
                tune_more=tune_more, stopped_after_epoch=s.get("stopped_after_epoch"), note=s.get("note", "")))
        names = [s.name for s in stages]
        for s in stages:
            for ref in [s.init, *(t.stage for t in s.tune_more)]:
                if ref is not None and not ref.endswith((".pt", ".yaml")) and ref not in names[: names.index(s.name)]:
                    raise ValueError(f"stage {s.name!r} refers to {ref!r}, not an earlier stage")
        return Recipe(path=path, version=RECIPE_VERSION, model_yaml=MODEL_YAML_DIR / doc["model_yaml"],
                      dataset=dataset_config(doc["dataset"]), train=TrainConfig(**train), tuning=tuning,
                      held_out_look_families=held_out, stages=tuple(stages), fine_tune=dict(doc.get("fine_tune", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise CziiInputError(path, f"invalid recipe: {type(exc).__name__}: {exc}") from None
