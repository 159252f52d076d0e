"""Checking user-supplied values against simple type annotations, so that a config key, a defense
parameter or an attack hyper-parameter of the wrong type is refused with a message that names the
key, the expected type and the value given — not a ``TypeError`` from deep inside.

Only simple annotations are checked (``int``, ``float``, ``bool``, ``str``, ``None``,
``Literal[...]``, unions of these, and lists/tuples of them); anything else is left to the
constructor. ``int`` accepts any integral number but not ``bool``; ``float`` accepts any real
number but not ``bool``.
"""

from __future__ import annotations

import difflib
import functools
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from advguard.errors import ConfigError

__all__ = ["as_number", "check_values", "coerce_numbers", "describe", "type_hints", "value_fits"]

#: other names users write for allowed values (suggested in messages, never accepted): for
#: ``Literal`` annotations here and for registries (e.g. the attack losses)
ALIASES = {"xent": "ce", "cross_entropy": "ce", "crossentropy": "ce", "cross-entropy": "ce",
           "margin": "cw", "carlini": "cw", "carlini_wagner": "cw", "inf": "linf",
           "l_inf": "linf", "Linf": "linf", "L2": "l2", "majority": "prediction",
           "hard": "prediction"}


@functools.lru_cache(maxsize=256)
def _hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation that cannot be resolved: check nothing
        return {}


def type_hints(target: type | Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of a dataclass (its fields) or of a class's ``__init__``."""
    if isinstance(target, type) and not hasattr(target, "__dataclass_fields__"):
        return _hints(target.__init__)  # type: ignore[misc]
    return _hints(target)


def value_fits(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits a simple annotation; None when the annotation is not simple."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        results = [value_fits(value, h) for h in typing.get_args(hint)]
        return True if any(results) else (None if None in results else False)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(
                value_fits(v, a) is not False for v, a in zip(value, args))
        return not args or all(value_fits(v, args[0]) is not False for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    return None


def describe(hint: Any) -> str:
    """An annotation in words: "an int", "one of 'ce', 'cw'", "a list of 2 (an int, an int)"."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(h) for h in typing.get_args(hint))
    if origin in (tuple, list, Sequence):
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
        return f"a list of {describe(args[0])}" if args else "a list"
    names = {int: "an int", float: "a number", bool: "true or false", str: "a string",
             type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _suggest(value: Any, hint: Any) -> str:
    """", did you mean 'ce'?" for a string close to (or an alias of) an allowed Literal value."""
    if not isinstance(value, str):
        return ""
    allowed = [a for h in (typing.get_args(hint) if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else (hint,)) if typing.get_origin(h) is typing.Literal
        for a in typing.get_args(h) if isinstance(a, str)]
    if not allowed:
        return ""
    alias = ALIASES.get(value)
    close = [alias] if alias in allowed else difflib.get_close_matches(value, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_values(target: type | Callable[..., Any], values: Mapping[str, Any], *,
                 what: str) -> None:
    """Raise :class:`ConfigError` ("{what}: 'steps' must be an int, got 2.5") for the first of
    ``values`` that does not fit the simple annotation of the same name on ``target``."""
    hints = type_hints(target)
    for key, value in values.items():
        hint = hints.get(key)
        if hint is not None and value_fits(value, hint) is False:
            raise ConfigError(f"{what}: {key!r} must be {describe(hint)}, got {value!r}"
                              f"{_suggest(value, hint)}")


_FRACTION = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*/\s*"
                       r"((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def as_number(value: Any, *, what: str) -> Any:
    """``value`` as a float when it is a number written as text — "0.03", "8/255" (the way
    budgets are usually quoted) — else unchanged (the type check then reports it)."""
    if not isinstance(value, str):
        return value
    match = _FRACTION.match(value)
    if match and float(match.group(2)) == 0:
        raise ConfigError(f"{what}: division by zero in {value!r}")
    try:
        return float(match.group(1)) / float(match.group(2)) if match else float(value)
    except ValueError:
        return value


def coerce_numbers(target: type | Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with text written as a number ("8/255", "0.03") turned into a float wherever
    ``target``'s annotation takes a float; everything else unchanged."""
    hints = type_hints(target)
    return {k: as_number(v, what=k) if isinstance(v, str) and k in hints
            and value_fits(0.5, hints[k]) else v for k, v in values.items()}
