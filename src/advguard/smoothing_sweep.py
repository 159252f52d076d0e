"""The SMOOTH paper's comparison — smoothing vs no smoothing over the number of draws ``m``, the
input-noise level ``σ`` and the vote — computed from **shared draws**, the choice of ``σ`` and
``m`` on a validation split, and the report (tables and plots) generated from the records.

Why a sweep of its own instead of one harness cell per setting: for a given model, ``σ`` and
input, the smoothed classifier with ``m`` draws is a function of ``m`` draws of the base; the first
``m`` of ``M = max(ms)`` draws are such draws. So one pass of ``M`` draws per (model, σ, clean or
attacked input) gives every ``m ≤ M`` and every vote (cumulative sums over the draws), instead of
``Σ m`` draws per vote. The attack is the paper's protocol: PGD crafted on the smoothed
classifier's base model (the model with the input noise ``σ``, one draw of input and injected
noise per step; :attr:`advguard.defenses.Smoothed.base_model`), then classified by the smoothed
classifier — it does not depend on ``m`` or the vote, so it is crafted once per (model, σ).
Adaptive attacks, which do depend on the vote and ``m``, are evaluated by the harness at the
chosen setting (``configs/experiments/smooth_*.yaml``).

Records: one JSON line per unit (split, model, σ) in ``records`` with the config hash, model
fingerprint, environment, seconds, and for each (input kind, vote, m) the accuracy and the
per-example correctness (a 0/1 string). An interrupted sweep resumes unit by unit.

Choosing σ and m (:func:`select_setting`): on the **validation** split (held out from the
training split, as the models' training configs hold it out), per model and vote: the highest
accuracy under the paper's attack, then — to pay for no more draws than needed — the smallest
``m`` within ``tolerance`` of it (ties: higher attacked, then higher clean accuracy). The test
split is used only for reporting.

Command line (thin; the library functions return values)::

    python -m advguard.smoothing_sweep run smooth/fmnist_sweep     # val + test units
    python -m advguard.smoothing_sweep report smooth/fmnist_sweep \
        --out docs/results/smooth_scale_s.md
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advguard.errors import ConfigError

SPLITS = ("val", "test")
KINDS = ("clean", "paper")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A sweep: ``models`` (label → checkpoint), the grid (``sigmas``, ``ms``, ``votes``; the soft
    vote averages ``average``; the weighted vote uses ``decay``), the paper's attack
    (``attack``: a registered attack and its arguments, crafted on the base model with ``eps``,
    ``norm``), the data (``dataset``; the validation split is ``val_size`` examples held out of
    the training split with ``seed``, as :class:`~advguard.training.TrainConfig` holds it out;
    the first ``n_val`` / ``n_test`` examples are used; ``val_ms``: the ``m`` candidates on
    validation, default ``ms``), ``tolerance`` of the choice, ``seed``, ``chunk`` and
    ``batch_size`` (examples per forward), ``records`` (JSON lines) and ``plots`` (folder)."""

    name: str
    models: dict[str, str]
    sigmas: tuple[float, ...]
    ms: tuple[int, ...] = (1, 8, 32, 128, 512)
    val_ms: tuple[int, ...] | None = None
    votes: tuple[str, ...] = ("prediction", "weighted", "soft")
    average: str = "probs"
    decay: float = 0.5
    attack: dict[str, Any] = field(default_factory=lambda: {"name": "pgd", "steps": 7,
                                                            "alpha": 0.025})
    eps: float = 0.1
    norm: str = "linf"
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    val_size: int = 5000
    n_val: int = 200
    n_test: int = 250
    tolerance: float = 0.01
    seed: int = 0
    chunk: int | None = None
    batch_size: int = 250
    records: str = "results/smooth/sweep.jsonl"
    device: str = "auto"
    description: str = ""
    command: str = ""

    def __post_init__(self) -> None:
        from advguard.defenses.smoothing import AVERAGES, VOTES

        if not self.models or not self.sigmas or not self.ms:
            raise ConfigError("a sweep needs models, sigmas and ms")
        if any(m < 1 for m in self.ms) or any(s < 0 for s in self.sigmas):
            raise ConfigError("ms must be >= 1 and sigmas >= 0")
        if any(v not in VOTES for v in self.votes) or self.average not in AVERAGES:
            raise ConfigError(f"votes must be in {VOTES} and average in {AVERAGES}")
        if "name" not in self.attack:
            raise ConfigError("the sweep's attack needs a 'name'")
        for key in ("sigmas", "ms", "votes"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        val_ms = tuple(self.val_ms) if self.val_ms is not None else self.ms
        if not set(val_ms) <= set(self.ms):
            raise ConfigError("val_ms must be a subset of ms")
        object.__setattr__(self, "val_ms", val_ms)

    @classmethod
    def from_file(cls, name_or_path: str | Path) -> SweepConfig:
        from advguard.configs import config_path
        from advguard.training.config import load_yaml

        data = load_yaml(config_path(name_or_path))
        section = data.get("sweep", data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"unknown sweep key(s): {', '.join(unknown)}")
        return cls(**section)

    def unit_hash(self, split: str) -> str:
        """What determines a unit's results besides the model weights and σ."""
        payload = {k: v for k, v in dataclasses.asdict(self).items()
                   if k in ("ms", "votes", "average", "decay", "attack", "eps", "norm", "dataset",
                            "val_size", "seed")}
        payload["n"] = self.n_val if split == "val" else self.n_test
        payload["ms"] = list(self.val_ms if split == "val" else self.ms)  # type: ignore[arg-type]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- computing
def cumulative_correct(draws: torch.Tensor, y: torch.Tensor, ms: Sequence[int], vote: str, *,
                       average: str, decay: float, output: str) -> dict[int, torch.Tensor]:
    """Per-example correctness of the ``vote`` over the first ``m`` of the (M, N, K) ``draws``,
    for each ``m`` in ``ms`` — the smoothed classifier with ``m`` draws, from shared draws."""
    from advguard.defenses.smoothing import vote_contributions

    totals = vote_contributions(draws, vote, average=average, decay=decay, output=output).cumsum(0)
    return {m: (totals[m - 1] / m).argmax(1) == y for m in ms}


def load_split(config: SweepConfig, split: str) -> Any:
    """The examples of ``split``: the first ``n_val`` of the validation split held out of the
    training data, or the first ``n_test`` test examples."""
    from advguard.data import first_n, load_dataset, train_val_split

    if split == "val":
        train = load_dataset(config.dataset, "train", root=config.data_root)
        _, val = train_val_split(train, config.val_size, seed=config.seed)
        return first_n(val, min(config.n_val, len(val)))
    test = load_dataset(config.dataset, "test", root=config.data_root)
    return first_n(test, min(config.n_test, len(test)))


def _check_held_out(config: SweepConfig, meta: Mapping[str, Any], label: str) -> None:
    train_cfg = meta.get("train_config") or {}
    held = train_cfg.get("val_size", 0)
    same = held == config.val_size and train_cfg.get("seed", 0) == config.seed \
        and train_cfg.get("train_size") is None
    if not same:
        raise ConfigError(
            f"model {label!r} was not trained with val_size={config.val_size}, seed={config.seed} "
            f"on the full training split (its config: val_size={held}, seed="
            f"{train_cfg.get('seed')}, train_size={train_cfg.get('train_size')}): the validation "
            "examples used to choose sigma and m would be its training examples")


def run_unit(config: SweepConfig, model: nn.Module, label: str, split: str, sigma: float,
             data: Any) -> dict[str, Any]:
    """One unit: M draws of the smoothed classifier on the clean and on the attacked inputs."""
    from advguard.attacks import make_attack
    from advguard.defenses.base import derive_seed
    from advguard.defenses.smoothing import Smoothed
    from advguard.utils import resolve_device

    ms = config.val_ms if split == "val" else config.ms
    assert ms is not None
    m_max = max(ms)
    defense = Smoothed(model, m=m_max, sigma=sigma, chunk=config.chunk)
    # a deterministic base without input noise: every draw is the same, one is enough
    needed = m_max if defense.traits.randomized else 1
    params = {k: v for k, v in config.attack.items() if k != "name"}
    attack = make_attack(str(config.attack["name"]), eps=config.eps, norm=config.norm, **params)
    device = resolve_device(config.device)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    draws: dict[str, list[torch.Tensor]] = {"clean": [], "paper": []}
    labels = []
    for b, lo in enumerate(range(0, len(data), config.batch_size)):
        x = data.images[lo:lo + config.batch_size].to(device)
        y = data.labels[lo:lo + config.batch_size].to(device)
        labels.append(y)
        defense.reseed(derive_seed(config.seed, "attack", split, label, sigma, b))
        gen = torch.Generator(device=device).manual_seed(
            derive_seed(config.seed, "generator", split, label, sigma, b))
        adv = attack(defense.base_model, x, y, generator=gen).adv
        # clean and attacked inputs in one batch (larger forwards), fresh draws for each
        defense.reseed(derive_seed(config.seed, "draws", split, label, sigma, b))
        with torch.no_grad():
            both = defense.draws(torch.cat([x, adv]), needed)
        both = both.expand(m_max, *both.shape[1:]) if needed == 1 else both
        draws["clean"].append(both[:, :x.shape[0]])
        draws["paper"].append(both[:, x.shape[0]:])
    y_all = torch.cat(labels)
    output = defense.base.traits.output
    for kind in KINDS:
        all_draws = torch.cat(draws[kind], dim=1)
        for vote in config.votes:
            correct = cumulative_correct(all_draws, y_all, ms, vote, average=config.average,
                                         decay=config.decay, output=output)
            for m, ok in correct.items():
                rows.append({"kind": kind, "vote": vote, "m": m,
                             "acc": float(ok.float().mean()),
                             "correct": "".join("1" if v else "0" for v in ok.tolist())})
    return {"rows": rows, "seconds": round(time.perf_counter() - started, 2),
            "draws": needed, "n": len(data)}


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_sweep(config: SweepConfig, *, splits: Sequence[str] = SPLITS,
              progress: bool = True) -> Path:
    """Compute every missing unit (split × model × σ) and append it to ``config.records``."""
    from advguard.checkpoint import load_checkpoint
    from advguard.evaluation.harness import model_fingerprint
    from advguard.utils import environment_info, resolve_device

    path = Path(config.records)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    for split in splits:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        data = load_split(config, split)
        for label, checkpoint in config.models.items():
            loaded = load_checkpoint(checkpoint, device=device)
            if split == "val":
                _check_held_out(config, loaded.metadata, label)
            model = loaded.model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            fingerprint = model_fingerprint(model)
            done = {(r["split"], r["model"], r["sigma"]) for r in _read_records(path)
                    if r["config_hash"] == config.unit_hash(r["split"])
                    and r["fingerprint"] == fingerprint}
            for sigma in config.sigmas:
                if (split, label, float(sigma)) in done:
                    continue
                unit = run_unit(config, model, label, split, float(sigma), data)
                record = {"split": split, "model": label, "sigma": float(sigma),
                          "checkpoint": checkpoint, "fingerprint": fingerprint,
                          "config_hash": config.unit_hash(split), "sweep": config.name,
                          "environment": environment_info(device), **unit}
                with path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if progress:
                    best = max(r["acc"] for r in unit["rows"] if r["kind"] == "paper")
                    print(f"{split} {label} sigma={sigma}: {unit['seconds']} s, "
                          f"best paper-PGD acc {best:.3f}", flush=True)
    return path


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Point:
    split: str
    model: str
    sigma: float
    kind: str
    vote: str
    m: int
    acc: float
    n: int


def load_points(config: SweepConfig) -> list[Point]:
    """The current records of this sweep (the latest unit per key) as points."""
    latest: dict[tuple[str, str, float], dict[str, Any]] = {}
    for r in _read_records(Path(config.records)):
        if r["config_hash"] == config.unit_hash(r["split"]) and r["model"] in config.models:
            latest[(r["split"], r["model"], r["sigma"])] = r
    return [Point(r["split"], r["model"], r["sigma"], row["kind"], row["vote"], row["m"],
                  row["acc"], r["n"]) for r in latest.values() for row in r["rows"]]


@dataclass(frozen=True)
class Choice:
    """The validation-chosen setting of one (model, vote), with its validation accuracies."""

    model: str
    vote: str
    sigma: float
    m: int
    val_paper: float
    val_clean: float


def select_setting(points: Sequence[Point], *, tolerance: float) -> list[Choice]:
    """Choose σ and m per (model, vote) on the **validation** points (see the module docstring)."""
    val = [p for p in points if p.split == "val"]
    table: dict[tuple[str, str, float, int], dict[str, float]] = {}
    for p in val:
        table.setdefault((p.model, p.vote, p.sigma, p.m), {})[p.kind] = p.acc
    choices = []
    for model, vote in sorted({(k[0], k[1]) for k in table}):
        cells = {(k[2], k[3]): v for k, v in table.items() if k[:2] == (model, vote)
                 and "paper" in v and "clean" in v}
        best = max(v["paper"] for v in cells.values())
        near = [(s, m) for (s, m), v in cells.items() if v["paper"] >= best - tolerance - 1e-12]
        sigma, m = min(near, key=lambda sm: (sm[1], -cells[sm]["paper"], -cells[sm]["clean"],
                                             sm[0]))
        choices.append(Choice(model, vote, sigma, m, cells[(sigma, m)]["paper"],
                              cells[(sigma, m)]["clean"]))
    return choices


# --------------------------------------------------------------------------- report
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


def _plot_m(points: Sequence[Point], config: SweepConfig, choices: Sequence[Choice],
            path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(config.models)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), dpi=120,
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        sigma = next((c.sigma for c in choices if c.model == model and c.vote == "prediction"),
                     config.sigmas[0])
        _vote_curves(ax, [p for p in points if p.model == model and p.sigma == sigma],
                     config.votes, x=lambda p: p.m)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{model}, σ = {sigma:g}")
        ax.set_xlabel("draws m")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _plot_sigma(points: Sequence[Point], config: SweepConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(config.models)
    m_max = max(config.ms)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), dpi=120,
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        _vote_curves(ax, [p for p in points if p.model == model and p.m == m_max],
                     config.votes, x=lambda p: p.sigma)
        base = [(p.sigma, 100 * p.acc) for p in points if p.split == "test" and p.model == model
                and p.vote == "prediction" and p.kind == "paper" and p.m == 1]
        if base:
            ax.plot(*zip(*sorted(base)), ":", color="k", marker="x", ms=3,
                    label="no smoothing, m = 1 (PGD)")
        ax.set_title(f"{model}, m = {m_max}")
        ax.set_xlabel("input noise σ")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def sweep_report(config: SweepConfig, *, plots_dir: str | Path | None = None,
                 prefix: str = "smooth_scale_s") -> str:
    """Markdown tables (and plots in ``plots_dir``) generated from the sweep's records."""
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
    lines += ["### Validation-chosen setting per model and vote", "",
              "| model | vote | σ | m | val clean | val PGD | test clean | test PGD | "
              "test clean, no smoothing | test PGD, no smoothing |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in choices:
        tc = _acc(test, model=c.model, vote=c.vote, sigma=c.sigma, m=c.m, kind="clean")
        tp = _acc(test, model=c.model, vote=c.vote, sigma=c.sigma, m=c.m, kind="paper")
        bc = _acc(test, model=c.model, vote="prediction", sigma=0.0, m=1, kind="clean")
        bp = _acc(test, model=c.model, vote="prediction", sigma=0.0, m=1, kind="paper")
        lines.append(f"| {c.model} | {c.vote} | {c.sigma:g} | {c.m} | {_pct(c.val_clean)} | "
                     f"{_pct(c.val_paper)} | {_pct(tc)} | {_pct(tp)} | {_pct(bc)} | {_pct(bp)} |")
    lines += ["", "\"No smoothing\" is one draw (m = 1) of the model as trained (σ = 0); "
              "selection rule: best validation PGD accuracy, then the smallest m within "
              f"{100 * config.tolerance:g} points of it.", ""]
    for model in config.models:
        lines += [f"### {model}: test accuracy, clean / PGD, by σ (rows) and m (columns)", ""]
        for vote in config.votes:
            lines += [f"{vote} vote:", "",
                      "| σ \\ m | " + " | ".join(str(m) for m in config.ms) + " |",
                      "|---|" + "---|" * len(config.ms)]
            for sigma in config.sigmas:
                where = {"model": model, "vote": vote, "sigma": sigma}
                cells = [f"{_pct(_acc(test, m=m, kind='clean', **where))} / "
                         f"{_pct(_acc(test, m=m, kind='paper', **where))}" for m in config.ms]
                lines.append(f"| {sigma:g} | " + " | ".join(cells) + " |")
            lines.append("")
    if plots_dir is not None:
        plots = Path(plots_dir)
        _plot_m(points, config, choices, plots / f"{prefix}_m.png")
        _plot_sigma(points, config, plots / f"{prefix}_sigma.png")
        lines += [f"![accuracy vs m]({prefix}_m.png)", "",
                  f"![accuracy vs sigma]({prefix}_sigma.png)", ""]
    seconds = sum(json.loads(line)["seconds"] for line in
                  Path(config.records).read_text().splitlines() if line.strip()) \
        if Path(config.records).is_file() else 0.0
    lines += [f"Sweep compute: {seconds / 60:.1f} min in total (records: `{config.records}`).", ""]
    return "\n".join(lines)


def selection_dict(config: SweepConfig) -> dict[str, Any]:
    """The validation choice as data (written next to the report)."""
    choices = select_setting(load_points(config), tolerance=config.tolerance)
    return {"sweep": config.name, "tolerance": config.tolerance,
            "choices": [dataclasses.asdict(c) for c in choices]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m advguard.smoothing_sweep",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=("run", "select", "report"))
    parser.add_argument("config", help="sweep YAML (a path or a shipped name such as "
                                       "smooth/fmnist_sweep)")
    parser.add_argument("--split", choices=SPLITS, action="append",
                        help="only these splits (run); default both")
    parser.add_argument("--out", help="report: markdown file (plots next to it)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = SweepConfig.from_file(args.config)
    if args.command == "run":
        run_sweep(config, splits=args.split or SPLITS, progress=not args.quiet)
    if args.command in ("run", "select"):
        print(json.dumps(selection_dict(config), indent=2))
    if args.command == "report":
        out = Path(args.out) if args.out else None
        text = sweep_report(config, plots_dir=out.parent if out else None)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            (out.parent / f"{out.stem}_selection.json").write_text(
                json.dumps(selection_dict(config), indent=2) + "\n")
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
