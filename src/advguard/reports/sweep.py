"""Reports of ``sweep`` experiments (:mod:`advguard.experiments.sweep`): the validation choice
of σ and m, the test tables by σ and m per vote, and the two plots (accuracy vs m, accuracy vs σ),
generated from the sweep's units in the record store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from advguard.experiments.sweep import (
    Choice,
    Point,
    SweepExperiment,
    load_points,
    select_setting,
    sweep_seconds,
)
from advguard.files import check_plot_target
from advguard.reports.render import render_table


def _acc(points: Sequence[Point], **where: Any) -> float | None:
    hits = [p.acc for p in points if all(getattr(p, k) == v for k, v in where.items())]
    return hits[0] if hits else None


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _vote_curves(ax: Any, points: Sequence[Point], votes: Sequence[str],
                 x: Callable[[Point], float]) -> None:
    """One clean (dashed) and one PGD (solid) test-accuracy curve per vote against ``x``."""
    for vote, color in zip(votes, ("C0", "C1", "C2")):
        for kind, style in (("clean", "--"), ("paper", "-")):
            pts = sorted((x(p), 100 * p.acc) for p in points
                         if p.split == "test" and p.vote == vote and p.kind == kind)
            if pts:
                ax.plot(*zip(*pts), style, color=color, marker="o", ms=3,
                        label=f"{vote} ({'clean' if kind == 'clean' else 'PGD'})")


def _per_model_figure(config: SweepExperiment, path: Path, xlabel: str,
                      panel: Callable[[Any, str], None]) -> None:
    """One panel per model (``panel(ax, model)`` draws it), test accuracy against ``xlabel``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(config.models)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), dpi=120,
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        panel(ax, model)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    check_plot_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _plot_m(points: Sequence[Point], config: SweepExperiment, choices: Sequence[Choice],
            path: Path) -> None:
    """Accuracy against m at each model's validation-chosen σ (of the prediction vote)."""
    def panel(ax: Any, model: str) -> None:
        sigma = next((c.sigma for c in choices if c.model == model and c.vote == "prediction"),
                     config.sigmas[0])
        _vote_curves(ax, [p for p in points if p.model == model and p.sigma == sigma],
                     config.votes, x=lambda p: p.m)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{model}, σ = {sigma:g}")

    _per_model_figure(config, path, "draws m", panel)


def _plot_sigma(points: Sequence[Point], config: SweepExperiment, path: Path) -> None:
    """Accuracy against σ at the largest m, with the unsmoothed model (m = 1) for reference."""
    m_max = max(config.ms)

    def panel(ax: Any, model: str) -> None:
        _vote_curves(ax, [p for p in points if p.model == model and p.m == m_max],
                     config.votes, x=lambda p: p.sigma)
        base = [(p.sigma, 100 * p.acc) for p in points if p.split == "test" and p.model == model
                and p.vote == "prediction" and p.kind == "paper" and p.m == 1]
        if base:
            ax.plot(*zip(*sorted(base)), ":", color="k", marker="x", ms=3,
                    label="no smoothing, m = 1 (PGD)")
        ax.set_title(f"{model}, m = {m_max}")

    _per_model_figure(config, path, "input noise σ", panel)


def sweep_report(config: SweepExperiment, *, plots_dir: str | Path | None = None) -> str:
    """Markdown tables (and plots in ``plots_dir``) generated from the sweep's units."""
    points = load_points(config)
    choices = select_setting(points, tolerance=config.tolerance)
    test = [p for p in points if p.split == "test"]
    n_test = max((p.n for p in test), default=0)
    n_val = max((p.n for p in points if p.split == "val"), default=0)
    attack = ", ".join(f"{k}={v}" for k, v in config.attack.items())
    lines = [f"## {config.name}: smoothing vs no smoothing (from shared draws)", ""]
    if config.description:
        lines += [config.description, ""]
    lines += [f"Attack (the paper's protocol): {attack}, eps={config.eps} ({config.norm}), "
              "crafted on the base model (input noise σ + the model's own noise, one draw per "
              "step), then classified by the smoothed classifier. "
              f"Validation: first {n_val} of the {config.val_size} training images held out; "
              f"test: first {n_test} test images. Accuracy in %.", ""]
    rows = []
    for c in choices:
        where = {"model": c.model, "vote": c.vote, "sigma": c.sigma, "m": c.m}
        base = {"model": c.model, "vote": "prediction", "sigma": 0.0, "m": 1}
        rows.append([c.model, c.vote, f"{c.sigma:g}", c.m, _pct(c.val_clean), _pct(c.val_paper),
                     _pct(_acc(test, kind="clean", **where)),
                     _pct(_acc(test, kind="paper", **where)),
                     _pct(_acc(test, kind="clean", **base)),
                     _pct(_acc(test, kind="paper", **base))])
    lines += ["### Validation-chosen setting per model and vote", "",
              render_table(["model", "vote", "σ", "m", "val clean", "val PGD", "test clean",
                            "test PGD", "test clean, no smoothing", "test PGD, no smoothing"],
                           rows, fmt="markdown")]
    lines += ["", "\"No smoothing\" is one draw (m = 1) of the model as trained (σ = 0); "
              "selection rule: best validation PGD accuracy, then the smallest m within "
              f"{100 * config.tolerance:g} points of it.", ""]
    for model in config.models:
        lines += [f"### {model}: test accuracy, clean / PGD, by σ (rows) and m (columns)", ""]
        for vote in config.votes:
            grid = []
            for sigma in config.sigmas:
                where = {"model": model, "vote": vote, "sigma": sigma}
                grid.append([f"{sigma:g}", *(
                    f"{_pct(_acc(test, m=m, kind='clean', **where))} / "
                    f"{_pct(_acc(test, m=m, kind='paper', **where))}" for m in config.ms)])
            lines += [f"{vote} vote:", "",
                      render_table(["σ \\ m", *config.ms], grid, fmt="markdown"), ""]
    if plots_dir is not None:
        plots = Path(plots_dir)
        prefix = config.plot_prefix
        _plot_m(points, config, choices, plots / f"{prefix}_m.png")
        _plot_sigma(points, config, plots / f"{prefix}_sigma.png")
        lines += [f"![accuracy vs m]({prefix}_m.png)", "",
                  f"![accuracy vs sigma]({prefix}_sigma.png)", ""]
    lines += [f"Sweep compute: {sweep_seconds(config) / 60:.1f} min in total. "
              f"{config.reproduce_line()}", ""]
    return "\n".join(lines)
