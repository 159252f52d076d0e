"""Transfer attacks: craft adversarial examples on a source model, evaluate them on the target
(the defense). Also the *oblivious* protocol of the CAP and POST papers, with the defense's own
static base model as the source."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from advguard.attacks.base import ATTACKS, Attack
from advguard.errors import ConfigError


@ATTACKS.register("transfer", source="advguard", kind="transfer", norms=("linf", "l2"),
                  paper="Papernot et al. 2016; Tramèr et al. 2018")
@dataclass(frozen=True, kw_only=True)
class Transfer(Attack):
    """Run ``attack`` against ``source`` and submit its adversarial examples to the model under
    attack. ``eps``/``norm`` must equal the inner attack's (use :func:`transfer`).

    Example::

        result = transfer(static_model, PGD(eps=8/255, steps=10))(defense, x, y)
    """

    name = "transfer"
    source: nn.Module = field(repr=False)
    attack: Attack

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.source, nn.Module) or not isinstance(self.attack, Attack):
            raise ConfigError("Transfer needs a source model and an inner attack")
        if (self.attack.eps, self.attack.norm) != (self.eps, self.norm):
            raise ConfigError("Transfer's eps/norm must equal its inner attack's")

    @property
    def steps(self) -> int:
        return int(getattr(self.attack, "steps", 1))

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return self.attack(self.source, x, y, target=target, generator=generator).adv


def transfer(source: nn.Module, attack: Attack) -> Transfer:
    """A :class:`Transfer` attack crafting with ``attack`` on ``source``."""
    return Transfer(eps=attack.eps, norm=attack.norm, source=source, attack=attack)
