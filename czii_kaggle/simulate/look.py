"""How a simulated run looks: particle models, microscope, reconstruction filter, scene, intensities.

A model trained on one rendering style learns that style (the shipped model scores 0.93
on the classic look and far lower on other renderers). A random look makes every run
draw its style from the wide ranges of :data:`LOOK_RANGES`, recorded per run
(``simulation.json`` and ``looks/{run}.json`` beside the data root), so that no single
style is what a model learns, and so that a family of looks can be held out to measure
generalisation (``benchmarks/bench_detection.py --domains``).

Categorical fields (the *families* a benchmark holds out): ``particle_model``,
``ctf_mode``, ``filter``. Numeric fields are drawn from ``(mild, wild)`` ranges:
``value = mild + u * spread(d) * (wild - mild)``, ``u`` uniform in 0..1 and
``spread(d) = 0.4 + 0.6 d`` for difficulty ``d``, so the difficulty knob scales the whole
range (at ``d = 1`` the full range, at ``d = 0`` its mild 40 %). The noise level itself
still follows :func:`czii_kaggle.simulate.config.difficulty_knobs`, times ``noise_scale``.

A spec (:class:`SimConfig` ``look`` mapping) fixes a field (``{"filter": "median"}``),
restricts a categorical one to some choices (``{"ctf_mode": ["flipped", "none"]}``) or a
numeric one to a sub-range (``{"tilt_range_deg": [40, 50]}``, drawn uniformly there,
difficulty ignored).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np

# CTF handling (phase-flipped |CTF|, signed CTF, envelope only) and the reconstruction's final filter:
# their one home is the module that applies them.
from .microscope import CTF_MODES, EXTRA_FILTERS, FILTERS

#: Particle models a random look draws from (see :mod:`czii_kaggle.simulate.shapes`): the classic
#: hand-made blobs, filled envelopes of the real dimensions (hollow complexes: shells), clouds of subunits.
PARTICLE_MODELS: tuple[str, ...] = ("classic", "envelope", "subunits")

#: Categorical fields and their choices.
LOOK_CHOICES: dict[str, tuple[str, ...]] = {
    "particle_model": PARTICLE_MODELS,
    "ctf_mode": CTF_MODES,
    "filter": FILTERS,
}

#: Choices a look takes only where its spec names them (``{"particle_model": ["classic", "lobes"]}``):
#: added after the benchmarks' looks were fixed, so that an unrestricted or held-out spec draws
#: what it drew before. ``lobes``: a few large random parts of the real extents (``shapes.lobe_blobs``).
#: ``diffusion``: edge-preserving nonlinear diffusion (``microscope.nonlinear_diffusion``), the filter no
#: network here trained on: the look of the validation runs of an unseen look (``benchmarks/bench_selection.py --val-looks``);
#: ``wiener``: the locally adaptive Wiener filter (``microscope.adaptive_wiener``), a second such filter.
EXTRA_CHOICES: dict[str, tuple[str, ...]] = {"particle_model": ("lobes",), "filter": EXTRA_FILTERS}

#: Numeric fields: ``(mild, wild)`` ends; the difficulty scales how far towards ``wild`` a draw may go.
LOOK_RANGES: dict[str, tuple[float, float]] = {
    "size_jitter": (0.05, 0.15),  # per-particle size spread, uniform +-
    "contrast": (1.2, 0.5),  # protein contrast, times each type's TYPE_CONTRAST
    "type_contrast_spread": (0.05, 0.3),  # each type's own factor: uniform 1 +- this
    "defocus_um": (2.5, 6.0),  # underfocus, micrometre (drawn both ways from 2.5: see below)
    "amplitude_contrast": (0.07, 0.2),
    "bfactor_A2": (300.0, 1500.0),  # CTF envelope
    "tilt_range_deg": (70.0, 40.0),  # +- tilt; beyond it the missing wedge
    "noise_scale": (0.8, 1.6),  # times the difficulty's noise
    "noise_exponent": (0.0, 1.5),  # noise power ~ f^-exponent: 0 white, 1 pink, 1.5 reddish
    "filter_size_vox": (0.8, 2.2),  # Gaussian sigma / low-pass period / median passes / diffusion steps / 4
    "anisotropy": (1.5, 3.0),  # z sigma / xy sigma of the anisotropic filter
    "crowding": (0.5, 3.0),  # clutter proteins, times the difficulty's count
    "membranes": (0.5, 2.5),  # times the difficulty's count
    "gold": (0.3, 3.0),  # times the difficulty's count
    "ice_per_full": (0.0, 4.0),  # ice contamination blobs per full tomogram
    "gradient": (0.5, 3.0),  # slow intensity trend, times the difficulty's
    "log10_scale": (0.0, 3.0),  # output scale 10**(+-this)
    "offset": (0.0, 50.0),  # output offset, +- this (in output std units)
}

#: Numeric fields drawn symmetrically about their mild end (sign or direction random).
_SYMMETRIC = {"log10_scale", "offset"}

#: Smallest defocus a look draws (micrometre): defocus is uniform in [1, 2.5 + spread * 3.5].
_MIN_DEFOCUS_UM = 1.0


@dataclass(frozen=True)
class Look:
    """One run's rendering style (every field documented in :data:`LOOK_RANGES` / :data:`LOOK_CHOICES`).

    :func:`classic_look` is the style of the classic simulator; :func:`draw_look` draws one.
    """

    particle_model: str = "classic"
    ctf_mode: str = "flipped"
    filter: str = "gaussian"
    size_jitter: float | None = None  # None: half SimConfig.particle_jitter (classic)
    contrast: float = 1.0
    type_contrast_spread: float = 0.0
    defocus_um: float | None = None  # None: drawn from SimConfig.defocus_um (classic)
    amplitude_contrast: float = 0.07
    bfactor_A2: float | None = None  # None: SimConfig.bfactor_A2 + the difficulty's (classic)
    tilt_range_deg: float | None = None  # None: SimConfig.tilt_range_deg
    noise_scale: float = 1.0
    noise_exponent: float = 0.0
    filter_size_vox: float = 1.0
    anisotropy: float = 1.0
    crowding: float = 1.0
    membranes: float = 1.0
    gold: float = 1.0
    ice_per_full: float = 0.0
    gradient: float = 1.0
    log10_scale: float = 0.0
    offset: float = 0.0
    seed: int = 0  # seeds what a look fixes per run: the subunit clouds, the per-type contrasts

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Look:
        return cls(**dict(d))

    @property
    def is_classic(self) -> bool:
        return self == classic_look()


def classic_look() -> Look:
    """The classic simulator's look (what the shipped model was trained on)."""
    return Look()


def spread(difficulty: float) -> float:
    """Fraction of each ``(mild, wild)`` range a look of this difficulty may reach."""
    return 0.4 + 0.6 * float(difficulty)


def check_look_spec(spec: Mapping) -> dict:
    """Validate a look spec (see the module docstring); returns it as a plain JSON-ready dict."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a look spec must be a mapping, not {type(spec).__name__}")
    known = {f.name for f in fields(Look)} - {"seed"}
    out = {}
    for key, value in spec.items():
        if key not in known:
            raise ValueError(f"unknown look field {key!r}; known: {', '.join(sorted(known))}")
        if key in LOOK_CHOICES:
            choices = [value] if isinstance(value, str) else list(value)
            allowed = LOOK_CHOICES[key] + EXTRA_CHOICES.get(key, ())
            bad = [c for c in choices if c not in allowed]
            if bad or not choices:
                raise ValueError(f"look {key} must be among {allowed}, not {value!r}")
            out[key] = choices[0] if len(choices) == 1 else choices
        else:
            vals = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
            if len(vals) not in (1, 2) or any(not math.isfinite(v) for v in vals):
                raise ValueError(f"look {key} must be a number or a [lo, hi] range, not {value!r}")
            out[key] = vals[0] if len(vals) == 1 else sorted(vals)
    return out


def hold_out(spec: Mapping | str | None, held_out: Mapping[str, str]) -> dict:
    """A random-look spec without the held-out families: ``{"filter": "median"}`` -> filter among the rest.

    ``spec``: a spec to start from (``None`` / ``"random"``: unrestricted). Used to train on every
    look but one family and measure on that family (leave one family out).
    """
    out = dict(check_look_spec({} if spec in (None, "random") else spec))
    for key, value in held_out.items():
        if key not in LOOK_CHOICES:
            raise ValueError(f"only a family can be held out ({', '.join(LOOK_CHOICES)}), not {key!r}")
        current = out.get(key, list(LOOK_CHOICES[key]))
        current = [current] if isinstance(current, str) else list(current)
        rest = [c for c in current if c != value]
        if value not in LOOK_CHOICES[key] + EXTRA_CHOICES.get(key, ()) or not rest:
            raise ValueError(f"cannot hold out {key}={value!r} from {current}")
        out[key] = rest[0] if len(rest) == 1 else rest
    return check_look_spec(out)


def draw_look(rng: np.random.Generator, difficulty: float, spec: Mapping | None = None) -> Look:
    """A random look for one run (see the module docstring).

    Parameters
    ----------
    rng : numpy Generator
        The run's own look stream.
    difficulty : float
        0..1; scales how far the numeric fields may reach.
    spec : mapping, optional
        Fixed values / restricted choices or ranges (:func:`check_look_spec`).
    """
    spec = check_look_spec(spec or {})
    s = spread(difficulty)
    values: dict = {}
    for key, choices in LOOK_CHOICES.items():  # always draw, so fixing one field leaves the others as they were
        pick = choices[int(rng.integers(len(choices)))]
        want = spec.get(key)
        if isinstance(want, str):
            pick = want
        elif want is not None:
            pick = want[int(rng.integers(len(want)))]
        values[key] = pick
    for key, (mild, wild) in LOOK_RANGES.items():
        u = float(rng.random())
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if key == "defocus_um":
            v = _MIN_DEFOCUS_UM + u * (mild + s * (wild - mild) - _MIN_DEFOCUS_UM)
        else:
            v = mild + u * s * (wild - mild)
            if key in _SYMMETRIC:
                v *= sign
        want = spec.get(key)
        if isinstance(want, float):
            v = want
        elif want is not None:
            v = want[0] + u * (want[1] - want[0])
        values[key] = float(v)
    values["seed"] = int(rng.integers(2**31))
    return Look(**values)


def type_contrasts(look: Look, names: tuple[str, ...]) -> dict[str, float]:
    """Each type's contrast factor of this look: ``contrast * (1 +- type_contrast_spread)``, fixed per look."""
    rng = np.random.default_rng([look.seed, 1])
    f = 1.0 + look.type_contrast_spread * rng.uniform(-1.0, 1.0, len(names))
    return {n: look.contrast * float(v) for n, v in zip(names, f)}
