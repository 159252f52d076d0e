"""Owned randomness (house rule 3): modules that draw random numbers own a seed and one
``torch.Generator`` per device, and never touch the global RNG — attack libraries reseed it.
Used by randomized defenses and by randomized model components (noise-injection layers)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and ``keys`` (stable across runs and
    platforms, unlike ``hash``)."""
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class Randomness(nn.Module):
    """Owns a seed and one ``torch.Generator`` per device, created lazily and seeded from it.

    :meth:`reseed` re-seeds this module and, with derived seeds, every :class:`Randomness`
    submodule, so a composite defense is reproducible from one number.
    """

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__()
        self._seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    @property
    def seed(self) -> int:
        return self._seed

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This module's generator for ``device`` (the device of the inputs)."""
        key = str(torch.device(device))
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=torch.device(device))
            gen.manual_seed(self._seed)
            self._generators[key] = gen
        return gen

    def reseed(self, seed: int) -> None:
        """Re-seed this module and, with seeds derived from ``seed``, its random submodules."""
        self._seed = int(seed)
        self._generators.clear()
        for name, child in self.named_modules():
            if child is not self and isinstance(child, Randomness):
                child._seed = derive_seed(seed, name)
                child._generators.clear()

    def rng_state(self) -> dict[str, object]:
        """The seed and the state of every generator created so far (for resumable training)."""
        return {"seed": self._seed,
                "generators": {k: g.get_state() for k, g in self._generators.items()}}

    def set_rng_state(self, state: dict[str, object]) -> None:
        """Restore what :meth:`rng_state` returned."""
        self._seed = int(state["seed"])  # type: ignore[call-overload]
        self._generators.clear()
        generators = state["generators"]
        assert isinstance(generators, dict)
        for key, value in generators.items():
            self.generator(key).set_state(value)


def rng_states(module: nn.Module) -> dict[str, dict[str, object]]:
    """:meth:`Randomness.rng_state` of every :class:`Randomness` submodule, by module name."""
    return {name: m.rng_state() for name, m in module.named_modules()
            if isinstance(m, Randomness)}


def set_rng_states(module: nn.Module, states: dict[str, dict[str, object]]) -> None:
    """Inverse of :func:`rng_states` (names must match)."""
    modules = dict(module.named_modules())
    for name, state in states.items():
        target = modules.get(name)
        if not isinstance(target, Randomness):
            raise KeyError(f"no randomized submodule named {name!r}")
        target.set_rng_state(state)


# --------------------------------------------------------------------------- the draws protocol
# Every path that averages, votes or takes an expectation over draws of a randomized model
# (``Averaged``, ``EOT``, ``MajorityVote``, ``Smoothed``, MI-OL, SmoothAdv, EPGD) runs the draws
# through :func:`iter_draws`: ``k`` stacked copies of the batch per forward, where every noise
# source gives every copy its own draw. A noise source (a :class:`Randomness` module with no
# random submodule, whose ``traits`` -- if any -- say randomized) declares how it draws:
#
# * ``per_example_noise = True`` -- independently per row of its input (random transforms, input
#   noise, CAP's labels, MI-OL's partners), so stacked copies get independent draws for free;
# * ``per_copy_noise = True`` -- once per forward, shared by the rows, but once per stacked copy
#   inside :func:`stacked_copies` (PNI/CNI weight noise, through :class:`CopiesAware` layers).
#
# A source declaring neither draws once per forward: :func:`iter_draws` then runs one copy per
# forward, so that the draws stay independent.


class CopiesAware:
    """Mixin for layers that can run a batch of stacked copies with one draw per copy: ``copies``
    is how many stacked copies of a batch the next forward holds (1: an ordinary batch), set only
    by :func:`stacked_copies`."""

    copies: int = 1

    def _split(self, x: torch.Tensor) -> int:
        k = self.copies
        if x.shape[0] % k:
            raise ValueError(
                f"{type(self).__name__}: a batch of {x.shape[0]} rows cannot hold "
                f"{k} stacked copies (stacked_copies(model, {k})); the batch size must be "
                f"a multiple of the number of copies")
        return k


@contextmanager
def stacked_copies(model: nn.Module, copies: int) -> Iterator[nn.Module]:
    """Within the context, every forward of ``model`` takes a batch of ``copies`` stacked copies
    of a batch (input ``(copies·n, ...)``, copy ``i`` in rows ``i·n … (i+1)·n − 1``, as made by
    ``x.repeat(copies, 1, 1, 1)``) and every :class:`CopiesAware` layer of ``model`` gives copy
    ``i`` its own draw ``i``, made in the order of ``copies`` sequential forwards. A batch size
    that is not a multiple of ``copies`` raises ``ValueError``. Nested contexts multiply; the
    previous setting is restored on exit. Gradients flow as in ordinary forwards.

    Example::

        with stacked_copies(model, 16):
            logits = model(x.repeat(16, 1, 1, 1)).view(16, len(x), -1)   # 16 weight draws
    """
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be an int >= 1, got {copies!r}")
    layers = [m for m in model.modules() if isinstance(m, CopiesAware)]
    saved = [m.__dict__.get("copies") for m in layers]
    try:
        for m in layers:
            m.copies = m.copies * copies
        yield model
    finally:
        for m, old in zip(layers, saved):
            if old is None:
                del m.copies
            else:
                m.copies = old


def noise_sources(model: nn.Module) -> Iterator[nn.Module]:
    """The modules inside ``model`` that draw noise themselves: :class:`Randomness` modules with
    no random submodule of their own, except those whose ``traits`` declare them deterministic
    (e.g. a bit-depth transform)."""
    for module in model.modules():
        if not isinstance(module, Randomness):
            continue
        if any(isinstance(sub, Randomness) for sub in module.modules() if sub is not module):
            continue
        traits = getattr(module, "traits", None)
        if traits is not None and not getattr(traits, "randomized", True):
            continue
        yield module


def is_randomized(model: nn.Module) -> bool:
    """Whether any noise source lives inside ``model`` (its outputs are random)."""
    return any(True for _ in noise_sources(model))


def draws_per_copy(model: nn.Module) -> bool:
    """True when stacked copies of a batch get independent draws from every noise source of
    ``model`` (each declares ``per_example_noise`` or ``per_copy_noise``); True for a model
    without noise."""
    return all(bool(getattr(m, "per_example_noise", False) or getattr(m, "per_copy_noise", False))
               for m in noise_sources(model))


def draw_chunks(total: int, chunk: int) -> list[int]:
    """``total`` draws split into chunks of at most ``chunk`` (the last one smaller)."""
    if total < 1:
        raise ValueError(f"the number of draws must be >= 1, got {total}")
    size, sizes, left = max(1, int(chunk)), [], int(total)
    while left > 0:
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes


def iter_draws(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, draws: int, *,
               chunk: int, module: nn.Module) -> Iterator[torch.Tensor]:
    """``draws`` independent draws of ``fn(x)``, yielded in chunks of shape ``(k, N, ...)``.

    ``module`` is what ``fn`` runs (``fn`` is ``module`` or one of its methods): each chunk is
    one forward of ``k`` stacked copies of ``x`` inside :func:`stacked_copies`, ``k`` at most
    ``chunk``, or 1 when a noise source of ``module`` cannot draw per copy
    (:func:`draws_per_copy`). Gradients flow to ``x``.
    """
    n = x.shape[0]
    size = chunk if draws_per_copy(module) else 1
    for k in draw_chunks(draws, size):
        with stacked_copies(module, k):
            out = fn(x.repeat(k, *([1] * (x.dim() - 1))))
        yield out.view(k, n, *out.shape[1:])


def mean_probs(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, draws: int, *,
               chunk: int, module: nn.Module, output: str = "logits") -> torch.Tensor:
    """``log((1/draws) Σ_i p_i(x))`` over :func:`iter_draws` of ``fn`` — logits whose softmax is
    the expected probability vector (``output``: what ``fn`` returns, "logits" or "probs")."""
    total: torch.Tensor | None = None
    for out in iter_draws(fn, x, draws, chunk=chunk, module=module):
        probs = out.float() if output == "probs" else out.float().softmax(-1)
        part = probs.sum(0)
        total = part if total is None else total + part
    assert total is not None
    return (total / draws).clamp_min(1e-12).log()
