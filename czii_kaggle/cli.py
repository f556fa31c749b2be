"""``czii-kaggle`` (also ``python -m czii_kaggle``): thin wrappers over library functions.

Every subcommand parses its arguments and calls one function a notebook can call too.
Bad input ends with one clear line naming the file and the problem (exit code 2); so does
a bad argument. ``predict`` exits 1 when a run failed or gave no picks (the other runs'
submission written). Ctrl-C stops with one line saying what was finished (exit code 130).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
from pathlib import Path

from . import outputs
from .detect import BACKENDS
from .preprocess import SPECTRAL
from .detectors.heatmap import PRECISIONS
from .errors import CziiInputError

#: Exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit code 2), like bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        return value

    return parse


_count = _int_at_least(0)
_positive = _int_at_least(1)


def _float_in(low: float, high: float | None = None):
    """A parser of numbers ``>= low`` (and ``<= high`` when given); NaN is refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if high is None and not value >= low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, not {text}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low:g}..{high:g}, not {text}")
        return value

    return parse


_non_negative = _float_in(0.0)
_fraction = _float_in(0.0, 1.0)


def _difficulty(text: str) -> str | float:
    """``easy`` / ``medium`` / ``hard`` or a number in 0..1."""
    try:
        return float(text)
    except ValueError:
        return text


def _count_scale(text: str) -> tuple[str, float]:
    """``beta-galactosidase=3`` -> ``("beta-galactosidase", 3.0)``: a particle type's count factor."""
    from .particles import NAMES

    name, _, value = text.partition("=")
    try:
        factor = float(value)
    except ValueError:
        factor = -1.0
    if name not in NAMES or not factor >= 0:
        raise argparse.ArgumentTypeError(f"--count-scale takes TYPE=FACTOR (a type of {', '.join(NAMES)}; "
                                         f"factor >= 0), not {text!r}")
    return name, factor


def _look(text: str):
    """``classic``, ``random`` or a JSON object of look fields (``'{"filter": "median"}'``)."""
    import json

    if text in ("classic", "random"):
        return text
    try:
        spec = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"--look must be classic, random or a JSON object, not {text!r}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError(f"--look JSON must be an object of look fields, not {text!r}")
    return spec


def _sim_config(command: str, difficulty: str, shape_vox: tuple[int, int, int] | None = None, look="classic"):
    """The simulator's config from the user's ``--difficulty``, ``--shape`` and ``--look`` (which it checks)."""
    from .simulate import SimConfig

    shape = {} if shape_vox is None else {"shape_vox": tuple(shape_vox)}
    try:
        return SimConfig(difficulty=_difficulty(difficulty), look=look, **shape)
    except ValueError as exc:
        raise CziiInputError(None, f"{command}: {exc}") from None


def _cmd_simulate(a) -> None:
    from .simulate import simulate_dataset

    if a.n_train + a.n_test < 1:
        raise CziiInputError(None, "simulate: --n-train and --n-test are both 0: nothing to simulate")
    config = _sim_config("simulate", a.difficulty, a.shape, a.look)
    ds = simulate_dataset(a.out, n_train=a.n_train, n_test=a.n_test, config=config, seed=a.seed,
                          real_train_layouts=a.real_layouts is not None, real_root=a.real_layouts,
                          count_scale=dict(a.count_scale or ()), overwrite=a.overwrite)
    print(f"data root:     {ds.root}\ntest solution: {ds.solution_csv}")
    print(f"train runs:    {', '.join(ds.train_runs) or '-'}\ntest runs:     {', '.join(ds.test_runs) or '-'}")


def _cmd_score(a) -> None:
    from . import metric, submission

    solution = submission.read_solution(a.solution)
    sub = submission.validate_submission(a.submission)
    print(metric.score_table(solution, sub).to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"score: {metric.score(solution, sub):.4f}")


def _cmd_build_dataset(a) -> None:
    from dataclasses import replace

    from .dataset import build_dataset
    from .recipe import load_recipe

    base = load_recipe().dataset  # the shipped model's dataset settings, the options given replacing them
    cfg = replace(base, slice_step=a.slice_step, tile_vox=a.tile or None, seed=a.seed,
                  preprocess=replace(base.preprocess, slice_offset=a.slice_offset))
    if a.copick:  # lay the project's runs and picks out as a Kaggle-layout root (tomograms linked), for this build
        import tempfile

        from .copick_project import open_project, training_root

        with tempfile.TemporaryDirectory(prefix="czii-copick-root-") as tmp:
            data = training_root(open_project(a.copick), Path(tmp) / "root", a.runs, a.user_id, a.session_id,
                                 a.voxel_spacing, cfg.tomo_type)
            print(build_dataset(data, a.out, val_runs=a.val_runs, runs=a.runs, config=cfg, overwrite=a.overwrite))
    elif a.data is None:
        raise CziiInputError(None, "give --data (a Kaggle-layout root) or --copick (a copick config)")
    else:
        print(build_dataset(a.data, a.out, val_runs=a.val_runs, runs=a.runs, config=cfg, overwrite=a.overwrite))


def _cmd_train(a) -> None:
    from .recipe import load_recipe
    from .train import train

    cfg = load_recipe().train_config(model=a.model, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, seed=a.seed,
                                     device=a.device)
    print(train(a.data_yaml, a.out, cfg))


def _cmd_predict_beyond(a, bundle, detectors: list[str] | None = None) -> int:
    """``predict`` from a copick project, on a Dask cluster, or to STAR files (:mod:`czii_kaggle.workflow`);
    ``detectors`` (``bundle`` then a bundle folder): those and their ensemble, in this process or on Dask."""
    from .workflow import (CopickTarget, check_copick_target, check_out, predict_sources, resolve_sources,
                           write_outputs)

    sources = resolve_sources(a.data, a.split, a.copick, a.runs, a.voxel_spacing, a.tomo_type)
    target = CopickTarget(a.user_id, a.session_id, a.overwrite) if a.copick else None
    if target is not None:
        check_copick_target(sources, target)
    out = a.out if a.out is not None or a.copick else Path("submission.csv" if a.format == "csv" else "star")
    check_out(out, a.format)
    options = {"tta_views": a.tta_views, "bn_adapt": a.bn_adapt, "precision": a.precision} if detectors else {}
    pred = predict_sources(sources, bundle, a.backend, a.scheduler, a.workers, a.connect_timeout,
                           detectors=detectors, **options)
    lines = write_outputs(pred, sources, out, a.format, target, a.star_per_run, a.tilt_series_pixel_size)
    if a.detections_out:
        with outputs.atomic_path(a.detections_out) as tmp:
            pred.detections.to_csv(tmp, index=False)
    print(pred.report.drop(columns="error").to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    problems = _print_problems(pred)
    print("\n".join(lines))
    return _exit_code(problems, pred, out)


def _print_problems(pred):
    """One line per run that failed or gave no picks (stderr); returns those runs' table."""
    from .predict import run_problems

    problems = run_problems(pred.report)
    for row in problems.itertuples(index=False):
        print(f"{row.experiment}: {row.problem}", file=sys.stderr)
    return problems


def _exit_code(problems, pred, out) -> int:
    """0 when every run gave picks; else a summary line and 1 (the other runs' output is written)."""
    if not len(problems):
        return 0
    print(f"czii-kaggle: {len(problems)} of {len(pred.report)} runs failed or gave no picks "
          f"({', '.join(problems['experiment'])}; lines above say why); {out} holds the other runs",
          file=sys.stderr)
    return 1


def _cmd_predict(a) -> int:
    from .bundle import bundle_files, check_views, load_bundle, weights_detectors, with_slice_step, with_tta
    from .predict import check_outputs, predict_runs, stage_line, write_prediction

    bundle_dir, names = weights_detectors(a.weights, a.detectors)
    check_views(bundle_dir if bundle_dir is not None else a.weights, names, a.tta_views)
    if a.bn_adapt is not None and names == ["yolo"]:
        raise CziiInputError(bundle_dir, "--bn-adapt adapts the heatmap detectors, and yolo alone runs none: "
                                         "pass --detectors heatmap or yolo,heatmap")
    if a.precision is not None and names == ["yolo"]:
        raise CziiInputError(bundle_dir, "--precision sets the heatmap networks', and yolo alone runs none: "
                                         "pass --detectors heatmap or yolo,heatmap")
    if names != ["yolo"]:
        beyond = [flag for flag, given in (("--copick", a.copick), ("--format star", a.format != "csv"),
                                           ("--scheduler", a.scheduler), ("--workers", a.workers)) if given]
        yolo_only = [flag for flag, given in (("--detections-out", a.detections_out),
                                              ("--slice-step", a.slice_step)) if given]
        if yolo_only and a.detectors is not None:
            raise CziiInputError(bundle_dir, f"{', '.join(yolo_only)} run the YOLO detector alone, not "
                                             f"{'+'.join(names)}: pass --detectors yolo or leave them out")
        if beyond and not yolo_only:  # the named or default detectors into copick, STAR, on Dask
            return _cmd_predict_beyond(a, bundle_dir, names)
        if not yolo_only:
            return _predict_detectors(a, bundle_dir, names)
        print(f"detectors: yolo ({', '.join(yolo_only)}: the YOLO detector alone, not the bundle's default "
              f"{'+'.join(names)})")
    bundle = load_bundle(a.weights)
    if a.slice_step:
        bundle = with_slice_step(bundle, a.slice_step)
    if a.tta_views:
        bundle = with_tta(bundle, a.tta_views)
    if a.copick or a.scheduler or a.workers or a.format != "csv" or a.data is None:
        return _cmd_predict_beyond(a, bundle)
    a.out = a.out or Path("submission.csv")
    for out in (a.out, a.detections_out):
        if out is not None:
            outputs.check_writable(out)  # before the runs are predicted, not after
    check_outputs([a.out, a.detections_out], [a.data, *bundle_files(bundle)])  # before the long part
    pred = predict_runs(a.data, a.split, runs=a.runs, bundle=bundle, backend=a.backend, tomo_type=a.tomo_type)
    print(pred.report.drop(columns="error").to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(stage_line(pred))
    problems = _print_problems(pred)
    sub = write_prediction(pred, a.out, a.detections_out)
    n_ok = int((pred.report["status"] == "ok").sum())
    print(f"wrote {len(sub)} picks of {n_ok}/{len(pred.report)} runs to {a.out}")
    return _exit_code(problems, pred, a.out)


def _predict_detectors(a, bundle_dir: Path, names: list[str]) -> int:
    """``predict`` with the heatmap detector or an ensemble (:func:`czii_kaggle.predict.predict_detectors`)."""
    from .predict import check_outputs, predict_detectors, scored_only
    from .submission import write_submission

    a.out = a.out or Path("submission.csv")
    outputs.check_writable(a.out)  # before the runs are predicted, not after
    check_outputs([a.out], [a.data, bundle_dir])
    pred = predict_detectors(a.data, a.split, runs=a.runs, bundle_dir=bundle_dir, detectors=names, backend=a.backend,
                              tta_views=a.tta_views, tomo_type=a.tomo_type, bn_adapt=a.bn_adapt,
                              precision=a.precision)
    print(pred.report.drop(columns="error").to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    failed = pred.report[pred.report["status"] != "ok"]
    for _, row in failed.iterrows():
        print(f"{row['experiment']} ({row['detector']}): failed: {row['error']}", file=sys.stderr)
    if len(failed) == len(pred.report):
        raise CziiInputError(a.out, "not written: every run failed in every detector (lines above say why)")
    sub = write_submission(scored_only(pred.picks), a.out)
    print(f"wrote {len(sub)} picks ({'+'.join(names)}) to {a.out}")
    if len(failed):
        print(f"czii-kaggle: {failed['experiment'].nunique()} run(s) failed in a detector; {a.out} holds "
              "what the other detector found for them", file=sys.stderr)
        return 1
    return 0


def _cmd_tune_ensemble(a) -> None:
    from .tune import tune_ensemble

    tables = tune_ensemble(_train_sources(a.data), a.weights,
                           default=a.default.split(",") if a.default else None, backend=a.backend,
                           cache={"yolo": a.cache_yolo} if a.cache_yolo else None, ref_rank=_ref_rank(a),
                           detectors=a.detectors.split(","),
                           own=None if a.own is None else [] if a.own == "none" else a.own.split(","))
    for name, table in tables.items():
        print(f"{name}:\n{table.to_string(index=False, float_format=lambda v: f'{v:.3f}')}")


def _ref_rank(a) -> dict[str, int] | None:
    """``--relative FACTOR`` as each type's ``ref_rank`` (the recipe's counts); None: keep the bundle's."""
    from .recipe import load_recipe

    return None if a.relative is None else load_recipe().tuning.ref_rank(a.relative)


def _cmd_set_floor(a) -> None:
    from .bundle import set_count_floor
    from .recipe import load_recipe

    min_keep = load_recipe().tuning.min_keep(a.factor)
    for path in set_count_floor(a.weights, min_keep):
        print(f"wrote {path}")
    print("min_keep per run: " + ", ".join(f"{n} {k}" for n, k in min_keep.items()))


def _cmd_tune(a) -> None:
    from .tune import tune_bundle

    table = tune_bundle(a.data, a.runs, a.weights, tta_views=a.tta_views, backend=a.backend, ref_rank=_ref_rank(a))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _cmd_export_onnx(a) -> None:
    from .bundle import export_bundle_onnx, export_heatmap_onnx, load_bundle, load_heatmap_bundle
    from .detectors import detector_kind

    if a.detector != "yolo":
        if detector_kind(a.detector) != "heatmap":
            raise CziiInputError(a.weights, f"--detector {a.detector!r}: yolo, heatmap or heatmap_<tag>")
        onnx = export_heatmap_onnx(a.weights, a.detector)
        print(onnx)
        if load_heatmap_bundle(a.weights, a.detector).onnx != onnx:
            print(f"the bundle's ONNX record stays with another weights file: {onnx} is not used by the bundle")
        return
    onnx = export_bundle_onnx(a.weights, imgsz=a.imgsz)
    print(onnx)
    if load_bundle(a.weights).onnx != onnx:
        print(f"the bundle's ONNX record stays with another weights file: run this copy with --weights {onnx}")


def _train_sources(items: list[str]) -> list[tuple[Path, list[str]]]:
    """``ROOT`` or ``ROOT:RUN,RUN`` -> ``(root, runs)``, checked against the train split (``ROOT``: its every run)."""
    from .predict import select_runs

    return [(root, select_runs(root, "train", runs)) for root, runs in _sources(items)]


def _sources(items: list[str]) -> list[tuple[Path, list[str] | None]]:
    """``ROOT`` or ``ROOT:RUN,RUN`` -> ``(root, runs or None)``."""
    out = []
    for item in items:
        root, _, runs = item.partition(":")
        out.append((Path(root), runs.split(",") if runs else None))
    return out


def _cmd_train_heatmap(a) -> None:
    from .train_heatmap import HeatmapTrainConfig, train_heatmap, training_start

    train = HeatmapTrainConfig(patch_vox=tuple(a.patch), batch=a.batch, steps=a.steps, lr=a.lr, seed=a.seed,
                               threads=a.threads, look_augment=a.look_augment,
                               particle_augment=a.particle_augment, look_respectral=a.look_respectral,
                               hard_negative=a.hard_negative, device=a.device)
    cmd = "czii-kaggle " + " ".join(sys.argv[1:])
    config, init = training_start(a.init, a.channels)
    if a.spectral is not None:
        config = dataclasses.replace(config, spectral=a.spectral)
    if a.level is not None and a.level != config.level:
        config = config.at_level(a.level)
    predicted = None
    if a.hard_negatives:
        import pandas as pd

        from .submission import read_solution
        predicted = pd.concat([read_solution(f) for f in a.hard_negatives], ignore_index=True)
    print(train_heatmap(_sources(a.data), a.out, config, train, init=init, command=cmd, predicted=predicted))


def _cmd_recalibrate_heatmap(a) -> None:
    from .train_heatmap import recalibrate_heatmap

    out = recalibrate_heatmap(a.weights, _sources(a.data), a.out, a.bn_adapt, "czii-kaggle " + " ".join(sys.argv[1:]))
    print(f"{out} (thresholds still those of {a.weights}: tune it, e.g. czii-kaggle tune-ensemble --weights {out})")


def _cmd_add_heatmap(a) -> None:
    from .bundle import add_heatmap

    for path in add_heatmap(a.source, a.weights, a.name):
        print(f"wrote {path}")
    print(f"fit an ensemble with it: czii-kaggle tune-ensemble --weights {a.weights} --detectors ...,{a.name}")


def _cmd_bundle(a) -> None:
    import pandas as pd

    from .bundle import DEFAULT_BUNDLE, describe_bundle

    detectors, ensembles = describe_bundle(a.weights)
    print(f"bundle {a.weights or DEFAULT_BUNDLE}")
    print(pd.DataFrame(detectors).to_string(index=False))
    print(pd.DataFrame(ensembles).to_string(index=False) if ensembles else "no ensemble fitted (ensemble.json absent)")


def _cmd_tune_heatmap(a) -> None:
    from .tune import tune_heatmap

    table = tune_heatmap(_train_sources(a.data), a.weights, backend=a.backend,
                         ref_rank=_ref_rank(a), name=a.name)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _cmd_show(a) -> None:
    from .viz import save_run_figure

    print(save_run_figure(a.data, a.run, a.out, split=a.split))


def _cmd_signal(a) -> None:
    from .stats import look_signal

    table, report = look_signal(_sources(a.data), level=a.level)
    for _, r in report[report["status"] != "ok"].iterrows():
        print(f"skipped {r.root}:{r.experiment}: {r.error}", file=sys.stderr)
    print(f"matched-filter SNR of each type's own class average over {int((report['status'] == 'ok').sum())} "
          f"runs (zarr level {a.level}; read it against the simulated looks' F-beta at each SNR: docs/EXPERIMENTS.md, "
          "'Score against signal')")
    print(table.to_string(float_format=lambda v: f"{v:.1f}"))
    if a.out:
        from .outputs import atomic_path

        with atomic_path(a.out) as tmp:
            table.reset_index().to_csv(tmp, index=False)
        print(f"wrote {a.out}")


def _cmd_import_mrc(a) -> int:
    from .mrc import import_mrc

    if a.star:
        from .star import check_star_names

        if a.split != "train":
            raise CziiInputError(None, "import-mrc: --star picks go with --split train (training runs)")
        check_star_names(a.star)  # before any tomogram is written
    report = import_mrc(a.files, a.out, split=a.split, voxel_size_A=a.voxel_size, tomo_type=a.tomo_type)
    for _, r in report.iterrows():
        if r.status == "ok":
            print(f"{r.experiment}: {r.shape} voxels of {r.voxel_size_A:.3f} A <- {r.source}")
        else:
            print(f"failed {r.experiment}: {r.error}", file=sys.stderr)
    ok = int((report["status"] == "ok").sum())
    if not ok:
        raise CziiInputError(Path(a.out), f"no tomogram was written: all {len(report)} file(s) failed")
    print(f"wrote {ok} run(s) under {a.out}; predict them with: czii-kaggle predict --data {a.out} --split {a.split}")
    if a.star:
        from .star import import_picks

        picks = import_picks(a.out, a.star)
        counts = picks.groupby("particle_type").size()
        print(f"picks of {picks['experiment'].nunique()} run(s): " + ", ".join(f"{n} {t}" for t, n in counts.items())
              + f"; train on them with: czii-kaggle build-dataset --data {a.out} --out DATASET")
    return 0 if ok == len(report) else 1


def _cmd_demo(a) -> None:
    from .demo import run_demo

    _sim_config("demo", a.difficulty)  # a bad --difficulty stops here, not after the model loads
    run_demo(a.out, n_test=a.n_test, difficulty=_difficulty(a.difficulty), seed=a.seed, weights=a.weights)


def _relative_arg(s) -> None:
    s.add_argument("--relative", type=_non_negative, metavar="FACTOR",
                   help="tune on scores relative to each run's own k-th best of a type, k = FACTOR x the real runs' "
                        "mean picks (the recipe's: 1); 0: absolute scores; default: as the bundle was tuned")


def build_parser() -> argparse.ArgumentParser:
    from .recipe import MODEL_YAML_DIR, recipe_doc

    recipe = recipe_doc()  # the shipped model's settings are the defaults of build-dataset and train
    dataset, training = recipe["dataset"], recipe["train"]
    p = _Parser(prog="czii-kaggle", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write a simulated dataset in the Kaggle layout")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--n-train", type=_count, default=4)
    s.add_argument("--n-test", type=_count, default=2)
    s.add_argument("--shape", type=_positive, nargs=3, default=(184, 630, 630), metavar=("Z", "Y", "X"))
    s.add_argument("--difficulty", default="medium", help="easy, medium, hard or a number in 0..1")
    s.add_argument("--seed", type=_count, default=0)
    s.add_argument("--real-layouts", type=Path, metavar="ROOT",
                   help="training runs use the pick layouts of the real runs under this Kaggle-layout root "
                        "(ROOT/train/overlay: the competition data, or the real picks kept beside a checkout)")
    s.add_argument("--look", type=_look, default="classic",
                   help="classic (fixed rendering), random (each run draws its look) or a JSON object fixing or "
                        "restricting look fields, e.g. '{\"filter\": \"median\"}' (see czii_kaggle.simulate.look)")
    s.add_argument("--count-scale", type=_count_scale, nargs="+", metavar="TYPE=FACTOR",
                   help="multiply a type's mean count in random layouts, e.g. beta-galactosidase=3 thyroglobulin=1.5")
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (refused otherwise)")
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("score", help="score a submission against a solution with the competition metric")
    s.add_argument("--solution", required=True, type=Path)
    s.add_argument("--submission", required=True, type=Path)
    s.set_defaults(func=_cmd_score)

    s = sub.add_parser("build-dataset", help="write a YOLO slice dataset from training runs")
    s.add_argument("--data", type=Path, help="Kaggle-layout data root (or --copick)")
    s.add_argument("--copick", type=Path, metavar="CONFIG.json", help="train on the picks of a copick project")
    s.add_argument("--user-id", help="with --copick: the picks' user id (default: any)")
    s.add_argument("--session-id", help="with --copick: the picks' session id (default: any)")
    s.add_argument("--voxel-spacing", type=float, default=10.0, help="with --copick: tomogram voxel spacing (A)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--runs", nargs="*")
    s.add_argument("--val-runs", nargs="*")
    s.add_argument("--slice-step", type=_positive, default=dataset["slice_step"],
                   help="every n-th slice (default: the shipped recipe's)")
    s.add_argument("--slice-offset", type=_count, default=dataset["preprocess"]["slice_offset"],
                   help="2.5D offset k: an image stacks slices z-k, z, z+k; training records it in the bundle "
                        "and inference reuses it (default: the shipped recipe's)")
    s.add_argument("--tile", type=_count, default=dataset["tile_vox"] or 0,
                   help="crop side in voxels (0: whole slices)")
    s.add_argument("--seed", type=_count, default=dataset["seed"])
    s.add_argument("--overwrite", action="store_true",
                   help="replace a previous dataset in --out (nothing else is ever deleted)")
    s.set_defaults(func=_cmd_build_dataset)

    s = sub.add_parser("train", help="train a detector on a slice dataset")
    s.add_argument("--data-yaml", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path, help="bundle folder (model.pt + czii_config.json)")
    s.add_argument("--model", default=str(MODEL_YAML_DIR / recipe["model_yaml"]),
                   help="model yaml (from scratch) or a .pt to fine-tune (default: the project's pico YOLO11 yaml)")
    s.add_argument("--epochs", type=_positive, default=training["epochs"])
    s.add_argument("--imgsz", type=_positive, default=training["imgsz"])
    s.add_argument("--batch", type=_positive, default=training["batch"])
    s.add_argument("--seed", type=_count, default=training["seed"])
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("predict", help="predict runs and write submission.csv")
    s.add_argument("--data", type=Path, help="Kaggle-layout data root (or --copick)")
    s.add_argument("--split", default="test", choices=("train", "test"))
    s.add_argument("--runs", nargs="*")
    s.add_argument("--out", type=Path, help="submission.csv (default), or a folder with --format star")
    s.add_argument("--weights", type=Path, help="bundle folder, .pt or .onnx (default: the shipped model)")
    s.add_argument("--detections-out", type=Path, help="also save the raw per-slice detections (CSV)")
    s.add_argument("--slice-step", type=_positive, help="run on every n-th slice (faster, lower recall)")
    s.add_argument("--tta-views", type=int, choices=(1, 2, 3, 4, 8, 16),
                   help="flipped test-time views per slice (YOLO: 1-4) or per 3D window (heatmap: also 8 with x-y "
                        "swaps, 16 also flipped in z); default: the bundle's, as its thresholds were tuned")
    s.add_argument("--bn-adapt", type=_fraction,
                   help="heatmap: weight of each tomogram's own batch-norm statistics, 0..1 (0: off, ONNX Runtime "
                        "allowed); default: the bundle's, as its thresholds were tuned")
    s.add_argument("--precision", choices=PRECISIONS,
                   help="heatmap: float32, or bfloat16 where the device does it natively (else float32); default: "
                        "each network's own (the shipped ones: bfloat16, as measured to score the same)")
    s.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="torch, onnx (ONNX Runtime, CPU) or auto: onnx on a CPU-only machine when the bundle has it")
    g = s.add_argument_group("beyond Kaggle (README: Beyond Kaggle: copick, RELION, Dask)")
    g.add_argument("--copick", type=Path, metavar="CONFIG.json",
                   help="read the tomograms of this copick project and write the picks back into it")
    g.add_argument("--voxel-spacing", type=float, default=10.0, help="copick voxel spacing of the tomograms (A)")
    g.add_argument("--tomo-type", default="denoised", help="tomogram type (denoised, wbp, ...)")
    g.add_argument("--user-id", default="czii-kaggle", help="copick user id of the written picks")
    g.add_argument("--session-id", default="0", help="copick session id of the written picks")
    g.add_argument("--overwrite", action="store_true", help="replace existing copick picks of that user and session")
    g.add_argument("--format", choices=("csv", "star"), default="csv",
                   help="csv: Kaggle submission; star: RELION 5 STAR files (one per particle type) in --out")
    g.add_argument("--star-per-run", action="store_true", help="one STAR file per run and type instead")
    g.add_argument("--tilt-series-pixel-size", type=float,
                   help="also write rlnCoordinateX/Y/Z in tilt-series pixels of this size (A)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler (tcp://host:8786): one task per tomogram")
    g.add_argument("--workers", type=int, help="start a local Dask cluster of this many worker processes")
    g.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for --scheduler")
    s.add_argument("--detectors", help="yolo, heatmap, heatmap_<tag> (a further heatmap network of the bundle) or "
                                       "several joined by commas (their ensemble), e.g. yolo,heatmap; default: what "
                                       "the bundle ships")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("tune", help="tune per-class thresholds on training runs; saved beside the weights")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--runs", nargs="+", required=True, help="validation runs (train split, with picks)")
    s.add_argument("--weights", required=True, type=Path, help="bundle folder")
    s.add_argument("--tta-views", type=int, choices=(1, 2, 3, 4),
                   help="tune for this many flipped views per slice (saved in the bundle; default: its own)")
    s.add_argument("--backend", choices=BACKENDS, default="auto", help="as for predict")
    _relative_arg(s)
    s.set_defaults(func=_cmd_tune)

    s = sub.add_parser("export-onnx", help="add an ONNX Runtime copy of a bundle's model.pt (faster CPU inference)")
    s.add_argument("--weights", type=Path, help="bundle folder (default: the shipped model)")
    s.add_argument("--imgsz", type=_positive, help="largest image side (default: the bundle's detect.max_imgsz)")
    s.add_argument("--detector", default="yolo", help="which weights to export: yolo, heatmap or heatmap_<tag>")
    s.set_defaults(func=_cmd_export_onnx)

    s = sub.add_parser("train-heatmap", help="train the 3D heatmap detector from picks (resumes from OUT/checkpoint.pt)")
    s.add_argument("--data", required=True, nargs="+", help="Kaggle-layout roots, ROOT or ROOT:RUN,RUN (train split)")
    s.add_argument("--out", required=True, type=Path, help="heatmap bundle folder (heatmap.pt + heatmap.json)")
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--patch", type=int, nargs=3, default=(48, 96, 96), metavar=("Z", "Y", "X"))
    s.add_argument("--lr", type=float, default=3e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--init", help="start from this heatmap bundle folder (or its heatmap.pt), with its config "
                                   "(views, window, bn_adapt); 'shipped': the shipped model (fine-tuning)")
    s.add_argument("--channels", type=_positive, nargs=3, metavar=("C0", "C1", "C2"),
                   help="network widths at 1/2, 1/4, 1/8 resolution (default 12 24 32, or --init's); wider than --init's "
                        "network: it is widened without changing its output, then trained")
    s.add_argument("--threads", type=_positive, default=2, help="torch CPU threads")
    s.add_argument("--device", default="auto", help="auto (the first usable GPU, else the CPU), cpu or cuda:N")
    s.add_argument("--look-augment", type=float, default=0.0,
                   help="share of patches given a random look (CTF-like band gain, low-pass, noise); default 0")
    s.add_argument("--particle-augment", type=float, default=0.0,
                   help="share of patches whose particles are drawn anew (each one's contrast, a lumpy inner "
                        "texture at the scale of protein domains); default 0")
    s.add_argument("--look-respectral", action="store_true",
                   help="put each look-augmented patch through the input's spectral step again, as a tomogram "
                        "of that look would be read")
    s.add_argument("--hard-negatives", nargs="+", type=Path, metavar="CSV",
                   help="a detector's picks on the training runs (predict --split train): those on no pick are "
                        "hard negatives")
    s.add_argument("--hard-negative", type=float, default=0.0,
                   help="share of patches centred near a hard negative of their run (needs --hard-negatives); "
                        "default 0")
    s.add_argument("--spectral", choices=SPECTRAL,
                   help="per-tomogram spectral step before the percentile clip, in training and prediction "
                        "(whiten_zxy: flat power over depth and in-plane frequency); default: --init's, else none")
    s.add_argument("--level", type=int, choices=(0, 1),
                   help="zarr level the network reads: 1 (~20 A per voxel) or 0 (~10 A, full resolution: about 8 "
                        "times the inference seconds; benchmarks/bench_resolution.py); default: --init's, else 1")
    s.set_defaults(func=_cmd_train_heatmap)

    s = sub.add_parser("recalibrate-heatmap", help="copy a bundle with the heatmap network's batch-norm statistics "
                                                   "re-estimated on whole tomograms")
    s.add_argument("--weights", required=True, type=Path, help="bundle folder (copied, never changed)")
    s.add_argument("--data", required=True, nargs="+", help="Kaggle-layout roots, ROOT or ROOT:RUN,RUN (train split)")
    s.add_argument("--out", required=True, type=Path, help="the new bundle folder (absent or empty)")
    s.add_argument("--bn-adapt", type=_fraction,
                   help="test-time adaptation weight of the copy, 0..1 (default: the bundle's)")
    s.set_defaults(func=_cmd_recalibrate_heatmap)

    s = sub.add_parser("tune-heatmap", help="tune the heatmap detector's per-class thresholds on runs with picks")
    s.add_argument("--data", required=True, nargs="+", help="ROOT:RUN,RUN (train split, with picks)")
    s.add_argument("--weights", required=True, type=Path, help="heatmap bundle folder")
    s.add_argument("--name", default="heatmap", help="which heatmap detector of the bundle: heatmap or heatmap_<tag>")
    s.add_argument("--backend", choices=BACKENDS, default="auto")
    _relative_arg(s)
    s.set_defaults(func=_cmd_tune_heatmap)

    s = sub.add_parser("bundle", help="list what a bundle holds: its detectors (weights, ONNX copy, level, window, "
                                      "views) and its fitted ensembles (which one predict runs by default)")
    s.add_argument("--weights", type=Path, help="bundle folder (default: the shipped one)")
    s.set_defaults(func=_cmd_bundle)

    s = sub.add_parser("add-heatmap", help="put another heatmap network (a train-heatmap folder) into a bundle as "
                                           "the detector heatmap_<tag>, beside its own")
    s.add_argument("--source", required=True, type=Path, help="folder of heatmap.pt + heatmap.json (only read)")
    s.add_argument("--weights", required=True, type=Path, help="the bundle folder it goes into")
    s.add_argument("--name", required=True, help="its detector name there, heatmap_<tag> (e.g. heatmap_l0)")
    s.set_defaults(func=_cmd_add_heatmap)

    s = sub.add_parser("tune-ensemble", help="tune the detectors' own and their ensemble's thresholds on the same runs "
                            "with picks (czii_config.json, heatmap*.json, ensemble.json)")
    s.add_argument("--data", required=True, nargs="+", help="ROOT:RUN,RUN (train split, with picks)")
    s.add_argument("--weights", required=True, type=Path, help="bundle folder holding the detectors")
    s.add_argument("--detectors", default="yolo,heatmap",
                   help="the ensemble's detectors, two or more the bundle holds (default: yolo,heatmap)")
    s.add_argument("--own", help="detectors whose own thresholds are tuned too (default: all of --detectors; "
                                 "'none': the ensemble alone)")
    s.add_argument("--default", help="detectors predict runs by default with this bundle, e.g. yolo,heatmap")
    s.add_argument("--cache-yolo", type=Path, help="keep / reuse the YOLO candidates of each run in this folder")
    s.add_argument("--backend", choices=BACKENDS, default="auto")
    _relative_arg(s)
    s.set_defaults(func=_cmd_tune_ensemble)

    s = sub.add_parser("set-floor", help="set the count floor (min_keep: each run keeps at least its best candidates "
                                         "of a type, factor x the real runs' mean picks) in a bundle's configs")
    s.add_argument("--weights", required=True, type=Path, help="bundle folder (czii_config.json, heatmap.json, ensemble.json)")
    s.add_argument("--factor", type=_non_negative, help="times the mean picks per real training run (default: the recipe's; 0: off)")
    s.set_defaults(func=_cmd_set_floor)

    s = sub.add_parser("show", help="save a figure of a run's tomogram with its picks")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--run", required=True)
    s.add_argument("--split", default="train", choices=("train", "test"))
    s.add_argument("--out", type=Path, default=Path("run.png"))
    s.set_defaults(func=_cmd_show)

    s = sub.add_parser("signal", help="how much signal of each type labelled runs of one look hold: the matched-filter "
                                      "SNR of the runs' own class averages, no detector (needs 2 runs or more)")
    s.add_argument("--data", required=True, nargs="+", help="Kaggle-layout roots, ROOT or ROOT:RUN,RUN (train split, "
                                                             "runs with picks)")
    s.add_argument("--level", type=int, default=1, choices=(0, 1, 2), help="zarr level read (1: about 20 A)")
    s.add_argument("--out", type=Path, help="also write the table as CSV")
    s.set_defaults(func=_cmd_signal)

    s = sub.add_parser("import-mrc", help="MRC tomograms (IMOD, RELION, AreTomo, Warp) into a Kaggle-layout root, one run "
                                          "per file, for predict --data (needs mrcfile: the copick extra)")
    s.add_argument("files", nargs="+", type=Path, help="MRC files (.mrc, .rec); each becomes the run of its name")
    s.add_argument("--out", required=True, type=Path, help="the Kaggle-layout root to write (a tomogram already there "
                                                           "is never replaced)")
    s.add_argument("--split", default="test", choices=("train", "test"))
    s.add_argument("--voxel-size", type=_float_in(1.0), help="Angstrom per voxel, for files whose header gives none")
    s.add_argument("--tomo-type", default="denoised", help="the tomogram type's name (default: denoised)")
    s.add_argument("--star", nargs="+", type=Path, help="with --split train: RELION 5 STAR picks, one file per particle "
                                                        "type named after it (ribosome.star ...; rlnTomoName = the run)")
    s.set_defaults(func=_cmd_import_mrc)

    s = sub.add_parser("demo", help="the main job: simulate a test set, predict it with the shipped model, score")
    s.add_argument("--out", type=Path, default=Path("out/demo"))
    s.add_argument("--n-test", type=_positive, default=2)
    s.add_argument("--difficulty", default="medium")
    s.add_argument("--seed", type=_count, default=2024)
    s.add_argument("--weights", type=Path)
    s.set_defaults(func=_cmd_demo)
    return p


def _interrupted_line(command: str, n_before: int) -> str:
    done = outputs.finished_outputs()[n_before:]
    if not done:
        what = "no output was finished"
    elif len(done) <= 3:
        what = "finished: " + ", ".join(str(p) for p in done)
    else:
        what = f"finished {len(done)} outputs (the last: {done[-1]})"
    return (f"czii-kaggle: interrupted (Ctrl-C) during {command}; {what}; "
            "nothing was left half-written")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (0, 2 for bad input, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    n_before = len(outputs.finished_outputs())
    try:
        return args.func(args) or 0  # predict: 1 when a run failed or gave no picks
    except CziiInputError as exc:
        one_line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"czii-kaggle: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_line(args.command, n_before), file=sys.stderr, flush=True)
        if argv is None and any(t.daemon and t.is_alive() for t in threading.enumerate()):
            # worker threads still running (prediction, progress bars) could abort the
            # interpreter's shutdown (exit 134): leave at once, the outputs are all whole
            sys.stdout.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
