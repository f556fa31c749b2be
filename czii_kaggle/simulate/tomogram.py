"""One simulated tomogram: scene density -> microscope -> gradient and intensity scale."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .. import frames
from ..particles import NAMES
from .config import FULL_SHAPE_VOX, SimConfig, difficulty_knobs
from .look import Look, classic_look, type_contrasts
from .microscope import _mean_std, add_gradient, apply_microscope
from .scene import (
    CLASSIC_CLUTTER_RADIUS_A,
    WIDE_CLUTTER_RADIUS_A,
    _poisson_quantile,
    _slab_vox,
    render_clutter,
    render_gold,
    render_ice,
    render_membranes,
    render_targets,
)
from .shapes import TYPE_CONTRAST, model_blobs


def simulate_tomogram(
    picks: pd.DataFrame,
    config: SimConfig = SimConfig(),
    seed: int = 0,
    timings: dict[str, float] | None = None,
    look: Look | None = None,
) -> np.ndarray:
    """Simulate one ``denoised`` tomogram holding ``picks``.

    Parameters
    ----------
    picks : DataFrame
        ``particle_type, x, y, z`` (Angstrom) of the particles to place (any experiment).
    config : SimConfig
        Shape, voxel size, difficulty and microscope.
    seed : int
        Everything random (orientations, clutter, defocus, noise) follows from it.
    timings : dict, optional
        When given, receives the seconds spent in ``"render"`` (targets and clutter),
        ``"microscope"`` (FFT filters and noise) and ``"scale"`` (gradient, normalisation).
    look : Look, optional
        The run's rendering style (:mod:`czii_kaggle.simulate.look`); the classic look
        (``config``'s microscope options) when omitted. ``config.look`` is not read here:
        :func:`~czii_kaggle.simulate.disk.simulate_dataset` draws each run's look from it.

    Returns
    -------
    ndarray float32, shape ``config.shape_vox`` (z, y, x)
        Particles dark; zero mean and unit std, then the look's scale and offset
        (classic: none).
    """
    frames.validate(picks, frames.PICKS)
    look = classic_look() if look is None else look
    classic = look.is_classic
    vs = config.voxel_size_A
    knobs = difficulty_knobs(config.difficulty, config.noise_scale * look.noise_scale)
    streams = np.random.SeedSequence(seed).spawn(8)
    rng_part, rng_clut, rng_gold, rng_mem, rng_mic, rng_grad, rng_count, rng_ice = map(np.random.default_rng, streams)
    vol_frac = float(np.prod(config.shape_vox) / np.prod(FULL_SHAPE_VOX))
    # clutter counts from fixed quantiles: a harder tomogram of the same seed holds the
    # same clutter and more (each kind has its own stream, drawn item by item)
    u_clutter, u_gold, u_mem = rng_count.random(3)

    t0 = time.perf_counter()
    density = np.zeros(config.shape_vox, np.float32)
    factors = type_contrasts(look, NAMES)
    render_targets(
        density, picks, vs, rng_part, config.particle_jitter,
        shapes=model_blobs(look.particle_model, look.seed),
        size_jitter=0.5 * config.particle_jitter if look.size_jitter is None else look.size_jitter,
        contrasts={n: TYPE_CONTRAST[n] * factors[n] for n in NAMES},
    )
    if config.clutter:
        z_range = _slab_vox(picks, config.shape_vox, vs)
        n_clutter = _poisson_quantile(u_clutter, knobs.clutter_per_full * look.crowding * vol_frac)
        radius_A = CLASSIC_CLUTTER_RADIUS_A if classic else WIDE_CLUTTER_RADIUS_A
        render_clutter(density, picks, vs, rng_clut, n_clutter, z_range, radius_A)
        n_gold = _poisson_quantile(u_gold, knobs.gold_per_full * look.gold * vol_frac)
        render_gold(density, vs, rng_gold, n_gold, z_range)
        n_mem = _poisson_quantile(u_mem, knobs.membranes_per_full * look.membranes * max(vol_frac, 0.05))
        render_membranes(density, vs, rng_mem, n_mem)
        if look.ice_per_full > 0:
            render_ice(density, vs, rng_ice, int(rng_ice.poisson(look.ice_per_full * max(vol_frac, 0.05))), z_range)

    t1 = time.perf_counter()
    defocus_um = rng_mic.uniform(*config.defocus_um) if look.defocus_um is None else look.defocus_um
    bfactor_A2 = config.bfactor_A2 + knobs.extra_bfactor_A2 if look.bfactor_A2 is None else look.bfactor_A2
    vol = apply_microscope(
        density,
        vs,
        rng_mic,
        defocus_A=1e4 * defocus_um,
        noise_sigma=knobs.noise_sigma,
        post_noise_sigma=knobs.noise_sigma * knobs.post_noise_fraction,
        structure_sigma=knobs.structure_sigma,
        tilt_range_deg=config.tilt_range_deg if look.tilt_range_deg is None else look.tilt_range_deg,
        amplitude_contrast=config.amplitude_contrast if classic else look.amplitude_contrast,
        bfactor_A2=bfactor_A2,
        denoise_sigma_vox=config.denoise_sigma_vox if classic else look.filter_size_vox,
        ctf_mode=look.ctf_mode,
        noise_exponent=look.noise_exponent,
        filter=look.filter,
        anisotropy=look.anisotropy,
    )
    t2 = time.perf_counter()
    add_gradient(vol, rng_grad, knobs.gradient_fraction * look.gradient * _mean_std(vol)[1])
    mean, std = _mean_std(vol)
    vol -= np.float32(mean)
    vol /= np.float32(max(std, 1e-12))
    if look.log10_scale or look.offset:
        scale = np.float32(10.0**look.log10_scale)
        vol *= scale
        vol += np.float32(look.offset) * scale
    if timings is not None:
        timings.update(render=t1 - t0, microscope=t2 - t1, scale=time.perf_counter() - t2)
    return vol
