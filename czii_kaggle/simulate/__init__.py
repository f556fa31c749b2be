"""Simulated cryo-ET tomograms and picks in the exact Kaggle layout.

No real tomogram voxels are available, so this package makes the training and test
data. It follows the physics that makes the real problem hard; one module per job:

- :mod:`~czii_kaggle.simulate.config`: :class:`SimConfig`, the difficulty scale and
  what it sets (:func:`difficulty_knobs`), the real runs' mean counts;
- :mod:`~czii_kaggle.simulate.look`: a run's rendering style (:class:`Look`): the
  classic look, or one drawn from wide documented ranges (particle model, contrast, CTF,
  wedge, noise colour, reconstruction filter, crowding, ice, intensities);
- :mod:`~czii_kaggle.simulate.shapes`: particle density models (classic blobs, envelopes
  of the real dimensions :data:`DIMENSIONS_A`, subunit clouds), random rotations;
- :mod:`~czii_kaggle.simulate.layouts`: where particles sit (random like a real run, or
  the real runs' picks);
- :mod:`~czii_kaggle.simulate.scene`: the sample's density (targets, clutter proteins,
  gold, membranes, ice contamination);
- :mod:`~czii_kaggle.simulate.microscope`: CTF, missing wedge, noise and the
  reconstruction's filter in one FFT pair;
- :mod:`~czii_kaggle.simulate.tomogram`: one tomogram from picks (:func:`simulate_tomogram`);
- :mod:`~czii_kaggle.simulate.disk`: a dataset on disk in the Kaggle layout
  (:func:`simulate_dataset`);
- :mod:`~czii_kaggle.simulate.measure`: matched-filter detection SNR (of our templates, and of
  the data's own class average).

One 184 x 630 x 630 tomogram takes a few seconds and about 1 GiB
(``benchmarks/results/simulate.md``).

Units: Angstrom (``_A``) for positions, radii and lengths; voxels (``_vox``) for array
indices; arrays are ``(z, y, x)``; voxel index ``i`` <-> ``i * voxel_size_A``.
"""
from .config import (
    DIFFICULTY,
    FULL_SHAPE_VOX,
    KAGGLE_VOXEL_SIZE_A,
    REAL_MEAN_COUNTS,
    STRUCTURE_SIGMA,
    DifficultyKnobs,
    SimConfig,
    difficulty_knobs,
    difficulty_value,
)
from .disk import SimDataset, simulate_dataset
from .layouts import count_scales, crop_layout, random_layout, real_layouts
from .look import EXTRA_CHOICES, LOOK_CHOICES, LOOK_RANGES, Look, classic_look, draw_look, hold_out
from .measure import class_average_snr, detection_snr
from .microscope import add_gradient, apply_microscope, ctf_envelope, electron_wavelength_A, wedge_mask
from .scene import render_clutter, render_gold, render_ice, render_membranes, render_targets
from .shapes import (
    DIMENSIONS_A,
    TYPE_CONTRAST,
    Blob,
    model_blobs,
    particle_blobs,
    random_rotations,
    render_particle,
)
from .tomogram import simulate_tomogram

__all__ = [
    "DIFFICULTY", "FULL_SHAPE_VOX", "KAGGLE_VOXEL_SIZE_A", "REAL_MEAN_COUNTS",
    "STRUCTURE_SIGMA", "DifficultyKnobs", "SimConfig", "difficulty_knobs", "difficulty_value", "SimDataset",
    "simulate_dataset", "count_scales", "crop_layout", "random_layout", "real_layouts",
    "EXTRA_CHOICES", "LOOK_CHOICES", "LOOK_RANGES", "Look", "classic_look", "draw_look", "hold_out", "detection_snr",
    "class_average_snr", "add_gradient",
    "apply_microscope", "ctf_envelope", "electron_wavelength_A", "wedge_mask", "render_clutter", "render_gold",
    "render_ice", "render_membranes", "render_targets", "DIMENSIONS_A", "TYPE_CONTRAST", "Blob", "model_blobs",
    "particle_blobs", "random_rotations", "render_particle", "simulate_tomogram",
]  # fmt: skip
