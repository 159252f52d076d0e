"""Shared pieces of the adversarial recipes: crafting training-time adversarial examples with the
attack suite under an explicit BatchNorm mode, and the validation of the usual fields.

BatchNorm (and dropout) while crafting is a recipe field, ``attack_bn``:

* ``"train"`` — the model stays in train mode while the attack runs: BatchNorm normalizes with
  the statistics of the batch being attacked and **updates its running statistics on every attack
  forward pass**, dropout is active. This is what the reference code of Madry et al. (TF),
  Wong et al. (``fast_adversarial``) and Rice et al. does (they never switch modes).
* ``"eval"`` — the whole model is put in eval mode for crafting (running statistics, no update,
  no dropout), as the TRADES reference code does (``model.eval()`` before its attack loop).

Either way each submodule's previous mode is restored afterwards
(:func:`advguard.utils.eval_mode`), so the training forward pass that follows runs in the mode the
loop set. Noise-injection layers (:mod:`advguard.models.noise`) draw noise in both modes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from advguard.attacks import Attack
from advguard.errors import ConfigError
from advguard.utils import eval_mode

AttackBN = Literal["eval", "train"]
BN_MODES: tuple[str, ...] = ("eval", "train")


def craft(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
          attack_bn: str, generator: torch.Generator) -> torch.Tensor:
    """Untargeted adversarial examples for a training batch, detached.

    Calls the attack's :meth:`~advguard.attacks.Attack.perturb` directly: the public
    ``__call__`` validates inputs and computes success with extra forward passes and host syncs,
    which a training step does not need (the result of ``perturb`` is projected onto the ε-ball
    and [0, 1] by the attacks themselves). No parameter ``.grad`` is touched.
    """
    with eval_mode(model, training=attack_bn == "train"):
        adv = attack.perturb(model, x, y, target=None, generator=generator)
    return adv.detach()


def check_fields(recipe: str, *, eps: float, attack_bn: str, steps: int | None = None,
                 alpha: float | None = None, adv_weight: float | None = None) -> None:
    """Raise :class:`ConfigError` for out-of-range adversarial hyper-parameters."""
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"recipe {recipe!r}: {msg}")

    if not eps >= 0:
        raise bad(f"eps must be >= 0 (pixel units of [0, 1]), got {eps}")
    if attack_bn not in BN_MODES:
        raise bad(f"attack_bn must be one of {BN_MODES}, got {attack_bn!r}")
    if steps is not None and steps < 1:
        raise bad(f"steps must be >= 1, got {steps}")
    if alpha is not None and not alpha > 0:
        raise bad(f"alpha (step size) must be > 0, got {alpha}")
    if adv_weight is not None and not 0 <= adv_weight <= 1:
        raise bad(f"adv_weight must be in [0, 1], got {adv_weight}")
