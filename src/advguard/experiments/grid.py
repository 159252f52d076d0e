"""The ``grid`` experiment kind: a paper table (or figure) as one YAML file — a grid of
evaluations, the models they need, and the tables/plots generated from their records
(:mod:`advguard.reports.experiment`), with the paper's numbers beside ours (house rule 7, after
big_vision's one-config-per-table).

An experiment file::

    experiment: cap-table1-fmnist
    kind: grid                                   # the default
    description: CAP Table 1 at scale S (F-MNIST, SmallCNN)
    paper: "Towards counteracting adversarial perturbations (ICLR 2021 submission), Table 1"
    command: advguard experiment run experiments/cap_table1_fmnist
    store: results/cap/records.sqlite            # default results/<experiment>.sqlite
    train:                                       # models to train first (skipped when done)
      - {config: train/fmnist_smallcnn_mixup, output: runs/cap/mixup}
    base:                                        # EvalConfig fields shared by every cell
      dataset: fashion-mnist
      n: 1000
      eps: 0.1
    axes:                                        # the grid: axis -> label -> overrides
      model:
        Mixup: {model: runs/cap/mixup/model.safetensors}
      defense:
        none: {defense: {name: none}}
        CAP: {defense: {name: cap, n_labels: 9}}
      attack:
        PGD10: {steps: [{setting: oblivious, attack: pgd, steps: 10}]}
    exclude: [{defense: none, attack: PGD10}]    # optional: cells to leave out
    tables:
      - title: Table 1 — untargeted PGD, oblivious
        rows: [model, defense]
        cols: [attack]
        metric: robust                           # clean | robust | after:<step index>
        paper: {"Mixup/CAP/PGD10": 63.2}         # key: row labels / col labels, joined by '/'
        paired: Mixup/none                       # optional: every row against this one on the
                                                 # same examples (McNemar), metric clean|robust
    plots:
      - {title: Figure 2, x: alpha, series: model, metric: robust, file: fig2.png}

Overrides are deep-merged into ``base`` (mappings merge, lists replace); a dotted key such as
``defense.n_labels`` sets a nested field. Every cell is an :class:`EvalConfig` evaluated by the
resumable harness, so an interrupted experiment continues where it stopped, and identical cells
(same evaluation id) are computed once.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from advguard.configs import from_mapping
from advguard.errors import ConfigError
from advguard.evaluation import EvalConfig, EvalSummary, RecordStore, evaluate
from advguard.evaluation.harness import model_fingerprint
from advguard.experiments.base import Experiment

if TYPE_CHECKING:
    from torch import nn

    from advguard.evaluation.executors import Executor

METRICS = ("clean", "clean_worst", "robust")


#: metrics with a per-example outcome that a table can compare ``paired`` with another row
PAIRED_METRICS = ("clean", "robust")


@dataclass(frozen=True)
class TableSpec:
    """A table: ``rows`` × ``cols`` (axis names) of ``metric``; ``paper`` numbers keyed by the
    row labels and col labels joined by '/'. ``paired``: a row label; every other row is then
    also compared with it example by example in the same column (difference in points, the
    examples lost and gained, the exact McNemar p-value), for metrics ``clean`` and ``robust``.
    """

    title: str
    rows: tuple[str, ...]
    cols: tuple[str, ...] = ()
    metric: str = "robust"
    paper: Mapping[str, float] = field(default_factory=dict)
    note: str = ""
    paired: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "cols", tuple(self.cols))
        check_metric(self.metric)
        if self.paired is not None and self.metric not in PAIRED_METRICS:
            raise ConfigError(f"table {self.title!r}: 'paired' compares per-example outcomes of "
                              f"metric {' or '.join(PAIRED_METRICS)}, not {self.metric!r}")


@dataclass(frozen=True)
class PlotSpec:
    title: str
    x: str
    metric: str = "robust"
    series: str | None = None
    file: str = "plot.png"
    xlabel: str | None = None
    ylabel: str | None = None

    def __post_init__(self) -> None:
        check_metric(self.metric)


@dataclass(frozen=True)
class Cell:
    """One evaluation of the grid: its axis labels and its resolved config."""

    labels: dict[str, str]
    config: EvalConfig

    def key(self, axes: Sequence[str]) -> str:
        return "/".join(self.labels[a] for a in axes)


@dataclass(frozen=True, kw_only=True)
class GridExperiment(Experiment):
    """A grid of harness evaluations: ``base`` (EvalConfig fields shared by every cell),
    ``axes`` (axis → label → overrides), ``exclude`` (cells to leave out), ``tables``,
    ``plots`` and ``summary`` (a per-cell worst-case table)."""

    kind: ClassVar[str] = "grid"

    base: Mapping[str, Any] = field(default_factory=dict)
    axes: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    exclude: tuple[Mapping[str, str], ...] = ()
    tables: tuple[TableSpec, ...] = ()
    plots: tuple[PlotSpec, ...] = ()
    #: append a per-cell table: clean, worst case and the attack step that fooled the most
    summary: bool = False

    @classmethod
    def prepare(cls, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name", "?")
        axes = body.get("axes") or {}
        if not isinstance(axes, Mapping) or not all(isinstance(v, Mapping) for v in axes.values()):
            raise ConfigError("'axes' must map axis names to {label: overrides} mappings")
        body["axes"] = {a: dict(v) for a, v in axes.items()}
        body["tables"] = tuple(from_mapping(TableSpec, t, what=f"experiment {name!r}, table")
                               for t in body.get("tables") or ())
        body["plots"] = tuple(from_mapping(PlotSpec, p, what=f"experiment {name!r}, plot")
                              for p in body.get("plots") or ())
        body["exclude"] = tuple(dict(e) for e in body.get("exclude") or ())
        return body

    def __post_init__(self) -> None:
        super().__post_init__()
        for t in self.tables:
            for axis in (*t.rows, *t.cols):
                if axis not in self.axes:
                    raise ConfigError(f"table {t.title!r} uses unknown axis {axis!r}")
        for p in self.plots:
            for plot_axis in (p.x, p.series):
                if plot_axis is not None and plot_axis not in self.axes:
                    raise ConfigError(f"plot {p.title!r} uses unknown axis {plot_axis!r}")

    def expand(self) -> list[Cell]:
        return expand(self)

    def cells(self) -> list[str]:
        return [cell.config.name for cell in expand(self)]

    def references(self, only: str | None) -> str | None:
        wanted = set(self.selected(only))
        return json.dumps([cell.config.to_dict() for cell in expand(self)
                           if cell.config.name in wanted], default=str)

    def compute(self, *, only: str | None = None, progress: bool = True,
                device: str | None = None, executor: Executor | None = None) -> None:
        self.evaluate(only=only, progress=progress, device=device, executor=executor)

    def evaluate(self, *, only: str | None = None, progress: bool = True,
                 device: str | None = None, executor: Executor | None = None
                 ) -> list[EvalSummary]:
        """Evaluate every cell (``only``: a glob over cell names) into the store, the chunks
        on ``executor`` (default: in this process)."""
        wanted = set(self.selected(only))
        summaries = []
        with RecordStore(self.store) as store:
            for cell in expand(self):
                if cell.config.name not in wanted:
                    continue
                config = cell.config.replace(device=device) if device else cell.config
                summaries.append(evaluate(config, store=store, progress=progress,
                                          executor=executor))
        return summaries

    def report(self, *, plots_dir: str | Path | None = None) -> str:
        from advguard.reports.experiment import grid_report

        return grid_report(self, plots_dir=plots_dir)

    def paper_keys(self) -> dict[str, list[str]]:
        cells = expand(self)
        missing = {}
        for table in self.tables:
            keys = {cell.key(table.rows) + (f"/{cell.key(table.cols)}" if table.cols else "")
                    for cell in cells}
            bad = sorted(k for k in table.paper if k not in keys)
            if bad:
                missing[table.title] = bad
        return missing


def check_metric(metric: str) -> None:
    if metric not in METRICS and not metric.startswith("after:"):
        raise ConfigError(f"unknown metric {metric!r}; use one of {METRICS} or 'after:<step>'")


# --------------------------------------------------------------------------- grid
def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base`` (mappings merge, other values replace;
    dotted keys set nested fields)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if "." in key:
            _set_dotted(out, key, value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expand(spec: GridExperiment) -> list[Cell]:
    """All cells of the grid (cartesian product of the axes, minus ``exclude``)."""
    names = list(spec.axes)
    cells = []
    for combo in itertools.product(*(list(spec.axes[a].items()) for a in names)):
        labels = {a: str(label) for a, (label, _) in zip(names, combo)}
        if any(all(labels.get(k) == str(v) for k, v in ex.items()) for ex in spec.exclude):
            continue
        merged = dict(spec.base)
        for _, overrides in combo:
            merged = merge(merged, overrides or {})
        merged.setdefault("name", f"{spec.name}:" + "/".join(labels.values()))
        cells.append(Cell(labels, EvalConfig.from_dict(merged)))
    return cells


# --------------------------------------------------------------------------- reporting
@dataclass
class _IdCache:
    """What computing the cells' ids loads once per experiment: each checkpoint (and its
    fingerprint), each data selection's size, each defense's preset revision."""

    models: dict[str, tuple[nn.Module, str]] = field(default_factory=dict)
    data: dict[tuple[Any, ...], str] = field(default_factory=dict)
    revisions: dict[tuple[str, str, str], int] = field(default_factory=dict)


def _cell_id(cell: Cell, cache: _IdCache) -> str | None:
    """The evaluation id the harness gives this cell (needs the model's weights, the data size
    and, under a preset, the defense's traits)."""
    from advguard.evaluation.harness import load_eval_data

    cfg = cell.config
    if cfg.model not in cache.models:
        from advguard.checkpoint import load_checkpoint

        if not Path(cfg.model).is_file():
            return None
        model = load_checkpoint(cfg.model).model
        cache.models[cfg.model] = (model, model_fingerprint(model))
    model, fingerprint = cache.models[cfg.model]
    data_key = (cfg.dataset, cfg.split, cfg.data_root, cfg.n, cfg.subset, cfg.seed)
    if data_key not in cache.data:
        data = load_eval_data(cfg)
        cache.data[data_key] = f"{data.name}/{data.split}/{len(data)}"
    revision = 1
    if cfg.preset_name != "none":  # the preset's composition depends on the defense's traits
        from advguard.defenses import as_defense, build_defense
        from advguard.evaluation.presets import preset_revision

        key = (cfg.model, cfg.preset_name, json.dumps(cfg.defense, sort_keys=True, default=str))
        if key not in cache.revisions:
            defense = as_defense(build_defense(cfg.defense, model, seed=cfg.seed))
            cache.revisions[key] = preset_revision(cfg.preset_name, defense)
        revision = cache.revisions[key]
    return cfg.identity(f"{fingerprint}/{cache.data[data_key]}", revision)


def collect(spec: GridExperiment) -> list[tuple[Cell, EvalSummary | None]]:
    """Each cell with its stored summary (None where it has not been evaluated)."""
    from advguard.evaluation import summarize

    out: list[tuple[Cell, EvalSummary | None]] = []
    cache = _IdCache()
    if not Path(spec.store).is_file():
        return [(c, None) for c in expand(spec)]
    with RecordStore(spec.store) as store:
        ids = set(store.evaluation_ids())
        for cell in expand(spec):
            eval_id = _cell_id(cell, cache)
            out.append((cell, summarize(store, eval_id) if eval_id in ids else None))
    return out
