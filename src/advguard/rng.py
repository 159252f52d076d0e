"""Owned randomness (house rule 3): modules that draw random numbers own a seed and one
``torch.Generator`` per device, and never touch the global RNG — attack libraries reseed it.
Used by randomized defenses and by randomized model components (noise-injection layers)."""

from __future__ import annotations

import hashlib

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
