"""Step times of the Kaggle fine-tuning (czii_kaggle.finetune), measured on this machine's CPU,
and the one-T4 figures derived from them; the plan's time estimate with those figures.

    .venv/bin/python benchmarks/bench_finetune.py [--n-runs 4] [--shape 40 320 320] [--epochs 1]

Simulates ``--n-runs`` small random-look runs (320 x 320 slices, as the training crops are),
builds the slice dataset with the recipe's settings (every slice, to get enough images), and
trains the shipped model on it for ``--epochs`` with the recipe's batch (32) at imgsz 320 on
the CPU, timing every step with Ultralytics' callbacks: ``data`` (loading, mosaic and
augmentation of a batch, from the end of one step to the start of the next) and ``compute``
(forward, loss, backward, optimizer). Simulation and dataset seconds are scaled to a full-size
run by voxel count.

The T4 figure is derived, not measured (no GPU here): a step is bound by the slower of
- data: the measured CPU data seconds per batch spread over 3 data-loader processes (a Kaggle
  GPU kernel has 4 CPU cores; one drives the GPU), assuming a Kaggle core as fast as one here;
- compute: 3 x the model's forward GFLOPs per image x batch at an assumed 2 TFLOP/s achieved on
  a T4 (a quarter of its 8.1 TFLOP/s fp32 peak; this 8-64-channel network cannot fill it), and
  never under 0.03 s per step (kernel launches of ~300 layers forward and backward).
Appends the table to benchmarks/results/finetune.md.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_result, describe  # noqa: E402

T4_TFLOPS_ACHIEVED = 2.0
T4_STEP_FLOOR_S = 0.03
KAGGLE_LOADER_PROCESSES = 3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-runs", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=(40, 320, 320))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    a = ap.parse_args(argv)

    from dataclasses import replace

    from czii_kaggle import offline
    from czii_kaggle.dataset import build_dataset
    from czii_kaggle.finetune import FineTuneConfig, estimate_s
    from czii_kaggle.predict import DEFAULT_BUNDLE, load_bundle
    from czii_kaggle.recipe import load_recipe
    from czii_kaggle.simulate import SimConfig, simulate_dataset
    from czii_kaggle.train import train

    work = a.work or Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    recipe = load_recipe()
    voxels = float(np.prod(a.shape)) / (184 * 630 * 630)

    t0 = time.perf_counter()
    ds = simulate_dataset(work / "sim", n_train=a.n_runs, n_test=0, seed=31, count_scale=8.0,
                          config=SimConfig(shape_vox=tuple(a.shape), look="random"), overwrite=True)
    sim_s = (time.perf_counter() - t0) / a.n_runs / voxels
    t0 = time.perf_counter()
    cfg = replace(recipe.dataset, slice_step=1, preprocess=load_bundle().preprocess)
    data_yaml = build_dataset(ds.root, work / "ds", val_runs=ds.train_runs[-1:], config=cfg, overwrite=True)
    dataset_s = (time.perf_counter() - t0) / a.n_runs / voxels
    n_images = len(list((work / "ds" / "images" / "train").glob("*.png")))

    ultralytics = offline.import_ultralytics()
    from ultralytics.utils.callbacks import base

    marks: list[tuple[str, float]] = []
    base.default_callbacks["on_train_batch_start"].append(lambda t: marks.append(("start", time.perf_counter())))
    base.default_callbacks["on_train_batch_end"].append(lambda t: marks.append(("end", time.perf_counter())))
    tr = recipe.train_config(model=DEFAULT_BUNDLE / "model.pt", epochs=a.epochs, device="cpu", workers=0)
    t0 = time.perf_counter()
    train(data_yaml, work / "bundle", tr)
    train_wall = time.perf_counter() - t0
    compute = [e - s for (k1, s), (k2, e) in zip(marks, marks[1:]) if k1 == "start" and k2 == "end"]
    data = [s - e for (k1, e), (k2, s) in zip(marks, marks[1:]) if k1 == "end" and k2 == "start"]
    compute_s, data_s = float(np.median(compute)), float(np.median(data)) if data else float("nan")

    from ultralytics.utils.torch_utils import get_flops

    gflops = get_flops(ultralytics.YOLO(str(DEFAULT_BUNDLE / "model.pt")).model, imgsz=tr.imgsz)
    t4_compute = max(T4_STEP_FLOOR_S, 3 * gflops * tr.batch / (T4_TFLOPS_ACHIEVED * 1000))
    t4_data = data_s / KAGGLE_LOADER_PROCESSES
    t4_step = max(t4_compute, t4_data)
    cpu_gflops_s = 3 * gflops * tr.batch / compute_s

    plan = FineTuneConfig.from_recipe()
    est = estimate_s(plan, 7, step_s=t4_step, dataset_s_per_run=dataset_s, sim_s_per_run=sim_s)
    rows = [
        ("simulate, s per full-size random-look run (CPU here)", f"{sim_s:.1f}"),
        ("slice dataset, s per full-size run (read, preprocess, write PNGs; CPU here)", f"{dataset_s:.1f}"),
        (f"training images ({a.n_runs - 1} runs of {'x'.join(map(str, a.shape))}, every slice)", f"{n_images}"),
        (f"CPU step, batch {tr.batch} at imgsz {tr.imgsz}: data (median of {len(data)})", f"{data_s:.2f} s"),
        (f"CPU step: compute, forward + backward + optimizer (median of {len(compute)})", f"{compute_s:.2f} s"),
        ("training wall time incl. set-up and validation", f"{train_wall:.0f} s"),
        ("model forward GFLOPs per image at imgsz 320; CPU achieved GFLOP/s in training",
         f"{gflops:.3f}; {cpu_gflops_s:.0f}"),
        (f"T4 step, derived: data / {KAGGLE_LOADER_PROCESSES} loader processes", f"{t4_data:.2f} s"),
        (f"T4 step, derived: compute at {T4_TFLOPS_ACHIEVED:g} TFLOP/s, floor {T4_STEP_FLOOR_S} s", f"{t4_compute:.3f} s"),
        ("**T4 step used (the larger)**", f"**{t4_step:.2f} s**"),
    ]
    c = plan
    rows.append((f"recipe plan on one T4 (7 real runs, k={c.k_folds}, {c.fold_epochs}+{c.final_epochs} epochs, "
                 f"{c.n_sim_runs} simulated runs): " + ", ".join(f"{k[:-2]} {v / 60:.0f} min"
                                                                 for k, v in est.items() if k != "total_s"),
                 f"**{est['total_s'] / 3600:.2f} h**"))
    table = "| quantity | value |\n| --- | ---: |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    command = "python benchmarks/bench_finetune.py " + " ".join(sys.argv[1:] if argv is None else argv)
    append_result(REPO / "benchmarks" / "results" / "finetune.md", "Kaggle fine-tuning: step times",
                  f"## {time.strftime('%Y-%m-%d %H:%M')}\n\n`{command}`\n\n{describe()}\n\n{table}")
    return 0 if math.isfinite(t4_step) else 1


if __name__ == "__main__":
    raise SystemExit(main())
