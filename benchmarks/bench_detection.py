"""Detection quality and speed of a model bundle on held-out simulated test runs.

For each difficulty, simulates test runs with seeds and random layouts never used in
training (the shipped model was trained on seed 7), predicts them with the bundle,
and scores them with the competition metric. Prediction runs in this process after the
simulation has been written by a child process, so the peak memory reported is the
prediction's own (read + preprocess + inference + aggregation).

    .venv/bin/python benchmarks/bench_detection.py                       # shipped model
    .venv/bin/python benchmarks/bench_detection.py --weights runs/x/bundle --difficulties medium
    .venv/bin/python benchmarks/bench_detection.py --domains classic random model-subunits --blob

``--domains`` names looks (:mod:`czii_kaggle.simulate.look`, :data:`DOMAINS`): ``classic``
is the simulator the first YOLO stages trained on (in-domain), ``training-looks`` new runs of
the random looks the shipped networks trained on (:data:`TRAINING_DOMAINS`, never in a held-out
mean); every other domain is a look family the shipped networks never trained on (a retrained
model holds one family out of its training and is measured on it). ``--blob`` adds the training-free floor
(:mod:`czii_kaggle.blob`) beside the model on every domain, its thresholds tuned once on
``--blob-val-runs`` validation runs per validation look (classic and random, medium,
seeds never used elsewhere) with :func:`czii_kaggle.tune.tune_thresholds`.

Prints markdown tables and appends them, with the command, date and machine, to
``benchmarks/results/detection.md``; the raw detections and the truth are saved under
``--work`` so ``bench_postprocess.py --detections ... --solution ...`` can compare the
aggregations on them.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import append_result, describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from czii_kaggle import blob, metric, submission, tune  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.detect import BACKENDS  # noqa: E402
from czii_kaggle.preprocess import SPECTRAL  # noqa: E402
from czii_kaggle.bundle import load_bundle, with_tta  # noqa: E402
from czii_kaggle.predict import predict_runs, scored_only  # noqa: E402
from czii_kaggle.simulate import hold_out  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "detection.md"

#: The families the shipped networks never trained on (the held-out looks of the README's headline).
TRAINING_HOLD_OUT = {"particle_model": "subunits", "filter": "anisotropic", "ctf_mode": "unflipped"}
#: Benchmark domains: a name -> a look (``classic``, ``random`` or a spec fixing one family;
#: the other fields of a spec'd look stay random). Seeds: domain ``k`` (in this order) adds
#: ``1000 * k`` to ``--seed``, so ``classic`` keeps the seeds of the in-domain table.
DOMAINS: dict[str, str | dict] = {
    "classic": "classic",
    "random": "random",
    "model-envelope": {"particle_model": "envelope"},
    "model-subunits": {"particle_model": "subunits"},
    "filter-median": {"filter": "median"},
    "filter-anisotropic": {"filter": "anisotropic"},
    "ctf-unflipped": {"ctf_mode": "unflipped"},
    "ctf-none": {"ctf_mode": "none"},
    # new runs of the looks the shipped heatmap network and YOLO stage 5 trained on: random looks with
    # the three families above held out (the validation runs' SPEC); not a held-out look
    "training-looks": hold_out("random", TRAINING_HOLD_OUT),
    # the filter no network here trained on (``look.EXTRA_CHOICES``) with the training looks' particle
    # models and CTF: the look of bench_selection's unseen-look validation runs, new seeds
    "filter-diffusion": {**hold_out("random", TRAINING_HOLD_OUT), "filter": "diffusion"},
}
#: Domains whose looks the shipped networks trained on: not counted in a held-out mean.
TRAINING_DOMAINS = ("classic", "training-looks")
BLOB_VAL_SEED = 77000


def simulate(out: Path, n: int, difficulty: str, seed: int, shape, look: str | dict = "classic") -> None:
    """Write the test set in a child process (keeps this process's peak memory for prediction)."""
    if (out / "test_solution.csv").exists():
        return
    cmd = [sys.executable, "-m", "czii_kaggle", "simulate", "--out", str(out), "--n-train", "0", "--n-test", str(n),
           "--difficulty", difficulty, "--seed", str(seed), "--shape", *map(str, shape),
           "--look", look if isinstance(look, str) else json.dumps(look), "--overwrite"]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def blob_tuned(work: Path, n_runs: int, shape) -> tuple[object, list[dict]]:
    """The blob floor's thresholds, tuned on ``n_runs`` medium validation runs of the classic and the random look."""
    cands, truths = [], []
    for k, look in enumerate(("classic", "random")):
        out = work / "blob_val" / f"{look}_seed{BLOB_VAL_SEED + k}_n{n_runs}_{'x'.join(map(str, shape))}"
        simulate(out, n_runs, "medium", BLOB_VAL_SEED + k, shape, look)
        c, _ = blob.blob_candidates_runs(out / "czii-cryo-et-object-identification", "test")
        cands.append(c)
        truths.append(submission.read_solution(out / "test_solution.csv"))
    config, table = tune.tune_thresholds(pd.concat(cands, ignore_index=True), pd.concat(truths, ignore_index=True),
                                         blob.start_config(), support_grid=(1,))
    return config, table.to_dict("records")


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
    ap.add_argument("--domains", nargs="+", default=["classic"], choices=list(DOMAINS),
                    help="looks to test on (classic: the model's training look; the others are held out)")
    ap.add_argument("--blob", action="store_true", help="also score the training-free blob floor on every domain")
    ap.add_argument("--blob-val-runs", type=int, default=2, help="validation runs per look to tune the blob floor")
    ap.add_argument("--no-model", action="store_true", help="score the blob floor only")
    ap.add_argument("--spectral", choices=SPECTRAL,
                    help="override the bundle's per-tomogram spectral step (czii_kaggle.preprocess.spectral_filter)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    bundle = load_bundle(a.weights)
    if a.spectral:
        bundle = replace(bundle, preprocess=replace(bundle.preprocess, spectral=a.spectral))
    if a.tta_views:
        bundle = with_tta(bundle, a.tta_views)
    blob_config, blob_table = blob_tuned(a.work, a.blob_val_runs, a.shape) if a.blob else (None, [])

    score_rows, type_rows, time_rows, all_dets, all_truth, blob_times = [], [], [], [], [], []
    for k, domain in enumerate(a.domains):
        look = DOMAINS[domain]
        dk = list(DOMAINS).index(domain)
        for i, diff in enumerate(a.difficulties):
            seed = a.seed + i + 1000 * dk
            sub_dir = f"seed{seed}_n{a.n_runs}_{'x'.join(map(str, a.shape))}"
            out = a.work / diff / sub_dir if domain == "classic" else a.work / domain / diff / sub_dir
            simulate(out, a.n_runs, diff, seed, a.shape, look)
            root = out / "czii-cryo-et-object-identification"
            truth = submission.read_solution(out / "test_solution.csv")
            subs = {}
            if not a.no_model:
                pred = predict_runs(root, "test", bundle=bundle, progress=False, backend=a.backend)
                subs["model"] = submission.make_submission(scored_only(pred.picks))
                time_rows.append(pred.report.assign(difficulty=diff, domain=domain))
                all_dets.append(pred.detections)
                all_truth.append(truth)
            if a.blob:
                cands, report = blob.blob_candidates_runs(root, "test")
                subs["blob"] = submission.make_submission(select(cands, blob_config))
                blob_times.append(report)
            for detector, sub in subs.items():
                table = metric.score_table(truth, sub)
                score_rows.append({"domain": domain, "difficulty": diff, "detector": detector, "runs": a.n_runs,
                                   "score": metric.score(truth, sub),
                                   **{n: float(table.loc[n, "f_beta"]) for n in table.index}})
                for name, r in table.iterrows():
                    type_rows.append({"domain": domain, "difficulty": diff, "detector": detector,
                                      "particle_type": name, "tp": int(r.tp), "fp": int(r.fp), "fn": int(r.fn),
                                      "precision": float(r.precision), "recall": float(r.recall),
                                      "f_beta": float(r.f_beta)})
            print(pd.DataFrame(score_rows[-len(subs):]).to_string(index=False, float_format=lambda v: f"{v:.3f}"),
                  flush=True)

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    a.work.mkdir(parents=True, exist_ok=True)
    parts = [
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_detection.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine(with_pace=True)}\n- model: `{bundle.weights}`, {bundle.detect.tta_views} view(s) per slice, "
        f"spectral step `{bundle.preprocess.spectral}`; "
        f"test shape {tuple(a.shape)}, seeds from {a.seed} (+1000 per domain index), {a.n_runs} run(s) per "
        f"difficulty and domain, simulated data (no real voxels; our own simulator's looks, "
        f"`czii_kaggle.simulate.look`); domains: "
        + ", ".join(f"{d} = `{json.dumps(DOMAINS[d])}`" for d in a.domains),
        "**Score per domain and difficulty** (competition metric, F-beta per scored type; `classic` is the "
        "model's training look, every other domain a look it never trained on):\n\n" + fmt(pd.DataFrame(score_rows)),
        "**Per type**:\n\n" + fmt(pd.DataFrame(type_rows)),
    ]
    if time_rows:
        times = pd.concat(time_rows, ignore_index=True)
        pd.concat(all_dets, ignore_index=True).to_csv(a.work / "detections.csv", index=False)
        pd.concat(all_truth, ignore_index=True).to_csv(a.work / "solution.csv", index=False)
        stage_cols = ["read_s", "preprocess_s", "inference_s", "aggregate_s", "total_s"]
        speed = times[stage_cols].mean().to_frame().T.assign(runs=len(times), peak_rss_GiB=peak_gib)
        parts.append(f"**Seconds per tomogram, model** ({', '.join(sorted(set(times['backend'])))}; mean over "
                     "runs) and peak memory of the process:\n\n" + fmt(speed, "{:.2f}"))
    if blob_times:
        bt = pd.concat(blob_times, ignore_index=True)
        speed = bt[["read_s", "detect_s", "total_s"]].mean().to_frame().T.assign(runs=len(bt))
        parts.append("**Blob floor**: thresholds tuned on "
                     f"{a.blob_val_runs} classic + {a.blob_val_runs} random-look medium runs (seeds {BLOB_VAL_SEED}, "
                     f"{BLOB_VAL_SEED + 1}):\n\n" + fmt(pd.DataFrame(blob_table)[
                         ["particle_type", "threshold", "min_share", "f_beta", "precision", "recall"]])
                     + "\n\nSeconds per tomogram (level-1 read + detection, mean):\n\n" + fmt(speed, "{:.2f}"))
    text = "\n\n".join(parts)
    print(text)
    if not a.no_write:
        append_result(RESULTS, "Detection benchmark results", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
