"""The defense protocol: what a defense is and what it declares to an attacker (house rule 2).

Two kinds of module:

* :class:`Transform` — a preprocessing defense mapping images in [0,1] to images in [0,1]
  (bit-depth reduction, Gaussian noise, random resize+pad, ...). One hook:
  :meth:`Transform.transform`.
* :class:`Defense` — maps images in [0,1] to class scores (logits, or probabilities when
  ``traits.output == "probs"``). One hook: :meth:`Defense.predict`. A plain classifier becomes a
  defense with :class:`Undefended`; transforms in front of a classifier form a :class:`Pipeline`,
  whose traits are derived from its parts.

Both declare :class:`Traits`: whether the output is **randomized** (EOT and repeated evaluation are
needed), whether they are **differentiable** end to end (otherwise a BPDA surrogate is used:
:meth:`surrogate` — identity unless a part declares a better differentiable approximation), whether
they are **dynamic** (run a gradient computation or optimization inside ``forward``; such code must
work under ``torch.no_grad()`` and inside an attack's graph without leaking gradients into it), and
the **base model** (the static classifier used by oblivious and transfer attacks).

Randomness comes only from generators the module owns (:class:`Randomness`), seeded by
``seed=`` or :meth:`reseed`, never from the global RNG — attack libraries reseed the global RNG.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from advguard.rng import Randomness, derive_seed

__all__ = ["Averaged", "Defense", "Output", "Pipeline", "Randomness", "Traits", "Transform",
           "Undefended", "as_defense", "derive_seed", "gradient_inside_forward"]

Output = Literal["logits", "probs"]


@dataclass(frozen=True)
class Traits:
    """What an attacker needs to know about a defense or transform."""

    randomized: bool = False
    differentiable: bool = True
    dynamic: bool = False
    output: Output = "logits"

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def gradient_inside_forward(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                            differentiable: bool = True) -> torch.Tensor:
    """``∇ₓ loss(x)`` computed inside a dynamic defense's forward pass.

    Works when the caller runs under ``torch.no_grad()``. When ``differentiable`` and the caller
    is building a graph through ``x`` (``x.requires_grad`` with grad mode on), the gradient is
    itself differentiable (``create_graph=True``: attacks can double-backpropagate through the
    defense); otherwise it is computed on a detached copy and returned detached, so nothing leaks
    into the caller's graph. Parameter ``.grad`` fields are never touched (``autograd.grad``).
    ``loss`` maps (N,C,H,W) inputs to a scalar.
    """
    through = differentiable and torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        xin = x if through else x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(xin), xin, create_graph=through)
    return grad if through else grad.detach()


# --------------------------------------------------------------------------- transforms
class Transform(Randomness):
    """A preprocessing defense: images (N,C,H,W) in [0,1] → images in [0,1] (same N, C).

    Subclasses set ``traits`` (class attribute or property) and implement :meth:`transform`;
    non-differentiable ones may override :meth:`surrogate` (default: identity) for BPDA.
    """

    traits: Traits = Traits()

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable approximation used by BPDA for the backward pass (default identity)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x, self.generator(x.device))

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        """Forward value of :meth:`forward`, gradient of :meth:`surrogate` (straight-through)
        where the transform is not differentiable."""
        if self.traits.differentiable:
            return self.forward(x)
        approx = self.surrogate(x)
        with torch.no_grad():
            exact = self.forward(x)
        return approx + (exact - approx).detach()


# --------------------------------------------------------------------------- defenses
class Defense(Randomness):
    """A defended classifier: images (N,C,H,W) in [0,1] → scores (N, K).

    Subclasses implement :meth:`predict` and declare ``traits`` and ``base_model``.
    """

    traits: Traits = Traits()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def base_model(self) -> nn.Module:
        """The static classifier the defense is built on (for oblivious and transfer attacks)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass with every non-differentiable part replaced, in the backward pass, by
        its declared surrogate. Defenses that are differentiable return :meth:`forward`."""
        if self.traits.differentiable:
            return self.forward(x)
        raise NotImplementedError(
            f"{type(self).__name__} is not differentiable and declares no BPDA surrogate")

    def transforms(self) -> Iterator[Transform]:
        """The preprocessing transforms in front of the classifier (none by default)."""
        return iter(())


class Undefended(Defense):
    """A plain classifier presented as a (trivial) defense: deterministic, differentiable."""

    def __init__(self, model: nn.Module, *, output: Output = "logits") -> None:
        super().__init__()
        self.model = model
        self.traits = Traits(output=output)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def base_model(self) -> nn.Module:
        return self.model


def as_defense(model: nn.Module) -> Defense:
    """``model`` itself if it is a :class:`Defense`, else :class:`Undefended` around it."""
    return model if isinstance(model, Defense) else Undefended(model)


class Pipeline(Defense):
    """Transforms applied in order, then a classifier (a plain model or a :class:`Defense`).

    Traits are derived: randomized if any part is; differentiable only if all parts are; dynamic
    if any part is; the output type and base model are the classifier's.

    Example::

        defense = Pipeline([BitDepthReduction(bits=3)], model)
        defense.traits   # Traits(randomized=False, differentiable=False, ...)
    """

    def __init__(self, transforms: Sequence[Transform], classifier: nn.Module, *,
                 seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.steps = nn.ModuleList(transforms)
        self.classifier = classifier
        parts = [t.traits for t in transforms]
        head = classifier.traits if isinstance(classifier, Defense) else Traits()
        parts.append(head)
        self.traits = Traits(
            randomized=any(p.randomized for p in parts),
            differentiable=all(p.differentiable for p in parts),
            dynamic=any(p.dynamic for p in parts),
            output=head.output,
        )
        self.reseed(seed)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return self.classifier(x)

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            assert isinstance(step, Transform)
            x = step.forward_bpda(x)
        if isinstance(self.classifier, Defense):
            return self.classifier.forward_bpda(x)
        return self.classifier(x)

    @property
    def base_model(self) -> nn.Module:
        if isinstance(self.classifier, Defense):
            return self.classifier.base_model
        return self.classifier

    def transforms(self) -> Iterator[Transform]:
        for step in self.steps:
            assert isinstance(step, Transform)
            yield step
        if isinstance(self.classifier, Defense):
            yield from self.classifier.transforms()


class Averaged(Defense):
    """Run a randomized defense ``n`` times and average its output probabilities.

    Returns ``log(mean_i softmax(f_i(x)))`` — valid logits whose softmax is the averaged
    probability vector — so it stays a logits-output defense. The ``n`` executions run as batched
    forwards of at most ``chunk`` copies. Used for e.g. 50 executions of Xie/Guo in the CAP paper.
    """

    def __init__(self, defense: Defense, n: int, *, chunk: int = 8, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.defense = defense
        self.n = n
        self.chunk = max(1, chunk)
        inner = defense.traits
        self.traits = dataclasses.replace(inner, output="logits")
        self.reseed(seed)

    def _probs(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.defense.traits.output == "probs" else out.softmax(-1)

    def _average(self, fn: object, x: torch.Tensor) -> torch.Tensor:
        assert callable(fn)
        total: torch.Tensor | None = None
        done = 0
        while done < self.n:
            k = min(self.chunk, self.n - done)
            out = fn(x.repeat(k, 1, 1, 1))
            probs = self._probs(out).reshape(k, x.shape[0], -1).sum(0)
            total = probs if total is None else total + probs
            done += k
        assert total is not None
        return (total / self.n).clamp_min(1e-12).log()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._average(self.defense, x)

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        return self._average(self.defense.forward_bpda, x)

    @property
    def base_model(self) -> nn.Module:
        return self.defense.base_model

    def transforms(self) -> Iterator[Transform]:
        return self.defense.transforms()
