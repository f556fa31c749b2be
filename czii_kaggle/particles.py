"""The particle table: the one place that knows the six particle types.

Radii, metric weights, copick labels and colours follow the competition's
copick config and metric (``../shared/czii-real``). Every other module reads
them from here; nothing else types a radius or a weight again.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Particle:
    """One particle type.

    Attributes
    ----------
    name : str
        Copick / Kaggle name, e.g. ``"apo-ferritin"``.
    radius_A : float
        Radius in Angstrom (the metric matches within ``0.5 * radius_A``).
    weight : int
        Weight in the competition metric (0: not scored).
    difficulty : str
        ``"easy"`` or ``"hard"`` as the competition calls them.
    label : int
        Copick label (1..6).
    color : tuple of int
        RGBA colour, 0..255, from the copick config.
    pdb_id : str
        PDB entry the particle was made from.
    """

    name: str
    radius_A: float
    weight: int
    difficulty: str
    label: int
    color: tuple[int, int, int, int]
    pdb_id: str

    @property
    def scored(self) -> bool:
        return self.weight > 0

    @property
    def color_rgb(self) -> tuple[float, float, float]:
        """Colour as matplotlib RGB floats in 0..1."""
        return tuple(c / 255.0 for c in self.color[:3])


PARTICLES: tuple[Particle, ...] = (
    Particle("apo-ferritin", 60.0, 1, "easy", 1, (0, 117, 220, 128), "4V1W"),
    Particle("beta-amylase", 65.0, 0, "hard", 2, (153, 63, 0, 128), "1FA2"),
    Particle("beta-galactosidase", 90.0, 2, "hard", 3, (76, 0, 92, 128), "6X1Q"),
    Particle("ribosome", 150.0, 1, "easy", 4, (0, 92, 49, 128), "6EK0"),
    Particle("thyroglobulin", 130.0, 2, "hard", 5, (43, 206, 72, 128), "6SCJ"),
    Particle("virus-like-particle", 135.0, 1, "easy", 6, (255, 204, 153, 128), "6N4V"),
)
"""All six types, in copick label order. YOLO class id = index in this tuple."""

BY_NAME: dict[str, Particle] = {p.name: p for p in PARTICLES}
NAMES: tuple[str, ...] = tuple(p.name for p in PARTICLES)
SCORED: tuple[str, ...] = tuple(p.name for p in PARTICLES if p.scored)
#: name -> YOLO class id (index in PARTICLES).
CLASS_IDS: dict[str, int] = {p.name: i for i, p in enumerate(PARTICLES)}
#: name -> radius in Angstrom.
RADII_A: dict[str, float] = {p.name: p.radius_A for p in PARTICLES}

#: F-beta's beta in the competition metric (recall-weighted).
METRIC_BETA: float = 4.0
#: The metric matches a candidate to a reference within this fraction of the radius.
MATCH_RADIUS_FRACTION: float = 0.5


def get(name: str) -> Particle:
    """Return the particle called ``name``; a clear ``KeyError`` otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown particle type {name!r}; known types: {', '.join(NAMES)}"
        ) from None


def class_id(name: str) -> int:
    """YOLO class id of a particle type (its index in :data:`PARTICLES`)."""
    get(name)
    return CLASS_IDS[name]


def table() -> pd.DataFrame:
    """The particle table as a DataFrame indexed by name."""
    return pd.DataFrame(
        [
            {
                "name": p.name,
                "radius_A": p.radius_A,
                "weight": p.weight,
                "difficulty": p.difficulty,
                "label": p.label,
                "scored": p.scored,
                "pdb_id": p.pdb_id,
            }
            for p in PARTICLES
        ]
    ).set_index("name")
