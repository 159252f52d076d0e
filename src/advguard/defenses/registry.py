"""The defense registry and a builder from data (config dicts).

Entries are :class:`~advguard.defenses.base.Defense` or
:class:`~advguard.defenses.base.Transform` classes registered with metadata ``kind``
(``"transform"``: images → images, put in front of the classifier; ``"defense"``: wraps a
classifier; ``"composite"``: built from other specs) and ``paper``. Traits are not registry
metadata: they belong to instances (``build_defense(...).traits``); a class whose traits never
vary says so with :meth:`~advguard.defenses.base.Defense.declared_traits`. Each entry builds
itself from a spec with its ``from_spec`` hook.

A defense spec is a name, or a mapping with a ``name`` and that entry's keyword arguments:

* ``"none"`` or ``{"name": "none"}`` — the undefended model;
* ``{"name": "bit_depth", "bits": 3}`` — a transform, put in front of the model;
* ``{"name": "pipeline", "steps": [spec, ...]}`` — transforms in order, then the model (the last
  step may be a classifier-level defense such as CAP, which wraps the model);
* ``{"name": "averaged", "n": 50, "defense": spec}`` — average ``n`` executions.

Every mistake in a spec (unknown name or parameter, a bad value) raises
:class:`~advguard.errors.ConfigError` with one line naming the defense.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from advguard.defenses.base import Averaged, Defense, Pipeline, Transform, Undefended, check_params
from advguard.errors import AdvguardError, ConfigError
from advguard.registry import Registry

__all__ = ["DEFENSES", "build_defense", "build_part", "defense_parameters"]

DEFENSES: Registry[type[Defense] | type[Transform]] = Registry("defense")
DEFENSES.add("none", Undefended, kind="defense", paper="the undefended model")
DEFENSES.add("pipeline", Pipeline, kind="composite", paper="transforms, then the classifier")
DEFENSES.add("averaged", Averaged, kind="composite",
             paper="average of n executions (e.g. Xie/Guo in Guo et al. 2018)")


def _split(spec: Mapping[str, Any] | str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a defense spec is a name or a mapping with a 'name', got "
                          f"{type(spec).__name__}: {spec!r}")
    if "name" not in spec:
        raise ConfigError(f"defense spec needs a 'name': {dict(spec)}")
    return str(spec["name"]), {str(k): v for k, v in spec.items() if k != "name"}


def build_part(spec: Mapping[str, Any] | str, model: nn.Module) -> Defense | Transform:
    """Instantiate one registered entry (a transform, a classifier-level or composite defense);
    every error in the spec becomes a one-line :class:`ConfigError`."""
    name, params = _split(spec)
    cls = DEFENSES.get(name)
    if cls not in (Pipeline, Averaged):  # composites check their own parameters
        check_params(cls, params, name)
    try:
        part = cls.from_spec(model, params)
    except AdvguardError as exc:
        if isinstance(exc, ConfigError) and str(exc).startswith(f"defense {name!r}"):
            raise
        raise ConfigError(f"defense {name!r}: {exc}") from None
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise ConfigError(f"defense {name!r}: {_missing(name, params) or exc}") from None
    return part


def _missing(name: str, params: Mapping[str, Any]) -> str | None:
    """The required parameters of entry ``name`` that ``params`` lacks, said in spec terms
    (None when it lacks none)."""
    accepted = defense_parameters(name)
    wanted = [k for k, default in accepted.items() if default == "required" and k not in params]
    if not wanted:
        return None
    listed = ", ".join(f"{k}={v}" for k, v in accepted.items())
    return f"the spec needs {' and '.join(map(repr, wanted))} (parameters: {listed})"


def build_defense(spec: Mapping[str, Any] | str, model: nn.Module, *, seed: int = 0) -> Defense:
    """Build a :class:`~advguard.defenses.base.Defense` around ``model`` from a spec (see module
    docstring); a lone transform is put in front of ``model``. The result is seeded with
    ``seed`` (sub-parts get derived seeds)."""
    part = build_part(spec, model)
    defense = Pipeline([part], model) if isinstance(part, Transform) else part
    defense.reseed(seed)
    return defense


def defense_parameters(name: str) -> dict[str, str]:
    """The parameters a registered entry takes, with their defaults (``"required"`` when none),
    for listings and error messages."""
    import inspect

    cls = DEFENSES.get(name)
    out: dict[str, str] = {}
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname in ("self", "model", "classifier", "transforms") or p.kind in (
                p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[pname] = "required" if p.default is p.empty else repr(p.default)
    if cls is Pipeline:
        out = {"steps": "required", **out}
    return out
