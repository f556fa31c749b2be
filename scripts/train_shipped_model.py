"""Retrain the shipped model bundle exactly as it was made, stage by stage, from its recipe.

    .venv/bin/python scripts/train_shipped_model.py                  # the last stage (the shipped model's)
    .venv/bin/python scripts/train_shipped_model.py --stage stage1   # ... stage2 ... stage5, in order

Every setting comes from the recipe, ``czii_kaggle/recipes/shipped.json``
(:mod:`czii_kaggle.recipe`): the stage's simulated runs (seed, count, difficulties, look,
held-out look families), the slice dataset (2.5D offset among them), the model yaml or the
previous stage's bundle to start from, epochs and training options, validation runs and
tuning. A flag given replaces the recipe's value (the record says which command ran).
Stage ``NAME`` works in ``{--runs-dir}/NAME`` and starts from ``{--runs-dir}/{init}/bundle``.

Steps (each skipped when its output already exists, so an interrupted run resumes):
1. simulate the training runs (and the stage's extra tuning runs);
2. build the YOLO slice dataset (whole runs held out for validation);
3. train from the model yaml or the previous stage's weights, on CPU or GPU;
4. export the ONNX Runtime copy (``model.onnx``, used on CPU-only machines);
5. tune per-class thresholds on the validation runs (and the stage's further runs);
6. unless ``--no-install``: copy ``model.pt``, ``model.onnx``, ``czii_config.json`` and
   ``TRAINING.json`` (every setting, seed and validation score) into ``czii_kaggle/models/``.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from czii_kaggle import layout, particles  # noqa: E402
from czii_kaggle.dataset import DatasetConfig, build_dataset  # noqa: E402
from czii_kaggle.bundle import (CONFIG_FILE, DEFAULT_BUNDLE, MODEL_FILE, ONNX_FILE, export_bundle_onnx,  # noqa: E402
                                load_bundle, write_record)
from czii_kaggle.recipe import SHIPPED_RECIPE, Simulation, Stage, load_recipe  # noqa: E402
from czii_kaggle.simulate import difficulty_value, simulate_dataset  # noqa: E402
from czii_kaggle.train import TrainConfig, train  # noqa: E402
from czii_kaggle.tune import tune_bundle  # noqa: E402

ROOT_NAME = "czii-cryo-et-object-identification"


def parse_count_scale(items: list[str]) -> dict[str, float]:
    """``["beta-galactosidase=3", ...]`` -> ``{"beta-galactosidase": 3.0, ...}``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--count-scale takes NAME=FACTOR, not {item!r}")
        particles.get(name)
        out[name] = float(value)
    return out


@dataclass(frozen=True)
class Plan:
    """What one run of this script does: the recipe's stage with the flags given applied."""

    stage: Stage
    work: Path
    init: Path | None  # None: from the model yaml
    train: TrainConfig
    tune_more: tuple[tuple[Path, tuple[str, ...]], ...]
    tta_views: int
    install: bool
    recipe_path: Path = SHIPPED_RECIPE
    overrides: dict = field(default_factory=dict)
    real_root: Path | None = None  # the real runs' picks, for stages whose first runs take real layouts

    @property
    def dataset(self) -> DatasetConfig:
        return self.stage.dataset

    @property
    def sim_dir(self) -> Path:
        return self.work / "sim"


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=SHIPPED_RECIPE, help="recipe file (default: the shipped model's)")
    ap.add_argument("--stage", help="recipe stage to run (default: the last, the shipped model's)")
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs", help="stages work in RUNS_DIR/STAGE")
    ap.add_argument("--work", type=Path, help="work folder (default: RUNS_DIR/STAGE)")
    ap.add_argument("--no-install", action="store_true", help="do not copy the bundle into czii_kaggle/models")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0, help="data-loader workers (0 is fastest on 2 cores)")
    ap.add_argument("--real-root", type=Path, default=REPO.parent / "shared" / "czii-real",
                    help="the real runs' picks (Kaggle layout) whose layouts the first simulated runs take")
    g = ap.add_argument_group("replace the recipe's value (default: the stage's)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--stop-after-epochs", type=int, help="stop after this many epochs of the --epochs schedule")
    g.add_argument("--imgsz", type=int)
    g.add_argument("--batch", type=int)
    g.add_argument("--seed", type=int, help="training and dataset seed")
    g.add_argument("--init", type=Path, help="fine-tune from this model.pt (default: the stage's start)")
    g.add_argument("--optimizer", help="Ultralytics optimizer (auto, AdamW, SGD ...)")
    g.add_argument("--lr0", type=float, help="initial learning rate (ignored with --optimizer auto)")
    g.add_argument("--warmup-epochs", type=float, help="learning-rate warmup (0: none, for fine-tunes)")
    g.add_argument("--sim-seed", type=int, help="master seed of the simulated runs")
    g.add_argument("--n-runs", type=int, help="simulated runs: the real layouts first, then random ones")
    g.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="simulated runs' shape (voxels)")
    g.add_argument("--difficulties", nargs="+", help="difficulty per run (names or 0..1), repeated to --n-runs")
    g.add_argument("--val-runs", nargs="+", help="held-out runs")
    g.add_argument("--count-scale", nargs="*", metavar="NAME=FACTOR",
                   help="multiply a type's mean count in the random layouts (real layouts keep theirs)")
    g.add_argument("--tune-more", nargs="*", metavar="ROOT:RUN,RUN",
                   help="further held-out runs (train split of another simulated root) to tune the thresholds on")
    g.add_argument("--slice-offset", type=int, help="2.5D offset k: an image stacks slices z-k, z, z+k")
    g.add_argument("--tta-views", type=int, choices=(1, 2, 3, 4), help="flipped views per slice when tuning")
    g.add_argument("--look", help="classic, random or a JSON look spec (czii_kaggle.simulate.look)")
    g.add_argument("--hold-out", nargs="*", metavar="FAMILY=VALUE",
                   help="never simulate this look family (e.g. filter=median)")
    return ap


def _tune_sources(stage: Stage, work: Path, runs_dir: Path) -> tuple[tuple[Path, tuple[str, ...]], ...]:
    out = []
    for i, src in enumerate(stage.tune_more):
        if src.stage is not None:
            out.append((runs_dir / src.stage / "sim" / ROOT_NAME, src.runs))
        else:
            out.append((work / f"tune_sim_{i}" / ROOT_NAME, src.runs))
    return tuple(out)


def parse_plan(argv: list[str] | None = None) -> Plan:
    """The plan of ``argv``: the recipe's stage, the flags given replacing its values."""
    a = build_arg_parser().parse_args(argv)
    recipe = load_recipe(a.recipe)
    stage = recipe.stage(a.stage)
    given = {k: v for k, v in vars(a).items() if v is not None and k in {
        "epochs", "stop_after_epochs", "imgsz", "batch", "seed", "optimizer", "lr0", "warmup_epochs", "init", "sim_seed", "n_runs", "shape", "difficulties",
        "val_runs", "count_scale", "tune_more", "slice_offset", "tta_views", "look", "hold_out"}}
    sim = stage.simulation
    if a.look is not None:
        sim = replace(sim, look=a.look if a.look in ("classic", "random") else json.loads(a.look), hold_out={})
    if a.hold_out is not None:
        if sim.look == "classic" and a.hold_out:
            raise SystemExit("--hold-out needs --look random (or a spec)")
        sim = replace(sim, hold_out=dict(item.split("=", 1) for item in a.hold_out))
    try:  # names or numbers as text, checked before anything runs
        sim = replace(sim, seed=sim.seed if a.sim_seed is None else a.sim_seed,
                      n_runs=sim.n_runs if a.n_runs is None else a.n_runs,
                      shape_vox=sim.shape_vox if a.shape is None else tuple(a.shape),
                      difficulties=sim.difficulties if a.difficulties is None else tuple(
                          difficulty_value(d) for d in a.difficulties),
                      count_scale=sim.count_scale if a.count_scale is None else parse_count_scale(a.count_scale))
        sim.look_spec()
    except ValueError as exc:
        raise SystemExit(f"{exc}") from None
    dataset = stage.dataset
    if a.slice_offset is not None:
        dataset = replace(dataset, preprocess=replace(dataset.preprocess, slice_offset=a.slice_offset))
    if a.seed is not None:
        dataset = replace(dataset, seed=a.seed)
    epochs = stage.epochs if a.epochs is None else a.epochs
    stop = a.stop_after_epochs if a.stop_after_epochs is not None else (
        stage.stopped_after_epoch if a.epochs is None else None)
    stage = replace(stage, simulation=sim, dataset=dataset, epochs=epochs, stopped_after_epoch=stop,
                    val_runs=stage.val_runs if a.val_runs is None else tuple(a.val_runs),
                    tune_more=stage.tune_more if a.tune_more is None else ())
    runs_dir = a.runs_dir.resolve()
    work = (a.work or runs_dir / stage.name).resolve()
    if a.init is not None:
        init = a.init.resolve()
    elif stage.init is None:
        init = None
    elif stage.init.endswith(".pt"):
        init = (REPO / stage.init).resolve()
    else:
        init = runs_dir / stage.init / "bundle" / MODEL_FILE
    tune_more = _tune_sources(stage, work, runs_dir)
    for item in a.tune_more or []:
        src, sep, names = item.rpartition(":")
        if not sep or not names:
            raise SystemExit(f"--tune-more takes ROOT:RUN,RUN, not {item!r}")
        tune_more += ((Path(src).absolute(), tuple(names.split(","))),)
    tr = recipe.train_config(model=init, epochs=epochs, stop_after_epochs=stop, device=a.device, workers=a.workers,
                             **{k: given[k] for k in ("imgsz", "batch", "seed", "optimizer", "lr0", "warmup_epochs")
                                if k in given})
    return Plan(stage=stage, work=work, init=init, train=tr, tune_more=tune_more,
                tta_views=a.tta_views or recipe.tuning.tta_views, install=not a.no_install, recipe_path=a.recipe,
                overrides=given, real_root=a.real_root)


def _simulate(out: Path, sim: Simulation, real_root: Path | None) -> None:
    if not (out / "simulation.json").exists():
        simulate_dataset(out, n_train=sim.n_runs, n_test=0, config=sim.sim_config(), seed=sim.seed,
                         real_train_layouts=sim.real_layouts, real_root=real_root if sim.real_layouts else None,
                         difficulties=sim.run_difficulties(),
                         count_scale=sim.count_scale or 1.0,
                         overwrite=True)  # its own folder: a run stopped while simulating starts it again


def run_plan(plan: Plan, command: str) -> float:
    """Simulate, build, train, export, tune and record ``plan``; returns the validation score."""
    stage, work = plan.stage, plan.work
    if plan.init is not None and not plan.init.is_file():
        raise SystemExit(f"{plan.init}: no such model to start stage {stage.name} from (run stage {stage.init} "
                         "first, or give --init)")
    t0 = time.time()
    log = {}
    _simulate(plan.sim_dir, stage.simulation, plan.real_root)
    for src, (root, _) in zip(stage.tune_more, plan.tune_more):
        if src.simulate is not None:
            _simulate(root.parent, replace(src.simulate, shape_vox=stage.simulation.shape_vox), plan.real_root)
    root = plan.sim_dir / ROOT_NAME
    runs = layout.list_pick_runs(root)
    missing = sorted(set(stage.val_runs) - set(runs))
    if missing:
        raise SystemExit(f"validation runs {missing} are not among the simulated runs {runs}")
    log["simulate_s"] = time.time() - t0

    data_yaml = work / "dataset" / "data.yaml"
    if not data_yaml.exists():
        build_dataset(root, work / "dataset", val_runs=list(stage.val_runs), runs=runs, config=plan.dataset)
    log["dataset_s"] = time.time() - t0

    bundle = work / "bundle"
    if not (bundle / MODEL_FILE).exists():
        train(data_yaml, bundle, plan.train)
    log["train_s"] = time.time() - t0

    if load_bundle(bundle).onnx is None:  # before tuning: CPU tuning then runs what CPU inference runs
        export_bundle_onnx(bundle)
    table = tune_bundle(root, list(stage.val_runs), bundle, tta_views=plan.tta_views,
                        more=[(src, list(names)) for src, names in plan.tune_more])
    print(table.to_string(index=False))
    log["tune_s"] = time.time() - t0
    weights = table["particle_type"].map(lambda n: particles.get(n).weight)
    val_score = float((table["f_beta"] * weights).sum() / weights.sum()) if len(table) else float("nan")

    def rel(p: Path) -> str:
        return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)

    sim = stage.simulation
    record = {
        "command": command,
        "recipe": {"file": rel(Path(plan.recipe_path).resolve()), "stage": stage.name,
                   "overrides": {k: v if isinstance(v, (int, float, str, list, dict)) else str(v)
                                 for k, v in plan.overrides.items()}},
        "simulation": {"seed": sim.seed, "config": asdict(sim.sim_config()),
                       "train_difficulties": sim.run_difficulties(), "count_scale": sim.count_scale, "runs": runs,
                       "val_runs": list(stage.val_runs),
                       "tuned_also_on": [{"root": rel(src), "runs": list(names)} for src, names in plan.tune_more]},
        "tta_views": plan.tta_views,
        "dataset": plan.dataset.to_dict(),
        "train": plan.train.record(),
        "validation_tuned_table": table.to_dict(orient="records"),
        "validation_score": val_score,
        "timings_s": log,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    previous = plan.init.parent / "TRAINING.json" if plan.init else None
    if previous is not None and previous.is_file():  # the record of the model this one was fine-tuned from
        record["fine_tuned_from"] = json.loads(previous.read_text())
    write_record(bundle, record)
    if plan.install:
        DEFAULT_BUNDLE.mkdir(exist_ok=True)
        for name in (MODEL_FILE, ONNX_FILE, CONFIG_FILE, "TRAINING.json"):
            shutil.copy2(bundle / name, DEFAULT_BUNDLE / name)
        print(f"installed the bundle into {DEFAULT_BUNDLE}")
    n_tuned = len(stage.val_runs) + sum(len(r) for _, r in plan.tune_more)
    print(f"validation score (tuned, {n_tuned} held-out runs): {val_score:.4f}; total {time.time() - t0:.0f} s")
    return val_score


def main(argv=None) -> int:
    plan = parse_plan(argv)
    run_plan(plan, "python scripts/train_shipped_model.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
