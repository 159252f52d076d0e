"""Fast Gradient Sign Method (Goodfellow, Shlens, Szegedy, ICLR 2015) and its random-start
variant (Tramèr et al. 2018; Wong, Rice, Kolter 2020 use it with α = 1.25·ε for Fast-FGSM
adversarial training)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advguard.attacks.base import ATTACKS, Attack
from advguard.attacks.losses import get_loss
from advguard.attacks.pgd import ascent_step, random_start
from advguard.attacks.wrappers import input_gradient
from advguard.errors import ConfigError


@ATTACKS.register("fgsm", source="advguard", kind="gradient", norms=("linf", "l2"),
                  paper="Goodfellow et al., ICLR 2015")
@dataclass(frozen=True, kw_only=True)
class FGSM(Attack):
    """One gradient-sign step: ``x + α·sign(∇ₓ loss)`` projected to the ε-ball and [0, 1]
    (for L2, a step of length α along the normalized gradient).

    Args: ``eps``; ``norm`` ("linf"); ``alpha`` (default ``eps``); ``random_start`` (False; True
    starts from a uniform point of the ball, as Fast-FGSM training does with α = 1.25·ε);
    ``loss`` ("ce").

    Example::

        adv = FGSM(eps=0.1)(model, x, y).adv
    """

    name = "fgsm"
    alpha: float | None = None
    random_start: bool = False
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is not None and self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        get_loss(self.loss)

    @property
    def steps(self) -> int:
        return 1

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        start = self.threat.project(random_start(x, self.norm, self.eps, generator), x) \
            if self.random_start else x
        _, grad = input_gradient(model, start, y, target, get_loss(self.loss))
        alpha = self.eps if self.alpha is None else self.alpha
        return self.threat.project(ascent_step(start, grad, self.norm, alpha), x)
