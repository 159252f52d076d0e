"""Mixup training (Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization",
ICLR 2018): train on convex combinations of pairs of inputs and of their labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advguard.training.recipes.base import RECIPES, Recipe, StepOutput


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of λ ~ Beta(α, α) from ``generator`` (via a numpy generator seeded from it)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(x: torch.Tensor, y: torch.Tensor, lam: float, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each example with a random partner from the same batch: ``λ·x + (1-λ)·x[perm]``.
    Returns the mixed inputs, the original labels and the partners' labels."""
    perm = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], y, y[perm]


@RECIPES.register("mixup", paper="Zhang et al., ICLR 2018",
                  description="cross-entropy on mixed pairs of inputs and labels")
@dataclass(frozen=True, kw_only=True)
class Mixup(Recipe):
    """Mixup: one λ ~ Beta(α, α) per batch (as in the authors' code), inputs mixed with a shuffled
    copy of the batch, loss ``λ·CE(f(x̃), y_a) + (1-λ)·CE(f(x̃), y_b)``.

    Hyper-parameters: ``alpha`` (default 1.0, the CIFAR-10 setting of the paper and of the MI-OL
    paper's Mixup models). Train accuracy is λ-weighted.

    Example::

        train(TrainConfig(dataset="cifar10", model="resnet50", recipe="mixup",
                          recipe_kwargs={"alpha": 1.0}, epochs=200, schedule="step"))
    """

    name = "mixup"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            from advguard.errors import ConfigError

            raise ConfigError(f"mixup alpha must be > 0, got {self.alpha}")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        lam = sample_beta(self.alpha, generator)
        mixed, y_a, y_b = mix_batch(x, y, lam, generator)
        logits = model(mixed)
        loss = lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)
        pred = logits.detach().argmax(1)
        correct = lam * (pred == y_a).sum().float() + (1.0 - lam) * (pred == y_b).sum().float()
        return StepOutput(loss=loss, correct=correct,
                          metrics={"lambda": torch.tensor(lam, device=x.device)})
