"""Serial vs overlapped prediction: the same runs, read and preprocessed only when the model is
free (``prefetch=0``) or one run ahead in a thread of their own (``prefetch=1``, the default).

    .venv/bin/python benchmarks/bench_pipeline.py                 # 4 full-size simulated runs
    .venv/bin/python benchmarks/bench_pipeline.py --n-runs 6 --repeats 2

Prints one table (wall time, seconds per run, each stage's mean seconds, the share of the
model's time spent waiting for data) and a split of the model stage into the part a GPU
takes over (the network) and the part that stays on the CPU (Ultralytics' letterboxing and
NMS, per slice), from which the Kaggle estimate for 2 x T4 is derived; appends both, with
the command and machine, to ``benchmarks/results/pipeline.md``. Simulated data.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detection import fmt, simulate  # noqa: E402
from machine import append_result, describe as describe_machine  # noqa: E402

sys.path.insert(0, str(REPO))

from czii_kaggle import layout  # noqa: E402
from czii_kaggle.detect import BACKENDS, detect_volume, load_model  # noqa: E402
from czii_kaggle.bundle import load_bundle  # noqa: E402
from czii_kaggle.detectors.yolo import choose_backend, prepare_run  # noqa: E402
from czii_kaggle.predict import predict_runs, stage_times  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "pipeline.md"


class SpeedRecorder:
    """A YOLO model whose ``predict`` also sums Ultralytics' own per-image timings (ms):
    ``preprocess`` (letterbox, to tensor), ``inference`` (the network), ``postprocess`` (NMS)."""

    def __init__(self, model):
        self.model, self.ms = model, Counter()

    def predict(self, *args, **kwargs):
        results = self.model.predict(*args, **kwargs)
        for r in results:
            self.ms.update(r.speed)
        return results


def model_split(root: Path, run: str, bundle, weights: Path) -> dict:
    """Seconds of one run's model stage: Ultralytics' CPU-side work vs the network itself."""
    vol_u8, voxel_size_A, _ = prepare_run(layout.tomogram_path(root, "test", run), bundle)
    model = SpeedRecorder(load_model(weights))
    detect_volume(model, vol_u8[:8], voxel_size_A, run, bundle.detect, bundle.preprocess.slice_offset, "cpu",
                  progress=False)  # warm-up
    model.ms.clear()
    detect_volume(model, vol_u8, voxel_size_A, run, bundle.detect, bundle.preprocess.slice_offset, "cpu",
                  progress=False)
    return {f"yolo_{k}_s": v / 1000 for k, v in model.ms.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="bundle folder (default: the shipped model)")
    ap.add_argument("--n-runs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="rounds; the order of the two modes alternates")
    ap.add_argument("--seed", type=int, default=77001)
    ap.add_argument("--shape", type=int, nargs=3, default=(184, 630, 630))
    ap.add_argument("--backend", choices=BACKENDS, default="auto")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_pipeline")
    ap.add_argument("--kaggle-runs", type=int, default=500, help="test runs in the Kaggle estimate")
    ap.add_argument("--t4-speedup", type=float, default=10.0,
                    help="assumed speed of a T4 over this CPU for network + NMS (the estimate's one assumption)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    bundle = load_bundle(a.weights)
    out = a.work / f"seed{a.seed}_n{a.n_runs}_{'x'.join(map(str, a.shape))}"
    simulate(out, a.n_runs, "medium", a.seed, a.shape)
    root = out / "czii-cryo-et-object-identification"
    predict_runs(root, "test", runs=layout.list_runs(root, "test")[:1], bundle=bundle, devices=["cpu"],
                 progress=False, backend=a.backend)  # warm-up: model load, first-call costs

    rows = []
    for rep in range(a.repeats):
        modes = [("serial", 0), ("overlapped", 1)]
        for name, prefetch in modes if rep % 2 == 0 else modes[::-1]:
            pred = predict_runs(root, "test", bundle=bundle, devices=["cpu"], progress=False, backend=a.backend,
                                prefetch=prefetch)
            assert (pred.report["status"] == "ok").all(), pred.report
            t = stage_times(pred)
            n = t["runs"]
            rows.append({"mode": name, "prefetch": prefetch, "round": rep + 1, "runs": n, "wall_s": t["wall_s"],
                         "s_per_run": t["wall_s_per_run"], **{k: t[k] / n for k in (
                             "read_s", "preprocess_s", "inference_s", "aggregate_s", "wait_s")},
                         "model_wait_share": t["wait_share"]})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    backend = choose_backend(bundle, a.backend, ["cpu"])
    weights = (bundle.onnx or bundle.weights) if backend == "onnx" else bundle.weights
    split = model_split(root, layout.list_runs(root, "test")[0], bundle, weights)

    serial = table[table["mode"] == "serial"].mean(numeric_only=True)
    cpu_feed = serial["read_s"] + serial["preprocess_s"]  # the prefetch thread's work per run
    cpu_model = split["yolo_preprocess_s"] + serial["aggregate_s"]  # the model thread's CPU work beside the GPU's
    gpu_here = split["yolo_inference_s"] + split["yolo_postprocess_s"]  # network + NMS: on the GPU there
    gpu_t4 = gpu_here / a.t4_speedup
    per_run_2gpu = max(cpu_feed, cpu_model + gpu_t4) / 2
    estimate = (
        f"**Kaggle estimate, {a.kaggle_runs} runs on 2 x T4** (derived from the stage times above, not measured: "
        f"no GPU here). Per run this CPU spent {serial['read_s']:.2f} s reading and {serial['preprocess_s']:.2f} s "
        f"preprocessing (the prefetch thread's work: {cpu_feed:.2f} s); of the model stage, "
        f"{split['yolo_preprocess_s']:.2f} s went to Ultralytics' letterboxing, which stays on the CPU, and "
        f"{gpu_here:.2f} s to the network and its NMS, which run on the GPU there; aggregation took "
        f"{serial['aggregate_s']:.2f} s. Assuming a T4 runs network + NMS {a.t4_speedup:g} x faster than these CPU "
        f"cores ({gpu_t4:.2f} s), one worker per T4 with reading overlapped finishes a run every "
        f"max({cpu_feed:.2f}, {cpu_model:.2f} + {gpu_t4:.2f}) s, two workers twice as often: about "
        f"{per_run_2gpu:.1f} s per run, {a.kaggle_runs * per_run_2gpu / 60:.0f} min for {a.kaggle_runs} runs, if "
        f"Kaggle's CPU cores are as fast as these and there are at least 4 (2 prefetch + 2 model threads); "
        f"reading and preprocessing bound it unless the T4 speed-up is below "
        f"{gpu_here / max(1e-9, cpu_feed - cpu_model):.1f} x."
    )
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_pipeline.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine(with_pace=True)}\n- model: `{weights}` run by {backend} on the CPU (one worker); "
        f"{a.n_runs} simulated medium runs {tuple(a.shape)}, seed {a.seed}",
        "**Serial vs overlapped** (the same runs; seconds per run, mean; `model_wait_share`: the model's time spent "
        "waiting for data):\n\n" + fmt(table, "{:.2f}"),
        "**Model stage of one run, split** (Ultralytics' own timings, seconds): "
        + ", ".join(f"{k} {v:.2f}" for k, v in split.items()),
        estimate,
    ])
    print(text)
    if not a.no_write:
        append_result(RESULTS, "Pipeline benchmark results", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
