"""Fast adversarial training with FGSM and a random start (Wong, Rice, Kolter, "Fast is better than
free: Revisiting adversarial training", ICLR 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks import FGSM
from advguard.training.recipes._adversarial import check_fields, craft
from advguard.training.recipes.base import RECIPES, Recipe, StepOutput, count_correct


@RECIPES.register("fast_at", paper="Wong, Rice, Kolter, ICLR 2020",
                  description="cross-entropy on FGSM examples from a uniform random start, "
                              "step 1.25·eps (Fast-FGSM)")
@dataclass(frozen=True, kw_only=True)
class FastAT(Recipe):
    """Fast-FGSM adversarial training: one FGSM step of size ``alpha`` from a uniformly random
    point of the L∞ ε-ball, projected back onto the ball and [0, 1]
    (:class:`advguard.attacks.FGSM` with ``random_start=True``), then cross-entropy on the result.

    Hyper-parameters (pixel units of [0, 1]): ``eps`` 8/255; ``alpha`` None → ``1.25·eps``
    (10/255 at ε = 8/255, the paper's choice; α ≥ 2ε leads to catastrophic overfitting);
    ``attack_bn`` "train" (the reference code, ``locuslab/fast_adversarial``, stays in train mode).
    The rest of the paper's CIFAR-10 recipe lives in the training config (see
    ``advguard configs list``, ``train/post_cifar10_preact_resnet18_fast_at``): PreAct ResNet-18,
    15 epochs, batch 128, SGD momentum 0.9, weight decay 5e-4, cyclic learning rate 0 → 0.2 → 0
    peaking at 2/5 of training (``schedule: onecycle, peak: 0.4``), mixed precision (bf16
    autocast on GPU here; the paper used apex fp16). The paper's optional early stopping on a
    PGD check of one training batch is not part of this recipe. Reported: ≈ 83–86 % clean,
    ≈ 46 % PGD-50-10, 43.2 % AutoAttack (RobustBench).

    Example::

        train(TrainConfig(dataset="cifar10", model="preact_resnet18", recipe="fast_at",
                          epochs=15, lr=0.2, schedule="onecycle", schedule_kwargs={"peak": 0.4}))
    """

    name = "fast_at"
    eps: float = 8 / 255
    alpha: float | None = None
    random_start: bool = True
    attack_bn: str = "train"

    def __post_init__(self) -> None:
        check_fields(self.name, eps=self.eps, attack_bn=self.attack_bn, alpha=self.alpha)

    @property
    def step_size(self) -> float:
        """The FGSM step α (``1.25·eps`` unless given)."""
        return 1.25 * self.eps if self.alpha is None else self.alpha

    @property
    def attack(self) -> FGSM:
        return FGSM(eps=self.eps, alpha=self.step_size, random_start=self.random_start)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        adv = craft(self.attack, model, x, y, attack_bn=self.attack_bn, generator=generator)
        logits = model(adv)
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss=loss, correct=count_correct(logits, y),
                          metrics={"adv_loss": loss.detach()})
