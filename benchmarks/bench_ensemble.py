"""Each detector of a bundle's ensemble alone and the ensemble, side by side on the same runs.

Runs the detectors of a bundle's ``ensemble.json`` (YOLO, the 3D heatmap network and any
further heatmap network, e.g. ``heatmap_l0``) once over held-out simulated test runs, keeps
their unthresholded candidates, and scores each detector with its own tuned thresholds and
the ensemble with its own (the main one and each alternative of ``ensemble.json``); prints the
score per type, the ensemble's lead over each of the others with its interval over runs (a
paired bootstrap of each set's runs), the seconds per full tomogram by stage, and the peak
memory of one full tomogram's inference by each heatmap network (measured in a child process
that runs only that).

    .venv/bin/python benchmarks/bench_ensemble.py --weights runs/hm/bundle \\
        --data runs/hm/test_medium/czii-cryo-et-object-identification --solution runs/hm/test_medium/test_solution.csv

``--domains`` adds the held-out-look sets of ``bench_detection.py --domains`` (the same runs:
same seeds, shape and folders under ``--sim-work``, simulated when absent) beside ``--data``;
``--blob`` scores the training-free blob floor on every set too (thresholds tuned as
``bench_detection.py --blob`` does); ``--tta-views`` sets the heatmap's flipped views.

Appends the tables, with the command, date and machine, to ``benchmarks/results/ensemble.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from bench_detection import DOMAINS, TRAINING_DOMAINS, blob_tuned, simulate  # noqa: E402
from czii_kaggle import blob, layout, metric, submission  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.bundle import load_detectors, load_ensembles  # noqa: E402
from czii_kaggle.detectors import run_candidates  # noqa: E402
from czii_kaggle.detectors.heatmap import PRECISIONS  # noqa: E402
from czii_kaggle.ensemble import select_ensemble  # noqa: E402
from czii_kaggle.particles import SCORED  # noqa: E402
from czii_kaggle.predict import scored_only  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "ensemble.md"


def fmt(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(floatfmt.format(v) if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def memory_probe(weights: Path, zarr: Path, tta_views: int | None = None, name: str = "heatmap",
                 precision: str | None = None) -> None:
    """Child process: one full tomogram through the heatmap detector ``name``; prints its peak RSS (GiB) as JSON."""
    det = load_detectors(weights, [name], tta_views=tta_views, precision=precision)[0]
    t0 = time.perf_counter()
    cands, times = det.candidates(zarr, "probe")
    print(json.dumps({"peak_rss_GiB": peak_rss_gib(), "seconds": time.perf_counter() - t0,
                      "peak_gpu_GiB": peak_gpu_gib(), **times}))


def peak_gpu_gib() -> float | None:
    """The largest peak of memory torch allocated on any GPU in this process (GiB), or None where none was used."""
    import torch
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**30


def peak_rss_gib() -> float:
    """This process's peak resident memory (GiB): ``VmHWM`` of ``/proc/self/status`` where there is one.

    Not ``getrusage``'s ``ru_maxrss`` on Linux: it keeps the high-water mark across ``exec``, so a child
    started by a large parent reports the parent's peak (the records before 2026-12-03 16:50 did: 1.25-1.57
    GiB for the heatmap alone were at least partly the bench's own memory)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def add_test_set_args(ap: argparse.ArgumentParser) -> None:
    """The options naming the test sets (:func:`test_sets`), shared by the benches that read them."""
    ap.add_argument("--data", type=Path, help="Kaggle-layout root of the test runs")
    ap.add_argument("--solution", type=Path, help="their test_solution.csv")
    ap.add_argument("--label", default="given", help="name of the --data set in the tables")
    ap.add_argument("--domains", nargs="*", default=[], choices=list(DOMAINS),
                    help="also bench_detection.py's sets of these looks (held-out looks of the shipped models)")
    ap.add_argument("--n-runs", type=int, default=2, help="runs per --domains set")
    ap.add_argument("--difficulty", default="medium")
    ap.add_argument("--seed", type=int, default=90210, help="as bench_detection.py (+1000 per domain index)")
    ap.add_argument("--shape", type=int, nargs=3, default=(184, 630, 630))
    ap.add_argument("--sim-work", type=Path, default=REPO / "runs" / "bench_detection",
                    help="bench_detection.py --work: where the --domains sets are (or are simulated)")


def add_cache_args(ap: argparse.ArgumentParser) -> None:
    """``--cache`` / ``--cache-yolo``: where the detectors' candidates of each set are kept (:func:`set_cache`)."""
    ap.add_argument("--cache-yolo", type=Path, help="reuse / keep YOLO candidates and seconds per run in this folder")
    ap.add_argument("--cache", type=Path, help="reuse / keep every other detector's candidates in DIR/{detector} "
                                              "(for re-scoring the same weights; a folder per bundle)")


def set_cache(a, names: list[str], set_name: str) -> dict[str, Path]:
    """Each detector's cache folder for ``set_name``: ``--cache``/{detector}/{set}, YOLO's ``--cache-yolo``/{set}."""
    return {**({n: a.cache / n / set_name for n in names if n != "yolo"} if a.cache else {}),
            **({"yolo": a.cache_yolo / set_name} if a.cache_yolo else {})}


def test_sets(a) -> list[tuple[str, Path, pd.DataFrame]]:
    """``(name, Kaggle-layout root, truth)`` of ``--data`` and of every ``--domains`` set."""
    sets = []
    if a.data is not None:
        if a.solution is None:
            raise SystemExit("--data needs --solution")
        sets.append((a.label, a.data, submission.read_solution(a.solution)))
    for domain in a.domains:
        seed = a.seed + 1000 * list(DOMAINS).index(domain)
        sub_dir = f"seed{seed}_n{a.n_runs}_{'x'.join(map(str, a.shape))}"
        out = a.sim_work / a.difficulty / sub_dir if domain == "classic" else a.sim_work / domain / a.difficulty / sub_dir
        simulate(out, a.n_runs, a.difficulty, seed, a.shape, DOMAINS[domain])
        sets.append((domain, out / "czii-cryo-et-object-identification", submission.read_solution(out / "test_solution.csv")))
    if not sets:
        raise SystemExit("give --data/--solution or --domains")
    return sets


def held_out_sets(a, names: list[str]) -> list[str]:
    """The sets a held-out mean takes: every set but ``--data`` and the domains of the training looks."""
    return [n for n in names if (n != a.label or a.data is None) and n not in TRAINING_DOMAINS]


def submission_of(picked: pd.DataFrame) -> pd.DataFrame:
    """The scored types of ``picked`` as a submission."""
    return submission.make_submission(scored_only(picked))


def score_rows(set_name: str, subs: dict[str, pd.DataFrame], truth: pd.DataFrame) -> tuple[list, list]:
    """One score row per detector and one per (detector, type), of each detector's submission."""
    rows, type_rows = [], []
    for name, sub in subs.items():
        table = metric.score_table(truth, sub)
        rows.append({"set": set_name, "detector": name, "score": metric.score(truth, sub),
                     **{n: float(table.loc[n, "f_beta"]) for n in SCORED if n in table.index}})
        for t, r in table.iterrows():
            type_rows.append({"set": set_name, "detector": name, "particle_type": t, "tp": int(r.tp), "fp": int(r.fp),
                              "fn": int(r.fn), "precision": float(r.precision), "recall": float(r.recall),
                              "f_beta": float(r.f_beta)})
    return rows, type_rows


def lead(diff: pd.Series, level: float = 0.95) -> dict:
    """One option's lead over another on paired resamples (``diff``: their score differences): its mean, the
    central ``level`` interval and the share of resamples where it is ahead."""
    lo, hi = diff.quantile([(1 - level) / 2, (1 + level) / 2])
    return {"lead (mean of resamples)": float(diff.mean()), f"{level:.0%} interval low": float(lo),
            f"{level:.0%} interval high": float(hi), "share of resamples ahead": float((diff > 0).mean())}


def lead_rows(boots: dict[str, pd.DataFrame], held: list[str], level: float = 0.95) -> list[dict]:
    """The ensemble's lead over each other detector per set and over the mean of the ``held`` sets, with the
    central ``level`` interval of the paired run bootstrap (``boots[set]``: :func:`czii_kaggle.metric.bootstrap_scores`,
    one column per detector; the mean's resamples are the sets' own, drawn apart, averaged)."""
    parts = dict(boots)
    if len(held) > 1:
        parts[f"mean of {', '.join(held)}"] = sum(boots[h] for h in held) / len(held)
    rows = []
    for set_name, boot in parts.items():
        for other in [c for c in boot.columns if c != "ensemble"]:
            rows.append({"set": set_name, "ensemble against": other, "resamples": len(boot),
                         **lead(boot["ensemble"] - boot[other], level)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="bundle folder with its detectors and ensemble.json")
    add_test_set_args(ap)
    ap.add_argument("--blob", action="store_true", help="also score the training-free blob floor on every set")
    ap.add_argument("--blob-val-runs", type=int, default=2)
    ap.add_argument("--tta-views", type=int, choices=(1, 2, 3, 4, 8, 16), help="the heatmap's flipped views (default: its own)")
    ap.add_argument("--precision", choices=PRECISIONS, help="the heatmap networks' (default: their own)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_ensemble")
    add_cache_args(ap)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child process")
    ap.add_argument("--warmup", action="store_true",
                    help="run each detector once on the first run of the first set before the timed pass (results "
                         "dropped): on a GPU the first run pays for start-up (CUDA context, kernel selection)")
    ap.add_argument("--n-boot", type=int, default=2000, help="resamples of each set's runs for the leads' intervals")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--memory-probe", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--probe-detector", default="heatmap", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_probe:
        memory_probe(a.weights, a.memory_probe, a.tta_views, a.probe_detector, a.precision)
        return 0

    sets = test_sets(a)
    ensembles = load_ensembles(a.weights)  # the main one, then its alternatives (scored beside it)
    ensemble = ensembles[0] if ensembles else None
    names = list(ensemble.detectors) if ensemble is not None else ["yolo", "heatmap"]
    dets = [load_detectors(a.weights, [n], a.backend, tta_views=None if n == "yolo" else a.tta_views,
                           precision=a.precision)[0] for n in names]
    heatmaps = [d for d in dets if d.name != "yolo"]
    blob_config = blob_tuned(a.sim_work, a.blob_val_runs, a.shape)[0] if a.blob else None
    rows, type_rows, reports, merge_s, blob_s, all_runs, boots = [], [], [], [], [], [], {}
    a.work.mkdir(parents=True, exist_ok=True)
    if a.warmup:
        root0 = sets[0][1]
        run_candidates(dets, root0, a.split, layout.list_runs(root0, a.split)[:1], progress=False)
    for set_name, root, truth in sets:
        runs = layout.list_runs(root, a.split)
        all_runs += [f"{set_name}/{r}" for r in runs]
        cands, report = run_candidates(dets, root, a.split, runs, progress=False, cache=set_cache(a, names, set_name))
        reports.append(report.assign(set=set_name))
        for name, c in cands.items():
            c.to_csv(a.work / f"candidates_{name}{'' if set_name == a.label else '_' + set_name}.csv", index=False)
        truth = truth[truth["experiment"].isin(runs)]
        picks = {d.name: d.select(cands[d.name]) for d in dets}
        t0 = time.perf_counter()
        picks["ensemble"] = select_ensemble(cands, ensemble)
        merge_s.append((time.perf_counter() - t0) / len(runs))
        for alt in ensembles[1:]:
            picks[f"ensemble {' + '.join(alt.detectors)}"] = select_ensemble(cands, alt)
        if blob_config is not None:
            t0 = time.perf_counter()
            bc, _ = blob.blob_candidates_runs(root, a.split, runs)
            picks["blob floor"] = select(bc, blob_config)
            blob_s.append((time.perf_counter() - t0) / len(runs))
        subs = {n: submission_of(p) for n, p in picks.items()}
        r, t = score_rows(set_name, subs, truth)
        boots[set_name] = metric.bootstrap_scores(truth, subs, a.n_boot, seed=len(boots))
        rows += r
        type_rows += t
        print(fmt(pd.DataFrame(r)), flush=True)
    held = held_out_sets(a, [s for s, _, _ in sets])
    if held and len(sets) > 1:  # the mean over the held-out looks among the sets
        df = pd.DataFrame(rows)
        df = df[df["set"].isin(held)]
        mean = df.drop(columns="set").groupby("detector", sort=False).mean().reset_index()
        rows += mean.assign(set=f"mean of {', '.join(held)}")[list(df.columns)].to_dict("records")

    report = pd.concat(reports, ignore_index=True)
    report = report[report["status"] == "ok"]
    stage = report.drop(columns=["experiment", "device", "status", "error", "n_candidates", "set"]).groupby("detector").mean()
    stage = stage.reindex(names).reset_index()
    per_run = report.groupby(["set", "experiment"])["seconds"].sum()
    mean_merge = sum(merge_s) / len(merge_s)
    ens_row = {"detector": f"ensemble ({' + '.join(names)} + merge)", "seconds": float(per_run.mean()) + mean_merge,
               "merge_s": mean_merge}
    extra = [ens_row] + ([{"detector": "blob floor", "seconds": sum(blob_s) / len(blob_s)}] if blob_s else [])
    speed = pd.concat([stage, pd.DataFrame(extra)], ignore_index=True).fillna(0.0)
    parts_mem = []
    if not a.no_memory:
        root0 = sets[0][1]
        zarr0 = layout.tomogram_path(root0, a.split, layout.list_runs(root0, a.split)[0])
        for det in heatmaps:
            probe = subprocess.run([sys.executable, __file__, "--weights", str(a.weights), "--memory-probe", str(zarr0),
                                    "--probe-detector", det.name,
                                    *(["--tta-views", str(a.tta_views)] if a.tta_views else []),
                                    *(["--precision", a.precision] if a.precision else [])],
                                   capture_output=True, text=True, check=True, cwd=REPO)
            mem = json.loads(probe.stdout.strip().splitlines()[-1])
            gpu = f"; GPU {mem['peak_gpu_GiB']:.2f} GiB allocated by torch" if mem.get("peak_gpu_GiB") else ""
            parts_mem.append(f"**Peak memory** of one full tomogram's {det.name} inference (child process, read + "
                             f"inference + peaks): {mem['peak_rss_GiB']:.2f} GiB{gpu} ({mem['seconds']:.1f} s, "
                             "the first run of a fresh process)")
    networks = "; ".join(f"{d.name} by {type(d.model).__name__} ({d.bundle.config.tta_views} view(s), level "
                         f"{d.bundle.config.level}, windows {d.bundle.config.window_vox}, "
                         f"{d.bundle.config.precision}, adaptation {d.bundle.config.bn_adapt:g} on 1 window in "
                         f"{d.bundle.config.bn_adapt_every})" for d in heatmaps)
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_ensemble.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine(with_pace=True)}\n"
        f"- bundle: `{a.weights}`; ensemble of {' + '.join(names)}"
        + "".join(f"; YOLO by {d.backend} on {d.device}" for d in dets if d.name == "yolo")
        + f"; {networks}; {len(all_runs)} simulated test runs "
        f"(no real voxels): {', '.join(all_runs)}"
        + (f"; domains: {', '.join(f'{d} = `{json.dumps(DOMAINS[d])}`' for d in a.domains)}" if a.domains else ""),
        "**Score** (competition metric; each detector with its own tuned thresholds, the ensemble (the bundle's main "
        "one) with its own, and each alternative ensemble of `ensemble.json` with its own):\n\n"
        + fmt(pd.DataFrame(rows)),
        "**Per type**:\n\n" + fmt(pd.DataFrame(type_rows)),
        "**The ensemble's lead over each detector**, with the interval over runs (each set's runs resampled with "
        f"replacement {a.n_boot} times, every detector scored on the same resample; a set of 4 runs says little):\n\n"
        + fmt(pd.DataFrame(lead_rows(boots, held))),
        "**Seconds per full tomogram** by stage (mean over runs; the ensemble runs its detectors one after "
        "the other" + ("; after one warm-up run of each detector, not counted" if a.warmup else "") + "):\n\n"
        + fmt(speed, "{:.2f}"),
        *parts_mem,
    ])
    print(text)
    if not a.no_write:
        head = "" if RESULTS.exists() else "# Ensemble benchmark results\n\nAppended by `benchmarks/bench_ensemble.py`.\n\n"
        with RESULTS.open("a") as f:
            f.write(head + text + "\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
