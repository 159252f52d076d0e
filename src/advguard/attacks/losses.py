"""Per-example attack objectives, all to be **maximized**: ``loss(logits, y, target)`` with
``target`` None for untargeted attacks.

* ``ce`` — cross-entropy of the true label (untargeted) or minus that of the target (targeted).
* ``cw`` — the Carlini–Wagner margin: ``max_{j≠y} z_j − z_y`` (untargeted) or
  ``z_t − max_{j≠t} z_j`` (targeted), unclamped.
* ``margin2`` — the second-highest logit of the other classes minus the true one:
  ``z_(2),j≠y − z_y`` (untargeted only). Positive once the true class ranks third or lower: an
  attack on defenses that search the nearest class to the prediction (POST's neighbour class),
  whose premise is that the true class is the prediction or its nearest neighbour.
* ``dlr`` — the Difference-of-Logits-Ratio loss of Croce & Hein (ICML 2020), scale invariant:
  ``−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3)`` untargeted, ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)``
  targeted (π sorts the logits in decreasing order; needs ≥ 3 resp. 4 classes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from advguard.errors import ConfigError
from advguard.registry import Registry
from advguard.typecheck import ALIASES

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("attack loss", aliases=ALIASES)


def _max_other(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    mask = F.one_hot(label, logits.shape[1]).bool()
    return logits.masked_fill(mask, float("-inf")).amax(1)


@LOSSES.register("ce")
def cross_entropy(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
                  ) -> torch.Tensor:
    logits = logits.float()
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


@LOSSES.register("cw")
def cw_margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
              ) -> torch.Tensor:
    logits = logits.float()
    if target is None:
        return _max_other(logits, y) - logits.gather(1, y[:, None])[:, 0]
    return logits.gather(1, target[:, None])[:, 0] - _max_other(logits, target)


@LOSSES.register("margin2")
def second_margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
                  ) -> torch.Tensor:
    if target is not None:
        raise ConfigError("the margin2 loss is untargeted")
    logits = logits.float()
    if logits.shape[1] < 3:
        raise ConfigError("the margin2 loss needs at least 3 classes")
    mask = F.one_hot(y, logits.shape[1]).bool()
    second = logits.masked_fill(mask, float("-inf")).topk(2, dim=1).values[:, 1]
    return second - logits.gather(1, y[:, None])[:, 0]


@LOSSES.register("dlr")
def dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    logits = logits.float()
    k = logits.shape[1]
    ranked = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        if k < 3:
            raise ConfigError("the DLR loss needs at least 3 classes")
        return -(z_y - _max_other(logits, y)) / (ranked[:, 0] - ranked[:, 2] + 1e-12)
    if k < 4:
        raise ConfigError("the targeted DLR loss needs at least 4 classes")
    z_t = logits.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + 1e-12)


def get_loss(name: str) -> LossFn:
    return LOSSES.get(name)
