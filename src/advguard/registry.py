"""A small name → object registry with metadata, shared by datasets, models, attacks, defenses,
training recipes and configs (house rule 5: registries, not if/elif chains).

Example::

    MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

    @MODELS.register("resnet20", paper="He et al. 2016")
    def resnet20(**kw): ...

    MODELS.get("resnet20")          # the factory
    MODELS.names("resnet*")         # ['resnet110', 'resnet18', 'resnet20', 'resnet50']
    MODELS.get("resnet2")           # UnknownNameError: unknown model 'resnet2'; did you mean ...
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from advguard.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object with its metadata (paper, threat model, traits, ...)."""

    name: str
    value: T
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


class Registry(Generic[T]):
    """Maps names to objects. Names are case-sensitive, unique, and looked up exactly; an unknown
    name raises :class:`~advguard.errors.UnknownNameError` naming close matches."""

    def __init__(self, kind: str, *, aliases: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        #: other names users write for an entry ("xent" for "ce"), suggested, never accepted
        self.aliases = dict(aliases or {})

    def register(self, name: str, **metadata: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; returns the decorated object unchanged."""

        def decorator(value: T) -> T:
            self.add(name, value, **metadata)
            return value

        return decorator

    def add(self, name: str, value: T, **metadata: Any) -> None:
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, value, MappingProxyType(dict(metadata)))

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        return self.entry(name).value

    def metadata(self, name: str) -> Mapping[str, Any]:
        return self.entry(name).metadata

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        if self.aliases.get(name) in self._entries:
            close = [self.aliases[name]]
        if not close:  # also try case-insensitive prefix matches ('ResNet' -> resnet18, ...)
            lowered = name.lower()
            close = [n for n in self._entries if n.lower().startswith(lowered[:4])][:3]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        available = ", ".join(sorted(self._entries)) or "none"
        return f"unknown {self.kind} {name!r}{hint} (available: {available})"

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names, optionally filtered by a shell-style ``pattern`` (``'resnet*'``)."""
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
