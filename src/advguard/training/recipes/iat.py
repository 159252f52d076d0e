"""Interpolated Adversarial Training (Lamb, Verma, Kannala, Bengio, "Interpolated Adversarial
Training: Achieving Robust Neural Networks without Sacrificing Too Much Accuracy", AISec 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks import PGD
from advguard.errors import ConfigError
from advguard.training.recipes._adversarial import check_fields, craft
from advguard.training.recipes.base import RECIPES, Recipe, StepOutput
from advguard.training.recipes.mixup import mix_batch, sample_beta


def mixup_loss(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup cross-entropy ``λ·CE(z, y_a) + (1-λ)·CE(z, y_b)`` and the λ-weighted number correct."""
    loss = lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)
    pred = logits.detach().argmax(1)
    correct = lam * (pred == y_a).sum().float() + (1.0 - lam) * (pred == y_b).sum().float()
    return loss, correct


@RECIPES.register("iat", paper="Lamb et al., AISec 2019",
                  description="mixup of clean pairs + mixup of PGD adversarial pairs, 1:1")
@dataclass(frozen=True, kw_only=True)
class IAT(Recipe):
    """Interpolated Adversarial Training (input-mixup variant): per batch,

    * a clean mixup term — ``λ₁ ~ Beta(a, a)``, ``x̃ = λ₁·x + (1−λ₁)·x[π₁]``, mixup cross-entropy;
    * an adversarial mixup term — ``x_adv`` = PGD on the *unmixed* batch, then an independent
      ``λ₂``, ``π₂``: ``x̃_adv = λ₂·x_adv + (1−λ₂)·x_adv[π₂]``, mixup cross-entropy;

    loss ``(1 − w)·L_clean + w·L_adv`` with ``w = adv_weight`` = 0.5 (the 1:1 clean:adversarial
    ratio of the CAP paper's IAT models). One λ per batch, drawn as in the ``mixup`` recipe
    (numpy Beta seeded from the step generator: one host sync per draw). The generator's draws
    come in this order: PGD start, λ₁, π₁, λ₂, π₂. Train accuracy is the mean of the λ-weighted
    accuracies on the two mixed batches; ``adv_acc`` the one on the adversarial batch.

    Hyper-parameters: ``mixup_alpha`` 1.0 (Beta(1, 1), the CAP setting); the PGD attack ``eps``
    8/255, ``alpha`` 2/255, ``steps`` 10, random start (CAP: "untargeted PGD10 with a step size of
    2/255 and ε set to 8/255"); ``adv_weight`` 0.5; ``attack_bn`` "train" (as ``pgd_at``).
    CAP trains ResNet-50 on CIFAR-10 for 200 epochs, batch 64, lr 0.1 ÷10 at epochs 100 and 150
    (config ``train/cap_cifar10_resnet50_iat``).

    Example::

        train(TrainConfig(dataset="cifar10", model="resnet50", recipe="iat", epochs=200,
                          batch_size=64, schedule="step",
                          schedule_kwargs={"milestones": [100, 150]}))
    """

    name = "iat"
    mixup_alpha: float = 1.0
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    adv_weight: float = 0.5
    attack_bn: str = "train"

    def __post_init__(self) -> None:
        check_fields(self.name, eps=self.eps, attack_bn=self.attack_bn, steps=self.steps,
                     alpha=self.alpha, adv_weight=self.adv_weight)
        if not self.mixup_alpha > 0:
            raise ConfigError(f"recipe 'iat': mixup_alpha must be > 0, got {self.mixup_alpha}")

    @property
    def attack(self) -> PGD:
        return PGD(eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=True)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        adv = craft(self.attack, model, x, y, attack_bn=self.attack_bn, generator=generator)
        lam_clean = sample_beta(self.mixup_alpha, generator)
        mixed, y_a, y_b = mix_batch(x, y, lam_clean, generator)
        clean_loss, clean_correct = mixup_loss(model(mixed), y_a, y_b, lam_clean)
        lam_adv = sample_beta(self.mixup_alpha, generator)
        mixed_adv, ya_adv, yb_adv = mix_batch(adv, y, lam_adv, generator)
        adv_loss, adv_correct = mixup_loss(model(mixed_adv), ya_adv, yb_adv, lam_adv)

        loss = (1 - self.adv_weight) * clean_loss + self.adv_weight * adv_loss
        n = y.shape[0]
        return StepOutput(
            loss=loss, correct=(clean_correct + adv_correct) / 2,
            metrics={"clean_loss": clean_loss.detach(), "adv_loss": adv_loss.detach(),
                     "adv_acc": adv_correct / n,
                     "lambda_clean": torch.tensor(lam_clean, device=x.device),
                     "lambda_adv": torch.tensor(lam_adv, device=x.device)})
