"""Training the 3D heatmap detector from picks: patches, targets, a seeded resumable loop.

Every run of the given Kaggle-layout roots (``train`` split, picks under
``train/overlay``) is read once at the heatmap's level and normalised. Each step
draws a batch of patches: most are centred near a pick of a class chosen
uniformly among those the run holds (so rare types are seen as often as common
ones), optionally a share near a hard negative (a place the network picked where no
particle is: :func:`hard_negatives`), the rest anywhere; each is flipped along every axis with probability 1/2
and rotated by a multiple of 90 degrees in x-y. Targets are one Gaussian per pick
(sigma ``sigma_fraction * radius``) on the network's output grid, exactly 1 at the
pick's nearest voxel. The draws of step ``i`` come from ``numpy.random.default_rng
([seed, i])``, so a run resumed from its checkpoint draws what it would have drawn.
"""
from __future__ import annotations

import importlib.util
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import layout, picks as picks_io
from .errors import CziiInputError
from .bundle import (DEFAULT_BUNDLE, HEATMAP_CONFIG_FILE, HEATMAP_ONNX_FILE, HEATMAP_WEIGHTS_FILE, file_sha256,
                     load_heatmap_bundle, save_heatmap_json, sources_record)
from .detectors.heatmap import (HeatmapConfig, A_to_grid, build_net, default_aggregate_config, heatmap_device, normalise,
                                read_input)
from .particles import NAMES, PARTICLES
from .preprocess import spectral_filter

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train.log"
STRIDE = 2


@dataclass(frozen=True)
class HeatmapTrainConfig:
    """Options of :func:`train_heatmap`.

    Attributes
    ----------
    patch_vox : (int, int, int)
        Patch ``(z, y, x)`` in voxels of the heatmap level; multiples of 8, ``y == x``
        (90-degree rotations).
    batch : int
    steps : int
        Optimiser steps in all (a resumed run continues up to this number).
    lr : float
        AdamW learning rate, cosine-decayed to 5 % over ``steps``.
    weight_decay : float
    near_pick : float
        Share of patches centred near a pick.
    seed : int
    checkpoint_every : int
        Steps between checkpoints (the last step always writes one).
    threads : int
        torch CPU threads.
    device : str
        ``"auto"``: the first GPU torch can run here (:func:`czii_kaggle.detectors.heatmap.heatmap_device`),
        else the CPU; or ``"cpu"``, ``"cuda:N"``.
    look_augment : float
        Share of patches given a random look (:func:`augment_look`: a random CTF-like
        band gain, anisotropic low-pass and noise); 0: off (the records before it).
    particle_augment : float
        Share of patches whose particles are drawn anew first (:func:`augment_particles`: each
        particle's contrast and a lumpy inner texture at the scale of protein domains); 0: off
        (the records before it).
    hard_negative : float
        Share of patches centred near a hard negative of their run (:attr:`TrainRun.negatives_zyx`,
        from :func:`hard_negatives`: where a detector picked and no pick is), drawn before the
        near-pick share; runs without any are drawn as before. 0: off (the records before it).
    look_respectral : bool
        Put each look-augmented patch through the input's own spectral step again
        (``HeatmapConfig.spectral``, then the percentile clip), as :func:`read_input` would have
        treated a tomogram of that look: so with a whitened input the network trains only on
        inputs that can occur, the look's phase (contrast reversals) kept, its amplitude evened
        out. False: the records before it; no effect when the spectral step is ``none``.
    """

    patch_vox: tuple[int, int, int] = (48, 96, 96)
    batch: int = 2
    steps: int = 1000
    lr: float = 3e-3
    weight_decay: float = 1e-4
    near_pick: float = 0.8
    seed: int = 0
    checkpoint_every: int = 25
    threads: int = 2
    device: str = "auto"
    look_augment: float = 0.0
    particle_augment: float = 0.0
    look_respectral: bool = False
    hard_negative: float = 0.0

    def __post_init__(self) -> None:
        if any(p <= 0 or p % 8 for p in self.patch_vox) or self.patch_vox[1] != self.patch_vox[2]:
            raise ValueError(f"patch_vox must be positive multiples of 8 with y == x, not {self.patch_vox}")
        for name in ("look_augment", "particle_augment", "hard_negative"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in 0..1, not {getattr(self, name)!r}")
        if not (self.device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", self.device)):
            raise ValueError(f"device must be auto, cpu or cuda:N, not {self.device!r}")


@dataclass
class TrainRun:
    """One training tomogram: normalised level volume, its voxel size and picks on the output grid."""

    name: str
    volume: np.ndarray
    voxel_size_A: float
    grid_zyx: dict[str, np.ndarray]  # class -> (n, 3) float positions on the output grid (stride 2)
    negatives_zyx: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # hard negatives, same grid


def hard_negatives(predicted: pd.DataFrame, picks: pd.DataFrame, margin: float = 1.0) -> pd.DataFrame:
    """The predicted points of one run that sit on no picked particle: ``experiment, particle_type, x, y, z``
    (Angstrom) farther than ``margin`` times the radius of every pick's type from that pick.

    ``predicted``: a detector's picks on a training run (a ``submission.csv`` of ``predict --split
    train``); ``picks``: the run's picks (:func:`czii_kaggle.picks.read_run_picks`). What is left is
    where the detector fires without a particle (clutter proteins, membranes, ice): the places
    :attr:`HeatmapTrainConfig.hard_negative` centres patches on. The targets of such a patch are
    still its picks' Gaussians, so a negative near an unpicked particle only wastes a draw.
    """
    xyz = predicted[["x", "y", "z"]].to_numpy(float)
    keep = np.ones(len(xyz), bool)
    for name, group in picks.groupby("particle_type"):
        if name not in NAMES or not len(xyz):
            continue
        reach = margin * PARTICLES[NAMES.index(name)].radius_A
        d2 = ((xyz[:, None, :] - group[["x", "y", "z"]].to_numpy(float)[None]) ** 2).sum(-1)
        keep &= d2.min(1) > reach ** 2
    return predicted.loc[keep, ["experiment", "particle_type", "x", "y", "z"]].reset_index(drop=True)


def load_runs(sources: list[tuple[str | Path, list[str] | None]], config: HeatmapConfig,
              predicted: pd.DataFrame | None = None) -> list[TrainRun]:
    """Read every ``(root, runs)`` (``None``: all runs with picks) of the ``train`` split.

    ``predicted``: a detector's picks on these runs (``experiment`` = run name; a run named in two
    roots takes them in both), whose :func:`hard_negatives` become each run's ``negatives_zyx``.
    """
    out = []
    for root, runs in sources:
        for run in runs if runs is not None else layout.list_pick_runs(root):
            volume, vs = read_input(layout.tomogram_path(root, "train", run), config)
            picks = picks_io.read_run_picks(root, run)
            grid = {}
            for name in config.classes:
                xyz = picks.loc[picks["particle_type"] == name, ["x", "y", "z"]].to_numpy(float)
                grid[name] = A_to_grid(xyz[:, ::-1], vs, config.level, STRIDE)
            negatives = np.zeros((0, 3))
            if predicted is not None:
                neg = hard_negatives(predicted[predicted["experiment"] == run], picks)
                negatives = A_to_grid(neg[["x", "y", "z"]].to_numpy(float)[:, ::-1], vs, config.level, STRIDE)
            out.append(TrainRun(f"{root}/{run}", volume, vs, grid, negatives))
    if not out:
        raise CziiInputError(sources[0][0] if sources else None, "no training runs with picks found")
    return out


def render_targets(grid_zyx: dict[str, np.ndarray], origin_out: np.ndarray, shape_out: tuple[int, int, int],
                   voxel_size_A: float, config: HeatmapConfig) -> np.ndarray:
    """``(C, *shape_out)`` float32 targets of a patch whose output grid starts at ``origin_out``."""
    target = np.zeros((len(config.classes), *shape_out), dtype=np.float32)
    grid_A = voxel_size_A * STRIDE
    for c, name in enumerate(config.classes):
        pts = grid_zyx[name] - origin_out
        if not len(pts):
            continue
        sigma = config.sigma_fraction * PARTICLES[NAMES.index(name)].radius_A / grid_A
        reach = int(np.ceil(3 * sigma))
        near = ((pts > -reach - 1) & (pts < np.array(shape_out) + reach)).all(1)
        for p in pts[near]:
            lo = np.maximum(np.floor(p).astype(int) - reach, 0)
            hi = np.minimum(np.floor(p).astype(int) + reach + 2, shape_out)
            if (hi <= lo).any():
                continue
            zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            g = np.exp(-((zz - p[0]) ** 2 + (yy - p[1]) ** 2 + (xx - p[2]) ** 2) / (2 * sigma**2)).astype(np.float32)
            box = target[c, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            np.maximum(box, g, out=box)
            peak = np.round(p).astype(int)
            if ((peak >= 0) & (peak < shape_out)).all():
                target[(c, *peak)] = 1.0
    return target


def augment_look(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``patch`` (z, y, x, normalised to -0.5..0.5) as another microscope and reconstruction might
    have drawn it: in Fourier space a CTF-like gain ``(1 - w) + w * cos(2 pi (k / k0)^2 + phi)``
    (contrast reversing band by band when ``w`` is large), a low-pass with a random cutoff and a
    random stretch per axis (anisotropic filtering); then white noise, and the patch's own
    0.5 / 99.5 percentiles mapped back to -0.5..0.5. Pure: the same ``rng`` state, the same result.
    """
    shape = patch.shape
    axes = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    stretch = rng.uniform(0.7, 1.4, 3)
    kz, ky, kx = np.meshgrid(*(a * st for a, st in zip(axes, stretch)), indexing="ij", sparse=True)
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    w, k0, phi = rng.uniform(0.0, 0.9), rng.uniform(0.12, 0.45), rng.uniform(-0.5, 0.5)
    gain = (1 - w) + w * np.cos(2 * np.pi * (k / k0) ** 2 + phi)
    gain *= np.exp(-0.5 * (k / rng.uniform(0.15, 0.6)) ** 2)
    gain.flat[0] = 1.0
    out = np.fft.irfftn(np.fft.rfftn(patch) * gain, s=shape, axes=(0, 1, 2))
    out += rng.normal(0.0, rng.uniform(0.0, 0.6) * out.std(), shape)
    lo, hi = np.percentile(out, (0.5, 99.5))
    out = (out - lo) / max(hi - lo, 1e-6) - 0.5
    return np.clip(out, -0.5, 0.5).astype(np.float32)


def augment_particles(patch: np.ndarray, centres_zyx: np.ndarray, radii_vox: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """``patch`` (z, y, x, normalised to -0.5..0.5) with each particle drawn anew: inside a soft
    sphere of its radius around each of ``centres_zyx`` (patch voxels; ``radii_vox`` one per
    centre), the patch's low-passed deviation from its median (the particle's density less the voxel
    noise, a Gaussian of 1 voxel) is multiplied by ``g * exp(a * f - a^2 / 2)``, the noise kept:
    ``g`` 0.5-1.2 per particle (its contrast), ``f`` a unit-variance Gaussian random field of
    correlation length 0.6-1.5 voxels and ``a`` 0.3-0.8 per patch (its inner texture: lumpy at
    the scale of protein domains and subunits at 20 Angstrom per voxel). So a network meets each
    type fainter or stronger and with interiors no particle model of the simulator draws, in
    place and at its size; the background is untouched. Then the patch's own 0.5 / 99.5
    percentiles mapped back to -0.5..0.5. Pure: the same ``rng`` state, the same result.
    """
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(patch.shape), rng.uniform(0.6, 1.5))
    field /= max(field.std(), 1e-6)
    a = rng.uniform(0.3, 0.8)
    texture = np.exp(a * field - a * a / 2.0)
    gains = rng.uniform(0.5, 1.2, len(centres_zyx))
    factor = np.ones(patch.shape)
    shape = np.array(patch.shape)
    for c, r, g in zip(np.asarray(centres_zyx, float), np.asarray(radii_vox, float), gains):
        reach = int(np.ceil(1.3 * r)) + 1
        lo, hi = np.maximum(np.floor(c).astype(int) - reach, 0), np.minimum(np.floor(c).astype(int) + reach + 2, shape)
        if (hi <= lo).any():
            continue
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / max(r, 1e-6)
        w = np.clip((1.3 - d) / 0.3, 0.0, 1.0)  # 1 inside the radius, 0 beyond 1.3 radii
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        factor[box] += w * (g * texture[box] - 1.0)
    signal = gaussian_filter(patch - np.median(patch), 1.0)  # the particle's density, less the voxel noise
    out = patch + (np.maximum(factor, 0.0) - 1.0) * signal
    lo, hi = np.percentile(out, (0.5, 99.5))
    out = (out - lo) / max(hi - lo, 1e-6) - 0.5
    return np.clip(out, -0.5, 0.5).astype(np.float32)


def _patch_particles(run: TrainRun, origin: np.ndarray, config: HeatmapConfig) -> tuple[np.ndarray, np.ndarray]:
    """Centres (in the voxels of a patch at ``origin``) and radii (voxels) of every pick of ``run``
    (:func:`augment_particles` passes over those beyond the patch)."""
    centres, radii = [], []
    for name in config.classes:
        pts = run.grid_zyx[name]
        if len(pts):
            centres.append(pts * STRIDE - origin)
            radii.append(np.full(len(pts), PARTICLES[NAMES.index(name)].radius_A / run.voxel_size_A))
    if not centres:
        return np.zeros((0, 3)), np.zeros(0)
    return np.concatenate(centres), np.concatenate(radii)


def sample_batch(runs: list[TrainRun], step: int, config: HeatmapConfig, train: HeatmapTrainConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The patches ``(B, 1, *patch)`` and targets ``(B, C, *patch / 2)`` of one step (seeded by ``[seed, step]``)."""
    rng = np.random.default_rng([train.seed, step])
    patch = np.array(train.patch_vox)
    xs, ys = [], []
    for _ in range(train.batch):
        run = runs[rng.integers(len(runs))]
        shape = np.array(run.volume.shape)
        if (shape < patch).any():
            raise CziiInputError(None, f"run {run.name} ({tuple(shape)} voxels) is smaller than a patch {tuple(patch)}")
        classes = [n for n in config.classes if len(run.grid_zyx[n])]
        negatives = run.negatives_zyx
        if train.hard_negative and len(negatives) and rng.random() < train.hard_negative:
            centre = negatives[rng.integers(len(negatives))] * STRIDE + rng.uniform(-0.3, 0.3, 3) * patch
            origin = np.round(centre - patch / 2).astype(int)
        elif classes and rng.random() < train.near_pick:
            pts = run.grid_zyx[classes[rng.integers(len(classes))]]
            centre = pts[rng.integers(len(pts))] * STRIDE + rng.uniform(-0.3, 0.3, 3) * patch
            origin = np.round(centre - patch / 2).astype(int)
        else:
            origin = (rng.random(3) * (shape - patch + 1)).astype(int)
        origin = np.clip(origin, 0, shape - patch) // STRIDE * STRIDE
        x = run.volume[origin[0]:origin[0] + patch[0], origin[1]:origin[1] + patch[1], origin[2]:origin[2] + patch[2]]
        if train.particle_augment and rng.random() < train.particle_augment:
            x = augment_particles(x, *_patch_particles(run, origin, config), rng)
        if train.look_augment and rng.random() < train.look_augment:
            x = augment_look(x, rng)
            if train.look_respectral and config.spectral != "none":
                x = normalise(spectral_filter(x, config.spectral), config.clip_percentiles)
        y = render_targets(run.grid_zyx, origin / STRIDE, tuple(patch // STRIDE), run.voxel_size_A, config)
        x = x[None]
        for axis in (1, 2, 3):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(2, 3)), np.rot90(y, k, axes=(2, 3))
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return np.stack(xs), np.stack(ys)


def _median_s(seconds: list[float]) -> float | None:
    """The median of ``seconds`` without the first 3 where there are more than 3; None for none."""
    kept = seconds[3:] if len(seconds) > 3 else seconds
    return round(float(np.median(kept)), 4) if kept else None


def _log(out: Path, text: str) -> None:
    with open(out / LOG_FILE, "a") as f:
        f.write(text + "\n")


def _state_channels(state: dict) -> list[int]:
    return [int(state[k].shape[0]) for k in ("stem.0.weight", "down1.0.weight", "down2.0.weight")]


def training_start(init: str | Path | None = None, channels: tuple[int, int, int] | None = None
                   ) -> tuple[HeatmapConfig, Path | None]:
    """The network config and the weights a training starts from.

    ``init`` None: a new network of the default config (``channels``: its widths). ``"shipped"``:
    the shipped bundle's heatmap network (fine-tuning). A heatmap bundle folder, or its
    ``heatmap.pt``: that network with its bundle's config (views, window, test-time adaptation),
    so that the trained bundle predicts as its start did; a ``heatmap.pt`` with no
    ``heatmap.json`` beside it gets the default config at its own widths. ``channels`` wider
    than the start's: the start is widened (:func:`train_heatmap`). A missing or unreadable
    start is a :class:`CziiInputError` naming it.
    """
    import torch

    if init is None:
        return (HeatmapConfig() if channels is None else HeatmapConfig(channels=tuple(channels))), None
    path = DEFAULT_BUNDLE if str(init) == "shipped" else Path(init)
    weights = path / HEATMAP_WEIGHTS_FILE if path.is_dir() else path
    if (weights.parent / HEATMAP_CONFIG_FILE).is_file():
        config = load_heatmap_bundle(weights).config
    else:
        if not weights.is_file():
            raise CziiInputError(weights, "heatmap weights to start from not found")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            config = HeatmapConfig(channels=tuple(_state_channels(state.get("model", state))))
        except Exception as exc:  # noqa: BLE001 - any unreadable file: one line naming it
            raise CziiInputError(weights, f"not heatmap weights: {str(exc).splitlines()[0]}") from None
    if channels is not None:
        config = HeatmapConfig.from_dict({**config.to_dict(), "channels": list(channels)})
    return config, weights


def train_heatmap(sources: list[tuple[str | Path, list[str] | None]], out: str | Path,
                  config: HeatmapConfig | None = None, train: HeatmapTrainConfig | None = None,
                  init: str | Path | None = None, command: str | None = None,
                  predicted: pd.DataFrame | None = None) -> Path:
    """Train the heatmap network on ``sources`` (``(root, runs)``); resume from ``out/checkpoint.pt``.

    Writes ``out/heatmap.pt`` (the weights), ``out/heatmap.json`` (config, the default
    selection options and a training record: command, sources, settings, seconds,
    losses) and logs each step's loss to ``out/train.log``. ``init``: a ``heatmap.pt`` to
    start from (:func:`training_start` gives it and its config); when ``config.channels`` is wider
    than its network, the start is widened without changing its output
    (:func:`czii_kaggle.detectors.heatmap_net.widen_state_dict`); its bundle's selection options
    (thresholds, floor), where its ``heatmap.json`` is beside it, are the new bundle's until tuned.
    ``predicted``: a detector's picks on the training runs, for ``train.hard_negative``
    (:func:`load_runs`). Returns ``out``.
    """
    import torch

    from .detectors.heatmap_net import focal_heatmap_loss, widen_state_dict

    config = config or HeatmapConfig()
    train = train or HeatmapTrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(train.threads)
    torch.manual_seed(train.seed)
    device = heatmap_device() if train.device == "auto" else train.device
    net = build_net(config).to(memory_format=torch.channels_last_3d)  # before the runs: a bad --init fails at once
    init_channels = None
    if init is not None:
        state = torch.load(init, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        init_channels = _state_channels(state)
        if init_channels != list(config.channels):
            try:
                state = widen_state_dict(state, net)
            except ValueError as exc:
                raise CziiInputError(init, f"cannot start a {tuple(config.channels)} network from these weights: {exc}") from None
        net.load_state_dict(state)
    net = net.to(device)
    if train.hard_negative and predicted is None:
        raise CziiInputError(out, "hard_negative needs a detector's picks on the training runs (--hard-negatives CSV)")
    runs = load_runs(sources, config, predicted)
    config = HeatmapConfig.from_dict({**config.to_dict(), "voxel_size_A": float(np.median([r.voxel_size_A for r in runs]))})
    opt = torch.optim.AdamW(net.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    ckpt_path = out / CHECKPOINT_FILE
    step, losses, seconds = 0, [], 0.0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, losses, seconds = ckpt["step"], ckpt["losses"], ckpt["seconds"]
        _log(out, f"resumed at step {step}")
    net.train()
    t_start = time.perf_counter() - seconds
    data_s, compute_s = [], []  # this session's steps: drawing the batch (CPU), and the network's step to its loss
    while step < train.steps:
        lr = train.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / train.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        x, y = sample_batch(runs, step, config, train)
        t1 = time.perf_counter()
        xt = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last_3d)
        loss = focal_heatmap_loss(net(xt), torch.from_numpy(y).to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())  # waits for the device: the step's compute is done
        data_s.append(t1 - t0)
        compute_s.append(time.perf_counter() - t1)
        _log(out, f"step {step} loss {losses[-1]:.4f} lr {lr:.5f} t {time.perf_counter() - t_start:.0f}s")
        if step % train.checkpoint_every == 0 or step == train.steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step, "losses": losses,
                        "seconds": time.perf_counter() - t_start}, tmp)
            tmp.replace(ckpt_path)
    weights = out / HEATMAP_WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, tmp)
    tmp.replace(weights)
    record = {
        "command": command or " ".join(sys.argv),
        "sources": sources_record(sources),
        "runs": [r.name for r in runs],
        "train_config": asdict(train),
        "init": str(init) if init else None,
        "init_sha256": file_sha256(init) if init else None,  # which weights "--init shipped" meant then
        "init_channels": init_channels,
        "steps": step,
        "seconds": round(time.perf_counter() - t_start, 1),
        "loss_first_50": float(np.mean(losses[:50])) if losses else None,
        "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "device": device,
        "hard_negatives": int(sum(len(r.negatives_zyx) for r in runs)),
        # medians over this session's steps (a resumed run: the steps after resuming), the first 3 left out
        # where there are more (start-up: memory, kernel selection on a GPU)
        "step_seconds": {"data": _median_s(data_s), "compute": _median_s(compute_s), "steps": len(data_s)},
    }
    # a start bundle's selection options (thresholds, floor) are the trained bundle's starting point for tuning
    start_json = Path(init).parent / HEATMAP_CONFIG_FILE if init is not None else None
    aggregate = load_heatmap_bundle(init).aggregate if start_json and start_json.is_file() else default_aggregate_config()
    save_heatmap_json(out, config=config.to_dict(), aggregate=aggregate.to_dict(), training=record)
    return out


def recalibrate_heatmap(bundle_dir: str | Path, sources: list[tuple[str | Path, list[str] | None]], out: str | Path,
                        bn_adapt: float | None = None, command: str | None = None, replace: bool = False,
                        device: str | None = None) -> Path:
    """A copy of the bundle ``bundle_dir`` in the new folder ``out`` whose heatmap network's batch-norm
    statistics are re-estimated on the whole tomograms of ``sources`` (``(root, runs)``, ``train``
    split; ``runs`` None: all).

    Training estimates them on its patches, most of them centred near a particle; prediction
    sees whole tomograms, mostly empty. :func:`czii_kaggle.detectors.heatmap.adapt_batchnorm`
    over every window of the given runs (weight 1) replaces them; the weights are otherwise
    unchanged. ``bn_adapt`` (when given) sets the copy's test-time adaptation. Every other file of
    the bundle is copied as it is (not a training's checkpoint and log); the ONNX copy is exported
    anew (where the onnx package is installed); ``out`` must be absent or empty unless ``replace``
    (an earlier output of the caller's, swapped out only when the new one is complete; never
    ``bundle_dir`` itself); ``device``: torch's device for the windows (None or ``"auto"``: the first usable GPU,
    else the CPU; :func:`czii_kaggle.detectors.heatmap.heatmap_device`); the record is
    ``heatmap.json`` ``training.recalibration``. A run that cannot be read is reported and left
    out (none readable: :class:`CziiInputError`). The thresholds (``heatmap.json``,
    ``ensemble.json``) were tuned for the old statistics: tune the copy again. Returns ``out``.
    """
    from .bundle import export_heatmap_onnx, load_heatmap_bundle
    from .detectors.heatmap import adapt_batchnorm, load_net, pad_to_windows
    from .outputs import atomic_dir, atomic_path, copy_file

    import torch

    bundle_dir, out = Path(bundle_dir), Path(out)
    if out.resolve() == bundle_dir.resolve():
        raise CziiInputError(out, "is the bundle to recalibrate: give a new folder")
    bundle = load_heatmap_bundle(bundle_dir)
    if not bundle_dir.is_dir():
        raise CziiInputError(bundle_dir, "not a bundle folder (recalibrate-heatmap copies the whole bundle)")
    config = bundle.config if bn_adapt is None else HeatmapConfig.from_dict({**bundle.config.to_dict(),
                                                                            "bn_adapt": float(bn_adapt)})
    device = heatmap_device() if device in (None, "auto") else device
    net = load_net(bundle).to(device)
    runs, failed = [], []
    for root, names in sources:
        for run in (names if names is not None else layout.list_runs(root, "train")):
            runs.append((Path(root), run))

    def volumes():
        for root, run in runs:
            try:
                path = layout.tomogram_path(root, "train", run)
                yield pad_to_windows(read_input(path, config)[0], config, path)  # too small: named, skipped
            except (CziiInputError, OSError, ValueError) as exc:
                failed.append(f"{root}:{run}: {exc}")
                print(f"skipped: {failed[-1]}", file=sys.stderr)

    t0 = time.perf_counter()
    with atomic_dir(out, replace=replace) as tmp:  # nothing is left behind on failure
        adapted = adapt_batchnorm(net, volumes(), config, 1.0)
        if len(failed) == len(runs):
            raise CziiInputError(out, f"none of the {len(runs)} runs could be read to recalibrate on")
        for f in sorted(bundle_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name not in (
                    HEATMAP_WEIGHTS_FILE, HEATMAP_ONNX_FILE, CHECKPOINT_FILE, LOG_FILE):  # training's own files stay
                copy_file(f, tmp / f.name)
        with atomic_path(tmp / HEATMAP_WEIGHTS_FILE) as w:
            torch.save({k: v.detach().cpu().contiguous() for k, v in adapted.state_dict().items()}, w)
        record = {
            "command": command or " ".join(sys.argv),
            "from": str(bundle_dir),
            "sources": sources_record(sources),
            "runs": len(runs) - len(failed),
            "skipped": failed,
            "seconds": round(time.perf_counter() - t0, 1),
            "device": str(device),
        }
        save_heatmap_json(tmp, config=config.to_dict(), training={**bundle.record, "recalibration": record}, onnx={})
        if importlib.util.find_spec("onnx") is not None:
            export_heatmap_onnx(tmp)
    return out
