"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off between
Robustness and Accuracy", ICML 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks import PGD
from advguard.training.recipes._adversarial import check_fields, craft
from advguard.training.recipes.base import RECIPES, Recipe, StepOutput, count_correct


class KLObjective(nn.Module):
    """The TRADES inner objective as an attack target: behaves as ``model`` but defines the
    per-example attack loss (through the ``expected_loss`` hook that
    :func:`advguard.attacks.per_example_loss` honours) as
    ``KL(softmax(f(x_clean)) ‖ softmax(f(x')))``, with ``f(x_clean)`` computed once, without
    gradient, in the mode the attack runs in. The label and the attack's own loss are ignored."""

    def __init__(self, model: nn.Module, clean: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.clean = clean
        self._clean_log_probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def expected_loss(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                      loss: object) -> torch.Tensor:
        if self._clean_log_probs is None:
            with torch.no_grad():
                self._clean_log_probs = self.model(self.clean).float().log_softmax(1)
        log_q = self.model(x).float().log_softmax(1)
        log_p = self._clean_log_probs
        return (log_p.exp() * (log_p - log_q)).sum(1)


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """``(1/N) Σ_i KL(softmax(f(x_i)) ‖ softmax(f(x'_i)))``, differentiable in both arguments
    (the reference computes ``KLDivLoss(reduction='sum')(log_softmax(f(x')), softmax(f(x))) / N``
    without detaching the clean term)."""
    return F.kl_div(logits_adv.float().log_softmax(1), logits_clean.float().softmax(1),
                    reduction="batchmean")


@RECIPES.register("trades", paper="Zhang et al., ICML 2019",
                  description="CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)), x_adv maximizing the KL")
@dataclass(frozen=True, kw_only=True)
class TRADES(Recipe):
    """TRADES: ``CE(f(x), y) + β · (1/N) Σ KL(softmax f(x) ‖ softmax f(x'))`` where ``x'``
    maximizes that KL in the L∞ ε-ball (PGD-``steps`` with step ``alpha`` from
    :class:`advguard.attacks.PGD`, on the :class:`KLObjective`). Both terms back-propagate into
    ``f(x)``, as in the reference. Clean and adversarial batches go through the model in separate
    train-mode forward passes; train accuracy is on clean inputs, ``adv_acc`` on ``x'``.

    Hyper-parameters (pixel units of [0, 1]): ``beta`` 6.0 (the paper's CIFAR-10 value; 1/λ in its
    notation), ``eps`` 8/255 (reference: 0.031), ``alpha`` 2/255 (reference: 0.007), ``steps``
    10 — the CIFAR-10 setting (MNIST: eps 0.3, alpha 0.01, steps 40); ``attack_bn`` "eval" (the
    reference calls ``model.eval()`` while crafting). One deviation: the reference starts its
    attack at ``x + 0.001·N(0, I)``; advguard's PGD starts uniformly in the ε-ball
    (``random_start``; a start at ``x`` itself would have a zero KL gradient).

    Example::

        train(TrainConfig(dataset="cifar10", model="wrn34_10", recipe="trades",
                          recipe_kwargs={"beta": 6.0}, epochs=76, lr=0.1, weight_decay=2e-4,
                          schedule="step", schedule_kwargs={"milestones": [75]}))
    """

    name = "trades"
    beta: float = 6.0
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    attack_bn: str = "eval"

    def __post_init__(self) -> None:
        check_fields(self.name, eps=self.eps, attack_bn=self.attack_bn, steps=self.steps,
                     alpha=self.alpha)
        if not self.beta >= 0:
            from advguard.errors import ConfigError

            raise ConfigError(f"recipe 'trades': beta must be >= 0, got {self.beta}")

    @property
    def attack(self) -> PGD:
        return PGD(eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=True)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        adv = craft(self.attack, KLObjective(model, x), x, y, attack_bn=self.attack_bn,
                    generator=generator)
        logits = model(x)
        logits_adv = model(adv)
        natural = F.cross_entropy(logits, y)
        robust = trades_kl(logits_adv, logits)
        return StepOutput(loss=natural + self.beta * robust, correct=count_correct(logits, y),
                          metrics={"natural_loss": natural.detach(), "kl": robust.detach(),
                                   "adv_acc": count_correct(logits_adv, y) / y.shape[0]})
