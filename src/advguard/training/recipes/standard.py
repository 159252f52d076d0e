"""Standard (empirical-risk) training: cross-entropy on clean inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advguard.training.recipes.base import RECIPES, Recipe, StepOutput, count_correct


@RECIPES.register("standard", paper="-", description="cross-entropy on clean inputs")
@dataclass(frozen=True, kw_only=True)
class Standard(Recipe):
    """Cross-entropy on clean training inputs.

    Hyper-parameters: ``label_smoothing`` (default 0.0, i.e. plain cross-entropy).
    The optimizer (SGD with momentum and weight decay) and LR schedule are training-config fields.

    Example::

        train(TrainConfig(dataset="cifar10", model="resnet20", recipe="standard", epochs=200,
                          lr=0.1, schedule="step", schedule_kwargs={"milestones": [100, 150]}))
    """

    name = "standard"
    label_smoothing: float = 0.0

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return StepOutput(loss=loss, correct=count_correct(logits, y))
