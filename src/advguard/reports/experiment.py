"""Reports of ``grid`` experiments (:mod:`advguard.experiments.grid`): the tables, plots and
per-cell summary, generated from the record store, with the paper's numbers in parentheses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from advguard.errors import ConfigError
from advguard.evaluation import EvalSummary
from advguard.files import check_plot_target
from advguard.reports.render import render_table
from advguard.reports.tables import INTERVAL_NOTE, pct

if TYPE_CHECKING:
    from advguard.evaluation.store import RecordStore
    from advguard.experiments.grid import Cell, GridExperiment, PlotSpec, TableSpec

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


def _format(value: float | None, paper: float | None) -> str:
    ours = "—" if value is None else pct(value)
    return ours if paper is None else f"{ours} ({paper:g})"


def _table_keys(table: TableSpec, cell: Cell) -> tuple[str, str]:
    """The (row, column) of ``table`` that ``cell`` lands in (the column is the metric's name
    in a table without columns)."""
    return cell.key(table.rows), cell.key(table.cols) if table.cols else table.metric


def grid_table(table: TableSpec, results: list[tuple[Cell, EvalSummary | None]]) -> str:
    """A markdown table: rows × cols of the metric in %, with the paper's number in parentheses
    where the experiment gives one. Several cells can land in one table cell (a clean-accuracy
    table whose rows leave out the attack axis): the first evaluated one is shown, so a cell not
    yet evaluated never hides one that is."""
    row_keys: list[str] = []
    col_keys: list[str] = []
    values: dict[tuple[str, str], float | None] = {}
    partial: dict[tuple[str, str], str] = {}  # unfinished cells: "N of M examples"
    for cell, summary in results:
        r, c = _table_keys(table, cell)
        if r not in row_keys:
            row_keys.append(r)
        if c not in col_keys:
            col_keys.append(c)
        if values.get((r, c)) is None:
            values[(r, c)] = None if summary is None else metric_value(summary, table.metric)
            if summary is not None and not summary.complete and summary.n:
                partial[(r, c)] = f"{summary.n} of {cell.config.n}"
    header = ["/".join(table.rows) or "setting", *col_keys]
    rows: list[list[str]] = []
    for r in row_keys:
        cells = []
        for c in col_keys:
            key = r if not table.cols else f"{r}/{c}"
            paper = table.paper.get(key)
            text = _format(values.get((r, c)), paper) if (r, c) in values else ""
            cells.append(f"{text} †" if (r, c) in partial else text)
        rows.append([r, *cells])
    out = render_table(header, rows, fmt="markdown")
    if partial:
        out += "\n\n† unfinished: over the examples evaluated so far (" + "; ".join(
            f"{'/'.join(k for k in (r, c) if k != table.metric)}: {done}"
            for (r, c), done in partial.items()) + "); the run command resumes it."
    return out


def _example_outcomes(store: RecordStore, summary: EvalSummary, metric: str) -> dict[int, bool]:
    """Per example index: right under ``metric`` (``clean``: in every clean run; ``robust``:
    and under every attack), as the summary's numbers count them."""
    examples = store.examples(summary.eval_id)
    if metric == "clean":
        return {e.example: e.fooled_by != -1 for e in examples}
    return {e.example: e.fooled_by is None for e in examples}


def paired_table(table: TableSpec, results: list[tuple[Cell, EvalSummary | None]],
                 store_path: str | Path) -> str:
    """Every row against the table's ``paired`` row, column by column, on the examples both
    evaluated: the difference in points, the examples lost / gained and the exact McNemar
    p-value (:func:`advguard.stats.mcnemar_exact`) — whether a difference of a few points is
    more than which examples were drawn."""
    from advguard.evaluation.store import RecordStore
    from advguard.stats import mcnemar_exact

    outcomes: dict[tuple[str, str], dict[int, bool]] = {}
    rows_seen: list[str] = []
    cols_seen: list[str] = []
    finished: list[tuple[tuple[str, str], EvalSummary]] = []
    for cell, summary in results:
        r, c = _table_keys(table, cell)
        rows_seen += [r] if r not in rows_seen else []
        cols_seen += [c] if c not in cols_seen else []
        if summary is not None and summary.complete:
            finished.append(((r, c), summary))
    if finished:  # (no store to open before anything was evaluated)
        with RecordStore(store_path) as store:
            for key, summary in finished:
                if key not in outcomes:
                    outcomes[key] = _example_outcomes(store, summary, table.metric)
    if table.paired not in rows_seen:
        raise ConfigError(f"table {table.title!r}: 'paired' names row {table.paired!r}, which "
                          f"is not one of its rows ({', '.join(rows_seen)})")
    body = []
    for r in rows_seen:
        if r == table.paired:
            continue
        cells = []
        for c in cols_seen:
            base = outcomes.get((table.paired, c), {})
            other = outcomes.get((r, c), {})
            common = sorted(base.keys() & other.keys())
            if not common:
                cells.append("—")
                continue
            lost = sum(base[i] and not other[i] for i in common)
            gained = sum(other[i] and not base[i] for i in common)
            cells.append(f"{100 * (gained - lost) / len(common):+.1f} ({lost} / {gained}, "
                         f"p {mcnemar_exact(lost, gained):.2g})")
        body.append([r, *cells])
    header = ["/".join(table.rows) or "setting", *cols_seen]
    return (f"Paired with **{table.paired}** on the same examples (finished cells): difference "
            f"in points (examples it gets right that {table.paired} gets wrong count +), then "
            f"the examples lost / gained and the exact McNemar p-value (two-sided; p above "
            f"0.05: not shown to differ).\n\n" + render_table(header, body, fmt="markdown"))


def grid_plot(plot: PlotSpec, results: list[tuple[Cell, EvalSummary | None]],
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
    check_plot_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def grid_summary(results: list[tuple[Cell, EvalSummary | None]]) -> str:
    """A markdown table, one row per cell: examples × runs, clean accuracy, the per-example worst
    case over the cascade and runs with its 95% interval (and draw-dependent flips), and the step
    that fooled the most examples (``strongest``)."""
    from advguard.reports.tables import interval

    rows: list[list[str]] = []
    for cell, summary in results:
        name = " / ".join(cell.labels.values())
        if summary is None or not summary.complete:
            rows.append([name, "—", "—", "—", "—", "not run" if summary is None else "unfinished"])
            continue
        rows.append([name, f"{summary.n} × {summary.runs}", f"{100 * summary.clean_acc:.1f}",
                     f"{100 * summary.robust_acc:.1f}", interval(summary),
                     summary.strongest or "—"])
    table = render_table(["cell", "n × runs", "clean %", "worst case %", "95% interval",
                          "strongest attack"], rows, fmt="markdown")
    return table + "\n\n" + INTERVAL_NOTE


def grid_report(spec: GridExperiment, *, plots_dir: str | Path | None = None) -> str:
    """Markdown with the experiment's tables (and plots written to ``plots_dir``), generated from
    its record store; cells not evaluated yet show a dash."""
    from advguard.experiments.grid import collect

    results = collect(spec)
    done = sum(s is not None and s.complete for _, s in results)
    unfinished = sum(s is not None and not s.complete for _, s in results)
    parts = [f"# {spec.name}", ""]
    if spec.description:
        parts += [spec.description, ""]
    if spec.paper:
        parts += [f"Paper: {spec.paper}", ""]
    status = f"{done}/{len(results)} cells evaluated" + \
        (f" ({unfinished} unfinished)" if unfinished else "")
    parts += [f"{spec.reproduce_line()} {status}.", ""]
    parts += ["Numbers are accuracy in % on the evaluated examples; in parentheses, the paper's "
              "number for its own (larger-scale) setting.", ""]
    for table in spec.tables:
        parts += [f"## {table.title}", "", grid_table(table, results), ""]
        if table.paired is not None:
            parts += [paired_table(table, results, spec.store), ""]
        if table.note:
            parts += [table.note, ""]
    if spec.summary:
        parts += ["## Per cell: worst case and the attack that achieved it", "",
                  grid_summary(results), ""]
    if plots_dir is not None:
        for plot in spec.plots:
            path = grid_plot(plot, results, Path(plots_dir) / plot.file)
            parts += [f"## {plot.title}", "", f"![{plot.title}]({path.name})", ""]
    envs = {(env.get("device_name"), env.get("git_commit"))
            for _, s in results if s is not None for env in s.computed_in or [s.environment]}
    if envs:
        parts += ["Machines and commits: " + "; ".join(f"{d} @ {c}" for d, c in sorted(
            envs, key=str)), ""]
    models = {(str(s.config.get("model")), s.environment.get("model_fingerprint"))
              for _, s in results if s is not None and s.environment.get("model_fingerprint")}
    if models:
        parts += ["Model weights (path: fingerprint of the weights evaluated): " + "; ".join(
            f"`{m}`: {f}" for m, f in sorted(models, key=str)), ""]
    defended = {(_defense_label(s.config.get("defense")), env["defense_fingerprint"])
                for _, s in results if s is not None and _defense_label(s.config.get("defense"))
                for env in [s.environment, *s.computed_in] if env.get("defense_fingerprint")}
    if defended:
        parts += ["Defense weights (the defended model: the base model and the checkpoints its "
                  "defense loads): " + "; ".join(f"{label}: {f}" for label, f in
                                                 sorted(defended, key=str)), ""]
    seconds = sum(s.seconds for _, s in results if s is not None)
    if done:
        parts += [f"Total evaluation time: {seconds / 60:.1f} min.", ""]
    return "\n".join(parts).rstrip() + "\n"


def _defense_label(spec: Any) -> str:
    """``name`` with the checkpoint paths a defense spec names (e.g. ``add`` with
    ``runs/.../model.safetensors``); empty when it names none (its weights are the base
    model's, already listed)."""
    paths: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.endswith(".safetensors"):
            paths.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(spec)
    if not paths:
        return ""
    name = spec.get("name", "?") if isinstance(spec, dict) else str(spec)
    return f"`{name}` with " + ", ".join(f"`{p}`" for p in paths)
