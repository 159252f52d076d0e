"""Experiments: a paper table (or figure) as one YAML file — a grid of evaluations, the models they
need, and the tables/plots generated from their records, with the paper's numbers beside ours
(house rule 7, after big_vision's one-config-per-table).

An experiment file::

    experiment: cap-table1-fmnist
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
    plots:
      - {title: Figure 2, x: alpha, series: model, metric: robust, file: fig2.png}

Overrides are deep-merged into ``base`` (mappings merge, lists replace); a dotted key such as
``defense.n_labels`` sets a nested field. Every cell is an :class:`EvalConfig` evaluated by the
resumable harness, so an interrupted experiment continues where it stopped, and identical cells
(same evaluation id) are computed once.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advguard.errors import ConfigError
from advguard.evaluation import EvalConfig, EvalSummary, RecordStore, evaluate
from advguard.evaluation.harness import model_fingerprint
from advguard.reports.render import render_table as _render
from advguard.reports.tables import pct

METRICS = ("clean", "clean_worst", "robust")


@dataclass(frozen=True)
class TableSpec:
    title: str
    rows: tuple[str, ...]
    cols: tuple[str, ...] = ()
    metric: str = "robust"
    paper: Mapping[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class PlotSpec:
    title: str
    x: str
    metric: str = "robust"
    series: str | None = None
    file: str = "plot.png"
    xlabel: str | None = None
    ylabel: str | None = None


@dataclass(frozen=True)
class TrainSpec:
    config: str
    output: str
    set: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One evaluation of the grid: its axis labels and its resolved config."""

    labels: dict[str, str]
    config: EvalConfig

    def key(self, axes: Sequence[str]) -> str:
        return "/".join(self.labels[a] for a in axes)


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    description: str
    paper: str
    command: str
    store: str
    base: Mapping[str, Any]
    axes: Mapping[str, Mapping[str, Mapping[str, Any]]]
    exclude: tuple[Mapping[str, str], ...] = ()
    train: tuple[TrainSpec, ...] = ()
    tables: tuple[TableSpec, ...] = ()
    plots: tuple[PlotSpec, ...] = ()
    #: append a per-cell table: clean, worst case and the attack step that fooled the most
    summary: bool = False
    path: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str | None = None) -> ExperimentSpec:
        known = {"experiment", "description", "paper", "command", "store", "base", "axes",
                 "exclude", "train", "tables", "plots", "summary"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown experiment key(s): {', '.join(unknown)}")
        if "experiment" not in data:
            raise ConfigError("an experiment file needs an 'experiment' name")
        name = str(data["experiment"])
        axes = data.get("axes") or {}
        if not isinstance(axes, Mapping) or not all(isinstance(v, Mapping) for v in axes.values()):
            raise ConfigError("'axes' must map axis names to {label: overrides} mappings")
        try:
            tables = tuple(TableSpec(**{**t, "rows": tuple(t.get("rows", ())),
                                        "cols": tuple(t.get("cols", ()))})
                           for t in data.get("tables", []))
            plots = tuple(PlotSpec(**p) for p in data.get("plots", []))
            train = tuple(TrainSpec(**t) for t in data.get("train", []))
        except TypeError as exc:
            raise ConfigError(f"experiment {name!r}: {exc}") from None
        for t in tables:
            _check_metric(t.metric)
            for axis in (*t.rows, *t.cols):
                if axis not in axes:
                    raise ConfigError(f"table {t.title!r} uses unknown axis {axis!r}")
        for p in plots:
            _check_metric(p.metric)
            for plot_axis in (p.x, p.series):
                if plot_axis is not None and plot_axis not in axes:
                    raise ConfigError(f"plot {p.title!r} uses unknown axis {plot_axis!r}")
        return cls(name=name, description=str(data.get("description", "")),
                   paper=str(data.get("paper", "")), command=str(data.get("command", "")),
                   store=str(data.get("store", f"results/{name}.sqlite")),
                   base=dict(data.get("base", {})),
                   axes={a: dict(v) for a, v in axes.items()},
                   exclude=tuple(dict(e) for e in data.get("exclude", [])), train=train,
                   tables=tables, plots=plots, summary=bool(data.get("summary", False)),
                   path=path)


def _check_metric(metric: str) -> None:
    if metric not in METRICS and not metric.startswith("after:"):
        raise ConfigError(f"unknown metric {metric!r}; use one of {METRICS} or 'after:<step>'")


def load_experiment(name_or_path: str | Path) -> ExperimentSpec:
    """Load an experiment file (a path, or a shipped config name such as
    ``experiments/cap_table1_fmnist``)."""
    from advguard.configs import config_path
    from advguard.training.config import load_yaml

    path = config_path(name_or_path)
    return ExperimentSpec.from_dict(load_yaml(path), path=str(path))


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


def expand(spec: ExperimentSpec) -> list[Cell]:
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


# --------------------------------------------------------------------------- running
def train_models(spec: ExperimentSpec, *, progress: bool = True) -> list[Path]:
    """Train the models an experiment lists (each resumes or is skipped when complete)."""
    from advguard.configs import config_path
    from advguard.training import TrainConfig, train

    outputs = []
    for item in spec.train:
        out = Path(item.output)
        record = out / "record.json"
        if record.exists():
            outputs.append(out / "model.safetensors")
            continue
        config = TrainConfig.from_file(config_path(item.config), **dict(item.set))
        outputs.append(train(config, output_dir=out, progress=progress).checkpoint or out)
    return outputs


def run_experiment(spec: ExperimentSpec, *, only: str | None = None, progress: bool = True,
                   device: str | None = None) -> list[EvalSummary]:
    """Train the listed models if needed, then evaluate every cell (``only``: a glob over cell
    names) into the experiment's store. Resumable."""
    train_models(spec, progress=progress)
    summaries = []
    with RecordStore(spec.store) as store:
        for cell in expand(spec):
            if only and not fnmatch.fnmatch(cell.config.name, only):
                continue
            config = cell.config.replace(device=device) if device else cell.config
            summaries.append(evaluate(config, store=store, progress=progress))
    return summaries


# --------------------------------------------------------------------------- reporting
def _cell_id(cell: Cell, cache: dict[Any, str]) -> str | None:
    """The evaluation id the harness gives this cell (needs the model's weights and data size)."""
    from advguard.evaluation.harness import load_eval_data

    cfg = cell.config
    if cfg.model not in cache:
        from advguard.checkpoint import load_checkpoint

        if not Path(cfg.model).is_file():
            return None
        cache[cfg.model] = model_fingerprint(load_checkpoint(cfg.model).model)
    data_key = (cfg.dataset, cfg.split, cfg.data_root, cfg.n, cfg.subset, cfg.seed)
    if data_key not in cache:
        data = load_eval_data(cfg)
        cache[data_key] = f"{data.name}/{data.split}/{len(data)}"
    return cfg.identity(f"{cache[cfg.model]}/{cache[data_key]}")


def metric_value(summary: EvalSummary, metric: str) -> float:
    if metric == "clean":
        return summary.clean_acc
    if metric == "clean_worst":
        return summary.clean_worst
    if metric == "robust":
        return summary.robust_acc
    step = metric.removeprefix("after:")
    index = int(step) if step.lstrip("-").isdigit() else None
    for s in summary.steps:
        if s.step == index or (index is None and step in s.label):
            return s.robust_acc
    raise ConfigError(f"evaluation {summary.name} has no step matching {metric!r}")


def collect(spec: ExperimentSpec) -> list[tuple[Cell, EvalSummary | None]]:
    """Each cell with its stored summary (None where it has not been evaluated)."""
    from advguard.evaluation import summarize

    out: list[tuple[Cell, EvalSummary | None]] = []
    cache: dict[Any, str] = {}
    if not Path(spec.store).is_file():
        return [(c, None) for c in expand(spec)]
    with RecordStore(spec.store) as store:
        ids = set(store.evaluation_ids())
        for cell in expand(spec):
            eval_id = _cell_id(cell, cache)
            out.append((cell, summarize(store, eval_id) if eval_id in ids else None))
    return out


def _format(value: float | None, paper: float | None) -> str:
    ours = "—" if value is None else pct(value)
    return ours if paper is None else f"{ours} ({paper:g})"


def render_table(table: TableSpec, results: list[tuple[Cell, EvalSummary | None]]) -> str:
    """A markdown table: rows × cols of the metric in %, with the paper's number in parentheses
    where the experiment gives one."""
    row_keys: list[str] = []
    col_keys: list[str] = []
    values: dict[tuple[str, str], float | None] = {}
    for cell, summary in results:
        r, c = cell.key(table.rows), cell.key(table.cols) if table.cols else table.metric
        if r not in row_keys:
            row_keys.append(r)
        if c not in col_keys:
            col_keys.append(c)
        values[(r, c)] = None if summary is None else metric_value(summary, table.metric)
    header = ["/".join(table.rows) or "setting", *col_keys]
    rows: list[list[str]] = []
    for r in row_keys:
        cells = []
        for c in col_keys:
            key = r if not table.cols else f"{r}/{c}"
            paper = table.paper.get(key)
            cells.append(_format(values.get((r, c)), paper) if (r, c) in values else "")
        rows.append([r, *cells])
    return _render(header, rows, fmt="markdown")


def render_plot(plot: PlotSpec, results: list[tuple[Cell, EvalSummary | None]],
                path: Path) -> Path:
    """A line plot of the metric (%) against the numeric labels of axis ``x``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = {}
    for cell, summary in results:
        if summary is None:
            continue
        try:
            x = float(cell.labels[plot.x])
        except ValueError:
            raise ConfigError(f"plot {plot.title!r}: label {cell.labels[plot.x]!r} of axis "
                              f"{plot.x!r} is not a number") from None
        name = cell.labels[plot.series] if plot.series else plot.metric
        series.setdefault(name, []).append((x, 100 * metric_value(summary, plot.metric)))
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_title(plot.title)
    ax.set_xlabel(plot.xlabel or plot.x)
    ax.set_ylabel(plot.ylabel or f"{plot.metric} accuracy (%)")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def render_summary(results: list[tuple[Cell, EvalSummary | None]]) -> str:
    """A markdown table, one row per cell: examples × runs, clean accuracy, the per-example worst
    case over the cascade and runs, and the step that fooled the most examples (``strongest``)."""
    lines = ["| cell | n × runs | clean % | worst case % | strongest attack |",
             "|---|---|---|---|---|"]
    for cell, summary in results:
        name = " / ".join(cell.labels.values())
        if summary is None or not summary.complete:
            state = "not run" if summary is None else "unfinished"
            lines.append(f"| {name} | — | — | — | {state} |")
            continue
        lines.append(f"| {name} | {summary.n} × {summary.runs} | {100 * summary.clean_acc:.1f} | "
                     f"{100 * summary.robust_acc:.1f} | {summary.strongest or '—'} |")
    return "\n".join(lines)


def experiment_report(spec: ExperimentSpec, *, plots_dir: str | Path | None = None) -> str:
    """Markdown with the experiment's tables (and plots written to ``plots_dir``), generated from
    its record store; cells not evaluated yet show a dash."""
    results = collect(spec)
    done = sum(s is not None for _, s in results)
    parts = [f"# {spec.name}", ""]
    if spec.description:
        parts += [spec.description, ""]
    if spec.paper:
        parts += [f"Paper: {spec.paper}", ""]
    parts += [f"Reproduce: `{spec.command or 'advguard experiment run ' + spec.name}` then "
              f"`advguard experiment report {spec.name}`. Records: `{spec.store}`; "
              f"{done}/{len(results)} cells evaluated.", ""]
    parts += ["Numbers are accuracy in % on the evaluated examples; in parentheses, the paper's "
              "number for its own (larger-scale) setting.", ""]
    for table in spec.tables:
        parts += [f"## {table.title}", "", render_table(table, results), ""]
        if table.note:
            parts += [table.note, ""]
    if spec.summary:
        parts += ["## Per cell: worst case and the attack that achieved it", "",
                  render_summary(results), ""]
    if plots_dir is not None:
        for plot in spec.plots:
            path = render_plot(plot, results, Path(plots_dir) / plot.file)
            parts += [f"## {plot.title}", "", f"![{plot.title}]({path.name})", ""]
    envs = {(s.environment.get("device_name"), s.environment.get("git_commit"))
            for _, s in results if s is not None}
    if envs:
        parts += ["Machines and commits: " + "; ".join(f"{d} @ {c}" for d, c in sorted(
            envs, key=str)), ""]
    seconds = sum(s.seconds for _, s in results if s is not None)
    if done:
        parts += [f"Total evaluation time: {seconds / 60:.1f} min.", ""]
    return "\n".join(parts).rstrip() + "\n"
