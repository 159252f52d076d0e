"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks import ATTACKS, PGD, make_attack
from advguard.errors import ConfigError
from advguard.training.recipes._adversarial import check_fields, craft
from advguard.training.recipes.base import RECIPES, Recipe, StepOutput, count_correct


def inner_attacks() -> list[str]:
    """The registered attacks the recipe can craft its examples with: every :class:`PGD`
    subclass (they share the ε/α/steps/random-start fields the recipe sets)."""
    return [name for name in ATTACKS.names()
            if isinstance(ATTACKS.get(name), type) and issubclass(ATTACKS.get(name), PGD)]


@RECIPES.register("pgd_at", paper="Madry et al., ICLR 2018",
                  description="cross-entropy on L∞ PGD-k adversarial examples (optionally mixed "
                              "with clean cross-entropy)")
@dataclass(frozen=True, kw_only=True)
class PGDAT(Recipe):
    """PGD adversarial training: minimize the loss on the PGD-``steps`` maximizer of the
    cross-entropy inside the L∞ ball of radius ``eps``.

    Loss per batch: ``(1 − w)·CE(f(x), y) + w·CE(f(x_adv), y)`` with ``w = adv_weight``
    (1.0: Madry et al.'s pure adversarial objective; 0.5: the 1:1 mix of Goodfellow et al. 2015,
    used by PNI). ``x_adv`` comes from :class:`advguard.attacks.PGD` (uniform random start,
    ``steps`` sign-gradient steps of ``alpha``, projection onto the ε-ball and [0, 1]) on the model
    in the BatchNorm mode ``attack_bn`` (see :mod:`advguard.training.recipes._adversarial`). Clean
    and adversarial batches go through the model in separate forward passes (separate BatchNorm
    statistics, as in the reference code). Train accuracy is measured on ``x_adv``; the clean one
    is the metric ``clean_acc`` when ``adv_weight < 1``.

    Hyper-parameters (pixel units of [0, 1]): ``eps`` 8/255, ``alpha`` 2/255, ``steps`` 7,
    ``random_start`` True — Madry et al.'s CIFAR-10 setting (MNIST: eps 0.3, alpha 0.01,
    steps 40); ``adv_weight`` 1.0; ``attack_bn`` "train" (the references never leave train mode).
    ``attack`` "pgd" (default) or a PGD variant that averages over the model's randomness —
    "epgd" (the loss averaged over ``k`` noise draws per step, Nemcovsky et al.'s EPGD adversarial
    fine-tuning) or "smoothadv" (the loss of the soft-smoothed classifier over ``m`` draws of
    input noise ``sigma``, Salman et al.) — with its extra fields in ``attack_kwargs`` (e.g.
    ``{"k": 8}``, ``{"m": 4, "sigma": 0.1}``); eps, alpha, steps and random start are shared.
    The paper's CIFAR-10 model is a wide ResNet trained for 80k iterations at batch 128 (SGD 0.1,
    ÷10 at 40k and 60k, momentum 0.9, weight decay 2e-4 in the released code): optimizer, schedule
    and architecture are :class:`~advguard.training.TrainConfig` fields.

    Example::

        train(TrainConfig(dataset="cifar10", model="preact_resnet18", recipe="pgd_at",
                          recipe_kwargs={"eps": 8/255, "alpha": 2/255, "steps": 10},
                          epochs=200, schedule="step", schedule_kwargs={"milestones": [100, 150]}))
    """

    name = "pgd_at"
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 7
    random_start: bool = True
    adv_weight: float = 1.0
    attack_bn: str = "train"
    attack: str = "pgd"
    attack_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self.name, eps=self.eps, attack_bn=self.attack_bn, steps=self.steps,
                     alpha=self.alpha, adv_weight=self.adv_weight)
        if self.attack not in inner_attacks():
            raise ConfigError(f"recipe {self.name!r}: attack must be a PGD variant, one of "
                              f"{inner_attacks()}, got {self.attack!r}")
        shared = {"eps", "alpha", "steps", "random_start", "norm"} & set(self.attack_kwargs)
        if shared:
            raise ConfigError(f"recipe {self.name!r}: set {sorted(shared)} as recipe fields, "
                              "not in attack_kwargs")
        _ = self.inner_attack  # bad attack_kwargs fail here, not mid-training

    @property
    def inner_attack(self) -> PGD:
        """The attack crafting the training examples (a :class:`PGD` or a subclass)."""
        if self.attack == "pgd" and not self.attack_kwargs:
            return PGD(eps=self.eps, alpha=self.alpha, steps=self.steps,
                       random_start=self.random_start)
        attack = make_attack(self.attack, eps=self.eps, alpha=self.alpha, steps=self.steps,
                             random_start=self.random_start, **self.attack_kwargs)
        assert isinstance(attack, PGD)
        return attack

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        adv = craft(self.inner_attack, model, x, y, attack_bn=self.attack_bn,
                    generator=generator)
        logits_adv = model(adv)
        adv_loss = F.cross_entropy(logits_adv, y)
        metrics = {"adv_loss": adv_loss.detach()}
        loss = adv_loss
        if self.adv_weight < 1:
            logits = model(x)
            clean_loss = F.cross_entropy(logits, y)
            loss = (1 - self.adv_weight) * clean_loss + self.adv_weight * adv_loss
            metrics["clean_loss"] = clean_loss.detach()
            metrics["clean_acc"] = count_correct(logits, y) / y.shape[0]
        return StepOutput(loss=loss, correct=count_correct(logits_adv, y), metrics=metrics)
