"""The main job on the embedded default: simulate a test set, predict it, score it, draw it."""
from __future__ import annotations

import time
from pathlib import Path

from . import omezarr, layout, metric, submission
from .outputs import check_writable
from .predict import scored_only


def run_demo(
    out_dir: str | Path = "out/demo",
    n_test: int = 2,
    difficulty: str | float = "medium",
    seed: int = 2024,
    weights: str | Path | None = None,
    shape_vox: tuple[int, int, int] = (184, 630, 630),
    verbose: bool = True,
) -> dict:
    """Simulate ``n_test`` test tomograms, predict them with the shipped (or given) bundle's default
    detectors (the shipped one: the YOLO + heatmap ensemble),
    write ``submission.csv``, score it against the simulated truth and save a picture
    of the detections over the busiest slice of the first run.

    Returns a dict with ``score``, ``table`` (per-type metric table), ``report`` (per run),
    ``submission`` and ``figure`` paths.
    """
    from .simulate import SimConfig, simulate_dataset
    from .viz import busiest_slice, plot_detections, save_figure

    say = print if verbose else (lambda *a, **k: None)
    out_dir = check_writable(Path(out_dir), folder=True)
    t0 = time.perf_counter()
    ds = simulate_dataset(out_dir / "data", n_train=0, n_test=n_test,
                          config=SimConfig(shape_vox=tuple(shape_vox), difficulty=difficulty), seed=seed,
                          overwrite=True)  # the demo's own folder: a second demo replaces the first
    say(f"[demo] simulated {n_test} test tomogram(s) {tuple(shape_vox)} in {time.perf_counter() - t0:.1f} s -> {ds.root}")
    from .workflow import predict_bundle

    pred = predict_bundle(ds.root, "test", bundle=weights, progress=verbose)  # the bundle's default detectors
    sub_path = out_dir / "submission.csv"
    sub = submission.write_submission(scored_only(pred.picks), sub_path)
    truth = submission.read_solution(ds.solution_csv)
    table = metric.score_table(truth, sub)
    score = metric.score(truth, sub)
    say(pred.report.drop(columns="error").to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    say(table.to_string(float_format=lambda v: f"{v:.3f}"))
    say(f"[demo] wrote {sub_path} ({len(sub)} picks); score against the simulated truth: {score:.4f}")

    run = ds.test_runs[0]
    volume, voxel_size_A = omezarr.read_tomogram(layout.tomogram_path(ds.root, "test", run))
    run_truth = truth[truth["experiment"] == run]
    z_index = busiest_slice(run_truth, voxel_size_A, volume.shape[0])
    fig = plot_detections(volume, voxel_size_A, z_index, truth=run_truth, predicted=sub[sub["experiment"] == run])
    fig_path = save_figure(fig, out_dir / "detections.png")
    say(f"[demo] picture of slice z={z_index} of {run}: {fig_path}  (total {time.perf_counter() - t0:.1f} s)")
    return {"score": score, "table": table, "report": pred.report, "submission": sub_path, "figure": fig_path}
