"""What a few labelled runs of an unseen look buy: the heatmap detector fine-tuned on them.

Kaggle's real tomograms are a look the shipped model never saw, and Kaggle gives 7 labelled
runs of it. This bench plays that case on each held-out look of ``bench_ensemble.py``
(``--domains``; the same 4-run test sets, seeds and folders): ``--adapt-runs`` labelled runs
of the look are simulated apart (other seeds: ``--adapt-seed`` + 1000 per domain index, train
split), the last ``--tune-runs`` of them kept for thresholds only, and these versions of the
heatmap detector are scored on the look's test runs:

- **shipped**: the bundle as it is (its own thresholds);
- **shipped, thresholds tuned on the look**: the same network, per-type thresholds tuned on the
  look's tune runs (what ``finetune.py`` does with the heatmap on Kaggle's real runs today);
- **fine-tuned**: ``train_heatmap`` from the shipped weights on the look's other runs (plus the
  ``--mix`` runs of the training looks, sampled alike, so the known looks are not forgotten),
  its batch-norm statistics re-estimated on the same runs (``recalibrate_heatmap``, the shipped
  ``bn_adapt``), thresholds tuned on the tune runs; and the same network with the shipped
  thresholds (with relative scores, :class:`czii_kaggle.aggregate.ClassParams` ``ref_rank``, they
  need not follow the look's scale).

With ``--data``/``--solution`` (the classic test) the fine-tuned networks are scored there too:
what each costs on the look the model knew. Candidates are kept under ``--cache`` (per weights'
sha256 and set) and every training under ``--work`` (resumes).

    .venv/bin/python benchmarks/bench_adapt.py --weights czii_kaggle/models \\
        --domains model-subunits filter-anisotropic ctf-unflipped --n-runs 4 \\
        --data runs/hml/test_medium/czii-cryo-et-object-identification --solution runs/hml/test_medium/test_solution.csv \\
        --mix runs/hml/train_new/czii-cryo-et-object-identification:TS_sim_6200_0 ...

Appends the table, with the command, date and machine, to ``benchmarks/results/adapt.md``.
All simulated: no real voxels.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import append_result, describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from bench_detection import DOMAINS, TRAINING_DOMAINS  # noqa: E402
from bench_ensemble import add_test_set_args, fmt, submission_of, test_sets  # noqa: E402
from bench_selection import candidates  # noqa: E402
from czii_kaggle import layout, metric, picks  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.bundle import HEATMAP_WEIGHTS_FILE, load_heatmap_bundle  # noqa: E402
from czii_kaggle.cli import _sources  # noqa: E402
from czii_kaggle.detectors.heatmap import HeatmapDetector  # noqa: E402
from czii_kaggle.particles import NAMES, SCORED  # noqa: E402
from czii_kaggle.train_heatmap import HeatmapTrainConfig, recalibrate_heatmap, train_heatmap  # noqa: E402
from czii_kaggle.tune import tune_thresholds  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "adapt.md"


def simulate_labelled(out: Path, n: int, seed: int, look) -> Path:
    """``n`` labelled (train split) medium runs of ``look`` under ``out`` (kept; simulated when absent)."""
    root = out / layout.KAGGLE_ROOT.name
    if not (root.is_dir() and len(layout.list_pick_runs(root)) >= n):
        cmd = [sys.executable, "-m", "czii_kaggle", "simulate", "--out", str(out), "--n-train", str(n), "--n-test", "0",
               "--difficulty", "medium", "--seed", str(seed),
               "--look", look if isinstance(look, str) else json.dumps(look), "--overwrite"]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return root


def heatmap_candidates(bundle_dir: Path, root: Path, split: str, runs: list[str], cache: Path, name: str
                       ) -> pd.DataFrame:
    """The heatmap detector's unthresholded candidates, kept as ``bench_selection.py`` keeps them."""
    det = HeatmapDetector(load_heatmap_bundle(bundle_dir))
    return candidates([det], name, root, split, cache, bundle_dir, runs)["heatmap"]


def step_cost(sources, config, train: HeatmapTrainConfig, n: int = 10) -> tuple[float, float]:
    """Seconds to draw one training batch (median of ``n``, this process's threads) and the network's
    GFLOPs per step, forward and backward: what the Kaggle estimate's heatmap step derives from."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from czii_kaggle.detectors.heatmap import build_net
    from czii_kaggle.detectors.heatmap_net import focal_heatmap_loss
    from czii_kaggle.train_heatmap import load_runs, sample_batch

    runs = load_runs(sources, config)
    seconds = []
    for step in range(n):
        t0 = time.perf_counter()
        x, y = sample_batch(runs, step, config, train)
        seconds.append(time.perf_counter() - t0)
    with FlopCounterMode(display=False) as flops:
        focal_heatmap_loss(build_net(config)(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    return float(np.median(seconds)), flops.get_total_flops() / 1e9


def scores(picked: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """The score and each scored type's F-beta of ``picked``."""
    return score_submission(submission_of(picked), truth)


def score_submission(sub: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """The score and each scored type's F-beta of a submission."""
    table = metric.score_table(truth, sub)
    return {"score": metric.score(truth, sub), **{n: float(table.loc[n, "f_beta"]) for n in SCORED if n in table.index}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True, help="bundle folder holding the heatmap detector")
    add_test_set_args(ap)
    ap.add_argument("--adapt-runs", type=int, default=5, help="labelled runs simulated per look (default 5)")
    ap.add_argument("--tune-runs", type=int, default=2, help="of them, kept for the thresholds (default 2)")
    ap.add_argument("--adapt-seed", type=int, default=70210, help="their seed (+1000 per domain index)")
    ap.add_argument("--mix", nargs="*", default=[], help="training-look runs trained on beside, ROOT:RUN,RUN")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--look-augment", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_adapt")
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench_adapt" / "cache")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if not 0 < a.tune_runs < a.adapt_runs:
        raise SystemExit("need 0 < --tune-runs < --adapt-runs")
    unknown = [d for d in a.domains if d not in DOMAINS or d in ("random", *TRAINING_DOMAINS)]
    if unknown or not a.domains:
        raise SystemExit(f"--domains: one or more held-out looks, not {unknown or 'none'}")

    shipped = load_heatmap_bundle(a.weights)
    mix = _sources(a.mix) if a.mix else []
    sets = {name: (root, truth) for name, root, truth in test_sets(a)}
    classic = a.label if a.data is not None else None
    rows, seconds, step = [], {}, None

    def add(look: str, variant: str, bundle_dir: Path, aggregate, set_name: str) -> None:
        root, truth = sets[set_name]
        cands = heatmap_candidates(bundle_dir, root, "test", layout.list_runs(root, "test"), a.cache, set_name)
        row = {"look": look, "variant": variant, "scored on": set_name, **scores(select(cands, aggregate), truth)}
        rows.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    for domain in a.domains:
        seed = a.adapt_seed + 1000 * list(DOMAINS).index(domain)
        root = simulate_labelled(a.work / domain / f"seed{seed}_n{a.adapt_runs}", a.adapt_runs, seed, DOMAINS[domain])
        runs = layout.list_pick_runs(root)[:a.adapt_runs]
        fit_runs, tune_runs = runs[:-a.tune_runs], runs[-a.tune_runs:]
        tune_truth = picks.read_all_picks(root, tune_runs)

        add(domain, "shipped", a.weights, shipped.aggregate, domain)
        cands = heatmap_candidates(a.weights, root, "train", tune_runs, a.cache, f"{domain}-tune")
        looked, _ = tune_thresholds(cands, tune_truth, shipped.aggregate, support_grid=None)
        add(domain, "shipped, thresholds tuned on the look", a.weights, looked, domain)

        sources = [(root, fit_runs), *mix]
        plan = f"n{a.adapt_runs}t{a.tune_runs}_s{a.steps}"  # a training per plan: runs trained on and steps
        train_dir, bundle_dir = a.work / domain / f"train_{plan}", a.work / domain / f"bundle_{plan}"
        train = HeatmapTrainConfig(patch_vox=(48, 96, 96), batch=a.batch, steps=a.steps, lr=a.lr, seed=seed,
                                   threads=a.threads, look_augment=a.look_augment)
        if not step:
            step = step_cost(sources, shipped.config, train)
        train_heatmap(sources, train_dir, shipped.config, train, init=a.weights / HEATMAP_WEIGHTS_FILE,
                      command="benchmarks/bench_adapt.py")
        seconds[domain] = load_heatmap_bundle(train_dir).record["seconds"]  # the training's own (it resumes)
        if not (bundle_dir / HEATMAP_WEIGHTS_FILE).is_file():
            recalibrate_heatmap(train_dir, sources, bundle_dir, bn_adapt=shipped.config.bn_adapt,
                                command="benchmarks/bench_adapt.py", replace=bundle_dir.exists())
        cands = heatmap_candidates(bundle_dir, root, "train", tune_runs, a.cache, f"{domain}-tune")
        start = load_heatmap_bundle(bundle_dir).aggregate.with_ref_rank(  # scores as the shipped bundle's
            {n: shipped.aggregate[n].ref_rank for n in NAMES})
        tuned, _ = tune_thresholds(cands, tune_truth, start, support_grid=None)
        add(domain, "fine-tuned on the look", bundle_dir, tuned, domain)
        add(domain, "fine-tuned on the look, the shipped thresholds", bundle_dir, shipped.aggregate, domain)
        if classic:
            add(domain, "fine-tuned on the look", bundle_dir, tuned, classic)
    if classic:
        add("-", "shipped", a.weights, shipped.aggregate, classic)

    table = pd.DataFrame(rows)
    held = table[table["scored on"] != classic] if classic else table
    mean = held.groupby("variant", sort=False)[["score", *SCORED]].mean().reset_index()
    mean.insert(0, "look", "mean of " + ", ".join(a.domains))
    mean.insert(2, "scored on", "its own look")
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_adapt.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine()}\n"
        f"- bundle `{a.weights}`; per look {a.adapt_runs} labelled runs simulated apart (seed {a.adapt_seed} + 1000 "
        f"per domain index): {a.adapt_runs - a.tune_runs} trained on, {a.tune_runs} for the thresholds; "
        f"{a.steps} steps from the shipped weights (batch {a.batch}, lr {a.lr}, look augmentation {a.look_augment}), "
        f"mixed with {sum(len(r or []) for _, r in mix)} training-look runs; test sets: "
        f"{', '.join(f'{n} ({t.experiment.nunique()} runs)' for n, (_, t) in sets.items())}; all simulated, no real voxels",
        "**Score** on each look's test runs (competition metric), and on the classic test for the "
        "fine-tuned networks (what each costs on the look the model knew):\n\n" + fmt(pd.concat([table, mean])),
        "**Seconds of fine-tuning** (this CPU, as each training recorded them): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        + f". One step (batch {a.batch}, 48 x 96 x 96, look augmentation {a.look_augment}): drawing the batch "
          f"{step[0]:.2f} s (median of 10, {a.threads} threads, the first look's runs), the network "
          f"{step[1]:.0f} GFLOPs forward and backward (`finetune.HEATMAP_T4_STEP_S` derives from these)",
    ])
    print(text)
    if not a.no_write:
        append_result(RESULTS, "What labelled runs of an unseen look buy (heatmap detector)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
