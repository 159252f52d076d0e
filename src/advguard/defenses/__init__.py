"""Defenses: the protocol (traits, BPDA surrogates, owned randomness), composition, and the
registered defenses."""

from advguard.defenses.base import (
    Averaged,
    Defense,
    Pipeline,
    Randomness,
    Traits,
    Transform,
    Undefended,
    as_defense,
    derive_seed,
    gradient_inside_forward,
)
from advguard.defenses.reference import BitDepthReduction, GaussianNoise
from advguard.defenses.registry import DEFENSES, build_defense, build_part

__all__ = [
    "DEFENSES", "Averaged", "BitDepthReduction", "Defense", "GaussianNoise", "Pipeline",
    "Randomness", "Traits", "Transform", "Undefended", "as_defense", "build_defense", "build_part",
    "derive_seed", "gradient_inside_forward",
]
