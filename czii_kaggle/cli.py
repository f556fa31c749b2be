"""``czii-kaggle`` (also ``python -m czii_kaggle``): thin wrappers over library functions.

Every subcommand parses its arguments and calls one function a notebook can call too.
Bad input ends with one clear line naming the file and the problem (exit code 2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .detect import BACKENDS
from .errors import CziiInputError


def _difficulty(text: str) -> str | float:
    """``easy`` / ``medium`` / ``hard`` or a number in 0..1."""
    try:
        return float(text)
    except ValueError:
        return text


def _cmd_simulate(a) -> None:
    from .simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(
        a.out, n_train=a.n_train, n_test=a.n_test, config=SimConfig(shape_vox=tuple(a.shape), difficulty=_difficulty(a.difficulty)),
        seed=a.seed, real_train_layouts=a.real_layouts,
    )
    print(f"data root:     {ds.root}\ntest solution: {ds.solution_csv}")
    print(f"train runs:    {', '.join(ds.train_runs) or '-'}\ntest runs:     {', '.join(ds.test_runs) or '-'}")


def _cmd_score(a) -> None:
    from . import metric, submission

    solution = submission.read_solution(a.solution)
    sub = submission.validate_submission(a.submission)
    print(metric.score_table(solution, sub).to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"score: {metric.score(solution, sub):.4f}")


def _cmd_build_dataset(a) -> None:
    from .dataset import DatasetConfig, build_dataset

    cfg = DatasetConfig(slice_step=a.slice_step, tile_vox=a.tile or None, seed=a.seed)
    print(build_dataset(a.data, a.out, val_runs=a.val_runs, runs=a.runs, config=cfg))


def _cmd_train(a) -> None:
    from .train import TrainConfig, train

    cfg = TrainConfig(model=a.model, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, seed=a.seed, device=a.device)
    print(train(a.data_yaml, a.out, cfg))


def _cmd_predict(a) -> None:
    from .detectors import parse_detectors
    from .predict import DEFAULT_BUNDLE, load_bundle, predict_runs, scored_only, with_slice_step, with_tta
    from .submission import write_submission

    bundle_dir = DEFAULT_BUNDLE if a.weights is None else (a.weights if a.weights.is_dir() else None)
    if bundle_dir is not None:
        names = parse_detectors(a.detectors, bundle_dir)
        if names != ["yolo"]:
            return _predict_detectors(a, bundle_dir, names)
    elif a.detectors not in (None, "yolo"):
        raise CziiInputError(a.weights, "--detectors other than yolo needs a bundle folder as --weights")
    bundle = load_bundle(a.weights)
    if a.slice_step:
        bundle = with_slice_step(bundle, a.slice_step)
    if a.tta_views:
        bundle = with_tta(bundle, a.tta_views)
    pred = predict_runs(a.data, a.split, runs=a.runs, bundle=bundle, backend=a.backend)
    sub = write_submission(scored_only(pred.picks), a.out)
    if a.detections_out:
        pred.detections.to_csv(a.detections_out, index=False)
    print(pred.report.drop(columns="error").to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for _, row in pred.report[pred.report["status"] != "ok"].iterrows():
        print(f"FAILED {row['experiment']}: {row['error']}", file=sys.stderr)
    print(f"wrote {len(sub)} picks of {int((pred.report['status'] == 'ok').sum())}/{len(pred.report)} runs to {a.out}")


def _predict_detectors(a, bundle_dir: Path, names: list[str]) -> None:
    """``predict`` with the heatmap detector or an ensemble (:func:`czii_kaggle.detectors.predict_detectors`)."""
    from .detectors import predict_detectors
    from .predict import scored_only
    from .submission import write_submission

    pred = predict_detectors(a.data, a.split, runs=a.runs, bundle_dir=bundle_dir, detectors=names, backend=a.backend)
    sub = write_submission(scored_only(pred.picks), a.out)
    print(pred.report.drop(columns="error").to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for _, row in pred.report[pred.report["status"] != "ok"].iterrows():
        print(f"FAILED {row['experiment']} ({row['detector']}): {row['error']}", file=sys.stderr)
    print(f"wrote {len(sub)} picks ({'+'.join(names)}) to {a.out}")


def _cmd_tune_ensemble(a) -> None:
    from .detectors import tune_ensemble

    tables = tune_ensemble([(r, runs or []) for r, runs in _sources(a.data)], a.weights,
                           default=a.default.split(",") if a.default else None, backend=a.backend,
                           cache={"yolo": a.cache_yolo} if a.cache_yolo else None)
    for name, table in tables.items():
        print(f"{name}:\n{table.to_string(index=False, float_format=lambda v: f'{v:.3f}')}")


def _cmd_tune(a) -> None:
    from .predict import tune_bundle

    table = tune_bundle(a.data, a.runs, a.weights, tta_views=a.tta_views, backend=a.backend)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _cmd_export_onnx(a) -> None:
    from .predict import DEFAULT_BUNDLE, export_bundle_onnx

    if a.detector == "heatmap":
        from .heatmap import export_heatmap_onnx

        print(export_heatmap_onnx(a.weights or DEFAULT_BUNDLE))
        return
    print(export_bundle_onnx(a.weights, imgsz=a.imgsz))


def _sources(items: list[str]) -> list[tuple[Path, list[str] | None]]:
    """``ROOT`` or ``ROOT:RUN,RUN`` -> ``(root, runs or None)``."""
    out = []
    for item in items:
        root, _, runs = item.partition(":")
        out.append((Path(root), runs.split(",") if runs else None))
    return out


def _cmd_train_heatmap(a) -> None:
    from .heatmap import HeatmapConfig
    from .heatmap_train import HeatmapTrainConfig, train_heatmap

    train = HeatmapTrainConfig(patch_vox=tuple(a.patch), batch=a.batch, steps=a.steps, lr=a.lr, seed=a.seed)
    cmd = "czii-kaggle " + " ".join(sys.argv[1:])
    print(train_heatmap(_sources(a.data), a.out, HeatmapConfig(), train, init=a.init, command=cmd))


def _cmd_tune_heatmap(a) -> None:
    from .heatmap_train import tune_heatmap

    table = tune_heatmap([(r, runs or []) for r, runs in _sources(a.data)], a.weights, backend=a.backend)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _cmd_show(a) -> None:
    from .viz import save_run_figure

    print(save_run_figure(a.data, a.run, a.out, split=a.split))


def _cmd_demo(a) -> None:
    from .demo import run_demo

    run_demo(a.out, n_test=a.n_test, difficulty=_difficulty(a.difficulty), seed=a.seed, weights=a.weights)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="czii-kaggle", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write a simulated dataset in the Kaggle layout")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--n-train", type=int, default=4)
    s.add_argument("--n-test", type=int, default=2)
    s.add_argument("--shape", type=int, nargs=3, default=(184, 630, 630), metavar=("Z", "Y", "X"))
    s.add_argument("--difficulty", default="medium", help="easy, medium, hard or a number in 0..1")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--real-layouts", action="store_true", help="training runs use the real runs' pick layouts")
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("score", help="score a submission against a solution with the competition metric")
    s.add_argument("--solution", required=True, type=Path)
    s.add_argument("--submission", required=True, type=Path)
    s.set_defaults(func=_cmd_score)

    s = sub.add_parser("build-dataset", help="write a YOLO slice dataset from training runs")
    s.add_argument("--data", required=True, type=Path, help="Kaggle-layout data root")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--runs", nargs="*")
    s.add_argument("--val-runs", nargs="*")
    s.add_argument("--slice-step", type=int, default=2)
    s.add_argument("--tile", type=int, default=320, help="crop side in voxels (0: whole slices)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_build_dataset)

    s = sub.add_parser("train", help="train a detector on a slice dataset")
    s.add_argument("--data-yaml", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path, help="bundle folder (model.pt + czii_config.json)")
    s.add_argument("--model", default=str(Path(__file__).parent / "model_cfg" / "yolo11p-czii.yaml"))
    s.add_argument("--epochs", type=int, default=30)
    s.add_argument("--imgsz", type=int, default=320)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("predict", help="predict runs and write submission.csv")
    s.add_argument("--data", required=True, type=Path, help="Kaggle-layout data root")
    s.add_argument("--split", default="test", choices=("train", "test"))
    s.add_argument("--runs", nargs="*")
    s.add_argument("--out", type=Path, default=Path("submission.csv"))
    s.add_argument("--weights", type=Path, help="bundle folder, .pt or .onnx (default: the shipped model)")
    s.add_argument("--detections-out", type=Path, help="also save the raw per-slice detections (CSV)")
    s.add_argument("--slice-step", type=int, help="run on every n-th slice (faster, lower recall)")
    s.add_argument("--tta-views", type=int, choices=(1, 2, 3, 4),
                   help="flipped views per slice (default: the bundle's, as its thresholds were tuned)")
    s.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="torch, onnx (ONNX Runtime, CPU) or auto: onnx on a CPU-only machine when the bundle has it")
    s.add_argument("--detectors", help="yolo, heatmap or yolo,heatmap (the ensemble); default: what the bundle ships")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("tune", help="tune per-class thresholds on training runs; saved beside the weights")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--runs", nargs="+", required=True, help="validation runs (train split, with picks)")
    s.add_argument("--weights", required=True, type=Path, help="bundle folder")
    s.add_argument("--tta-views", type=int, choices=(1, 2, 3, 4),
                   help="tune for this many flipped views per slice (saved in the bundle; default: its own)")
    s.add_argument("--backend", choices=BACKENDS, default="auto", help="as for predict")
    s.set_defaults(func=_cmd_tune)

    s = sub.add_parser("export-onnx", help="add an ONNX Runtime copy of a bundle's model.pt (faster CPU inference)")
    s.add_argument("--weights", type=Path, help="bundle folder (default: the shipped model)")
    s.add_argument("--imgsz", type=int, help="largest image side (default: the bundle's detect.max_imgsz)")
    s.add_argument("--detector", choices=("yolo", "heatmap"), default="yolo", help="which weights to export")
    s.set_defaults(func=_cmd_export_onnx)

    s = sub.add_parser("train-heatmap", help="train the 3D heatmap detector from picks (resumes from OUT/checkpoint.pt)")
    s.add_argument("--data", required=True, nargs="+", help="Kaggle-layout roots, ROOT or ROOT:RUN,RUN (train split)")
    s.add_argument("--out", required=True, type=Path, help="heatmap bundle folder (heatmap.pt + heatmap.json)")
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--patch", type=int, nargs=3, default=(48, 96, 96), metavar=("Z", "Y", "X"))
    s.add_argument("--lr", type=float, default=3e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--init", type=Path, help="heatmap.pt to start from")
    s.set_defaults(func=_cmd_train_heatmap)

    s = sub.add_parser("tune-heatmap", help="tune the heatmap detector's per-class thresholds on runs with picks")
    s.add_argument("--data", required=True, nargs="+", help="ROOT:RUN,RUN (train split, with picks)")
    s.add_argument("--weights", required=True, type=Path, help="heatmap bundle folder")
    s.add_argument("--backend", choices=BACKENDS, default="auto")
    s.set_defaults(func=_cmd_tune_heatmap)

    s = sub.add_parser("tune-ensemble", help="calibrate YOLO + heatmap and tune the ensemble's thresholds; saves ensemble.json")
    s.add_argument("--data", required=True, nargs="+", help="ROOT:RUN,RUN (train split, with picks)")
    s.add_argument("--weights", required=True, type=Path, help="bundle folder holding both detectors")
    s.add_argument("--default", help="detectors predict runs by default with this bundle, e.g. yolo,heatmap")
    s.add_argument("--cache-yolo", type=Path, help="keep / reuse the YOLO candidates of each run in this folder")
    s.add_argument("--backend", choices=BACKENDS, default="auto")
    s.set_defaults(func=_cmd_tune_ensemble)

    s = sub.add_parser("show", help="save a figure of a run's tomogram with its picks")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--run", required=True)
    s.add_argument("--split", default="train", choices=("train", "test"))
    s.add_argument("--out", type=Path, default=Path("run.png"))
    s.set_defaults(func=_cmd_show)

    s = sub.add_parser("demo", help="the main job: simulate a test set, predict it with the shipped model, score")
    s.add_argument("--out", type=Path, default=Path("out/demo"))
    s.add_argument("--n-test", type=int, default=2)
    s.add_argument("--difficulty", default="medium")
    s.add_argument("--seed", type=int, default=2024)
    s.add_argument("--weights", type=Path)
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CziiInputError as exc:
        print(f"czii-kaggle: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
