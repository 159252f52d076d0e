"""The defense registry and a builder from data (config dicts).

Entries are classes registered with metadata ``kind`` (``"transform"``: images → images, put in
front of the classifier; ``"defense"``: wraps a classifier), ``paper`` and ``traits``.

A defense spec is a mapping with a ``name`` and that entry's keyword arguments:

* ``{"name": "none"}`` — the undefended model;
* ``{"name": "bit_depth", "bits": 3}`` — a transform, put in front of the model;
* ``{"name": "pipeline", "steps": [spec, ...]}`` — transforms in order, then the model (the last
  step may be a classifier-level defense such as CAP, which wraps the model);
* ``{"name": "averaged", "n": 50, "defense": spec}`` — average ``n`` executions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from advguard.errors import ConfigError
from advguard.registry import Registry

DEFENSES: Registry[Any] = Registry("defense")


def _kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "name"}


def build_defense(spec: Mapping[str, Any] | str, model: nn.Module, *, seed: int = 0) -> Any:
    """Build a :class:`~advguard.defenses.base.Defense` around ``model`` from a spec (see module
    docstring). The result is seeded with ``seed`` (sub-parts get derived seeds)."""
    from advguard.defenses.base import Averaged, Defense, Pipeline, Transform, Undefended

    if isinstance(spec, str):
        spec = {"name": spec}
    if "name" not in spec:
        raise ConfigError(f"defense spec needs a 'name': {dict(spec)}")
    name = str(spec["name"])
    if name == "none":
        return Undefended(model)
    if name == "pipeline":
        steps = list(spec.get("steps", []))
        if not steps:
            raise ConfigError("a 'pipeline' defense needs a non-empty 'steps' list")
        transforms: list[Transform] = []
        classifier: nn.Module = model
        for i, step in enumerate(steps):
            part = build_part(step, model)
            if isinstance(part, Transform):
                transforms.append(part)
            elif i == len(steps) - 1:
                classifier = part
            else:
                raise ConfigError(f"pipeline step {i} ({step.get('name')!r}) is a classifier-level"
                                  " defense; only the last step may be one")
        return Pipeline(transforms, classifier, seed=seed)
    if name == "averaged":
        inner = spec.get("defense")
        if not isinstance(inner, Mapping):
            raise ConfigError("an 'averaged' defense needs a 'defense' spec")
        kwargs = _kwargs(spec)
        kwargs.pop("defense")
        return Averaged(build_defense(inner, model), seed=seed, **kwargs)
    part = build_part(spec, model)
    if isinstance(part, Transform):
        return Pipeline([part], model, seed=seed)
    assert isinstance(part, Defense)
    part.reseed(seed)
    return part


def build_part(spec: Mapping[str, Any], model: nn.Module) -> Any:
    """Instantiate one registered transform or classifier-level defense."""
    if "name" not in spec:
        raise ConfigError(f"defense spec needs a 'name': {dict(spec)}")
    entry = DEFENSES.entry(str(spec["name"]))
    kwargs = _kwargs(spec)
    try:
        if entry.metadata.get("kind") == "transform":
            return entry.value(**kwargs)
        return entry.value(model, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for defense {entry.name!r}: {exc}") from None
