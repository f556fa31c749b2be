"""Does the heatmap network gain from full resolution? The same network trained from scratch on
the zarr's level 1 (~20 A per voxel, the shipped input) and on level 0 (~10 A), side by side.

The held-out looks are hard looks more than unseen ones: the shipped heatmap fine-tuned on 12
labelled runs of each scores about what it scores without them (``bench_adapt.py``, adapt.md
2026-12-03 13:47 records). What bounds it there may be what a 20 A grid keeps of a particle
(a subunit cloud's texture, a CTF's rings). This bench trains one network per ``--levels``
entry, each from scratch with the same seed, steps, batch, patch (voxels of its level: a level-0
patch covers an eighth of the volume) and widths, on the same ``--train`` runs; re-estimates each
network's batch-norm statistics on the same runs and sets the shipped test-time adaptation;
tunes each one's per-type thresholds on the same ``--tune`` runs (count floor and relative scores as
the shipped bundle's); and scores both on the ``--domains`` test sets of ``bench_ensemble.py`` (the same runs
as the headline), per type, with the seconds per tomogram of each level's inference (one view).
With two or more levels the networks are also merged as detectors of one ensemble (calibrations,
weights and thresholds fitted on the same ``--tune`` runs).

    .venv/bin/python benchmarks/bench_resolution.py \\
        --train runs/bench_adapt/model-subunits/seed73210_n16/czii-cryo-et-object-identification:TS_sim_73210_0,... \\
        --tune  runs/bench_adapt/model-subunits/seed73210_n16/czii-cryo-et-object-identification:TS_sim_73210_12,... \\
        --domains model-subunits ctf-unflipped --n-runs 4 --steps 2500

Trainings resume under ``--work``; candidates are kept under ``--work``/cache. Appends the table,
with the command, date and machine, to ``benchmarks/results/resolution.md``. All simulated.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import append_result, describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from bench_adapt import heatmap_candidates, scores  # noqa: E402
from bench_ensemble import add_test_set_args, fmt, test_sets  # noqa: E402
from czii_kaggle import layout, picks  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.ensemble import EnsembleConfig, select_ensemble  # noqa: E402
from czii_kaggle.bundle import HEATMAP_WEIGHTS_FILE, load_heatmap_bundle  # noqa: E402
from czii_kaggle.cli import _sources  # noqa: E402
from czii_kaggle.detectors.heatmap import LEVEL_WINDOWS, HeatmapConfig  # noqa: E402
from czii_kaggle.particles import NAMES  # noqa: E402
from czii_kaggle.train_heatmap import HeatmapTrainConfig, recalibrate_heatmap, train_heatmap  # noqa: E402
from czii_kaggle.tune import fit_ensemble, tune_thresholds  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "resolution.md"


def level_config(level: int, shipped: HeatmapConfig, channels: tuple[int, int, int]) -> HeatmapConfig:
    """The shipped config at ``level`` (:meth:`HeatmapConfig.at_level`: its spectral step, clip, targets, peaks,
    adaptation), ``channels`` wide, one view."""
    return replace(shipped.at_level(level), channels=channels, tta_views=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="+", required=True, help="labelled runs trained on, ROOT:RUN,RUN (train split)")
    ap.add_argument("--tune", nargs="+", required=True, help="labelled runs the thresholds are tuned on, ROOT:RUN,RUN")
    add_test_set_args(ap)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 0], choices=sorted(LEVEL_WINDOWS))
    ap.add_argument("--weights", type=Path, default=REPO / "czii_kaggle" / "models",
                    help="bundle whose heatmap config (and relative-score ranks) the networks take")
    ap.add_argument("--channels", type=int, nargs=3, default=None, help="default: the --weights network's")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--look-augment", type=float, default=0.0)
    ap.add_argument("--train-seed", type=int, default=101, help="the trainings' seed (--seed: the test sets')")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_resolution")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)

    shipped = load_heatmap_bundle(a.weights)
    channels = tuple(a.channels or shipped.config.channels)
    train_sources, tune_sources = _sources(a.train), _sources(a.tune)
    sets = test_sets(a)
    if not sets:
        raise SystemExit("name test sets: --domains and/or --data/--solution")
    rows, seconds, fit_c, test_c = [], {}, {}, {}
    tune_runs = [(root, runs or layout.list_pick_runs(root)) for root, runs in tune_sources]
    fit_t = pd.concat([picks.read_all_picks(root, runs) for root, runs in tune_runs], ignore_index=True)
    floor = {n: shipped.aggregate[n].min_keep for n in NAMES}
    ranks = {n: shipped.aggregate[n].ref_rank for n in NAMES}
    for level in a.levels:
        config = level_config(level, shipped.config, channels)
        plan = f"level{level}_c{'-'.join(map(str, channels))}_s{a.steps}_seed{a.train_seed}"
        train_dir, bundle_dir = a.work / f"train_{plan}", a.work / f"bundle_{plan}"
        train = HeatmapTrainConfig(patch_vox=(48, 96, 96), batch=a.batch, steps=a.steps, lr=a.lr, seed=a.train_seed,
                                   threads=a.threads, look_augment=a.look_augment)
        train_heatmap(train_sources, train_dir, config, train, command="benchmarks/bench_resolution.py")
        if not (bundle_dir / HEATMAP_WEIGHTS_FILE).is_file():
            recalibrate_heatmap(train_dir, train_sources, bundle_dir, bn_adapt=shipped.config.bn_adapt,
                                command="benchmarks/bench_resolution.py", replace=bundle_dir.exists())
        # the shipped selection: its count floor and relative scores, thresholds tuned anew
        start = load_heatmap_bundle(bundle_dir).aggregate.with_floor(floor).with_ref_rank(ranks)
        key = f"level{level}"
        fit_c[key] = pd.concat([heatmap_candidates(bundle_dir, root, "train", runs, a.work / "cache",
                                                   f"tune-{Path(root).parent.name}") for root, runs in tune_runs],
                               ignore_index=True)
        tuned, _ = tune_thresholds(fit_c[key], fit_t, start, support_grid=None)
        t0, n_runs = time.perf_counter(), 0
        for name, root, truth in sets:
            runs = layout.list_runs(root, "test")
            test_c.setdefault(name, {})[key] = cands = heatmap_candidates(bundle_dir, root, "test", runs,
                                                                          a.work / "cache", name)
            n_runs += len(runs)
            row = {"network": f"level {level} ({config.voxel_size_A:.0f} A)", "scored on": name,
                   **scores(select(cands, tuned), truth)}
            rows.append(row)
            print(row, flush=True)
        seconds[level] = (load_heatmap_bundle(train_dir).record["seconds"], (time.perf_counter() - t0) / max(n_runs, 1))
    if len(fit_c) > 1:  # the levels as two detectors of one ensemble, fitted on the same tune runs
        ens, _ = fit_ensemble(fit_c, fit_t, detectors=tuple(fit_c), start=EnsembleConfig().aggregate.with_floor(floor),
                              ref_rank=ranks)
        for name, _, truth in sets:
            row = {"network": "ensemble of the " + " and ".join(fit_c), "scored on": name,
                   **scores(select_ensemble(test_c[name], ens), truth)}
            rows.append(row)
            print(row, flush=True)

    table = pd.DataFrame(rows)
    mean = table.groupby("network", sort=False).mean(numeric_only=True).reset_index()
    mean.insert(1, "scored on", "mean")
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_resolution.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine(with_pace=True)}\n"
        f"- each network from scratch: widths {channels}, {a.steps} steps of batch {a.batch}, patch 48 x 96 x 96 voxels of "
        f"its level, lr {a.lr}, look augmentation {a.look_augment}, seed {a.train_seed}; the input step, targets, peaks and "
        f"test-time adaptation of `{a.weights}`'s heatmap, one view; statistics re-estimated on the training runs; "
        f"its count floor and relative scores; thresholds (and, for the ensemble of the levels, calibrations and "
        f"weights) tuned on the --tune runs ({sum(len(r) for _, r in tune_runs)}); all simulated, no real voxels",
        "**Score** (competition metric) per test set and level:\n\n" + fmt(pd.concat([table, mean])),
        "**Seconds** (this CPU): " + "; ".join(
            f"level {lv}: training {tr:.0f} s, inference "
            + (f"{inf:.1f} s per tomogram (one view)" if inf > 1.0 else "from the cache (the record that made it)")
            for lv, (tr, inf) in seconds.items()),
    ])
    print(text)
    if not a.no_write:
        append_result(RESULTS, "Heatmap input resolution: level 1 (20 A) against level 0 (10 A)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
