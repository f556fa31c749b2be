"""Retrain the shipped model bundle exactly as it was made.

    .venv/bin/python scripts/train_shipped_model.py --work runs/shipped

Steps (each skipped when its output already exists, so an interrupted run resumes):
1. simulate the training runs: the 5 real pick layouts of ../shared/czii-real plus random
   layouts, at mixed difficulties (fixed seed);
2. build the YOLO slice dataset (whole runs held out for validation);
3. train the pico YOLO11 from its yaml (no pretrained weights) on CPU or GPU;
4. export the ONNX Runtime copy (``model.onnx``, used on CPU-only machines);
5. tune per-class thresholds on the validation runs with the competition metric;
6. copy ``model.pt``, ``model.onnx`` + ``czii_config.json`` into ``czii_kaggle/models/`` and write
   ``czii_kaggle/models/TRAINING.json`` (every setting, seed and validation score).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from czii_kaggle import layout, particles  # noqa: E402
from czii_kaggle.dataset import DatasetConfig, build_dataset  # noqa: E402
from czii_kaggle.predict import DEFAULT_BUNDLE, ONNX_FILE, export_bundle_onnx, load_bundle, tune_bundle  # noqa: E402
from czii_kaggle.preprocess import PreprocessConfig  # noqa: E402
from czii_kaggle.simulate import SimConfig, difficulty_value, hold_out, simulate_dataset  # noqa: E402
from czii_kaggle.train import CONFIG_FILE, MODEL_FILE, TrainConfig, train  # noqa: E402

SIM_SEED = 7
#: 5 real layouts (TS_5_4, TS_69_2, TS_6_4, TS_6_6, TS_73_6 in that order) then random ones.
TRAIN_DIFFICULTIES = ["easy", "medium", "hard", "medium", "easy",
                      "medium", "hard", "easy", "medium", "hard", "medium", "hard"]
#: Whole runs held out for validation and threshold tuning: one real layout, two random.
VAL_RUNS = ["TS_6_6", f"TS_sim_{SIM_SEED}_10", f"TS_sim_{SIM_SEED}_11"]


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "shipped")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="data-loader workers (0 is fastest on 2 cores)")
    ap.add_argument("--optimizer", default="auto", help="Ultralytics optimizer (auto, AdamW, SGD ...)")
    ap.add_argument("--lr0", type=float, default=0.01, help="initial learning rate (ignored with --optimizer auto)")
    ap.add_argument("--warmup-epochs", type=float, default=3.0, help="learning-rate warmup (0: none, for fine-tunes)")
    ap.add_argument("--init", type=Path, help="fine-tune from this model.pt instead of training from the yaml")
    ap.add_argument("--no-install", action="store_true", help="do not copy the bundle into czii_kaggle/models")
    ap.add_argument("--sim-seed", type=int, default=SIM_SEED, help="master seed of the simulated runs")
    ap.add_argument("--n-runs", type=int, default=len(TRAIN_DIFFICULTIES),
                    help="simulated runs: the 5 real layouts first, then random ones")
    ap.add_argument("--difficulties", nargs="+", default=TRAIN_DIFFICULTIES,
                    help="difficulty per run (names or 0..1), repeated to --n-runs")
    ap.add_argument("--val-runs", nargs="+", help=f"held-out runs (default {' '.join(VAL_RUNS)} for seed {SIM_SEED})")
    ap.add_argument("--count-scale", nargs="*", default=[], metavar="NAME=FACTOR",
                    help="multiply a type's mean count in the random layouts (real layouts keep theirs)")
    ap.add_argument("--tune-more", nargs="*", default=[], metavar="ROOT:RUN,RUN",
                    help="further held-out runs (train split of another simulated root) to tune the thresholds on")
    ap.add_argument("--slice-offset", type=int, default=PreprocessConfig().slice_offset,
                    help="2.5D offset k: an image stacks slices z-k, z, z+k (inference reuses it)")
    ap.add_argument("--tta-views", type=int, default=1, choices=(1, 2, 3, 4),
                    help="flipped views per slice at inference (thresholds are tuned for it)")
    ap.add_argument("--look", default="classic",
                    help="classic (the shipped model's simulator), random (each run draws its look) or a JSON "
                         "look spec (czii_kaggle.simulate.look)")
    ap.add_argument("--hold-out", nargs="*", default=[], metavar="FAMILY=VALUE",
                    help="with --look random: never train on this look family (e.g. filter=median), to measure "
                         "on it with benchmarks/bench_detection.py --domains")
    a = ap.parse_args(argv)
    look = a.look if a.look in ("classic", "random") else json.loads(a.look)
    if a.hold_out:
        if look == "classic":
            raise SystemExit("--hold-out needs --look random (or a spec)")
        look = hold_out(look, dict(item.split("=", 1) for item in a.hold_out))
    sim_config = SimConfig(look=look)
    tune_more = []
    for item in a.tune_more:
        src, sep, names = item.rpartition(":")
        if not sep or not names:
            raise SystemExit(f"--tune-more takes ROOT:RUN,RUN, not {item!r}")
        tune_more.append((Path(src).absolute(), names.split(",")))
    try:  # names or numbers as text, checked before anything runs
        difficulties = [difficulty_value(a.difficulties[i % len(a.difficulties)]) for i in range(a.n_runs)]
    except ValueError as exc:
        raise SystemExit(f"--difficulties: {exc}") from None
    val_runs = a.val_runs or ["TS_6_6", f"TS_sim_{a.sim_seed}_10", f"TS_sim_{a.sim_seed}_11"]
    count_scale = parse_count_scale(a.count_scale)
    work = a.work.resolve()
    t0 = time.time()
    log = {}

    sim_dir = work / "sim"
    root = sim_dir / "czii-cryo-et-object-identification"
    if not (sim_dir / "simulation.json").exists():
        simulate_dataset(sim_dir, n_train=a.n_runs, n_test=0, config=sim_config, seed=a.sim_seed,
                         real_train_layouts=True, difficulties=difficulties, count_scale=count_scale or 1.0,
                         overwrite=True)  # its own folder: a run stopped while simulating starts it again
    runs = layout.list_pick_runs(root)
    missing = sorted(set(val_runs) - set(runs))
    if missing:
        raise SystemExit(f"validation runs {missing} are not among the simulated runs {runs}")
    log["simulate_s"] = time.time() - t0

    ds_cfg = DatasetConfig(preprocess=PreprocessConfig(slice_offset=a.slice_offset), slice_step=3, tile_vox=320,
                           tile_overlap_vox=0, empty_fraction=0.05, seed=a.seed)
    data_yaml = work / "dataset" / "data.yaml"
    if not data_yaml.exists():
        build_dataset(root, work / "dataset", val_runs=val_runs, runs=runs, config=ds_cfg)
    log["dataset_s"] = time.time() - t0

    start = a.init.resolve() if a.init else REPO / "czii_kaggle" / "model_cfg" / "yolo11p-czii.yaml"
    tr_cfg = TrainConfig(model=str(start), epochs=a.epochs,
                         imgsz=a.imgsz, batch=a.batch, seed=a.seed, device=a.device, workers=a.workers, patience=100,
                         optimizer=a.optimizer, lr0=a.lr0, warmup_epochs=a.warmup_epochs)
    bundle = work / "bundle"
    if not (bundle / MODEL_FILE).exists():
        train(data_yaml, bundle, tr_cfg)
    log["train_s"] = time.time() - t0

    if load_bundle(bundle).onnx is None:  # before tuning: CPU tuning then runs what CPU inference runs
        export_bundle_onnx(bundle)
    table = tune_bundle(root, val_runs, bundle, tta_views=a.tta_views, more=tune_more)
    print(table.to_string(index=False))
    log["tune_s"] = time.time() - t0
    weights = table["particle_type"].map(lambda n: particles.get(n).weight)
    val_score = float((table["f_beta"] * weights).sum() / weights.sum())

    record = {
        "command": "python scripts/train_shipped_model.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "simulation": {"seed": a.sim_seed, "config": asdict(sim_config), "train_difficulties": difficulties,
                       "count_scale": count_scale, "runs": runs, "val_runs": val_runs,
                       "tuned_also_on": [{"root": str(src.relative_to(REPO)) if src.is_relative_to(REPO) else str(src),
                                          "runs": names} for src, names in tune_more]},
        "tta_views": a.tta_views,
        "dataset": ds_cfg.to_dict(),
        "train": tr_cfg.record(),
        "validation_tuned_table": table.to_dict(orient="records"),
        "validation_score": val_score,
        "timings_s": log,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    previous = a.init.resolve().parent / "TRAINING.json" if a.init else None
    if previous is not None and previous.is_file():  # the record of the model this one was fine-tuned from
        record["fine_tuned_from"] = json.loads(previous.read_text())
    (bundle / "TRAINING.json").write_text(json.dumps(record, indent=1, default=str))
    if not a.no_install:
        DEFAULT_BUNDLE.mkdir(exist_ok=True)
        for name in (MODEL_FILE, ONNX_FILE, CONFIG_FILE, "TRAINING.json"):
            shutil.copy2(bundle / name, DEFAULT_BUNDLE / name)
        print(f"installed the bundle into {DEFAULT_BUNDLE}")
    print(f"validation score (tuned, {len(val_runs) + sum(len(r) for _, r in tune_more)} held-out runs): {val_score:.4f}; total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
