"""Adapt-then-attack for test-time-adapted defenses (Croce, Gowal, Brunner, Shelhamer, Hein,
Cemgil, "Evaluating the adversarial robustness of adaptive test-time defenses", ICML 2022):
let the defense adapt to the current candidate, attack the adapted model, repeat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advguard.attacks.base import ATTACKS, Attack
from advguard.attacks.losses import get_loss
from advguard.attacks.pgd import ascent_step, random_start
from advguard.attacks.wrappers import find_part, input_gradient
from advguard.errors import ConfigError


def adaptive_part(model: nn.Module) -> nn.Module:
    """The test-time-adapted defense inside ``model`` (possibly wrapped by BPDA/EOT): the first
    submodule offering ``adapt(x)`` and ``classify(x, active, params)`` (e.g. POST)."""
    part = find_part(model, "adapt", "classify")
    if part is not None:
        return part
    raise ConfigError("adapt_then_attack needs a test-time-adapted defense (one offering adapt "
                      "and classify, e.g. post_train); none was found in the model")


class _Adapted(nn.Module):
    """The defense's adapted copies for fixed adaptation results: a plain differentiable model."""

    def __init__(self, defense: nn.Module, active: torch.Tensor,
                 params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.defense, self.active, self.params = defense, active, params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.defense.classify(x, self.active, self.params)  # type: ignore[operator]
        return out


@ATTACKS.register("adapt_then_attack", source="advguard", kind="gradient", norms=("linf", "l2"),
                  paper="Croce et al., ICML 2022 (evaluating adaptive test-time defenses)")
@dataclass(frozen=True, kw_only=True)
class AdaptThenAttack(Attack):
    """``rounds`` rounds of: the defense adapts to the current candidates (its neighbour search
    and post-training, for POST), then ``steps`` PGD steps of ``alpha`` (default ``2.5·eps /
    steps``) on the adapted model with its adaptation held fixed; the first round starts from a
    random point of the ball (``random_start``). Untargeted or targeted; ``loss`` as PGD's (e.g.
    ``margin2`` against POST's neighbour premise). Runs in the ``adaptive`` setting (use ``eot:
    1``: each round re-adapts to the candidate instead of averaging draws).

    Example::

        AdaptThenAttack(eps=0.1, rounds=5, steps=10)(post_defense, x, y)
    """

    name = "adapt_then_attack"
    rounds: int = 5
    steps: int = 10
    alpha: float | None = None
    random_start: bool = True
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1 or self.steps < 1:
            raise ConfigError("adapt_then_attack needs rounds >= 1 and steps >= 1")
        get_loss(self.loss)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        defense = adaptive_part(model)
        threat, loss = self.threat, get_loss(self.loss)
        alpha = self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps
        adv = threat.project(random_start(x, self.norm, self.eps, generator, stream="ata/start"),
                             x) if self.random_start else x.clone()
        for _ in range(self.rounds):
            with torch.no_grad():
                _, _, active, params = defense.adapt(adv)  # type: ignore[operator]
            adapted = _Adapted(defense, active, params)
            for _ in range(self.steps):
                _, grad = input_gradient(adapted, adv, y, target, loss)
                adv = threat.project(ascent_step(adv, grad, self.norm, alpha), x).detach()
        return adv
