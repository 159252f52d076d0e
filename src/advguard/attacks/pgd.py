"""Projected Gradient Descent (Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning
Models Resistant to Adversarial Attacks", ICLR 2018), L∞ and L2."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advguard.attacks.base import ATTACKS, Attack
from advguard.attacks.losses import get_loss
from advguard.attacks.wrappers import input_gradient
from advguard.errors import ConfigError
from advguard.rng import rand_rows, randn_rows


def random_start(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator, *,
                 stream: str = "pgd/start") -> torch.Tensor:
    """A random point of the ε-ball around ``x``: uniform per coordinate (L∞) or a uniformly
    random direction with radius ``eps·u``, ``u ~ U(0, 1)`` (L2). Drawn per row
    (:func:`advguard.rng.rand_rows`: per example inside the evaluation harness)."""
    if norm == "linf":
        noise = rand_rows(x, generator=generator, stream=stream)
        return x + (2 * noise - 1) * eps
    direction = randn_rows(x, generator=generator, stream=stream)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    radius = rand_rows(x, (), generator=generator, stream=stream + "/radius")
    return x + direction * (eps * radius).view(-1, 1, 1, 1)


def ascent_step(x: torch.Tensor, grad: torch.Tensor, norm: str, alpha: float) -> torch.Tensor:
    """One steepest-ascent step of length ``alpha`` in the given norm."""
    if norm == "linf":
        return x + alpha * grad.sign()
    g = grad.flatten(1)
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x + alpha * unit.view_as(x)


@ATTACKS.register("pgd", source="advguard", kind="gradient", norms=("linf", "l2"),
                  paper="Madry et al., ICLR 2018")
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected gradient ascent on a loss, within an L∞ or L2 ball.

    Runs exactly ``steps`` steps per restart (no early stopping) and returns the last iterate;
    with ``restarts > 1`` each further restart runs on the examples not yet fooled, and for those
    never fooled the iterate with the highest final loss is kept.

    Args: ``eps``; ``norm`` ("linf" | "l2"); ``steps`` (10); ``alpha`` step size (default
    ``2.5·eps/steps``); ``random_start`` (True: uniform in the ball); ``restarts`` (1);
    ``loss`` ("ce" | "cw" | "dlr"); ``early_stop`` (False: every example runs every step; True:
    an example stops moving as soon as the model misclassifies it — hits the target, when
    targeted — as in the POST and Fast-FGSM reference code: near-boundary examples, a weaker
    attack on defenses that move the boundary). Targeted (towards labels, ``"least_likely"`` or
    ``"random"``) when called with ``target=``.

    Example::

        result = PGD(eps=8/255, alpha=2/255, steps=10)(model, x, y)
        result = PGD(eps=8/255, steps=10)(model, x, y, target="least_likely")
    """

    name = "pgd"
    steps: int = 10
    alpha: float | None = None
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    early_stop: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 0 or self.restarts < 1:
            raise ConfigError("PGD needs steps >= 0 and restarts >= 1")
        if self.alpha is not None and self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        get_loss(self.loss)

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2.5 * self.eps / max(1, self.steps)

    def initial(self, model: nn.Module, x: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        """The first iterate (before projection onto the ball): a uniformly random point of the
        ball (``random_start``) or ``x``. Variants that start elsewhere override this."""
        return random_start(x, self.norm, self.eps, generator) if self.random_start \
            else x.clone()

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        threat, loss = self.threat, get_loss(self.loss)
        adv = threat.project(self.initial(model, x, generator), x)
        for _ in range(self.steps):
            live = None
            if self.early_stop:
                with torch.no_grad():
                    pred = model(adv).argmax(1)
                live = pred == y if target is None else pred != target
                if not bool(live.any()):
                    break
            _, grad = input_gradient(model, adv, y, target, loss)
            moved = threat.project(ascent_step(adv, grad, self.norm, self.step_size), x)
            adv = moved if live is None else torch.where(
                live.view(-1, *([1] * (x.dim() - 1))), moved, adv)
        return adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if self.restarts == 1:
            return self._run(model, x, y, target, generator)
        loss = get_loss(self.loss)
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = (~fooled).nonzero().flatten()
            if idx.numel() == 0:
                break
            t = None if target is None else target[idx]
            adv = self._run(model, x[idx], y[idx], t, generator)
            with torch.no_grad():
                logits = model(adv)
                value = loss(logits, y[idx], t)
                pred = logits.argmax(1)
            success = pred != y[idx] if t is None else pred == t
            better = success | (value > best_loss[idx])
            best[idx[better]] = adv[better]
            best_loss[idx[better]] = value[better].float()
            fooled[idx[success]] = True
        return best
