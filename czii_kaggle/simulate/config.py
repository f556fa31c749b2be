"""Simulation options: the difficulty scale, :class:`SimConfig` and the constants of a real run."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..layout import KAGGLE_VOXEL_SIZE_A

DIFFICULTY: dict[str, float] = {"easy": 0.2, "medium": 0.5, "hard": 0.85}

#: Mean pick counts per type over the five real training runs with picks
#: (``../shared/czii-real/README.md``), for a full 184 x 630 x 630 tomogram.
REAL_MEAN_COUNTS: dict[str, float] = {
    "apo-ferritin": 55.0,
    "beta-amylase": 11.4,
    "beta-galactosidase": 13.0,
    "ribosome": 42.2,
    "thyroglobulin": 31.4,
    "virus-like-particle": 14.2,
}

#: Std (density units, protein ~ 1) of the sample's structural density noise at difficulty 0
#: (it doubles at difficulty 1); see :class:`DifficultyKnobs`.
STRUCTURE_SIGMA: float = 0.3

#: Full Kaggle tomogram shape ``(z, y, x)``: counts scale with the volume relative to it.
FULL_SHAPE_VOX: tuple[int, int, int] = (184, 630, 630)




def difficulty_value(difficulty: float | str) -> float:
    """A difficulty as a float in [0, 1]; accepts the names of :data:`DIFFICULTY` and numbers as text."""
    if isinstance(difficulty, str) and difficulty in DIFFICULTY:
        return DIFFICULTY[difficulty]
    try:
        d = float(difficulty)  # a number, or a number written as text ("0.3")
    except (TypeError, ValueError):
        raise ValueError(
            f"difficulty must be a number in [0, 1] or one of {', '.join(DIFFICULTY)}, not {difficulty!r}"
        ) from None
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], not {difficulty!r}")
    return d


@dataclass(frozen=True)
class SimConfig:
    """Options of one simulated tomogram.

    Attributes
    ----------
    shape_vox : (int, int, int)
        Tomogram shape ``(z, y, x)`` in voxels (Kaggle: 184 x 630 x 630).
    voxel_size_A : float
        Voxel size in Angstrom (Kaggle's level 0: 10.012444...).
    difficulty : float or str
        0 (clean) .. 1 (very hard), or a name of :data:`DIFFICULTY`. Raises the
        noise, the clutter, the membranes, the blur (B-factor) and the gradient.
    tilt_range_deg : float
        Tilt series range +-degrees about the y axis; beyond it is the missing wedge.
    clutter : bool
        Add non-target proteins, gold beads and membranes.
    defocus_um : (float, float)
        Range of the defocus (micrometre, underfocus) drawn once per tomogram.
    bfactor_A2 : float
        B-factor (Angstrom^2) of the CTF envelope ``exp(-B k^2 / 4)`` at difficulty 0;
        it grows by ``600 * difficulty``.
    amplitude_contrast : float
        Amplitude-contrast fraction of the CTF.
    denoise_sigma_vox : float
        Sigma (voxels) of the final Gaussian low-pass standing for Kaggle's denoising.
    noise_scale : float
        Multiplies the difficulty's noise standard deviation (1: as calibrated).
    particle_jitter : float
        Per-particle relative spread of size (x 0.5) and contrast, uniform +-.
    look : str or mapping
        How each run looks (:mod:`czii_kaggle.simulate.look`): ``"classic"`` (the fixed
        rendering the shipped model was trained on; the options above), ``"random"`` (every
        run draws its own look from :data:`~czii_kaggle.simulate.look.LOOK_RANGES`), or a
        mapping ``{field: value | [choices] | [lo, hi]}`` that fixes or restricts some
        fields of a random look (e.g. ``{"filter": "median"}`` or
        ``{"particle_model": ["envelope", "subunits"]}``).
    """

    shape_vox: tuple[int, int, int] = FULL_SHAPE_VOX
    voxel_size_A: float = KAGGLE_VOXEL_SIZE_A
    difficulty: float | str = 0.5
    tilt_range_deg: float = 60.0
    clutter: bool = True
    defocus_um: tuple[float, float] = (2.0, 4.0)
    bfactor_A2: float = 500.0
    amplitude_contrast: float = 0.07
    denoise_sigma_vox: float = 1.0
    noise_scale: float = 1.0
    particle_jitter: float = 0.1
    look: str | Mapping = "classic"

    def __post_init__(self):
        if len(self.shape_vox) != 3 or any(int(n) < 8 for n in self.shape_vox):
            raise ValueError(f"shape_vox must be 3 sizes >= 8, not {self.shape_vox!r}")
        object.__setattr__(self, "shape_vox", tuple(int(n) for n in self.shape_vox))
        difficulty_value(self.difficulty)
        if not 0.0 < self.tilt_range_deg <= 90.0:
            raise ValueError(f"tilt_range_deg must be in (0, 90], not {self.tilt_range_deg!r}")
        if self.voxel_size_A <= 0:
            raise ValueError(f"voxel_size_A must be > 0, not {self.voxel_size_A!r}")
        lo, hi = self.defocus_um
        if not 0.0 < lo <= hi:
            raise ValueError(f"defocus_um must be a range 0 < lo <= hi, not {self.defocus_um!r}")
        if isinstance(self.look, str):
            if self.look not in ("classic", "random"):
                raise ValueError(f"look must be 'classic', 'random' or a mapping of look fields, not {self.look!r}")
        else:
            from .look import check_look_spec

            object.__setattr__(self, "look", check_look_spec(self.look))

    @property
    def difficulty_float(self) -> float:
        return difficulty_value(self.difficulty)


@dataclass(frozen=True)
class DifficultyKnobs:
    """What a difficulty sets (see :func:`difficulty_knobs`).

    Attributes
    ----------
    noise_sigma : float
        Std (density units, protein ~ 1) of the white noise added before the
        microscope filter; it then carries the missing wedge.
    post_noise_fraction : float
        Std of the white noise added after the wedge, as a fraction of ``noise_sigma``.
    structure_sigma : float
        Std (density units) of white density fluctuations added to the sample before
        the CTF (solvent and ice structure, unresolved small proteins): imaged like the
        particles, they give the background its blobby texture at particle scale.
    extra_bfactor_A2 : float
        Added to :attr:`SimConfig.bfactor_A2` (Angstrom^2).
    clutter_per_full : float
        Mean number of non-target protein blobs in a full-size tomogram.
    membranes_per_full : float
        Mean number of membranes in a full-size tomogram.
    gold_per_full : float
        Mean number of gold beads in a full-size tomogram.
    gradient_fraction : float
        Amplitude of the slow intensity trend as a fraction of the volume's std.
    """

    noise_sigma: float
    post_noise_fraction: float
    structure_sigma: float
    extra_bfactor_A2: float
    clutter_per_full: float
    membranes_per_full: float
    gold_per_full: float
    gradient_fraction: float


def difficulty_knobs(difficulty: float | str, noise_scale: float = 1.0) -> DifficultyKnobs:
    """The noise, blur and clutter of a difficulty (float in [0, 1] or a name).

    Noise grows geometrically (x 10 in std from 0 to 1), structural noise x 2; clutter, membranes,
    blur and gradient grow linearly.
    """
    d = difficulty_value(difficulty)
    return DifficultyKnobs(
        noise_sigma=noise_scale * 0.1 * 10.0**d,
        post_noise_fraction=0.12,
        structure_sigma=noise_scale * STRUCTURE_SIGMA * (1.0 + d),
        extra_bfactor_A2=600.0 * d,
        clutter_per_full=60.0 + 340.0 * d,
        membranes_per_full=0.3 + 1.7 * d,
        gold_per_full=1.0 + 2.0 * d,
        gradient_fraction=0.1 + 0.3 * d,
    )
