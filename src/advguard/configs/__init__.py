"""Configs shipped with advguard (package data): one YAML file per training recipe or paper table,
whose header comment names the paper, the expected numbers, the hardware, the time and the exact
command to run it (house rule 7).

A config is referred to by its path relative to this folder without ``.yaml``
(``train/fmnist_smallcnn``) or by a filesystem path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

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
