"""Where each detector's losses lie on the test sets: in finding, in placing or in ranking.

Runs the detectors of a bundle's ``ensemble.json`` over the same sets as ``bench_ensemble.py``
(``--data`` and ``--domains``: the same runs, seeds and folders; ``--cache`` / ``--cache-yolo`` in
its layout, so a cache it filled is read, not recomputed) and audits each detector's
unthresholded candidates, and the ensemble's merged ones (``ensemble.combine``), with
:func:`czii_kaggle.metric.candidate_audit`, per scored type: the share of particles with a
candidate of their type within the metric's radius at any score (what a threshold can reach),
within twice it (what placing loses; with the median distance of those), of any type (what the label loses)
and outscored there by another type's candidate (taken for something else), among the type's
``--top-factor`` x n best candidates of their run (what ranking loses), and where those best
candidates lie (on their particle, inside another particle, on nothing the truth holds). It replaces
``bench_confusion.py`` (session 27; its records stay in ``benchmarks/results/confusion.md``), which
looked at the heatmap detector alone.

    .venv/bin/python benchmarks/bench_candidates.py --weights czii_kaggle/models \\
        --data runs/hml/test_medium/czii-cryo-et-object-identification --solution runs/hml/test_medium/test_solution.csv \\
        --label classic-test --domains model-subunits filter-anisotropic ctf-unflipped training-looks --n-runs 8 \\
        --cache runs/cache/s26bf --cache-yolo runs/cache/s26/yolo

Appends the tables, with the command, date and machine, to ``benchmarks/results/candidates.md``.
All simulated: no real voxels.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import append_result, describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from bench_ensemble import add_cache_args, add_test_set_args, fmt, held_out_sets, set_cache, test_sets  # noqa: E402
from czii_kaggle import layout, metric  # noqa: E402
from czii_kaggle.bundle import load_detectors, load_ensembles  # noqa: E402
from czii_kaggle.detectors import run_candidates  # noqa: E402
from czii_kaggle.ensemble import combine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "candidates.md"
#: The audit's columns shown in the tables: fractions and ``offset_A`` (``top`` and ``particles`` are counts).
SHOWN = ["found", "found_2r", "offset_A", "found_any_type", "other_higher", "in_top", "top_on_self", "top_on_other", "top_on_nothing"]


def audits(sources: dict[str, pd.DataFrame], truth: pd.DataFrame, top_factor: float) -> pd.DataFrame:
    """:func:`metric.candidate_audit` of each named candidate table, stacked with a ``source`` column."""
    return pd.concat([metric.candidate_audit(truth, c, top_factor).assign(source=name) for name, c in sources.items()],
                     ignore_index=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per source and type, the audit's columns averaged over the sets in ``table`` (each set weighs alike)."""
    return table.groupby(["source", "particle_type"], sort=False)[SHOWN].mean().reset_index()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="bundle folder with its detectors and ensemble.json")
    add_test_set_args(ap)
    ap.add_argument("--top-factor", type=float, default=3.0,
                    help="best candidates per particle of a type and run that count as 'top' (default 3)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--backend", default="auto")
    add_cache_args(ap)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)

    sets = test_sets(a)
    ensemble = load_ensembles(a.weights)[0]
    names = list(ensemble.detectors)
    dets = [load_detectors(a.weights, [n], a.backend)[0] for n in names]
    parts, texts = [], []
    for set_name, root, truth in sets:
        runs = layout.list_runs(root, a.split)
        cands, report = run_candidates(dets, root, a.split, runs, progress=False, cache=set_cache(a, names, set_name))
        bad = report[report["status"] != "ok"]
        if len(bad):
            raise SystemExit(f"{set_name}: {'; '.join(bad['error'].astype(str))}")
        sources = {**cands, f"ensemble ({' + '.join(names)})": combine(cands, ensemble)}
        table = audits(sources, truth[truth["experiment"].isin(runs)], a.top_factor).assign(set=set_name)
        parts.append(table)
        text = f"**{set_name}** ({len(runs)} runs):\n\n" + fmt(table[["source", "particle_type", "particles", *SHOWN]])
        texts.append(text)
        print(text, flush=True)
    table = pd.concat(parts, ignore_index=True)
    held = held_out_sets(a, [s for s, _, _ in sets])
    if held:
        text = f"**Mean of the held-out looks** ({', '.join(held)}; each set weighs alike):\n\n" + fmt(
            summary(table[table["set"].isin(held)]))
        texts.insert(0, text)
        print(text)
    text = "\n\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        f"- command: `python benchmarks/bench_candidates.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"- machine: {describe_machine()}\n"
        f"- bundle `{a.weights}`, its ensemble `{' + '.join(names)}`; unthresholded candidates; 'top': the "
        f"ceil({a.top_factor:g} x n) best-scored candidates of a type in a run of n such particles; fractions of "
        f"particles (found, found_2r, found_any_type, other_higher, in_top) or of top candidates (top_on_*); offset_A: the median "
        f"distance (A) of the particles found within twice the radius to their nearest candidate; all simulated, no real "
        f"voxels",
        *texts,
    ])
    if not a.no_write:
        append_result(RESULTS, "Where the losses lie: finding, placing, ranking", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
