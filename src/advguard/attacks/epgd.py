"""Expectation PGD (Nemcovsky et al., "Smoothed Inference for Improving Adversarial Robustness",
2019, Eq. 25): PGD on a randomized model whose gradient at every step is the gradient of the loss
averaged over ``k`` draws of the model's randomness — PGD through :class:`~advguard.attacks.EOT`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advguard.attacks.base import ATTACKS
from advguard.attacks.pgd import PGD
from advguard.attacks.wrappers import EOT
from advguard.errors import ConfigError


@ATTACKS.register("epgd", source="advguard", kind="gradient", norms=("linf", "l2"),
                  paper="Nemcovsky et al. 2019 (SMOOTH), Eq. 25")
@dataclass(frozen=True, kw_only=True)
class EPGD(PGD):
    """PGD with the loss averaged over ``k`` draws of a randomized model at every step:
    ``x ← Π(x + α·sign ∇ₓ (1/k) Σ_i L(f_i(x), y))`` (the mean of the per-draw losses, Eq. 25; the
    SmoothAdv attack, :class:`~advguard.attacks.smoothadv.SmoothAdv`, takes the loss of the mean
    probability instead, Eq. 24). A step costs ``k`` forward/backward passes, so EPGD with ``s``
    steps compares with PGD with ``k·s`` steps. With ``k = 1`` it is :class:`PGD` exactly.

    The model's noise (input noise of the smoothing's base model, PNI/CNI weight noise) is drawn
    by the model itself, through :class:`EOT` and the draws protocol
    (:func:`advguard.rng.iter_draws`): batched forwards of ``chunk`` stacked copies, one
    independent draw per copy (one copy per forward for noise that cannot draw per copy).

    Args: those of :class:`PGD` (``eps``, ``norm``, ``steps`` (10), ``alpha``, ``random_start``,
    ``restarts``, ``loss``) and ``k`` draws per step (8, the paper's choice) and ``chunk`` (8).

    Example::

        smoothed = Smoothed(model, m=32, sigma=0.1)
        adv = EPGD(eps=0.1, steps=10, k=8)(smoothed.base_model, x, y).adv
    """

    name = "epgd"
    k: int = 8
    chunk: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1 or self.chunk < 1:
            raise ConfigError(f"EPGD needs k >= 1 and chunk >= 1, got k={self.k}, "
                              f"chunk={self.chunk}")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if self.k > 1:
            model = EOT(model, self.k, chunk=self.chunk)
        return super().perturb(model, x, y, target=target, generator=generator)
