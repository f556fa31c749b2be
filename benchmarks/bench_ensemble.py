"""YOLO alone, the 3D heatmap detector alone and their ensemble, side by side on the same runs.

Runs both detectors of a bundle (``model.pt``/``model.onnx`` + ``heatmap.pt`` + ``ensemble.json``)
once over held-out simulated test runs, keeps their unthresholded candidates, and scores
each detector with its own tuned thresholds and the ensemble with its own; prints the
score per type, the seconds per full tomogram by stage, and the peak memory of one full
tomogram's heatmap inference (measured in a child process that runs only that).

    .venv/bin/python benchmarks/bench_ensemble.py --weights runs/hm/bundle \\
        --data runs/hm/test_medium/czii-cryo-et-object-identification --solution runs/hm/test_medium/test_solution.csv

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

from czii_kaggle import layout, metric, submission  # noqa: E402
from czii_kaggle.bundle import load_detectors, load_ensemble  # noqa: E402
from czii_kaggle.detectors import run_candidates  # noqa: E402
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


def memory_probe(weights: Path, zarr: Path) -> None:
    """Child process: one full tomogram through the heatmap detector; prints its peak RSS (GiB) as JSON."""
    det = load_detectors(weights, ["heatmap"])[0]
    t0 = time.perf_counter()
    cands, times = det.candidates(zarr, "probe")
    print(json.dumps({"peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "seconds": time.perf_counter() - t0, **times}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="bundle folder with both detectors and ensemble.json")
    ap.add_argument("--data", type=Path, required=True, help="Kaggle-layout root of the test runs")
    ap.add_argument("--solution", type=Path, required=True, help="their test_solution.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_ensemble")
    ap.add_argument("--cache-yolo", type=Path, help="reuse / keep YOLO candidates and seconds per run in this folder")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--memory-probe", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_probe:
        memory_probe(a.weights, a.memory_probe)
        return 0

    runs = layout.list_runs(a.data, a.split)
    dets = load_detectors(a.weights, ["yolo", "heatmap"], a.backend)
    ensemble = load_ensemble(a.weights)
    cache = {"yolo": a.cache_yolo} if a.cache_yolo else None
    cands, report = run_candidates(dets, a.data, a.split, runs, progress=False, cache=cache)
    a.work.mkdir(parents=True, exist_ok=True)
    for name, c in cands.items():
        c.to_csv(a.work / f"candidates_{name}.csv", index=False)
    truth = submission.read_solution(a.solution)
    truth = truth[truth["experiment"].isin(runs)]
    picks = {d.name: d.select(cands[d.name]) for d in dets}
    t0 = time.perf_counter()
    picks["ensemble"] = select_ensemble(cands, ensemble)
    merge_s = (time.perf_counter() - t0) / len(runs)
    rows, type_rows = [], []
    for name, p in picks.items():
        sub = submission.make_submission(scored_only(p))
        table = metric.score_table(truth, sub)
        rows.append({"detector": name, "score": metric.score(truth, sub),
                     **{n: float(table.loc[n, "f_beta"]) for n in SCORED if n in table.index}})
        for t, r in table.iterrows():
            type_rows.append({"detector": name, "particle_type": t, "tp": int(r.tp), "fp": int(r.fp), "fn": int(r.fn),
                              "precision": float(r.precision), "recall": float(r.recall), "f_beta": float(r.f_beta)})

    stage = report.drop(columns=["experiment", "status", "error", "n_candidates"]).groupby("detector").mean()
    stage = stage.reindex(["yolo", "heatmap"]).reset_index()
    per_run = report.groupby("experiment")["seconds"].sum()
    ens_row = {"detector": "ensemble (both + merge)", "seconds": float(per_run.mean()) + merge_s, "merge_s": merge_s}
    speed = pd.concat([stage, pd.DataFrame([ens_row])], ignore_index=True).fillna(0.0)
    probe = subprocess.run([sys.executable, __file__, "--weights", str(a.weights), "--data", str(a.data),
                            "--solution", str(a.solution), "--memory-probe",
                            str(layout.tomogram_path(a.data, a.split, runs[0]))],
                           capture_output=True, text=True, check=True, cwd=REPO)
    mem = json.loads(probe.stdout.strip().splitlines()[-1])
    hm = dets[1].bundle
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_ensemble.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine()}\n"
        f"- bundle: `{a.weights}`; YOLO by {dets[0].backend}, heatmap by {type(dets[1].model).__name__} "
        f"({hm.config.tta_views} view(s), windows {hm.config.window_vox}); {len(runs)} simulated test runs "
        f"(no real voxels): {', '.join(runs)}",
        "**Score** (competition metric; each detector with its own tuned thresholds, the ensemble with its own):\n\n"
        + fmt(pd.DataFrame(rows)),
        "**Per type**:\n\n" + fmt(pd.DataFrame(type_rows)),
        "**Seconds per full tomogram** by stage (mean over runs; the ensemble runs both detectors one after "
        "the other):\n\n" + fmt(speed, "{:.2f}"),
        f"**Peak memory** of one full tomogram's heatmap inference (child process, read + inference + peaks): "
        f"{mem['peak_rss_GiB']:.2f} GiB ({mem['seconds']:.1f} s)",
    ])
    print(text)
    if not a.no_write:
        head = "" if RESULTS.exists() else "# Ensemble benchmark results\n\nAppended by `benchmarks/bench_ensemble.py`.\n\n"
        with RESULTS.open("a") as f:
            f.write(head + text + "\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
