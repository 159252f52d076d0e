"""The training-recipe protocol: what one optimization step minimizes.

A recipe is a small frozen, keyword-only dataclass (its fields are its hyper-parameters, recorded
with every checkpoint) with one hook, :meth:`Recipe.loss`, called once per batch by the single
training loop (:func:`advguard.training.train`). Optional hooks let a recipe change the model before
training (noise injection) or the optimizer's parameter groups (no weight decay on a noise scale).
Recipes draw randomness only from the ``generator`` they are given, never from the global RNG.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from advguard.errors import ConfigError
from advguard.registry import Registry


@dataclass(frozen=True)
class StepOutput:
    """What a recipe returns for one batch.

    ``loss``: scalar to back-propagate. ``correct``: number (possibly fractional, e.g. mixup's
    λ-weighted) of correctly classified training inputs in the batch, as a 0-dim tensor (no host
    sync); None for a recipe whose model classifies nothing (an imitation network): no training
    accuracy is logged. ``metrics``: extra 0-dim tensors averaged over the epoch (e.g.
    ``adv_loss``).
    """

    loss: torch.Tensor
    correct: torch.Tensor | None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Recipe(abc.ABC):
    """Base class of training recipes; subclasses implement :meth:`loss`."""

    name: ClassVar[str] = "recipe"

    @abc.abstractmethod
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        """The training loss on batch ``x`` (N,C,H,W in [0,1]) with labels ``y`` (N,) int64.
        ``model`` is in train mode; the loop owns autocast, backward and the optimizer step."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Called once on the freshly created model (before it moves to the device)."""
        return model

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """What the loop's validation and test accuracy measure: ``model`` itself by default; a
        recipe whose model is only used behind a transformation (AdvT's ``f_a(g(x))``) returns
        the defended model."""
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: every trainable parameter gets ``weight_decay`` except the
        direct parameters of submodules that declare ``exclude_from_weight_decay = True`` (the
        learned noise scales of :mod:`advguard.models.noise`: PNI's α shrinks to zero under weight
        decay), which form a second group with weight decay 0."""
        excluded = {id(p) for m in model.modules() if getattr(m, "exclude_from_weight_decay", False)
                    for p in m.parameters(recurse=False)}
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in excluded],
                   "weight_decay": weight_decay}]
        no_decay = [p for p in trainable if id(p) in excluded]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


RECIPES: Registry[type[Recipe]] = Registry("training recipe")


def make_recipe(name: str, **kwargs: Any) -> Recipe:
    """Instantiate a registered recipe; unknown hyper-parameters are a :class:`ConfigError`."""
    cls = RECIPES.get(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        allowed = ", ".join(f.name for f in dataclasses.fields(cls)) or "none"
        raise ConfigError(f"bad arguments for recipe {name!r}: {exc} (allowed: {allowed})") \
            from None


def count_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct top-1 predictions as a float 0-dim tensor (stays on the device)."""
    return (logits.detach().argmax(1) == y).sum().float()
