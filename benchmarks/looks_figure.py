"""A picture of random looks: the central x-y slice of one layout rendered in eight looks.

    .venv/bin/python benchmarks/looks_figure.py   # -> benchmarks/results/looks.png
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from czii_kaggle import simulate as sim  # noqa: E402


def main(out: Path = REPO / "benchmarks" / "results" / "looks.png", shape=(64, 320, 320), seed: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = sim.SimConfig(shape_vox=shape, difficulty="medium")
    picks = sim.random_layout(shape, cfg.voxel_size_A, np.random.default_rng(seed), count_scale=3.0)
    looks = [sim.classic_look()] + [sim.draw_look(np.random.default_rng([seed, k]), 0.5) for k in range(7)]
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.4))
    for ax, look in zip(axes.ravel(), looks):
        vol = sim.simulate_tomogram(picks, cfg, seed=seed, look=look)
        z = int(np.median(picks["z"]) / cfg.voxel_size_A)
        img = vol[z]
        lo, hi = np.percentile(img, (0.5, 99.5))
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        title = "classic" if look.is_classic else (
            f"{look.particle_model} / CTF {look.ctf_mode} / {look.filter}\n"
            f"wedge +-{look.tilt_range_deg:.0f}, noise f^-{look.noise_exponent:.1f}, crowding {look.crowding:.1f}")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"one layout (medium difficulty), central slice z={z}, in the classic and 7 random looks")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    from PIL import Image

    Image.open(out).convert("L").save(out, optimize=True)  # grey levels only: a third of the size
    return out


if __name__ == "__main__":
    print(main())
