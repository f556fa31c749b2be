"""Detection quality and speed of a model bundle on held-out simulated test runs.

For each difficulty, simulates test runs with seeds and random layouts never used in
training (the shipped model was trained on seed 7), predicts them with the bundle,
and scores them with the competition metric. Prediction runs in this process after the
simulation has been written by a child process, so the peak memory reported is the
prediction's own (read + preprocess + inference + aggregation).

    .venv/bin/python benchmarks/bench_detection.py                       # shipped model
    .venv/bin/python benchmarks/bench_detection.py --weights runs/x/bundle --difficulties medium

Prints markdown tables and appends them, with the command, date and machine, to
``benchmarks/results/detection.md``; the raw detections and the truth are saved under
``--work`` so ``bench_postprocess.py --detections ... --solution ...`` can compare the
aggregations on them.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import resource
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import append_result, describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from czii_kaggle import metric, submission  # noqa: E402
from czii_kaggle.detect import BACKENDS  # noqa: E402
from czii_kaggle.predict import load_bundle, predict_runs, scored_only, with_tta  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "detection.md"




def simulate(out: Path, n: int, difficulty: str, seed: int, shape) -> None:
    """Write the test set in a child process (keeps this process's peak memory for prediction)."""
    if (out / "test_solution.csv").exists():
        return
    cmd = [sys.executable, "-m", "czii_kaggle", "simulate", "--out", str(out), "--n-train", "0", "--n-test", str(n),
           "--difficulty", difficulty, "--seed", str(seed), "--shape", *map(str, shape)]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def fmt(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(floatfmt.format(v) if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="bundle folder (default: the shipped model)")
    ap.add_argument("--difficulties", nargs="+", default=["easy", "medium", "hard"])
    ap.add_argument("--n-runs", type=int, default=2, help="test runs per difficulty")
    ap.add_argument("--seed", type=int, default=90210, help="never used in training")
    ap.add_argument("--shape", type=int, nargs=3, default=(184, 630, 630))
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_detection")
    ap.add_argument("--tta-views", type=int, choices=(1, 2, 3, 4),
                    help="flipped views per slice (default: the bundle's own setting)")
    ap.add_argument("--backend", choices=BACKENDS, default="auto",
                    help="torch, onnx (ONNX Runtime, CPU) or auto (onnx on a CPU-only machine when the bundle has it)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    bundle = load_bundle(a.weights)
    if a.tta_views:
        bundle = with_tta(bundle, a.tta_views)

    score_rows, type_rows, time_rows, all_dets, all_truth = [], [], [], [], []
    for i, diff in enumerate(a.difficulties):
        out = a.work / diff / f"seed{a.seed + i}_n{a.n_runs}_{'x'.join(map(str, a.shape))}"
        simulate(out, a.n_runs, diff, a.seed + i, a.shape)
        root = out / "czii-cryo-et-object-identification"
        pred = predict_runs(root, "test", bundle=bundle, progress=False, backend=a.backend)
        truth = submission.read_solution(out / "test_solution.csv")
        sub = submission.make_submission(scored_only(pred.picks))
        table = metric.score_table(truth, sub)
        score_rows.append({"difficulty": diff, "runs": a.n_runs, "score": metric.score(truth, sub),
                           **{n: float(table.loc[n, "f_beta"]) for n in table.index}})
        for name, r in table.iterrows():
            type_rows.append({"difficulty": diff, "particle_type": name, "tp": int(r.tp), "fp": int(r.fp),
                              "fn": int(r.fn), "precision": float(r.precision), "recall": float(r.recall),
                              "f_beta": float(r.f_beta)})
        time_rows.append(pred.report.assign(difficulty=diff))
        all_dets.append(pred.detections)
        all_truth.append(truth)

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = pd.concat(time_rows, ignore_index=True)
    a.work.mkdir(parents=True, exist_ok=True)
    pd.concat(all_dets, ignore_index=True).to_csv(a.work / "detections.csv", index=False)
    pd.concat(all_truth, ignore_index=True).to_csv(a.work / "solution.csv", index=False)

    stage_cols = ["read_s", "preprocess_s", "inference_s", "aggregate_s", "total_s"]
    speed = times[stage_cols].mean().to_frame().T.assign(runs=len(times), peak_rss_GiB=peak_gib)
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_detection.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine()}\n- model: `{bundle.weights}` run by {', '.join(sorted(set(times['backend'])))}, {bundle.detect.tta_views} view(s) per slice; test shape {tuple(a.shape)}, seeds from {a.seed}, "
        f"{a.n_runs} run(s) per difficulty, simulated data (no real voxels)",
        "**Score per difficulty** (competition metric, F-beta per scored type):\n\n" + fmt(pd.DataFrame(score_rows)),
        "**Per type**:\n\n" + fmt(pd.DataFrame(type_rows)),
        "**Seconds per tomogram** (mean over runs) and peak memory of the prediction process:\n\n" + fmt(speed, "{:.2f}"),
    ])
    print(text)
    if not a.no_write:
        append_result(RESULTS, "Detection benchmark results", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
