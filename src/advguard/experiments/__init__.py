"""Experiments: a paper table, figure or sweep as one YAML file, run by ``advguard experiment
run``, recorded in a SQLite record store and reported through :mod:`advguard.reports`.

Every file names its ``kind`` (default ``grid``); the kinds are registered in
:data:`EXPERIMENT_KINDS`:

* ``grid`` (:class:`GridExperiment`) — a grid of harness evaluations (clean accuracy, attack
  cascades, adaptive worst cases), each cell resumable;
* ``sweep`` (:class:`SweepExperiment`) — SMOOTH's comparison over σ, m and the vote from shared
  draws, with σ and m chosen on a validation split.

A new kind subclasses :class:`Experiment` (its fields, and the hooks ``cells``, ``compute`` and
``report``) and registers itself here.
"""

from __future__ import annotations

from pathlib import Path

from advguard.experiments.base import Experiment, TrainSpec
from advguard.experiments.grid import (
    Cell,
    GridExperiment,
    PlotSpec,
    TableSpec,
    collect,
    expand,
    merge,
)
from advguard.experiments.sweep import SweepExperiment
from advguard.registry import Registry

EXPERIMENT_KINDS: Registry[type[Experiment]] = Registry("experiment kind")
EXPERIMENT_KINDS.add("grid", GridExperiment, description="a grid of harness evaluations")
EXPERIMENT_KINDS.add("sweep", SweepExperiment,
                     description="SMOOTH's σ × m × vote sweep from shared draws")


def load_experiment(name_or_path: str | Path) -> Experiment:
    """The typed experiment in a file (a path, or a shipped name such as
    ``experiments/cap_table1_fmnist``), of the class its ``kind`` names."""
    from advguard.configs import config_path, read_yaml
    from advguard.errors import ConfigError

    path = config_path(name_or_path)
    data = read_yaml(path)
    kind = data.get("kind", "grid")
    if not isinstance(kind, str):
        raise ConfigError(f"{path}: 'kind' must be a string")
    from advguard.errors import UnknownNameError

    try:
        cls = EXPERIMENT_KINDS.get(kind)
    except UnknownNameError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cls.from_dict(data, path=str(path))


def list_experiments() -> list[str]:
    """The shipped experiment names (``experiments/...``)."""
    from advguard.configs import list_configs

    return list_configs("experiments/")


__all__ = [
    "EXPERIMENT_KINDS", "Cell", "Experiment", "GridExperiment", "PlotSpec", "SweepExperiment",
    "TableSpec", "TrainSpec", "collect", "expand", "list_experiments", "load_experiment", "merge",
]
