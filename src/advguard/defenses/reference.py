"""Two simple reference transforms used by the tests and the quickstart to exercise the
evaluation machinery: one randomized and differentiable, one deterministic and not."""

from __future__ import annotations

import torch

from advguard.defenses.base import Traits, Transform
from advguard.defenses.registry import DEFENSES
from advguard.rng import randn_rows


@DEFENSES.register("gaussian_noise", kind="transform",
                   paper="Tabacof & Valle 2016 (Gaussian input noise)")
class GaussianNoise(Transform):
    """Add i.i.d. Gaussian noise N(0, σ²) to every pixel, then clip to [0, 1].

    Randomized (EOT needed) and differentiable almost everywhere.
    Args: ``sigma`` (default 0.1, in pixel units of [0, 1]), ``seed``.

    Example::

        defense = Pipeline([GaussianNoise(sigma=0.1, seed=0)], model)
    """

    per_example_noise = True  # every row draws its own randomness (rng's draws protocol)

    traits = Traits(randomized=True)

    def __init__(self, *, sigma: float = 0.1, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = randn_rows(x, generator=generator, stream="noise", module=self)
        return (x + self.sigma * noise).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


@DEFENSES.register("bit_depth", kind="transform",
                   paper="Xu, Evans, Qi 2018 (feature squeezing: bit-depth reduction)")
class BitDepthReduction(Transform):
    """Quantize every pixel to ``bits`` bits: ``round(x·(2^b − 1)) / (2^b − 1)``.

    Deterministic; its gradient is zero almost everywhere, so it is declared non-differentiable
    with the identity as BPDA surrogate (Athalye et al. 2018).
    Args: ``bits`` in [1, 8] (default 3).

    Example::

        defense = Pipeline([BitDepthReduction(bits=3)], model)
    """

    traits = Traits(differentiable=False)

    def __init__(self, *, bits: int = 3) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in [1, 8], got {bits}")
        self.bits = int(bits)

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
