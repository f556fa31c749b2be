"""Score against signal: the shipped default's F-beta per type beside the signal the look holds for that type.

For each test set (``bench_ensemble.py``'s sets: ``--data`` and ``--domains``, at each ``--difficulties``): each
type's matched-filter SNR of its own class average (``bench_look_signal.py``'s measure,
:func:`czii_kaggle.simulate.class_average_snr`) and the F-beta of the shipped bundle's default detectors on the
same runs (``workflow.predict_bundle``; picks kept under ``--work`` and reused). Where the held-out looks' points lie
on the training looks' curve, what separates their scores is the signal they hold, not that the model never saw
them; and a user's own labelled runs (``czii-kaggle signal``) can be read against the curve.

    .venv/bin/python benchmarks/bench_signal_score.py \\
        --domains training-looks model-subunits filter-anisotropic ctf-unflipped --n-runs 4 \\
        --difficulties easy medium hard --training-only 1.0 --png docs/figures/signal_score.png

Prints the table and appends it, with the command, date and machine, to ``benchmarks/results/signal_score.md``.
All simulated: no real voxels.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from czii_kaggle import metric, outputs, workflow  # noqa: E402
from czii_kaggle.particles import BY_NAME, SCORED  # noqa: E402

from bench_ensemble import add_test_set_args, fmt, submission_of, test_sets  # noqa: E402
from bench_detection import TRAINING_DOMAINS  # noqa: E402
from bench_look_signal import set_signal  # noqa: E402
from machine import append_result, describe as describe_machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "signal_score.md"


def set_picks(root: Path, cache: Path, weights: Path | None) -> pd.DataFrame:
    """The default detectors' picks of every test run of ``root``, kept in ``cache`` (a CSV) and reused."""
    if cache.is_file():
        return pd.read_csv(cache, dtype={"experiment": str})
    pred = workflow.predict_bundle(root, "test", bundle=weights, progress=False)
    bad = pred.report[pred.report["status"] != "ok"]
    if len(bad):
        raise SystemExit(f"{root}: {'; '.join(bad['error'].astype(str))}")
    with outputs.atomic_path(cache) as tmp:
        pred.picks.to_csv(tmp, index=False)
    return pred.picks


def figure(rows: pd.DataFrame, path: Path) -> None:
    """SNR (log) against F-beta, one colour per type; filled: training looks, open: held-out looks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from czii_kaggle import viz

    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    for t in SCORED:
        colour = BY_NAME[t].color_rgb
        for held, marker_face in ((False, colour), (True, "none")):
            r = rows[(rows["particle_type"] == t) & (rows["held_out"] == held)]
            ax.scatter(r["snr"], r["f_beta"], s=36, edgecolors=colour, facecolors=marker_face,
                       label=f"{t}{' (held-out looks)' if held else ''}")
    ax.set_xscale("log")
    ax.set_xlabel("matched-filter SNR of the type's own class average")
    ax.set_ylabel("F-beta of the shipped default")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no point hidden
    ax.set_title("Score against the signal a look holds (simulated; filled: training looks)", fontsize=9)
    viz.save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_test_set_args(ap)
    ap.add_argument("--difficulties", nargs="+", default=None, help="default: --difficulty alone")
    ap.add_argument("--training-only", nargs="*", default=[], metavar="DIFFICULTY",
                    help="further difficulties at which only the training looks' sets are measured (extends their "
                         "curve to lower signal)")
    ap.add_argument("--weights", type=Path, help="bundle (default: the shipped one)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "signal_score", help="picks kept per set here")
    ap.add_argument("--png", type=Path, help="also draw the scatter here")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    rows, t0 = [], time.perf_counter()
    for difficulty in [*(a.difficulties or [a.difficulty]), *a.training_only]:
        b = copy.copy(a)
        b.difficulty = difficulty
        if difficulty in a.training_only:
            b.data, b.domains = None, [d for d in a.domains if d in TRAINING_DOMAINS]
        for name, root, truth in test_sets(b):
            snr = set_signal(root, truth, 1)["snr"]
            tag = f"{name}_{root.parent.name}"
            picked = set_picks(root, a.work / difficulty / f"{tag}.csv", a.weights)
            table = metric.score_table(truth, submission_of(picked))
            for t in SCORED:
                if t in table.index and t in snr.index:
                    rows.append({"difficulty": difficulty, "set": name, "particle_type": t,
                                 "held_out": name not in TRAINING_DOMAINS and (name != a.label or a.data is None),
                                 "snr": float(snr[t]), "f_beta": float(table.loc[t, "f_beta"])})
            here = [r for r in rows if r["set"] == name and r["difficulty"] == difficulty]
            print(f"{difficulty} {name}: " + ", ".join(f"{r['particle_type']} {r['snr']:.1f} / {r['f_beta']:.3f}"
                                                       for r in here), flush=True)
    if not rows:
        raise SystemExit("bench_signal_score: no type had its signal measured on any set (each set needs runs with "
                         "particles of a type in both halves: more or larger runs)")
    df = pd.DataFrame(rows)
    wide = df.assign(cell=[f"{s:.1f} / {f:.3f}" for s, f in zip(df["snr"], df["f_beta"])]).pivot_table(
        index=["difficulty", "set"], columns="particle_type", values="cell", aggfunc="first", sort=False
    ).reset_index()[["difficulty", "set", *[t for t in SCORED if t in set(df["particle_type"])]]]
    # the F-beta of each held-out point against the training looks' at the same SNR (log-linear interpolation
    # along the training looks' points of that type): what unseenness costs at matched signal
    gaps = []
    for t in SCORED:
        train = df[(df["particle_type"] == t) & ~df["held_out"]].sort_values("snr")
        held = df[(df["particle_type"] == t) & df["held_out"]]
        inside = held[(held["snr"] >= train["snr"].min()) & (held["snr"] <= train["snr"].max())]
        if len(train) >= 2 and len(inside):
            expected = np.interp(np.log(inside["snr"]), np.log(train["snr"]), train["f_beta"])
            gap = float(np.mean(inside["f_beta"] - expected))
            gaps.append({"particle_type": t, "points": len(inside),
                         "held-out F-beta - training looks' at the same SNR": gap})
    gap_table = fmt(pd.DataFrame(gaps)) if gaps else "(no held-out point within the training looks' SNR range)"
    print(fmt(wide))
    print(gap_table)
    if a.png:
        figure(df, a.png)
        print(f"wrote {a.png}")
    text = "\n".join([
        f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- command: `python benchmarks/bench_signal_score.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- machine: {describe_machine()}",
        f"- each cell: matched-filter SNR of the type's own class average (zarr level 1, halves of the set's runs) / "
        f"F-beta of the bundle's default detectors (`{a.weights or 'czii_kaggle/models'}`) on the same runs; "
        f"{a.n_runs} runs per --domains set; {time.perf_counter() - t0:.0f} s; all simulated, no real voxels",
        "",
        fmt(wide),
        "",
        "At matched signal (each held-out point against the training looks' F-beta at its SNR, interpolated on a "
        "log scale between the training looks' points of the type; points outside their range left out):",
        "",
        gap_table,
    ])
    if not a.no_write:
        append_result(RESULTS, "Score against the signal a look holds", text)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
