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
With ``--device cuda:N`` (a lent GPU) the steps run there and are measured, not derived:
``--workers`` data-loader processes (3: a Kaggle GPU kernel's 4 cores less the one driving
the GPU) feed them, so ``data`` is the step's measured wait for its batch; the T4's compute is
then the measured one times ``--gpu-to-t4`` (default 15: an H200's dense fp16 989 TFLOP/s over a
T4's 65, a pessimistic bound, since a network this small fills neither). ``--heatmap-runs N``
(N >= 1) also simulates N full-size random-look runs and trains each heatmap network of the
shipped bundle on them for ``--heatmap-steps`` steps with the fine-tuning's settings, taking each
step's data (drawing the batch, on the CPU, before the step) and compute from the training's
record, and times the re-estimation of its statistics over those runs; its T4 step is data +
compute times ``--gpu-to-t4`` (the batch is drawn between steps, not beside them).
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
    ap.add_argument("--device", default="cpu", help="cpu, or cuda:N to measure the steps on a GPU")
    ap.add_argument("--workers", type=int, default=0, help="data-loader processes (0: in the training process)")
    ap.add_argument("--gpu-to-t4", type=float, default=15.0,
                    help="a T4's step compute over this GPU's (with --device cuda:N)")
    ap.add_argument("--heatmap-runs", type=int, default=0, help="full-size runs to time the heatmap networks' steps on")
    ap.add_argument("--heatmap-steps", type=int, default=25)
    a = ap.parse_args(argv)
    gpu = a.device.startswith("cuda")

    from dataclasses import replace

    from czii_kaggle import offline
    from czii_kaggle.bundle import load_ensembles
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
    tr = recipe.train_config(model=DEFAULT_BUNDLE / "model.pt", epochs=a.epochs,
                             device=a.device.replace("cuda:", "") if gpu else "cpu", workers=a.workers)
    t0 = time.perf_counter()
    train(data_yaml, work / "bundle", tr)
    train_wall = time.perf_counter() - t0
    compute = [e - s for (k1, s), (k2, e) in zip(marks, marks[1:]) if k1 == "start" and k2 == "end"]
    data = [s - e for (k1, e), (k2, s) in zip(marks, marks[1:]) if k1 == "end" and k2 == "start"]
    compute_s, data_s = float(np.median(compute)), float(np.median(data)) if data else float("nan")

    from ultralytics.utils.torch_utils import get_flops

    gflops = get_flops(ultralytics.YOLO(str(DEFAULT_BUNDLE / "model.pt")).model, imgsz=tr.imgsz)
    where = "GPU" if gpu else "CPU"
    achieved_gflops_s = 3 * gflops * tr.batch / compute_s
    if gpu:  # measured on the GPU, fed by --workers loaders: scaled to a T4
        t4_compute = max(T4_STEP_FLOOR_S, compute_s * a.gpu_to_t4)
        # the measured wait with --workers loaders (0: the data in the training process), as Kaggle's 3 would be
        t4_data = data_s * max(a.workers, 1) / KAGGLE_LOADER_PROCESSES
        data_how = (f"the measured wait with {a.workers} loaders"
                    + (f", as {KAGGLE_LOADER_PROCESSES}" if a.workers != KAGGLE_LOADER_PROCESSES else "")
                    if a.workers else f"data / {KAGGLE_LOADER_PROCESSES} loader processes")
        compute_how = f"the measured compute x {a.gpu_to_t4:g}, floor {T4_STEP_FLOOR_S} s"
    else:
        t4_compute = max(T4_STEP_FLOOR_S, 3 * gflops * tr.batch / (T4_TFLOPS_ACHIEVED * 1000))
        t4_data = data_s / KAGGLE_LOADER_PROCESSES
        data_how = f"data / {KAGGLE_LOADER_PROCESSES} loader processes"
        compute_how = f"compute at {T4_TFLOPS_ACHIEVED:g} TFLOP/s, floor {T4_STEP_FLOOR_S} s"
    t4_step = max(t4_compute, t4_data)

    plan = FineTuneConfig.from_recipe()
    heat = heatmap_steps(work, a, plan) if a.heatmap_runs else []
    est_kw = {}
    if heat and gpu:  # a CPU's heatmap steps say nothing of a T4's: the estimate keeps its derived constant then
        est_kw = {"heatmap_step_s": max(h["t4_step_s"] for h in heat),
                  "heatmap_levels": tuple(h["level"] for h in heat), "n_ensembles": len(load_ensembles(DEFAULT_BUNDLE))}
    est = estimate_s(plan, 7, step_s=t4_step, dataset_s_per_run=dataset_s, sim_s_per_run=sim_s, **est_kw)
    rows = [
        ("simulate, s per full-size random-look run (CPU here)", f"{sim_s:.1f}"),
        ("slice dataset, s per full-size run (read, preprocess, write PNGs; CPU here)", f"{dataset_s:.1f}"),
        (f"training images ({a.n_runs - 1} runs of {'x'.join(map(str, a.shape))}, every slice)", f"{n_images}"),
        (f"{where} step, batch {tr.batch} at imgsz {tr.imgsz}, {a.workers} loader processes: data, the wait for the "
         f"batch (median of {len(data)})", f"{data_s:.3f} s"),
        (f"{where} step: compute, forward + backward + optimizer (median of {len(compute)})", f"{compute_s:.3f} s"),
        ("training wall time incl. set-up and validation", f"{train_wall:.0f} s"),
        (f"model forward GFLOPs per image at imgsz 320; {where} achieved GFLOP/s in training",
         f"{gflops:.3f}; {achieved_gflops_s:.0f}"),
        (f"T4 step, derived: {data_how}", f"{t4_data:.2f} s"),
        (f"T4 step, derived: {compute_how}", f"{t4_compute:.3f} s"),
        ("**T4 step used (the larger)**", f"**{t4_step:.2f} s**"),
    ]
    for h in heat:
        rows += [
            (f"{h['name']} (level {h['level']}) {where} step, batch {h['batch']} of {h['patch']} voxels: data, drawing "
             f"the batch (median of {h['steps']})", f"{h['data_s']:.3f} s"),
            (f"{h['name']} {where} step: compute", f"{h['compute_s']:.3f} s"),
            (f"{h['name']} statistics re-estimated, s per full-size run ({where})", f"{h['recal_s_per_run']:.2f}"),
        ]
        rows += [(f"**{h['name']} T4 step, derived: data + compute x {a.gpu_to_t4:g}**", f"**{h['t4_step_s']:.2f} s**")
                 ] if gpu else []
    c = plan
    rows.append((f"recipe plan on one T4 (7 real runs, k={c.k_folds}, {c.fold_epochs}+{c.final_epochs} epochs, "
                 f"{c.n_sim_runs} simulated runs" + (f", {c.heatmap_steps} steps of each heatmap network at the "
                                                     "slower one's T4 step" if heat and gpu else "") + "): "
                 + ", ".join(f"{k[:-2]} {v / 60:.0f} min" for k, v in est.items() if k != "total_s"),
                 f"**{est['total_s'] / 3600:.2f} h**"))
    table = "| quantity | value |\n| --- | ---: |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    command = "python benchmarks/bench_finetune.py " + " ".join(sys.argv[1:] if argv is None else argv)
    append_result(REPO / "benchmarks" / "results" / "finetune.md", "Kaggle fine-tuning: step times",
                  f"## {time.strftime('%Y-%m-%d %H:%M')}\n\n`{command}`\n\n{describe()}\n\n{table}")
    return 0 if math.isfinite(t4_step) else 1


def heatmap_steps(work: Path, a, plan) -> list[dict]:
    """Each heatmap network of the shipped bundle trained ``a.heatmap_steps`` steps on ``a.heatmap_runs`` full-size
    random-look runs with the fine-tuning's settings on ``a.device``, and its statistics re-estimated on them."""
    from czii_kaggle.bundle import heatmap_files, load_heatmap_bundle
    from czii_kaggle.finetune import HEATMAP_BATCH, HEATMAP_LOOK_AUGMENT, heatmap_networks
    from czii_kaggle.predict import DEFAULT_BUNDLE
    from czii_kaggle.simulate import SimConfig, simulate_dataset
    from czii_kaggle.train_heatmap import HeatmapTrainConfig, recalibrate_heatmap, train_heatmap, training_start

    ds = simulate_dataset(work / "sim_full", n_train=a.heatmap_runs, n_test=0, seed=32,
                          config=SimConfig(look="random"), overwrite=True)
    sources = [(ds.root, None)]
    out = []
    for name in heatmap_networks(DEFAULT_BUNDLE):
        config, init = training_start(DEFAULT_BUNDLE / heatmap_files(name)[0])
        train = HeatmapTrainConfig(patch_vox=tuple(plan.heatmap_patch_vox), batch=HEATMAP_BATCH, steps=a.heatmap_steps,
                                   lr=plan.heatmap_lr, seed=plan.seed, threads=max(1, a.workers),
                                   look_augment=HEATMAP_LOOK_AUGMENT, device=a.device)
        trained = train_heatmap(sources, work / f"train_{name}", config, train, init=init,
                                command=f"bench_finetune ({name})")
        timing = load_heatmap_bundle(trained).record["step_seconds"]
        recal = recalibrate_heatmap(trained, sources, work / f"recal_{name}", replace=True)
        recal_s = load_heatmap_bundle(recal).record["recalibration"]["seconds"]
        factor = a.gpu_to_t4 if a.device.startswith("cuda") else float("nan")  # used on a GPU only
        out.append({"name": name, "level": config.level, "batch": train.batch, "steps": timing["steps"],
                    "patch": "x".join(map(str, train.patch_vox)), "data_s": timing["data"],
                    "compute_s": timing["compute"], "recal_s_per_run": recal_s / a.heatmap_runs,
                    "t4_step_s": timing["data"] + timing["compute"] * factor})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
