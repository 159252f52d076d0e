"""PGD started from the expected transformation ``E g(x)`` of a randomized input transformation
(Xiao & Zheng, CVPR 2020, Sec. 4.2: "generate adversarial examples ... starting from the
average transformation")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advguard.attacks.base import ATTACKS
from advguard.attacks.pgd import PGD
from advguard.attacks.wrappers import find_part
from advguard.errors import ConfigError


def expected_transform(model: nn.Module, x: torch.Tensor, samples: int,
                       generator: torch.Generator) -> torch.Tensor:
    """``E g(x)`` over ``samples`` draws of the first transformation inside ``model`` (a defense,
    possibly wrapped by BPDA/EOT) that offers ``expected(x, samples, generator=)``."""
    part = find_part(model, "expected")
    if part is not None:
        with torch.no_grad():
            out: torch.Tensor = part.expected(x.detach(), samples,  # type: ignore[operator]
                                              generator=generator)
        return out
    raise ConfigError("pgd_expected_start needs a defense with a randomized transformation that "
                      "offers its expected value (e.g. advt); none was found in the model")


@ATTACKS.register("pgd_expected_start", source="advguard", kind="gradient", norms=("linf", "l2"),
                  paper="Xiao & Zheng, CVPR 2020, Sec. 4.2 (PGD from E g(x))")
@dataclass(frozen=True, kw_only=True)
class PGDExpectedStart(PGD):
    """PGD whose first iterate is the defense's expected transformation ``E g(x)`` (estimated
    over ``samples`` draws), projected onto the ε-ball around ``x``: it starts where the
    transformation pushes inputs on average, in the direction the classifier ``f_a`` was trained
    to see. Otherwise :class:`PGD` (``steps``, ``alpha``, ``restarts``, ``loss``); run it in the
    ``adaptive`` setting (BPDA and EOT through the defense). The paper only considered the
    unprojected ``E g(x)`` as a start on ``f_a`` alone and dismissed it (outside the ball).

    Args: as :class:`PGD`, plus ``samples`` (100) draws for ``E g(x)``; ``random_start`` is
    ignored.

    Example::

        PGDExpectedStart(eps=0.1, steps=50, samples=100)(BPDA(advt_defense), x, y)
    """

    name = "pgd_expected_start"
    samples: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.samples, bool) or self.samples < 1:
            raise ConfigError(f"samples must be >= 1, got {self.samples}")

    def initial(self, model: nn.Module, x: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return expected_transform(model, x, self.samples, generator)
