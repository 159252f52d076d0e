"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020), L∞ and L2: advguard's own implementation, untargeted,
towards given targets, or APGD-T over the top wrong classes. The pyautoattack adapters ``apgd`` and
``apgd-t`` (:mod:`advguard.attacks.autoattack`) run the authors' code; this one follows advguard's
rules (its randomness comes from the ``generator``, per example; any registered loss; EOT
gradients through :func:`~advguard.attacks.wrappers.input_gradient`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advguard.attacks.base import ATTACKS, Attack
from advguard.attacks.losses import LossFn, get_loss
from advguard.attacks.wrappers import input_gradient
from advguard.errors import ConfigError, UnknownNameError
from advguard.rng import rand_rows, randn_rows

#: the random-start stream of :func:`advguard.rng.rand_rows` (inside the harness, an example's
#: successive restarts and target runs get fresh draws: the keys count its calls)
STREAM = "auto-pgd/start"


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ⌈p_j·steps⌉`` (distinct, ``1 ≤ w_j ≤ steps``) at which Auto-PGD
    checks its step size: ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``, computed exactly in hundredths (for 100
    steps: 22, 41, 57, 70, 80, 87, 93, 99)."""
    out: list[int] = []
    before, p = 0, 22
    while p <= 100:
        w = -(-p * steps // 100)  # ceil
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        before, p = p, p + max(p - before - 3, 6)
    return out


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: ``sign(∇)`` (L∞) or ``∇/‖∇‖₂`` (L2)."""
    if norm == "linf":
        return grad.sign()
    g = grad.flatten(1)
    return (g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
              loss: LossFn, goal: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss per example, input gradient, success)`` at ``x``; success is ``pred == goal``, or
    ``pred != y`` when ``goal`` is None. The prediction comes from the logits the loss saw, when
    it saw those of one forward of the batch; an EOT model's loss sees per-draw logits, so its
    prediction (the expected softmax) takes one more forward."""
    seen: list[torch.Tensor] = []

    def recording(logits: torch.Tensor, labels: torch.Tensor, t: torch.Tensor | None
                  ) -> torch.Tensor:
        seen.append(logits.detach())
        return loss(logits, labels, t)

    value, grad = input_gradient(model, x, y, target, recording)
    if len(seen) == 1 and seen[0].shape[0] == x.shape[0]:
        logits = seen[0]
    else:
        with torch.no_grad():
            logits = model(x)
    pred = logits.argmax(1)
    return value.float(), grad, (pred != y) if goal is None else (pred == goal)


@ATTACKS.register("auto-pgd", source="advguard", kind="gradient", norms=("linf", "l2"),
                  paper="Croce & Hein, ICML 2020")
@dataclass(frozen=True, kw_only=True)
class AutoPGD(Attack):
    """Auto-PGD: PGD with momentum whose step size starts at ``2·eps`` and is halved, restarting
    from the best point so far, at checkpoints where the loss stalls — no step size to tune.

    Per restart and example, ``x_0`` is a random point of the ε-ball (L∞: ``x + eps·t/‖t‖_∞``
    with ``t`` uniform in [−1, 1]^d; L2: ``x + eps·t/‖t‖₂``, ``t`` Gaussian), ``x_1 = P(x_0 +
    η·s(∇))`` and ``x_{k+1} = P(x_k + m·(z − x_k) + (1 − m)·(x_k − x_{k−1}))`` with ``z = P(x_k +
    η·s(∇f(x_k)))``, ``s`` the sign (L∞) or the normalized gradient (L2), ``m = momentum``, ``P``
    the projection onto the ball and [0, 1]. At each checkpoint (:func:`checkpoints`) the step
    size of an example is halved and its iterate reset to its best point when (1) its loss rose in
    a fraction < ``rho`` of the steps since the last checkpoint, or (2) its step size was not halved
    at the last checkpoint and its best loss has not risen since. Returns, per example, the last
    iterate that fooled the model, or else the iterate with the highest loss (over restarts).

    This follows the paper's Algorithm 1 where the authors' code (pyautoattack 0.2.0) differs in
    details: condition 1 is a strict ``<``, condition 2 applies from the first checkpoint on, and a
    reset sets ``x_{k−1} = x_k = x_max`` (no momentum out of a reset); it also attacks every
    input, not only the clean-correct ones (the base class keeps an input the model already gets
    wrong). Robust accuracy matches the authors' code within a few examples (tests/test_apgd.py).

    Args: ``eps``; ``norm`` ("linf" | "l2"); ``steps`` (100 per restart, plus one gradient at the
    start); ``restarts`` (1; each further one on the examples not yet fooled); ``loss`` ("ce" |
    "cw" | "dlr"; default "ce", or the targeted DLR when ``targets > 0``; the name that runs is
    stored); ``targets`` (0: untargeted, or towards ``target=`` when given;
    ``k > 0``: APGD-T, one run per class among the ``k`` (capped at K − 1) highest-scoring classes
    other than the true one on the clean input — for a correctly classified input the classes
    ranked 2nd to (k+1)-th —, in that order, each on the examples not yet fooled, with the
    targeted DLR loss (``loss`` must be left out or "dlr"; the targeted CE loss when K < 4);
    success is misclassification);
    ``rho`` (0.75); ``momentum`` (0.75, the weight of the new step; ``1 − momentum`` weighs the
    previous one); ``step_size`` (initial η; default ``2·eps``). Inputs (N,C,H,W) in [0, 1],
    model scores (N,K). Randomness: :func:`advguard.rng.rand_rows` / ``randn_rows`` from the
    ``generator`` (per example inside the evaluation harness). Through an
    :class:`~advguard.attacks.wrappers.EOT` model the gradients are EOT gradients.

    Example::

        result = AutoPGD(eps=8/255)(model, x, y)                     # APGD-CE
        result = AutoPGD(eps=8/255, loss="dlr", restarts=5)(model, x, y)
        result = AutoPGD(eps=8/255, targets=9)(model, x, y)          # APGD-T
        result = AutoPGD(eps=0.5, norm="l2")(model, x, y, target="least_likely")
    """

    name = "auto-pgd"
    steps: int = 100
    restarts: int = 1
    loss: str | None = None
    targets: int = 0
    rho: float = 0.75
    momentum: float = 0.75
    step_size: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.restarts < 1 or self.targets < 0:
            raise ConfigError(f"auto-pgd needs steps >= 1, restarts >= 1 and targets >= 0, got "
                              f"steps={self.steps}, restarts={self.restarts}, "
                              f"targets={self.targets}")
        if not 0 < self.rho <= 1:
            raise ConfigError(f"rho must be in (0, 1], got {self.rho}")
        if not 0 <= self.momentum <= 1:
            raise ConfigError(f"momentum must be in [0, 1], got {self.momentum}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")
        if self.targets > 0 and self.loss not in (None, "dlr"):
            raise ConfigError(f"auto-pgd with targets={self.targets} (APGD-T) runs the targeted "
                              f"DLR loss; leave loss out or set it to 'dlr', not {self.loss!r}")
        loss = self.loss or ("dlr" if self.targets else "ce")
        try:
            get_loss(loss)
        except UnknownNameError as exc:
            raise ConfigError(f"auto-pgd: {exc}") from None
        object.__setattr__(self, "loss", loss)  # record the loss that runs

    def _start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x_0``: ``x`` plus a random perturbation of norm ``eps``, projected into [0, 1]."""
        if self.norm == "linf":
            t = 2 * rand_rows(x, generator=generator, stream=STREAM) - 1
            size = t.flatten(1).abs().amax(1)
        else:
            t = randn_rows(x, generator=generator, stream=STREAM)
            size = t.flatten(1).norm(dim=1)
        return self.threat.project(x + self.eps * t / (size.view(-1, *[1] * (x.dim() - 1))
                                                        + 1e-12), x)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None, goal: torch.Tensor | None, loss: LossFn,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One restart: ``(result, success, best loss)`` per example."""
        threat = self.threat
        col = (-1, *[1] * (x.dim() - 1))
        x_k = self._start(x, generator)
        value, grad, success = _evaluate(model, x_k, y, target, loss, goal)
        x_prev, x_best, grad_best, best = x_k, x_k, grad, value
        adv, fooled = x_k, success
        eta = torch.full((x.shape[0], *col[1:]),
                         self.step_size if self.step_size is not None else 2 * self.eps,
                         dtype=x.dtype, device=x.device)
        last_value, rises = value, torch.zeros_like(value)
        best_at_check = best
        halved_at_check = torch.zeros_like(success)
        check_at, last_check = set(checkpoints(self.steps)), 0
        for k in range(self.steps):
            z = threat.project(x_k + eta * _direction(grad, self.norm), x)
            m = self.momentum if k > 0 else 1.0
            x_prev, x_k = x_k, threat.project(x_k + m * (z - x_k) + (1 - m) * (x_k - x_prev), x)
            value, grad, success = _evaluate(model, x_k, y, target, loss, goal)
            adv = torch.where(success.view(col), x_k, adv)
            fooled = fooled | success
            rises = rises + (value > last_value).float()
            last_value = value
            better = value > best
            x_best = torch.where(better.view(col), x_k, x_best)
            grad_best = torch.where(better.view(col), grad, grad_best)
            best = torch.where(better, value, best)
            if k + 1 not in check_at:
                continue
            few_rises = rises < self.rho * (k + 1 - last_check)
            stalled = ~halved_at_check & (best <= best_at_check)
            halve = few_rises | stalled
            eta = torch.where(halve.view(col), eta / 2, eta)
            x_k = torch.where(halve.view(col), x_best, x_k)
            x_prev = torch.where(halve.view(col), x_best, x_prev)
            grad = torch.where(halve.view(col), grad_best, grad)
            last_value = torch.where(halve, best, last_value)
            halved_at_check, best_at_check = halve, best
            rises, last_check = torch.zeros_like(rises), k + 1
        return torch.where(fooled.view(col), adv, x_best), fooled, best

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        assert self.loss is not None  # resolved in __post_init__
        loss = get_loss(self.loss)
        # (target of the loss, target of success: None = misclassification) per run
        runs: list[tuple[torch.Tensor | None, torch.Tensor | None]] = [(target, target)]
        if self.targets > 0:
            if target is not None:
                raise ConfigError("auto-pgd with targets > 0 (APGD-T) chooses its own target "
                                  "classes; call it without target=, or set targets=0")
            with torch.no_grad():
                scores = model(x).float()
            k = min(self.targets, scores.shape[1] - 1)
            if scores.shape[1] < 4:  # the targeted DLR loss needs 4 classes: targeted CE
                loss = get_loss("ce")
            others = scores.scatter(1, y[:, None], float("-inf"))
            ranked = others.argsort(1, descending=True)
            runs = [(ranked[:, r], None) for r in range(k)]
        best = x.clone()
        best_value = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for loss_target, goal in runs:
            for _ in range(self.restarts):
                idx = (~fooled).nonzero().flatten()
                if idx.numel() == 0:
                    return best
                adv, success, value = self._run(
                    model, x[idx], y[idx], None if loss_target is None else loss_target[idx],
                    None if goal is None else goal[idx], loss, generator)
                better = success | (value > best_value[idx])
                best[idx[better]] = adv[better]
                best_value[idx[better]] = value[better]
                fooled[idx[success]] = True
        return best
