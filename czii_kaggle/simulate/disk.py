"""A simulated dataset written to disk in the exact Kaggle layout (tomograms, picks, solution, looks)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import frames, layout
from ..errors import CziiInputError
from ..particles import NAMES
from .config import SimConfig, difficulty_value
from .layouts import count_scales, crop_layout, random_layout, real_layouts
from .look import Look, classic_look, draw_look
from .tomogram import simulate_tomogram


@dataclass
class SimDataset:
    """A simulated dataset on disk.

    Attributes
    ----------
    root : Path
        Kaggle-layout data root ``{out_dir}/czii-cryo-et-object-identification``.
    solution_csv : Path
        ``{out_dir}/test_solution.csv``: the test runs' picks with an ``id`` column.
    train_runs, test_runs : list of str
        Run names.
    difficulties : dict
        Run name -> difficulty (float) it was simulated at.
    looks : dict
        Run name -> its :class:`~czii_kaggle.simulate.look.Look`.
    """

    root: Path
    solution_csv: Path
    train_runs: list[str]
    test_runs: list[str]
    difficulties: dict[str, float] = field(default_factory=dict)
    looks: dict[str, Look] = field(default_factory=dict)


def _run_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def simulate_dataset(
    out_dir: str | Path,
    n_train: int = 4,
    n_test: int = 2,
    config: SimConfig = SimConfig(),
    seed: int = 0,
    real_train_layouts: bool = False,
    real_root: str | Path | None = None,
    difficulties: list[float | str] | None = None,
    count_scale: float | Mapping[str, float] = 1.0,
    overwrite: bool = False,
) -> SimDataset:
    """Simulate training and test runs in the exact Kaggle layout.

    Writes ``{root}/train/static/ExperimentRuns/{run}/VoxelSpacing10.000/denoised.zarr``
    and ``{root}/train/overlay/ExperimentRuns/{run}/Picks/*.json`` for training runs,
    ``{root}/test/static/...`` (no picks) for test runs, the test picks as
    ``{out_dir}/test_solution.csv`` (``id, experiment, particle_type, x, y, z``) and
    ``{out_dir}/simulation.json`` (config and per-run difficulty / seed / look) and each
    run's look as ``{out_dir}/looks/{run}.json``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder.
    n_train, n_test : int
        Number of training and test runs.
    config : SimConfig
        Simulation options (``config.difficulty`` for every run unless ``difficulties``);
        ``config.look``: ``"classic"``, ``"random"`` (each run draws its own look) or a
        spec fixing / restricting some look fields (:mod:`czii_kaggle.simulate.look`).
    seed : int
        Master seed; run ``i`` gets its own seed from ``(seed, i)``.
    real_train_layouts : bool
        Training runs take the real runs' picks (cropped to the shape) and names
        (TS_5_4, ...), as many as there are; further runs are random.
    real_root : str or Path, optional
        Where the real picks are (a Kaggle-layout root, :func:`real_layouts`); needed with
        ``real_train_layouts``.
    difficulties : list, optional
        One difficulty (float or name) per run, training runs first.
    count_scale : float or mapping
        Multiplies the random layouts' mean counts (one factor, or ``{name: factor}``);
        real layouts keep their own picks.
    overwrite : bool
        Write into a non-empty ``out_dir`` (its tomograms, picks, solution and looks of
        the same run names are replaced; other files stay). Without it a non-empty
        ``out_dir`` is refused (:class:`CziiInputError`), so that an existing data root
        (even one of real runs of the same names) is never overwritten by accident.

    Returns
    -------
    SimDataset
    """
    from tqdm.auto import tqdm

    from ..omezarr import write_tomogram
    from ..picks import write_picks_file, write_run_picks

    n_runs = n_train + n_test
    if n_train < 0 or n_test < 0 or n_runs == 0:
        raise ValueError(f"need n_train, n_test >= 0 and at least one run, not {n_train}, {n_test}")
    if difficulties is None:
        diffs = [config.difficulty_float] * n_runs
    else:
        if len(difficulties) != n_runs:
            raise ValueError(f"difficulties has {len(difficulties)} values for {n_runs} runs")
        diffs = [difficulty_value(d) for d in difficulties]
    out_dir = Path(out_dir)
    if not overwrite and out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CziiInputError(out_dir, "output folder is not empty; choose a new one or pass overwrite (--overwrite)")
    root = out_dir / "czii-cryo-et-object-identification"
    real = real_layouts(real_root) if real_train_layouts and n_train else {}
    real_names = sorted(real)[:n_train]

    plan = []  # (split, run, picks, run_seed, difficulty, look)
    for i in range(n_runs):
        run_seed = _run_seed(seed, i)
        split = "train" if i < n_train else "test"
        if i < len(real_names):
            run = real_names[i]
            picks = crop_layout(real[run], config.shape_vox, config.voxel_size_A)
        else:
            run = f"TS_sim_{seed}_{i}"
            picks = random_layout(
                config.shape_vox, config.voxel_size_A, np.random.default_rng(run_seed), run, count_scale
            )
        picks = picks.assign(experiment=run)
        if config.look == "classic":
            look = classic_look()
        else:
            spec = None if config.look == "random" else config.look
            look = draw_look(np.random.default_rng([run_seed, 7]), diffs[i], spec)
        plan.append((split, run, picks, run_seed, diffs[i], look))

    looks_dir = out_dir / "looks"
    looks_dir.mkdir(parents=True, exist_ok=True)
    for split, run, picks, run_seed, d, look in tqdm(plan, desc="simulate", unit="run"):
        cfg = SimConfig(**{**asdict(config), "difficulty": d})
        vol = simulate_tomogram(picks, cfg, seed=run_seed, look=look)
        (looks_dir / f"{run}.json").write_text(json.dumps(look.to_dict(), indent=1) + "\n")
        write_tomogram(layout.tomogram_path(root, split, run), vol, config.voxel_size_A, overwrite=True)
        if split == "train" and len(picks):
            write_run_picks(root, picks)
        elif split == "train":  # a run with no particle still gets its six (empty) pick files
            for name in NAMES:
                write_picks_file(layout.picks_path(root, run, name), run, name, np.zeros((0, 3)))

    test = [p for s, _, p, *_ in plan if s == "test"]
    solution = pd.concat(test, ignore_index=True) if test else frames.empty(frames.PICKS)
    solution = solution[frames.PICKS_COLUMNS].reset_index(drop=True)
    solution.insert(0, "id", np.arange(len(solution)))  # Kaggle's solution file: a submission's columns
    out_dir.mkdir(parents=True, exist_ok=True)
    solution.to_csv(out_dir / "test_solution.csv", index=False)
    meta = {
        "seed": seed,
        "count_scale": count_scales(count_scale),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "runs": [{"run": r, "split": s, "seed": rs, "difficulty": d, "n_picks": len(p), "look": lk.to_dict()}
                 for s, r, p, rs, d, lk in plan],
    }
    (out_dir / "simulation.json").write_text(json.dumps(meta, indent=1))
    return SimDataset(
        root=root,
        solution_csv=out_dir / "test_solution.csv",
        train_runs=[r for s, r, *_ in plan if s == "train"],
        test_runs=[r for s, r, *_ in plan if s == "test"],
        difficulties={r: d for _, r, _, _, d, _ in plan},
        looks={r: lk for _, r, _, _, _, lk in plan},
    )
