"""Configs shipped with advguard (package data): one YAML file per training recipe or paper table,
whose header comment names the paper, the expected numbers, the hardware, the time and the exact
command to run it (house rule 7).

A config is referred to by its path relative to this folder without ``.yaml``
(``train/fmnist_smallcnn``) or by a filesystem path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from advguard.errors import ConfigError


def _root() -> Path:
    return Path(str(resources.files("advguard.configs")))


def list_configs(prefix: str = "") -> list[str]:
    """Names of the shipped configs, optionally only those under ``prefix`` (e.g. ``"train"``)."""
    root = _root()
    names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    return [n for n in names if n.startswith(prefix)]


def config_path(name_or_path: str | Path) -> Path:
    """A filesystem path if it exists, else the shipped config of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = _root() / f"{str(name_or_path).removesuffix('.yaml')}.yaml"
    if candidate.is_file():
        return candidate
    import difflib

    close = difflib.get_close_matches(str(name_or_path), list_configs(), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"no config file or shipped config named {str(name_or_path)!r}{hint} "
                      "(see: advguard configs list)")


T = TypeVar("T")


def read_yaml(name_or_path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file — a path or a shipped config name — with a one-line
    :class:`~advguard.errors.ConfigError` for a missing file, bad YAML or a non-mapping."""
    import yaml

    p = config_path(name_or_path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a YAML file (it is not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def from_mapping(cls: type[T], data: Mapping[str, Any], *, what: str) -> T:
    """The typed config ``cls`` (a dataclass) built from ``data``: unknown keys name their close
    matches, and every constructor error (``TypeError``/``ValueError``) becomes a one-line
    :class:`~advguard.errors.ConfigError` that starts with ``what`` ("training config: unknown
    key(s) 'epoch' (did you mean 'epochs'?); known: ...")."""
    import difflib

    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
             if f.init]
    unknown = sorted(set(data) - set(known))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, 1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise ConfigError(f"{what}: unknown key(s) {', '.join(hints)}; known: "
                          f"{', '.join(sorted(known))}")
    from advguard.typecheck import check_values

    check_values(cls, data, what=what)
    try:
        return cls(**dict(data))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{what}: {exc}") from None


def read_section(name_or_path: str | Path, *, section: str | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The mapping in ``name_or_path`` (:func:`read_yaml`) — its ``section`` when the file has
    one — with the ``overrides`` that are not None applied. A dotted key sets a nested value
    (``{"recipe_kwargs.use_prior": False}`` changes one recipe argument and keeps the others)."""
    data = read_yaml(name_or_path)
    body = data.get(section, data) if section else data
    if not isinstance(body, Mapping):
        raise ConfigError(f"{name_or_path}: {section!r} must be a mapping")
    out = dict(body)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, last = str(key).split(".")
        node = out
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise ConfigError(f"{name_or_path}: cannot set {key!r}: "
                                  f"{'.'.join(parents[:i + 1])!r} is not a mapping")
            node[part] = dict(child)
            node = node[part]
        node[last] = value
    return out


def load_config(cls: type[T], name_or_path: str | Path, *, section: str | None = None,
                what: str, overrides: Mapping[str, Any] | None = None) -> T:
    """The one config loader: :func:`read_section`, then the typed ``cls``
    (:func:`from_mapping`)."""
    return from_mapping(cls, read_section(name_or_path, section=section, overrides=overrides),
                        what=what)


def shipped_name(path: str | Path) -> str:
    """``experiments/x`` for a shipped config's path, else the path as given."""
    try:
        return str(Path(path).resolve().relative_to(_root().resolve()).with_suffix(""))
    except ValueError:
        return str(path)


C = TypeVar("C", bound="FileConfig")


class FileConfig:
    """Mixin of the frozen config dataclasses (training, evaluation): ``from_dict``,
    ``from_file`` (with a top-level ``section`` when the file has one) and ``replace``, all
    through the one loader. Subclasses set ``config_what`` (for messages) and
    ``config_section``."""

    config_what: ClassVar[str] = "config"
    config_section: ClassVar[str | None] = None

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        return from_mapping(cls, data, what=cls.config_what)

    @classmethod
    def from_file(cls: type[C], path: str | Path, **overrides: Any) -> C:
        """Load a YAML (or JSON) file or shipped config name; ``overrides`` whose value is not
        None replace file values."""
        return cls.from_dict(read_section(path, section=cls.config_section,
                                          overrides=overrides))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
