"""Fine-tuning the shipped model on Kaggle's real training runs (``notebooks/train.ipynb``).

Starts from a bundle (the shipped one by default) and trains on the competition's training
runs with their picks plus randomised simulated runs (:mod:`czii_kaggle.simulate.look`), so
that no single rendering style, real or simulated, is all the model sees:

1. :func:`plan_fine_tune`: the real runs, ``k`` folds over them (each holds some real runs
   out; ``k`` = the number of runs is leave-one-run-out), the simulated runs, the settings
   (the shipped recipe's dataset, the start bundle's preprocessing) and a time estimate
   (:func:`estimate_s`) checked against a budget before anything long starts;
2. :func:`simulate_runs`, :func:`build_slices`: every run's slice images once
   (one dataset for the real runs, one for the simulated), each fold's ``data.yaml`` then
   lists its images (:func:`write_fold_yaml`);
3. :func:`train_fold` for every fold, and :func:`oof_candidates`: each fold's model predicts
   the real runs it never trained on, giving out-of-fold 3D candidates of every real run;
4. :func:`tune_oof`: the per-class thresholds tuned on the pooled out-of-fold candidates with
   the library's tuning (:func:`czii_kaggle.tune.tune_thresholds`), scored beside the start
   model's own thresholds on the same runs;
5. :func:`train_heatmap_fold` for every fold: where ``heatmap_steps`` > 0, every 3D heatmap
   network of the start bundle (the shipped one holds ``heatmap`` and ``heatmap_l0``) fine-tuned on
   the fold's real runs and the simulated ones, its batch-norm statistics re-estimated on the fold's
   real runs; :func:`fit_heatmap_ensemble`: each network's out-of-fold candidates of the real runs
   (with ``heatmap_steps`` 0 or where its training failed: the start's network, carried over as it
   is), its thresholds tuned on them, and each ensemble (:func:`ensemble_sets`: the start's, and
   YOLO + heatmap) of the out-of-fold YOLO candidates with them fitted
   (:func:`czii_kaggle.tune.fit_ensemble`). Each is scored **leaving one run out**
   (:func:`leave_one_run_out`: every real run selected by thresholds fitted on the others), beside
   the start bundle's own thresholds and ensembles, which need no fitting: a few runs can tune
   thresholds worse than the start's (with relative scores those need not follow the new look's
   scale), so each keeps the start's where these score higher. The detectors the bundle runs by
   default are those of the best of YOLO alone, each network alone and each ensemble by these
   honest scores;
6. the final fit on every real run (:func:`train_fold` and :func:`train_heatmap_fold` of
   ``plan.final``), with the tuned thresholds saved into its bundle (:func:`finish_bundle`, with
   the networks, ``ensemble.json`` and the default detectors of step 5): a folder the inference
   notebook takes as ``weights``.

Every fold's training validates (Ultralytics' best epoch) on its held-out real runs; the
final fit, which holds no real run out, on ``sim_val_runs`` simulated runs never trained on.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import layout, outputs
from .errors import CziiInputError

# The pipeline calls this module makes, in one place (bundle loading, prediction, threshold saving).
from .bundle import (DEFAULT_BUNDLE, HEATMAP_CONFIG_FILE, HEATMAP_WEIGHTS_FILE, MODEL_FILE,
                     export_bundle_onnx, held_detectors, load_bundle, load_detectors, load_heatmap_bundle,
                     save_aggregate_config, save_ensemble, save_heatmap_json, sources_record)
from .train import train
from .tune import yolo_candidates as _predict_candidates

#: The simulated runs' data root inside their folder (as :func:`czii_kaggle.simulate.simulate_dataset` writes it).
ROOT_NAME = layout.KAGGLE_ROOT.name
#: The fine-tuning record written into the final bundle.
RECORD_FILE = "FINETUNE.json"

# ---------------------------------------------------------------------------- time model
# Measured (benchmarks/bench_finetune.py, benchmarks/results/finetune.md) or derived as said
# there; the estimate is for one Kaggle T4 with the 4 CPU cores of a GPU kernel.
#: Seconds to simulate one full-size (184 x 630 x 630) random-look run, and to read, preprocess
#: and write the slice images of one: measured on the 2-core build machine at a load average of
#: 10-12 (benchmarks/results/finetune.md, 2026-12-01 15:51, the slower of two records; small runs
#: scaled by voxels), kept as they are for Kaggle's 4 cores (conservative: 17.5 s to simulate at a
#: less loaded moment, docs/EXPERIMENTS.md).
SIM_S_PER_RUN = 78.0
DATASET_S_PER_RUN = 54.0
#: Slice images of one full-size run with the recipe's dataset (every 3rd of 184 slices, 2 x 2
#: crops of 320 on 630 x 630): the most there can be (crops without a particle are mostly dropped).
IMAGES_PER_RUN = 62 * 4
#: Seconds per training step (batch 32, imgsz 320) on one T4 with 3 data-loader processes:
#: derived in benchmarks/results/finetune.md from the CPU step times measured there: data-bound,
#: 1.35 s of loading and augmenting a batch on one loaded core (15:51; 0.58 s at 15:46: the
#: slower is kept) / 3 processes (the network's compute, 0.54 GFLOPs per image, is far under
#: that on a T4). Measured without
#: mosaic, as every epoch of a training of at most 10 epochs runs (Ultralytics closes mosaic for
#: the last 10); longer trainings with mosaic load 4 images per sample and take longer.
T4_STEP_S = 0.45
#: Seconds to predict one full-size run on one T4 (reading and preprocessing bound): 13.3 s of
#: CPU-side work per run on the loaded build machine (README, Kaggle estimate).
T4_PREDICT_S_PER_RUN = 13.3
#: Seconds for the start bundle's heatmap detector to predict one full-size run: 7.65 s (reading,
#: its test-time batch-norm adaptation, inference with its 4 views, peaks; torch) on the 2-core build
#: machine (docs/DETECTORS.md, the shipped stage r, 24/48/64 channels), kept for a Kaggle kernel (conservative:
#: a T4 runs the network faster). A further network at level 0 (10 A, the shipped ``heatmap_l0``):
#: 13.05 s (benchmarks/results/ensemble.md, 2026-12-03 16:57 record, the same machine).
HEATMAP_S_PER_RUN = 7.65
HEATMAP_S_PER_RUN_BY_LEVEL = {0: 13.05, 1: HEATMAP_S_PER_RUN}
#: Fixed seconds per training (model and data set-up, Ultralytics' final validation).
TRAIN_OVERHEAD_S = 60.0
#: Seconds per step of the heatmap network's fine-tuning (batch 4 patches of 48 x 96 x 96, look
#: augmentation 0.7) on one T4: derived, bound by drawing the batch on one CPU core: 0.10 s on the
#: idle build machine (benchmarks/results/adapt.md, 07:35 record), 0.29 s with both its cores busy
#: (a one-off measurement of the same code, not recorded); the slower is kept, as for YOLO. The
#: network's 69 GFLOPs per step, forward and backward, take about 0.035 s at 2 TFLOP/s. The same
#: figure is kept for a network at level 0 (its patches hold as many voxels).
HEATMAP_T4_STEP_S = 0.29
#: Seconds to re-estimate the heatmap's batch-norm statistics on one full-size run (one pass of
#: its windows, as the test-time adaptation: 1.48 s on the build machine's CPU); at level 0,
#: 10.6 s (stage l0's recalibration on 18 runs took 190.8 s there: heatmap_l0.json's record).
HEATMAP_RECAL_S_PER_RUN = 1.5
HEATMAP_RECAL_S_PER_RUN_BY_LEVEL = {0: 10.6, 1: HEATMAP_RECAL_S_PER_RUN}
#: Seconds per real run to fit YOLO's and the heatmap's thresholds and the ensemble on the real runs'
#: candidates (2.3 + 2.9 + 26.4 s for 6 full-size runs on the build machine's CPU, a one-off timing of
#: the shipped bundle's validation candidates); :func:`fit_heatmap_ensemble` fits once per run left
#: out (on the others) and once on all: ``n_real ** 2`` run-fits. Each further heatmap network adds
#: its thresholds' share, each further ensemble the ensemble's.
FIT_S_PER_RUN = 5.3
FIT_HEATMAP_S_PER_RUN, FIT_ENSEMBLE_S_PER_RUN = 2.9 / 6, 26.4 / 6
#: The heatmap fine-tuning's batch and share of look-augmented patches, as measured in benchmarks/bench_adapt.py.
HEATMAP_BATCH, HEATMAP_LOOK_AUGMENT = 4, 0.7


@dataclass(frozen=True)
class FineTuneConfig:
    """Options of the fine-tuning; :meth:`from_recipe` gives the shipped recipe's (``fine_tune`` section).

    Attributes
    ----------
    init : str
        Bundle folder (or ``.pt``) to start from; ``"shipped"``: the shipped bundle.
    k_folds : int
        Folds over the real runs (2 .. number of runs; the number of runs is leave-one-run-out).
    fold_epochs, final_epochs : int
        Epochs of each fold's training and of the final fit on every real run.
    sim_seed, n_sim_runs : int
        Simulated runs (random layouts), ``sim_val_runs`` of them never trained on (the final
        fit's validation images).
    sim_look : str or dict
        ``"random"`` (each run draws its look), ``"classic"`` or a look spec.
    sim_difficulties : tuple
        Difficulty per simulated run (names or 0..1), repeated.
    sim_count_scale : dict
        Multiplies a type's mean count in the simulated layouts.
    sim_shape_vox : (z, y, x)
    batch, imgsz, workers, device, seed : training options (``device="auto"``: the first GPU).
    max_hours : float
        :func:`plan_fine_tune` refuses a plan whose estimate exceeds it.
    heatmap_steps : int
        Steps of each fold's and the final fit's fine-tuning of the start bundle's heatmap network
        (:func:`train_heatmap_fold`); 0: the start's heatmap is carried over as it is (its thresholds
        still tuned on the real runs).
    heatmap_lr : float
    heatmap_patch_vox : (z, y, x)
        The heatmap's training patch (level-1 voxels).
    """

    # the defaults equal the shipped recipe's ``fine_tune`` (tests/test_recipe.py checks it)
    init: str = "shipped"
    k_folds: int = 7
    fold_epochs: int = 8
    final_epochs: int = 10
    sim_seed: int = 21
    n_sim_runs: int = 16
    sim_val_runs: int = 1
    sim_look: str | dict = "random"
    sim_difficulties: tuple = (0.35, 0.5, 0.65, "medium", "medium", 0.2, 0.45, 0.55, 0.85, 0.5, 0.4, 0.6)
    sim_count_scale: dict = field(default_factory=lambda: {"beta-galactosidase": 3.0, "thyroglobulin": 1.5,
                                                           "beta-amylase": 1.5})
    sim_shape_vox: tuple[int, int, int] = (184, 630, 630)
    batch: int = 32
    imgsz: int = 320
    workers: int = 4
    device: str = "auto"
    seed: int = 0
    max_hours: float = 9.0
    heatmap_steps: int = 400
    heatmap_lr: float = 3e-4
    heatmap_patch_vox: tuple[int, int, int] = (48, 96, 96)

    def __post_init__(self):
        if self.k_folds < 2:
            raise ValueError(f"k_folds must be >= 2 (each fold holds real runs out), not {self.k_folds}")
        for name in ("fold_epochs", "final_epochs", "batch", "imgsz"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.heatmap_steps < 0:
            raise ValueError(f"heatmap_steps must be >= 0 (0: the start's heatmap as it is), not {self.heatmap_steps}")
        if not 0 <= self.sim_val_runs <= self.n_sim_runs:
            raise ValueError(f"sim_val_runs must be in 0..n_sim_runs ({self.n_sim_runs}), not {self.sim_val_runs}")

    @classmethod
    def from_recipe(cls, recipe=None, **overrides) -> "FineTuneConfig":
        """The recipe's ``fine_tune`` settings (default: the shipped recipe), ``overrides`` applied
        (``None`` values are ignored, so notebook parameters left at None keep the recipe's)."""
        from .recipe import load_recipe

        ft = (recipe or load_recipe()).fine_tune
        sim = ft.get("sim", {})
        base = dict(init=ft.get("init", "shipped"), k_folds=ft["k_folds"], fold_epochs=ft["fold_epochs"],
                    final_epochs=ft["final_epochs"], sim_seed=sim["seed"], n_sim_runs=sim["n_runs"],
                    sim_val_runs=ft.get("sim_val_runs", 1), sim_look=sim.get("look", "random"),
                    sim_difficulties=tuple(sim.get("difficulties", ("medium",))),
                    sim_count_scale=dict(sim.get("count_scale", {})),
                    sim_shape_vox=tuple(sim.get("shape_vox", (184, 630, 630))), batch=ft.get("batch", 32),
                    workers=ft.get("workers", 4), heatmap_steps=ft.get("heatmap", {}).get("steps", 0),
                    heatmap_lr=ft.get("heatmap", {}).get("lr", 3e-4))
        base.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass(frozen=True)
class Fold:
    """One training: ``train_real`` real runs (and the simulated training runs); ``val_real``
    real runs held out (none in the final fit)."""

    name: str
    train_real: tuple[str, ...]
    val_real: tuple[str, ...]


@dataclass(frozen=True)
class FineTunePlan:
    """What :func:`plan_fine_tune` decided: runs, folds, settings, the time estimate."""

    config: FineTuneConfig
    init_weights: Path
    real_runs: tuple[str, ...]
    sim_runs: tuple[str, ...]
    sim_val: tuple[str, ...]
    folds: tuple[Fold, ...]
    final: Fold
    dataset: object  # DatasetConfig: the recipe's, with the start bundle's preprocessing
    estimate: dict

    def summary(self) -> str:
        """A few lines to print before the long work starts."""
        lines = [f"start: {self.init_weights}",
                 f"real runs ({len(self.real_runs)}): {', '.join(self.real_runs)}",
                 f"simulated runs: {len(self.sim_runs)} ({len(self.sim_val)} only for the final fit's validation), "
                 f"look {self.config.sim_look!r}"]
        lines += [f"{f.name}: holds out {', '.join(f.val_real)}" for f in self.folds]
        e = self.estimate
        lines.append("estimate on one T4: " + ", ".join(f"{k[:-2]} {v / 60:.0f} min" for k, v in e.items()
                                                          if k != "total_s") + f"; total {e['total_s'] / 3600:.1f} h")
        return "\n".join(lines)


def make_folds(runs: list[str], k: int, seed: int = 0) -> tuple[Fold, ...]:
    """``k`` folds over ``runs``: a seeded shuffle dealt round robin, so each run is held out by
    exactly one fold and fold sizes differ by at most one. ``k == len(runs)``: leave-one-run-out."""
    runs = sorted(runs)
    if not 2 <= k <= len(runs):
        raise CziiInputError(None, f"k_folds = {k}: needs 2 .. {len(runs)} (the number of real runs with picks)")
    order = [runs[i] for i in np.random.default_rng(seed).permutation(len(runs))]
    held = [sorted(order[i::k]) for i in range(k)]
    return tuple(Fold(f"fold{i}", tuple(r for r in runs if r not in h), tuple(h)) for i, h in enumerate(held))


def sim_run_names(config: FineTuneConfig) -> list[str]:
    """Names :func:`simulate_runs` gives its runs (random layouts, no real names)."""
    return [f"TS_sim_{config.sim_seed}_{i}" for i in range(config.n_sim_runs)]


def _n_steps(n_images: int, batch: int) -> int:
    return math.ceil(n_images / batch)


def estimate_s(config: FineTuneConfig, n_real: int, images_per_run: float = IMAGES_PER_RUN,
               step_s: float = T4_STEP_S, predict_s_per_run: float = T4_PREDICT_S_PER_RUN,
               sim_s_per_run: float = SIM_S_PER_RUN, dataset_s_per_run: float = DATASET_S_PER_RUN,
               heatmap_s_per_run: float | Mapping[int, float] = HEATMAP_S_PER_RUN_BY_LEVEL,
               heatmap_step_s: float = HEATMAP_T4_STEP_S, heatmap_levels: tuple[int, ...] = (1,),
               n_ensembles: int = 1) -> dict:
    """Seconds per phase of the fine-tuning on one T4 (see the time model constants above).

    Each training epoch runs ``ceil(train images / batch)`` steps and validates its held-out
    images at a third of a step per batch; out-of-fold prediction predicts each real run once,
    the baseline (the start model on every real run) once more, and each heatmap network (one per
    entry of ``heatmap_levels``, its zarr level) each real run once (:func:`fit_heatmap_ensemble`);
    with ``heatmap_steps``, each training also fine-tunes every heatmap network (its steps, then its
    statistics on its real runs: :func:`train_heatmap_fold`); the thresholds and the ``n_ensembles``
    ensembles are fitted leaving each real run out and once on all of them.
    ``heatmap_s_per_run``: seconds per run, one figure or one per level.
    """
    def per_level(figure, level):
        return figure[level] if isinstance(figure, Mapping) else figure

    voxels = float(np.prod(config.sim_shape_vox)) / (184 * 630 * 630)
    n_sim_train = config.n_sim_runs - config.sim_val_runs
    held = n_real / config.k_folds
    trainings = [(n_real - held, held, config.fold_epochs)] * config.k_folds  # (train, val, epochs) in runs
    trainings.append((n_real, config.sim_val_runs or n_real, config.final_epochs))
    train_s = 0.0
    for n_train, n_val, epochs in trainings:
        steps = (_n_steps((n_train + n_sim_train) * images_per_run * voxels, config.batch)
                 + _n_steps(n_val * images_per_run * voxels, config.batch) / 3)
        train_s += epochs * steps * step_s + TRAIN_OVERHEAD_S
    heatmap_s = 0.0
    if config.heatmap_steps:  # each fold's and the final fit's networks: their steps, then statistics on the real runs
        heatmap_s = sum(config.heatmap_steps * heatmap_step_s
                        + n_train * HEATMAP_RECAL_S_PER_RUN_BY_LEVEL.get(level, HEATMAP_RECAL_S_PER_RUN) * voxels
                        for level in heatmap_levels for n_train, _, _ in trainings)
    n_more = max(0, len(heatmap_levels) - 1), max(0, n_ensembles - 1)
    out = {
        "simulate_s": config.n_sim_runs * sim_s_per_run * voxels,
        "dataset_s": (n_real + config.n_sim_runs) * dataset_s_per_run * voxels,
        "train_s": train_s,
        "heatmap_train_s": heatmap_s,
        "predict_s": n_real * (2 * predict_s_per_run + sum(per_level(heatmap_s_per_run, lv) for lv in heatmap_levels)
                               ) * voxels,
        "fit_s": n_real ** 2 * (FIT_S_PER_RUN + n_more[0] * FIT_HEATMAP_S_PER_RUN
                                + n_more[1] * FIT_ENSEMBLE_S_PER_RUN) * voxels,
    }
    out["total_s"] = sum(out.values())
    return out


def _init_weights(init: str | Path) -> Path:
    path = DEFAULT_BUNDLE if init in ("shipped", None) else Path(init)
    return load_bundle(path).weights


def plan_fine_tune(real_root: str | Path, config: FineTuneConfig = FineTuneConfig(), **estimate_kw) -> FineTunePlan:
    """The runs, folds, settings and time estimate; refuses, before anything long, a root without
    enough runs with picks, a start bundle that is not there, or an estimate over ``config.max_hours``."""
    from .recipe import load_recipe

    real_runs = layout.list_pick_runs(real_root)
    if len(real_runs) < 2:
        raise CziiInputError(layout.overlay_runs_dir(real_root), f"needs at least 2 runs with picks, found {real_runs}")
    for run in real_runs:
        tomo = layout.tomogram_path(real_root, "train", run)
        if not tomo.exists():
            raise CziiInputError(tomo, f"run {run!r} has picks but no {tomo.name}")
    folds = make_folds(real_runs, config.k_folds, config.seed)
    init = _init_weights(config.init)
    dataset = replace(load_recipe().dataset, preprocess=load_bundle(init).preprocess, seed=config.seed)
    sims = sim_run_names(config)
    sim_val = tuple(sims[len(sims) - config.sim_val_runs:])
    networks = heatmap_networks(init.parent)
    estimate_kw = {"heatmap_levels": tuple(load_heatmap_bundle(init.parent, n).config.level for n in networks),
                   "n_ensembles": len(ensemble_sets(init.parent, ["yolo", *networks])), **estimate_kw}
    estimate = estimate_s(config, len(real_runs), **estimate_kw)
    if estimate["total_s"] > config.max_hours * 3600:
        raise CziiInputError(None, f"the plan is estimated at {estimate['total_s'] / 3600:.1f} h on one T4, over "
                                   f"max_hours = {config.max_hours}: lower the epochs, the folds or the simulated runs")
    return FineTunePlan(config=config, init_weights=init, real_runs=tuple(real_runs), sim_runs=tuple(sims),
                        sim_val=sim_val, folds=folds, final=Fold("final", tuple(real_runs), ()), dataset=dataset,
                        estimate=estimate)


def simulate_runs(plan: FineTunePlan, out_dir: str | Path) -> Path:
    """Simulate the plan's runs into ``out_dir`` (kept when already complete); returns their data root."""
    from .simulate import SimConfig, difficulty_value, simulate_dataset

    out_dir = Path(out_dir)
    cfg = plan.config
    root = out_dir / ROOT_NAME
    if (out_dir / "simulation.json").is_file() and set(plan.sim_runs) <= set(layout.list_pick_runs(root)):
        return root
    diffs = [difficulty_value(cfg.sim_difficulties[i % len(cfg.sim_difficulties)]) for i in range(cfg.n_sim_runs)]
    ds = simulate_dataset(out_dir, n_train=cfg.n_sim_runs, n_test=0, seed=cfg.sim_seed, difficulties=diffs,
                          config=SimConfig(shape_vox=tuple(cfg.sim_shape_vox), look=cfg.sim_look),
                          count_scale=cfg.sim_count_scale or 1.0, overwrite=True)  # this step's own folder
    return ds.root


@dataclass(frozen=True)
class SliceSets:
    """Every run's slice images: ``images[run]`` lists its PNG files; ``meta``: the datasets' ``czii`` records."""

    images: dict
    meta: dict


def _run_images(data_yaml: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for png in sorted((data_yaml.parent / "images" / "train").glob("*.png")):
        out.setdefault(png.stem.rsplit("_z", 1)[0], []).append(png)
    return out


def build_slices(plan: FineTunePlan, real_root: str | Path, sim_root: str | Path, work_dir: str | Path) -> SliceSets:
    """The slice images of every real and simulated run, made once (kept when already built)."""
    import yaml

    from .dataset import build_dataset

    work_dir = Path(work_dir)
    images, meta = {}, {}
    for name, root, runs in (("real", real_root, plan.real_runs), ("sim", sim_root, plan.sim_runs)):
        data_yaml = work_dir / f"slices_{name}" / "data.yaml"
        if not data_yaml.is_file():
            build_dataset(root, data_yaml.parent, val_runs=[], runs=list(runs), config=plan.dataset, overwrite=True)
        meta[name] = yaml.safe_load(data_yaml.read_text())["czii"]
        if meta[name]["config"] != json.loads(json.dumps(plan.dataset.to_dict())):
            raise CziiInputError(data_yaml, "was built with other dataset settings than this plan's (another start "
                                            "bundle?): remove the work folder or choose another one")
        images.update(_run_images(data_yaml))
    missing = [r for r in (*plan.real_runs, *plan.sim_runs) if r not in images]
    if missing:
        raise CziiInputError(work_dir, f"runs {missing} gave no slice image (no particle in any crop?)")
    return SliceSets(images=images, meta=meta)


def write_fold_yaml(plan: FineTunePlan, slices: SliceSets, fold: Fold, out_dir: str | Path) -> Path:
    """``{out_dir}/data.yaml`` of one fold: its training images (its real runs and the simulated
    training runs) and validation images (its held-out real runs; the final fit: the simulated
    validation runs, or its real runs when there are none), listed in text files."""
    import yaml

    from .particles import NAMES

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sim_train = [r for r in plan.sim_runs if r not in plan.sim_val]
    train_runs = [*fold.train_real, *sim_train]
    val_runs = list(fold.val_real) or list(plan.sim_val) or list(fold.train_real)
    for split, runs in (("train", train_runs), ("val", val_runs)):
        lines = [str(p.resolve()) for r in runs for p in slices.images[r]]
        outputs.write_text(out_dir / f"{split}.txt", "\n".join(lines) + "\n")
    doc = {"path": str(out_dir.resolve()), "train": str((out_dir / "train.txt").resolve()),
           "val": str((out_dir / "val.txt").resolve()), "names": dict(enumerate(NAMES)),
           "czii": {"train_runs": train_runs, "val_runs": val_runs, "config": slices.meta["real"]["config"],
                    "images": {"train": sum(len(slices.images[r]) for r in train_runs),
                               "val": sum(len(slices.images[r]) for r in val_runs)}}}
    return outputs.write_text(out_dir / "data.yaml", yaml.safe_dump(doc, sort_keys=False))


def train_fold(plan: FineTunePlan, slices: SliceSets, fold: Fold, out_dir: str | Path) -> Path:
    """Train one fold from the plan's start weights (kept when already trained); its bundle folder
    gets the start bundle's inference settings and thresholds (the starting point of the tuning)."""
    out_dir = Path(out_dir)
    bundle_dir = out_dir / "bundle"
    cfg = plan.config
    epochs = cfg.final_epochs if fold.name == plan.final.name else cfg.fold_epochs
    if (bundle_dir / MODEL_FILE).is_file():  # kept from an interrupted run of the same plan, or refused
        done = json.loads((bundle_dir / "czii_config.json").read_text())
        sim_train = [r for r in plan.sim_runs if r not in plan.sim_val]
        same = (done.get("train_runs") == [*fold.train_real, *sim_train] and done["train"]["epochs"] == epochs
                and set(done.get("val_runs", [])) >= set(fold.val_real))
        if not same:
            raise CziiInputError(bundle_dir, f"was trained for another plan (runs or epochs differ from {fold.name}'s): "
                                             "remove the work folder or choose another one")
    else:
        data_yaml = write_fold_yaml(plan, slices, fold, out_dir)
        from .recipe import load_recipe

        tr = load_recipe().train_config(model=plan.init_weights, epochs=epochs, batch=cfg.batch, imgsz=cfg.imgsz,
                                        workers=cfg.workers, device=cfg.device, seed=cfg.seed)
        train(data_yaml, bundle_dir, tr)
        start = load_bundle(plan.init_weights)
        save_aggregate_config(bundle_dir, start.aggregate, detect=start.detect)
    return bundle_dir


def run_candidates(real_root: str | Path, runs: list[str], bundle) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every 3D candidate (no threshold) of ``runs`` predicted with ``bundle`` (a folder, ``.pt`` or
    loaded bundle), and the run report."""
    bundle = load_bundle(bundle) if not hasattr(bundle, "aggregate") else bundle
    return _predict_candidates(real_root, list(runs), bundle)


def oof_candidates(real_root: str | Path, folds: tuple[Fold, ...], bundle_dirs: list[Path]) -> pd.DataFrame:
    """Out-of-fold candidates: each fold's model on the real runs it held out, pooled."""
    parts = [run_candidates(real_root, list(f.val_real), b)[0] for f, b in zip(folds, bundle_dirs)]
    return pd.concat(parts, ignore_index=True)


def _torch_device(device: str) -> str:
    """The fine-tuning's ``device`` (Ultralytics' words: ``auto``, ``cpu``, ``0``) as torch names it."""
    return f"cuda:{device}" if str(device).isdigit() else str(device)


def heatmap_networks(bundle_dir: str | Path) -> list[str]:
    """The heatmap networks a bundle folder holds (``heatmap`` first, then ``heatmap_<tag>`` by name)."""
    from .detectors import detector_kind

    d = Path(bundle_dir)
    return [n for n in held_detectors(d) if detector_kind(n) == "heatmap"] if d.is_dir() else []


def ensemble_sets(bundle_dir: str | Path, available) -> list[tuple[str, ...]]:
    """The detector sets whose ensembles a fine-tuning fits: those of the bundle's ensembles (the main
    one first) whose detectors are all ``available``, and YOLO + ``heatmap`` (where both are)."""
    from .bundle import load_ensembles

    sets = [tuple(e.detectors) for e in (load_ensembles(bundle_dir) if Path(bundle_dir).is_dir() else [])]
    sets.append(("yolo", "heatmap"))
    out: list[tuple[str, ...]] = []
    for s in sets:
        if set(s) <= set(available) and len(s) > 1 and sorted(s) not in [sorted(o) for o in out]:
            out.append(s)
    return out


def _fold_dirs(out_dir: Path, name: str) -> tuple[Path, Path]:
    """A fold's training folder and fine-tuned bundle folder of the heatmap network ``name``."""
    return out_dir / f"{name}_training", out_dir / name


def train_heatmap_fold(plan: FineTunePlan, real_root: str | Path, sim_root: str | Path, fold: Fold,
                       out_dir: str | Path) -> dict[str, Path | None]:
    """Fine-tune every heatmap network of the start bundle for one fold (kept when already done):
    ``{name: its bundle folder}`` (its files named ``heatmap.*``), ``None`` for a network whose
    fine-tuning failed (said on stderr); ``{}`` when ``heatmap_steps`` is 0 or the start holds no heatmap.

    ``heatmap_steps`` steps from the start's weights, with its config and thresholds
    (:func:`czii_kaggle.train_heatmap.training_start`), on the fold's real runs and the simulated
    training runs (each run drawn alike; look augmentation on), on the fold's device; then its
    batch-norm statistics are re-estimated on the fold's real runs (the look it will predict), with
    the start's test-time adaptation (:func:`czii_kaggle.train_heatmap.recalibrate_heatmap`).
    """
    from .bundle import heatmap_files
    from .train_heatmap import HeatmapTrainConfig, recalibrate_heatmap, train_heatmap, training_start

    cfg, start = plan.config, plan.init_weights.parent
    if cfg.heatmap_steps == 0:
        return {}
    out_dir = Path(out_dir)
    sim_train = [r for r in plan.sim_runs if r not in plan.sim_val]
    sources = [(Path(real_root), list(fold.train_real)), *([(Path(sim_root), sim_train)] if sim_train else [])]
    done: dict[str, Path | None] = {}
    for name in heatmap_networks(start):
        training, bundle_dir = _fold_dirs(out_dir, name)
        if (bundle_dir / HEATMAP_WEIGHTS_FILE).is_file():  # kept from an interrupted run of the same plan, or refused
            record = json.loads((bundle_dir / HEATMAP_CONFIG_FILE).read_text()).get("training", {})
            if record.get("runs") != [f"{root}/{run}" for root, runs in sources for run in runs] or \
                    record.get("steps") != cfg.heatmap_steps:
                raise CziiInputError(bundle_dir, f"was trained for another plan (runs or steps differ from "
                                                 f"{fold.name}'s): remove the work folder or choose another one")
            done[name] = bundle_dir
            continue
        config, init = training_start(start / heatmap_files(name)[0])
        train = HeatmapTrainConfig(patch_vox=tuple(cfg.heatmap_patch_vox), batch=HEATMAP_BATCH,
                                   steps=cfg.heatmap_steps, lr=cfg.heatmap_lr, seed=cfg.seed,
                                   threads=max(1, cfg.workers), look_augment=HEATMAP_LOOK_AUGMENT,
                                   device=_torch_device(cfg.device))
        command = f"czii_kaggle.finetune ({fold.name}, {name})"
        try:
            train_heatmap(sources, training, config, train, init=init, command=command)
            done[name] = recalibrate_heatmap(training, sources[:1], bundle_dir, command=command,
                                             replace=bundle_dir.exists(), device=train.device)
        except (CziiInputError, ValueError, RuntimeError, OSError) as exc:  # YOLO's fine-tuning is not lost for it
            print(f"[czii_kaggle] the fine-tuning of {name} in {fold.name} failed "
                  f"({str(exc).strip().splitlines()[-1]}): the start bundle's {name} is used", file=sys.stderr)
            done[name] = None
    return done


def heatmap_oof_candidates(real_root: str | Path, folds: tuple[Fold, ...], heatmap_dirs: list[Mapping],
                           name: str = "heatmap") -> tuple[pd.DataFrame | None, str]:
    """Out-of-fold candidates of the heatmap network ``name``: each fold's fine-tuned copy
    (:func:`train_heatmap_fold`) on the real runs it held out, pooled; or ``None`` and why not (a
    fold holds no fine-tuned copy, or a run failed)."""
    if not heatmap_dirs or any((d or {}).get(name) is None for d in heatmap_dirs):
        return None, f"no fine-tuned {name}"
    parts = []
    for fold, dirs in zip(folds, heatmap_dirs):
        cands, note = heatmap_candidates(real_root, list(fold.val_real), dirs[name])
        if cands is None:
            return None, note
        parts.append(cands)
    return pd.concat(parts, ignore_index=True), ""


def tune_oof(real_root: str | Path, candidates: pd.DataFrame, start_bundle) -> tuple[object, pd.DataFrame]:
    """Per-class thresholds tuned on the pooled out-of-fold candidates (the library's tuning, from the
    start bundle's thresholds); returns the tuned :class:`AggregateConfig` and the per-class table."""
    from .picks import read_all_picks
    from .tune import tune_thresholds

    truth = read_all_picks(real_root, sorted(set(candidates["experiment"].astype(str))))
    start = load_bundle(start_bundle) if not hasattr(start_bundle, "aggregate") else start_bundle
    return tune_thresholds(candidates, truth, start.aggregate)


def score_candidates(real_root: str | Path, candidates: pd.DataFrame, config, runs: list[str] | None = None) -> float:
    """The competition score of ``candidates`` selected with ``config`` against the picks of ``runs``
    (default: the runs the candidates come from)."""
    from .aggregate import select
    from .picks import read_all_picks

    truth = read_all_picks(real_root, runs or sorted(set(candidates["experiment"].astype(str))))
    return _score_picks(truth, select(candidates, config))


def compare_scores(real_root: str | Path, plan: FineTunePlan, oof: pd.DataFrame, tuned) -> dict[str, float]:
    """Scores on the real runs: the start model with its own thresholds, the folds' out-of-fold
    candidates with the start thresholds and with the tuned ones (tuned on these very runs)."""
    start = load_bundle(plan.init_weights)
    baseline, _ = run_candidates(real_root, list(plan.real_runs), start)
    return {
        "start model, its own thresholds": score_candidates(real_root, baseline, start.aggregate),
        "fine-tuned, out of fold, start thresholds": score_candidates(real_root, oof, start.aggregate),
        "fine-tuned, out of fold, tuned thresholds (tuned on these runs)": score_candidates(real_root, oof, tuned),
    }


def leave_one_run_out(candidates: Mapping[str, pd.DataFrame], truth: pd.DataFrame, fit) -> pd.DataFrame:
    """Every run's picks selected by what ``fit(candidates of the other runs, their picks)`` returns (a
    function of one run's candidates, ``{detector: frame}``, to its picks): the picks of a tuning
    that never saw the run it selects in, for an honest score of tuning on runs like these."""
    picked = []
    for run in sorted(set(truth["experiment"].astype(str))):
        mine = {k: v[v["experiment"].astype(str) == run] for k, v in candidates.items()}
        rest = {k: v[v["experiment"].astype(str) != run] for k, v in candidates.items()}
        picked.append(fit(rest, truth[truth["experiment"].astype(str) != run])(mine))
    return pd.concat(picked, ignore_index=True)


def _score_picks(truth: pd.DataFrame, picked: pd.DataFrame) -> float:
    """The competition score of ``picked`` (its scored types) against ``truth``."""
    from . import metric
    from .predict import scored_only

    return float(metric.score(truth, scored_only(picked)))


@dataclass(frozen=True)
class HeatmapFit:
    """What :func:`fit_heatmap_ensemble` fitted on the real runs: each heatmap network's thresholds,
    each ensemble, their scores, the default detectors; with ``aggregates`` empty, ``note`` says why
    the fine-tuned bundle holds YOLO alone."""

    note: str
    aggregates: dict = field(default_factory=dict)  # {network: AggregateConfig}: its thresholds
    ensembles: dict = field(default_factory=dict)  # {"yolo,heatmap,...": EnsembleConfig}, fitted or the start's
    scores: dict = field(default_factory=dict)
    default: tuple[str, ...] = ("yolo",)
    tables: dict = field(default_factory=dict)  # {"yolo,heatmap,...": the ensemble's tuning table} where fitted
    tuned_on: dict = field(default_factory=dict)  # {network: [{"root", "runs"}] of the real runs, or None: the start's}
    fine_tuned: dict = field(default_factory=dict)  # {network: its candidates came from the folds' fine-tuned copies}
    held_out: dict = field(default_factory=dict)  # {"yolo" | network | "yolo,heatmap,...": its honest score}

    @property
    def aggregate(self):
        """The ``heatmap`` network's thresholds (None: not held)."""
        return self.aggregates.get("heatmap")


def heatmap_candidates(real_root: str | Path, runs: list[str], bundle_dir: str | Path, name: str = "heatmap"
                       ) -> tuple[pd.DataFrame | None, str]:
    """The heatmap network ``name``'s candidates (no threshold) of ``runs`` from a bundle folder, or
    ``None`` and why not (the folder holds no such network, or it failed on a run: the error)."""
    from .detectors import run_candidates as run_detectors

    d = Path(bundle_dir)
    if name not in heatmap_networks(d):
        return None, f"{d} holds no {name} detector"
    found, report = run_detectors(load_detectors(d, [name]), real_root, "train", list(runs), progress=False)
    failed = report[report["status"] != "ok"]
    if len(failed):
        return None, f"{name} failed on {', '.join(failed['experiment'])} ({failed['error'].iloc[0]})"
    return found[name], ""


def fit_heatmap_ensemble(real_root: str | Path, plan: FineTunePlan, oof: pd.DataFrame,
                         heatmap_dirs: list[Mapping] | None = None) -> HeatmapFit:
    """Every heatmap network of the start bundle and the ensembles, fitted on the real runs (see the
    module docstring).

    ``oof``: the folds' out-of-fold YOLO candidates (:func:`oof_candidates`). ``heatmap_dirs``: each
    fold's fine-tuned networks (:func:`train_heatmap_fold`): a network's out-of-fold candidates are
    its fine-tuned copies'; else (or where they failed, said in the note) the start bundle's. A
    network that fails on a real run is left out of the fine-tuned bundle. Each network's thresholds
    and each ensemble (:func:`ensemble_sets`: the start's, and YOLO + heatmap) are tuned on the same runs as
    YOLO's (:func:`tune_oof`; the calibration, weights and thresholds of
    :func:`czii_kaggle.tune.fit_ensemble`, from the start bundle's ensemble floor and relative scores)
    unless the start bundle's own score higher; every score is honest (:func:`leave_one_run_out`
    for what is fitted here, YOLO's thresholds too). The default detectors are those of the highest
    (``held_out``; ties: the fewer detectors).
    """
    from .aggregate import select
    from .bundle import ensemble_of, load_ensembles
    from .ensemble import select_ensemble
    from .picks import read_all_picks
    from .tune import fit_ensemble, tune_thresholds

    runs = list(plan.real_runs)
    start_dir = plan.init_weights.parent
    networks = heatmap_networks(start_dir)
    if not networks:
        return HeatmapFit(f"{start_dir} holds no heatmap detector: the fine-tuned bundle runs YOLO alone")
    cands, fine_tuned, notes = {"yolo": oof}, {}, []
    for name in networks:
        found, why_not = heatmap_oof_candidates(real_root, plan.folds, heatmap_dirs or [], name)
        fine_tuned[name] = found is not None
        if found is None:
            if heatmap_dirs:
                notes.append(f"{name} is the start bundle's: {why_not}")
            found, failed = heatmap_candidates(real_root, runs, start_dir, name)
            if found is None:
                notes.append(f"{failed}: the fine-tuned bundle runs without it")
                continue
        cands[name] = found
    networks = [n for n in networks if n in cands]
    if not networks:
        return HeatmapFit("; ".join(notes) + "; the fine-tuned bundle runs YOLO alone")
    truth = read_all_picks(real_root, runs)
    yolo_start = load_bundle(plan.init_weights).aggregate
    hm_start = {n: load_heatmap_bundle(start_dir, n).aggregate for n in networks}
    start_ensembles = load_ensembles(start_dir)
    main = start_ensembles[0] if start_ensembles else None

    def left_out(fit, selector) -> float:  # every real run selected by thresholds that never saw it
        def fitted(c, t):
            cfg = fit(c, t)
            return lambda m: selector(m, cfg)
        return _score_picks(truth, leave_one_run_out(cands, truth, fitted))

    def tune_network(name):
        return lambda c, t: tune_thresholds(c[name], t, hm_start[name], support_grid=None)[0]

    def fit_set(detectors, base):
        return lambda c, t: fit_ensemble(c, t, detectors, start=None if base is None else base.aggregate,
                                         ref_rank=None if base is None else base.ref_rank)

    held_out = {"yolo": left_out(lambda c, t: tune_thresholds(c["yolo"], t, yolo_start)[0],
                                 lambda m, cfg: select(m["yolo"], cfg))}
    scores, aggregates, tuned_on, ensembles, tables, kept = {}, {}, {}, {}, {}, []
    for name in networks:
        which = f"fine-tuned {name} out of fold" if fine_tuned[name] else f"{name} of the start bundle (not retrained)"
        tuned = left_out(tune_network(name), lambda m, cfg, n=name: select(m[n], cfg))
        start_score = _score_picks(truth, select(cands[name], hm_start[name]))
        scores[f"{which}, thresholds tuned leaving each run out"] = tuned
        scores[f"{which}, the start's thresholds"] = start_score
        keep = start_score > tuned  # ties: tuned on the real runs
        aggregates[name] = hm_start[name] if keep else tune_network(name)(cands, truth)
        tuned_on[name] = None if keep else sources_record([(real_root, runs)])
        held_out[name] = max(tuned, start_score)
        kept.append(f"{name}'s thresholds: " + ("the start's" if keep else "tuned on the real runs"))
    for detectors in ensemble_sets(start_dir, ["yolo", *networks]):
        key, own = ",".join(detectors), ensemble_of(start_ensembles, detectors)
        fit = fit_set(detectors, own or main)  # a set the start has no ensemble of: its main one's floor
        label = f"ensemble {' + '.join(detectors)}"
        fitted = left_out(lambda c, t, f=fit: f(c, t)[0], select_ensemble)
        scores[f"{label}, fitted leaving each run out"] = fitted
        start_score = None if own is None else _score_picks(truth, select_ensemble(cands, own))
        if start_score is not None:
            scores[f"{label}, the start's ensemble"] = start_score
        if start_score is not None and start_score > fitted:
            ensembles[key] = own
        else:
            ensembles[key], tables[key] = fit(cands, truth)
        held_out[key] = fitted if start_score is None else max(fitted, start_score)
        kept.append(f"{label}: " + ("the start's" if ensembles[key] is own else "fitted on the real runs"))
    best = max(held_out, key=lambda k: (held_out[k], -k.count(",")))
    note = "; ".join([f"default detectors: {best} (the best on the real runs, each run scored by thresholds "
                      "fitted on the others)", *kept, *notes])
    return HeatmapFit(note, aggregates, ensembles, scores, tuple(best.split(",")), tables, tuned_on, fine_tuned,
                      held_out)


def default_dirs(kaggle: bool, work_dir: str | Path | None = None,
                 out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``(work_dir, out_dir)``: the given ones, else on Kaggle scratch in the temporary folder (not
    kept) and the bundle in ``/kaggle/working/czii_finetuned`` (kept with the notebook's output),
    elsewhere ``finetune_work`` and ``finetuned_bundle`` in the current folder."""
    import tempfile

    from .runtime import KAGGLE_WORKING

    if kaggle:
        defaults = Path(tempfile.gettempdir()) / "czii_finetune", KAGGLE_WORKING / "czii_finetuned"
    else:
        defaults = Path("finetune_work"), Path("finetuned_bundle")
    return (Path(work_dir) if work_dir is not None else defaults[0],
            Path(out_dir) if out_dir is not None else defaults[1])


def finish_bundle(final_dir: Path, out_dir: str | Path, tuned, plan: FineTunePlan, scores: dict | None = None,
                  table: pd.DataFrame | None = None, elapsed: dict | None = None,
                  heatmap: HeatmapFit | None = None, heatmap_dir: Mapping | None = None) -> Path:
    """Copy the final fit's bundle to ``out_dir``: the weights, ``czii_config.json`` with the tuned
    thresholds, ``FINETUNE.json`` (the plan, the scores, the tuning table, measured and estimated
    seconds) and ``model.onnx`` where the onnx package is installed; with a ``heatmap`` fit
    (:func:`fit_heatmap_ensemble`), each heatmap network it fitted with its thresholds, and
    ``ensemble.json`` with its ensembles (the default detectors' main, where they are an ensemble)
    and the default detectors: a network's files are the final fit's fine-tuned copy
    (``heatmap_dir[name]``, :func:`train_heatmap_fold` of ``plan.final``) where the fit used the folds'
    fine-tuned ones, else the start bundle's. A folder that is there already is replaced only when it
    holds a previous ``FINETUNE.json``."""
    import importlib.util

    from .bundle import add_heatmap, heatmap_files

    fitted = heatmap is not None and bool(heatmap.aggregates)
    start_dir = plan.init_weights.parent
    sources = {}
    for name in (heatmap.aggregates if fitted else {}):
        if heatmap.fine_tuned.get(name):
            if (heatmap_dir or {}).get(name) is None:  # its thresholds are not the start network's
                raise CziiInputError(out_dir, f"{name} was tuned on the folds' fine-tuned networks but the final "
                                              "fit's failed (its message above): run the final fit again")
            sources[name] = Path(heatmap_dir[name])
        else:
            sources[name] = start_dir
    record = {**plan_record(plan), "scores": {**(scores or {}), **(heatmap.scores if fitted else {})},
              "tuned_table": [] if table is None else table.to_dict(orient="records"), "elapsed_s": elapsed or {},
              "default_detectors": list(heatmap.default) if fitted else ["yolo"],
              "heatmap_fine_tuned": dict(heatmap.fine_tuned) if fitted else {},
              "heatmap_note": "" if heatmap is None else heatmap.note}

    out_dir = Path(out_dir)
    outputs.check_writable(out_dir, folder=True)
    previous = out_dir.is_dir() and any(out_dir.iterdir())
    if previous and not (out_dir / RECORD_FILE).is_file():
        raise CziiInputError(out_dir, f"is not empty and holds no {RECORD_FILE} (not a fine-tuned bundle of ours): "
                                      "not replacing it; give another folder")
    with outputs.atomic_dir(out_dir, replace=previous) as tmp:
        for name in (MODEL_FILE, "czii_config.json"):
            shutil.copy2(final_dir / name, tmp / name)
        start = load_bundle(plan.init_weights)
        save_aggregate_config(tmp, tuned, detect=start.detect)
        if importlib.util.find_spec("onnx") is not None:
            export_bundle_onnx(tmp)
        for name, src in sources.items():
            if src == start_dir or name == "heatmap":  # the files of this name, as they are
                for f in heatmap_files(name):  # a fine-tuned folder's files are heatmap.* too
                    if (src / f).is_file():
                        shutil.copy2(src / f, tmp / f)
            else:  # a fine-tuned further network (its files named heatmap.*): renamed with its record
                add_heatmap(src, tmp, name)
            tuned_on = heatmap.tuned_on.get(name)
            save_heatmap_json(tmp, name, aggregate=heatmap.aggregates[name].to_dict(),  # the start's thresholds: its record
                              **({} if tuned_on is None else {"tuned_on": tuned_on}))
        default = list(heatmap.default) if fitted else []
        for key in sorted(heatmap.ensembles if fitted else {}, key=lambda k: sorted(k.split(",")) == sorted(default)):
            save_ensemble(tmp, heatmap.ensembles[key], default_detectors=default)  # the default's last: the main one
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1, default=str))
    return out_dir


def plan_record(plan: FineTunePlan) -> dict:
    """The plan as saved in ``FINETUNE.json``."""
    return {"config": asdict(plan.config), "init_weights": str(plan.init_weights), "real_runs": list(plan.real_runs),
            "sim_runs": list(plan.sim_runs), "sim_val_runs": list(plan.sim_val),
            "folds": [asdict(f) for f in plan.folds], "dataset": plan.dataset.to_dict(),
            "estimate_s": plan.estimate, "recorded": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
