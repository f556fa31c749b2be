"""Benchmark the tomogram simulator: time per stage, peak memory, and a picture.

Stages: layout (random picks), render (targets + clutter into a density volume),
microscope (one FFT pair: missing wedge, CTF, noise, denoise), scale (gradient and
normalisation), write (the OME-Zarr tomogram, 3 levels; not part of the 30 s budget).
Peak memory is the process's peak RSS (``getrusage``) and the peak of numpy's
allocations during one simulation (``tracemalloc``).

The result table is printed and appended, with the command, date and machine, to
``benchmarks/results/simulate.md``. The picture (``--png``) shows the central x-y
slice of one layout simulated at easy / medium / hard with the true picks circled.

    .venv/bin/python benchmarks/bench_simulate.py --shape 184 630 630 --repeat 2
"""
from __future__ import annotations

import argparse
import datetime
import resource
import shlex
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from czii_kaggle import simulate as sim  # noqa: E402
from czii_kaggle.omezarr import write_tomogram  # noqa: E402
from czii_kaggle.particles import BY_NAME, NAMES  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"




def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench_once(shape, difficulty, seed: int, out_dir: Path, look: str = "classic") -> dict:
    """Time one layout + simulation + write; returns seconds per stage and memory.

    ``look``: ``classic``, or ``random`` (a look drawn from ``seed``; its families are reported).
    """
    cfg = sim.SimConfig(shape_vox=shape, difficulty=difficulty)
    run_look = None
    if look != "classic":
        run_look = sim.draw_look(np.random.default_rng([seed, 7]), cfg.difficulty_float)
    row = {}
    t0 = time.perf_counter()
    picks = sim.random_layout(shape, cfg.voxel_size_A, np.random.default_rng(seed), run=f"bench_{seed}")
    row["layout"] = time.perf_counter() - t0
    tracemalloc.start()
    stages: dict[str, float] = {}
    vol = sim.simulate_tomogram(picks, cfg, seed=seed, timings=stages, look=run_look)
    row["numpy_peak_GiB"] = tracemalloc.get_traced_memory()[1] / 2**30
    tracemalloc.stop()
    row.update(stages)
    row["total"] = row["layout"] + sum(stages.values())
    t0 = time.perf_counter()
    write_tomogram(out_dir / f"bench_{seed}.zarr", vol, cfg.voxel_size_A, overwrite=True)
    row["write"] = time.perf_counter() - t0
    row["picks"] = len(picks)
    row["rss_peak_GiB"] = peak_rss_gib()
    if run_look is not None:
        row["look"] = f"{run_look.particle_model}/{run_look.ctf_mode}/{run_look.filter}"
    return row


def slices_figure(shape, seed: int, path: Path) -> pd.DataFrame:
    """Central x-y slice at easy / medium / hard, full and zoomed, true picks circled.

    Returns the detection SNR table (types x difficulties).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = sim.SimConfig().voxel_size_A
    picks = sim.random_layout(shape, vs, np.random.default_rng(seed), run="slices")
    zc = shape[0] // 2
    # the zoom: the 200 x 200 window around the densest spot of picks near the slice
    near = picks[np.abs(picks["z"] / vs - zc) < 8]
    cy, cx = (near[["y", "x"]].median().to_numpy() / vs).astype(int) if len(near) else (shape[1] // 2, shape[2] // 2)
    half = min(100, shape[1] // 2, shape[2] // 2)
    y0 = int(np.clip(cy - half, 0, shape[1] - 2 * half))
    x0 = int(np.clip(cx - half, 0, shape[2] - 2 * half))
    names = list(sim.DIFFICULTY)
    fig, axes = plt.subplots(2, 3, figsize=(18, 12.6))
    snr = {}
    for j, name in enumerate(names):
        vol = sim.simulate_tomogram(picks, sim.SimConfig(shape_vox=shape, difficulty=name), seed=seed)
        snr[name] = sim.detection_snr(vol, picks, vs)["snr"]
        img = vol[zc]
        lo, hi = np.percentile(img, [1, 99])
        for i, (ys, xs) in enumerate([(0, 0), (y0, x0)]):
            ax = axes[i, j]
            view = img if i == 0 else img[ys : ys + 2 * half, xs : xs + 2 * half]
            ax.imshow(view, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            for _, p in picks.iterrows():
                r = BY_NAME[p.particle_type].radius_A / vs
                dz = abs(p.z / vs - zc)
                if dz < r:
                    ax.add_patch(
                        plt.Circle((p.x / vs - xs, p.y / vs - ys), np.sqrt(r * r - dz * dz), fill=False,
                                   color=BY_NAME[p.particle_type].color_rgb, lw=0.8 if i == 0 else 1.2)
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} (difficulty {sim.DIFFICULTY[name]})" + (" zoom" if i else f", z = {zc}"))
    handles = [plt.Line2D([], [], color=BY_NAME[n].color_rgb, marker="o", ls="", fillstyle="none", label=n)
               for n in NAMES]
    fig.legend(handles=handles, loc="lower center", ncol=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return pd.DataFrame(snr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=list(sim.FULL_SHAPE_VOX), metavar=("Z", "Y", "X"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--difficulty", default="medium", help="easy, medium, hard or a number in 0..1")
    ap.add_argument("--png", default=str(RESULTS / "simulate_slices.png"), help="slice picture ('' to skip)")
    ap.add_argument("--results", type=Path, default=RESULTS / "simulate.md")
    ap.add_argument("--look", choices=("classic", "random"), default="classic",
                    help="random: each repeat draws its own look (czii_kaggle.simulate.look)")
    a = ap.parse_args(argv)
    shape = tuple(a.shape)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(a.repeat):
            rows.append(bench_once(shape, a.difficulty, seed=k, out_dir=Path(tmp), look=a.look))
            print(f"repeat {k}: total {rows[-1]['total']:.2f} s", flush=True)
    df = pd.DataFrame(rows)
    cols = ["layout", "render", "microscope", "scale", "total", "write", "numpy_peak_GiB", "rss_peak_GiB", "picks"]
    looks = list(df["look"]) if "look" in df.columns else []
    df = df[cols]
    summary = pd.DataFrame({"median": df.median(), "min": df.min(), "max": df.max()}).T
    table = summary.to_markdown(floatfmt=".2f") if _has_tabulate() else _markdown(summary)

    cmd = " ".join(shlex.quote(x) for x in [".venv/bin/python", *sys.argv])
    lines = [
        f"## {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"- command: `{cmd}`",
        f"- machine: {describe_machine(with_pace=True)}",
        f"- shape {shape} (z, y, x), difficulty {a.difficulty}, look {a.look}"
        + (f" (model/CTF/filter per repeat: {', '.join(looks)})" if looks else "")
        + f", {a.repeat} repeat(s); seconds per stage "
        "(total = layout + render + microscope + scale; write = OME-Zarr, 3 levels, separate), "
        "memory in GiB (numpy peak: tracemalloc during one simulation; RSS: process peak)",
        "",
        table,
        "",
    ]
    if a.png:
        png = Path(a.png)
        snr = slices_figure(shape, seed=0, path=png)
        lines += [
            f"Detection SNR (matched filter, `detection_snr`) of one layout at each difficulty; "
            f"slices in `{png.name}`:",
            "",
            snr.to_markdown(floatfmt=".2f") if _has_tabulate() else _markdown(snr),
            "",
        ]
    text = "\n".join(lines)
    print(text)
    a.results.parent.mkdir(parents=True, exist_ok=True)
    with open(a.results, "a") as f:
        f.write(text + "\n")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _markdown(df: pd.DataFrame) -> str:
    head = "| | " + " | ".join(map(str, df.columns)) + " |"
    sep = "|---" * (len(df.columns) + 1) + "|"
    body = [
        f"| {idx} | " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |"
        for idx, row in zip(df.index, df.to_numpy())
    ]
    return "\n".join([head, sep, *body])


if __name__ == "__main__":
    main()
