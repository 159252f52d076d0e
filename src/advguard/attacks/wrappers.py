"""Model wrappers that turn any defense into something gradient (or decision) attacks can use.

* :class:`BPDA` — Backward Pass Differentiable Approximation (Athalye, Carlini, Wagner, ICML 2018):
  the forward pass of the defense, with each non-differentiable part's gradient taken from its
  declared surrogate (identity by default).
* :class:`EOT` — Expectation over Transformation (Athalye et al. 2018): attacks that see this
  wrapper average their loss **gradients** over ``samples`` draws of the defense's randomness (the
  draws run as one batched forward, chunked); used as a plain module, it returns
  ``log mean_i softmax(f_i(x))``.
* :class:`MajorityVote` — hard-label majority over ``samples`` draws, for decision-based attacks on
  randomized defenses (foolbox's HopSkipJump and Boundary fail on a model whose decision flips
  between identical calls).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks.base import as_logits_model
from advguard.errors import ConfigError
from advguard.rng import call_rows, iter_draws, mean_probs

LossOnLogits = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class BPDA(nn.Module):
    """Forward = the defense's forward; backward through its declared BPDA surrogates, or through
    the surrogate named ``surrogate`` where a transform offers several (e.g. AdvT's "softsign").

    Example::

        attack(BPDA(Pipeline([BitDepthReduction(bits=3)], model)), x, y)
    """

    def __init__(self, defense: nn.Module, *, surrogate: str | None = None) -> None:
        super().__init__()
        if not hasattr(defense, "forward_bpda"):
            raise TypeError("BPDA needs a Defense (with forward_bpda); wrap plain models with "
                            "advguard.defenses.as_defense")
        self.defense = defense
        self.traits = getattr(defense, "traits", None)
        if surrogate is not None:
            from advguard.defenses.base import IDENTITY_SURROGATE

            offered = sorted({name for t in _transforms(defense)
                              for name in getattr(t, "surrogates", ())}
                             | {IDENTITY_SURROGATE})  # every transform's (vacuous without)
            if surrogate not in offered:
                raise ConfigError(f"BPDA surrogate {surrogate!r} is not offered by the defense "
                                  f"(offered: {', '.join(offered)})")
        self.surrogate = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from advguard.defenses.base import surrogate_choice

        fn = self.defense.forward_bpda
        assert callable(fn)
        # the rows' own draws inside the harness, as a defense call
        with call_rows(x), surrogate_choice(self.surrogate):
            return fn(x)


def find_part(model: nn.Module, *methods: str) -> nn.Module | None:
    """The first submodule of ``model`` (a defense, possibly wrapped by BPDA/EOT) offering every
    method in ``methods`` (e.g. a transformation's ``expected``), or None."""
    for module in model.modules():
        if all(callable(getattr(module, m, None)) for m in methods):
            return module
    return None


def _transforms(defense: nn.Module) -> list[nn.Module]:
    fn = getattr(defense, "transforms", None)
    return list(fn()) if callable(fn) else []


def _repeat(t: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return None if t is None else t.repeat(k, *([1] * (t.dim() - 1)))


class _OverDraws(nn.Module):
    """A model evaluated over ``samples`` draws of its randomness, ``chunk`` stacked copies per
    forward (the draws protocol, :func:`advguard.rng.iter_draws`)."""

    def __init__(self, model: nn.Module, samples: int, *, chunk: int) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.model = as_logits_model(model)
        self.samples = int(samples)
        self.chunk = max(1, int(chunk))


class EOT(_OverDraws):
    """Average over ``samples`` draws of a randomized model's randomness.

    ``expected_loss(x, y, target, loss)`` returns the per-example loss averaged over draws (the
    mean of the per-draw losses, whose input gradient is the EOT gradient; ``objective=
    "mean_loss"``) or the loss of the expected softmax (``objective="expected_softmax"``: the
    objective of a vote or an average over draws, stronger against them). Used as a plain module
    it returns ``log mean_i softmax(f_i(x))`` (the expected softmax: attacks on it maximize the
    loss of the expected prediction). The draws follow the draws protocol
    (:func:`advguard.rng.iter_draws`): ``chunk`` stacked copies per forward, one independent
    draw of every noise source (PNI/CNI weight noise included) per copy.
    """

    def __init__(self, model: nn.Module, samples: int = 20, *, chunk: int = 10,
                 objective: str = "mean_loss") -> None:
        super().__init__(model, samples, chunk=chunk)
        if objective not in ("mean_loss", "expected_softmax"):
            raise ValueError(f"objective must be 'mean_loss' or 'expected_softmax', got "
                             f"{objective!r}")
        self.objective = objective

    def expected_loss(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                      loss: LossOnLogits) -> torch.Tensor:
        if self.objective == "expected_softmax":
            return loss(self.forward(x), y, target)
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for logits in iter_draws(self.model, x, self.samples, chunk=self.chunk,
                                 module=self.model):
            k = logits.shape[0]
            rep_y = _repeat(y, k)
            assert rep_y is not None
            values = loss(logits.flatten(0, 1), rep_y, _repeat(target, k))
            total = total + values.view(k, x.shape[0]).sum(0)
        return total / self.samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_probs(self.model, x, self.samples, chunk=self.chunk, module=self.model)


class MajorityVote(_OverDraws):
    """Hard-label majority vote over ``samples`` draws (the draws protocol,
    :func:`advguard.rng.iter_draws`); returns one-hot vote fractions as scores (argmax = majority
    class, ties to the lowest index). Not differentiable (decision-based attacks only)."""

    def __init__(self, model: nn.Module, samples: int = 10, *, chunk: int = 10) -> None:
        super().__init__(model, samples, chunk=chunk)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        votes: torch.Tensor | None = None
        for out in iter_draws(self.model, x, self.samples, chunk=self.chunk, module=self.model):
            v = F.one_hot(out.argmax(-1), out.shape[-1]).float().sum(0)
            votes = v if votes is None else votes + v
        assert votes is not None
        return votes / self.samples


def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     target: torch.Tensor | None, loss: LossOnLogits) -> torch.Tensor:
    """The attack objective per example; through :class:`EOT` (also behind counting or logit
    adapters that forward ``expected_loss``) it is the expectation over draws."""
    expected = getattr(model, "expected_loss", None)
    if callable(expected):
        return expected(x, y, target, loss)
    return loss(model(x), y, target)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   target: torch.Tensor | None, loss: LossOnLogits
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss per example, ∇_x Σ loss)`` at ``x``; works when called under ``torch.no_grad()``
    and never touches parameter gradients."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        values = per_example_loss(model, x, y, target, loss)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad.detach()
