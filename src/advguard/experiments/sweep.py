"""The ``sweep`` experiment kind: the SMOOTH paper's comparison — smoothing vs no smoothing
over the number of draws ``m``, the input-noise level ``σ`` and the vote — computed from **shared
draws**, the choice of ``σ`` and ``m`` on a validation split, and the report (tables and plots,
:mod:`advguard.reports.sweep`) generated from the records.

Why a sweep of its own instead of one harness cell per setting: for a given model, ``σ`` and
input, the smoothed classifier with ``m`` draws is a function of ``m`` draws of the base; the first
``m`` of ``M = max(ms)`` draws are such draws. So one pass of ``M`` draws per (model, σ, clean or
attacked input) gives every ``m ≤ M`` and every vote (cumulative sums over the draws), instead of
``Σ m`` draws per vote. The attack is the paper's protocol: PGD crafted on the smoothed
classifier's base model (the model with the input noise ``σ``, one draw of input and injected
noise per step; :attr:`advguard.defenses.Smoothed.base_model`), then classified by the smoothed
classifier — it does not depend on ``m`` or the vote, so it is crafted once per (model, σ).
Adaptive attacks, which do depend on the vote and ``m``, are evaluated by the harness at the
chosen setting (``configs/experiments/smooth_*.yaml``, ``grid`` experiments).

Records: one unit per (split, model, σ) in the experiment's SQLite record store (the ``units``
table of :class:`~advguard.evaluation.RecordStore`) with the config hash, model fingerprint,
environment, seconds, and for each (input kind, vote, m) the accuracy and the per-example
correctness (a 0/1 string). Each unit is committed when it finishes, so an interrupted sweep
resumes unit by unit.

Choosing σ and m (:func:`select_setting`): on the **validation** split (held out from the
training split, as the models' training configs hold it out), per model and vote: the highest
accuracy under the paper's attack, then — to pay for no more draws than needed — the smallest
``m`` within ``tolerance`` of it (ties: higher attacked, then higher clean accuracy). The test
split is used only for reporting.

Command line::

    advguard experiment run experiments/smooth_fmnist_sweep          # val + test units
    advguard experiment run experiments/smooth_fmnist_sweep --only 'val/*'
    advguard experiment report experiments/smooth_fmnist_sweep \
        --output docs/results/smooth_scale_s_sweep.md                # + the selection JSON
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from advguard.errors import ConfigError
from advguard.experiments.base import Experiment

if TYPE_CHECKING:
    from advguard.evaluation.executors import Executor

SPLITS = ("val", "test")
KINDS = ("clean", "paper")


@dataclass(frozen=True, kw_only=True)
class SweepExperiment(Experiment):
    """A sweep: ``models`` (label → checkpoint), the grid (``sigmas``, ``ms``, ``votes``; the soft
    vote averages ``average``; the weighted vote uses ``decay``), the paper's attack
    (``attack``: a registered attack and its arguments, crafted on the base model with ``eps``,
    ``norm``), the data (``dataset``; the validation split is ``val_size`` examples held out of
    the training split with ``seed``, as :class:`~advguard.training.TrainConfig` holds it out;
    the first ``n_val`` / ``n_test`` examples are used; ``val_ms``: the ``m`` candidates on
    validation, default ``ms``), ``tolerance`` of the choice, ``seed``, ``chunk`` and
    ``batch_size`` (examples per forward), ``device`` and ``plot_prefix`` (the plots' file
    names: ``<prefix>_m.png`` and ``<prefix>_sigma.png``; default the experiment's name)."""

    kind: ClassVar[str] = "sweep"
    uses_executor: ClassVar[bool] = False

    models: Mapping[str, str] = field(default_factory=dict)
    sigmas: tuple[float, ...] = ()
    ms: tuple[int, ...] = (1, 8, 32, 128, 512)
    val_ms: tuple[int, ...] | None = None
    votes: tuple[str, ...] = ("prediction", "weighted", "soft")
    average: str = "probs"
    decay: float = 0.5
    attack: Mapping[str, Any] = field(default_factory=lambda: {"name": "pgd", "steps": 7,
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
    device: str = "auto"
    plot_prefix: str = ""

    def __post_init__(self) -> None:
        from advguard.defenses.smoothing import AVERAGES, VOTES

        super().__post_init__()
        if not self.models or not self.sigmas or not self.ms:
            raise ConfigError("a sweep needs models, sigmas and ms")
        if any(m < 1 for m in self.ms) or any(s < 0 for s in self.sigmas):
            raise ConfigError(f"ms must be >= 1 and sigmas >= 0, got ms={list(self.ms)}, "
                              f"sigmas={list(self.sigmas)}")
        if any(v not in VOTES for v in self.votes) or self.average not in AVERAGES:
            raise ConfigError(f"votes must be in {VOTES} and average in {AVERAGES}")
        if "name" not in self.attack:
            raise ConfigError("the sweep's attack needs a 'name'")
        if self.n_val < 1 or self.n_test < 1 or self.batch_size < 1:
            raise ConfigError("n_val, n_test and batch_size must be >= 1")
        object.__setattr__(self, "ms", tuple(self.ms))
        object.__setattr__(self, "votes", tuple(self.votes))
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        val_ms = tuple(self.val_ms) if self.val_ms is not None else self.ms
        if not set(val_ms) <= set(self.ms):
            raise ConfigError("val_ms must be a subset of ms")
        object.__setattr__(self, "val_ms", val_ms)
        if not self.plot_prefix:
            object.__setattr__(self, "plot_prefix", self.name)

    def unit_hash(self, split: str) -> str:
        """What determines a unit's results besides the model weights and σ."""
        payload = {k: getattr(self, k) for k in ("ms", "votes", "average", "decay", "attack",
                                                  "eps", "norm", "dataset", "val_size", "seed")}
        payload["attack"] = dict(self.attack)
        payload["n"] = self.n_val if split == "val" else self.n_test
        payload["ms"] = list(self.val_ms if split == "val" else self.ms)  # type: ignore[arg-type]
        payload["votes"] = list(self.votes)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ hooks
    def cells(self) -> list[str]:
        return [unit_name(split, label, sigma) for split in SPLITS for label in self.models
                for sigma in self.sigmas]

    def compute(self, *, only: str | None = None, progress: bool = True,
                device: str | None = None, executor: Executor | None = None) -> None:
        self.check_executor(executor)
        run_sweep(self.replace(device=device) if device else self, only=only, progress=progress)

    def report(self, *, plots_dir: str | Path | None = None) -> str:
        from advguard.reports.sweep import sweep_report

        return sweep_report(self, plots_dir=plots_dir)

    def artifacts(self, out: Path) -> dict[Path, str]:
        """The validation choice as JSON beside the report (``<stem>_selection.json``)."""
        return {out.parent / f"{out.stem}_selection.json":
                json.dumps(selection_dict(self), indent=2) + "\n"}

    def replace(self, **changes: Any) -> SweepExperiment:
        return dataclasses.replace(self, **changes)


def unit_name(split: str, label: str, sigma: float) -> str:
    return f"{split}/{label}/sigma={sigma:g}"


# --------------------------------------------------------------------------- computing
def cumulative_correct(draws: torch.Tensor, y: torch.Tensor, ms: Sequence[int], vote: str, *,
                       average: str, decay: float, output: str) -> dict[int, torch.Tensor]:
    """Per-example correctness of the ``vote`` over the first ``m`` of the (M, N, K) ``draws``,
    for each ``m`` in ``ms`` — the smoothed classifier with ``m`` draws, from shared draws."""
    from advguard.defenses.smoothing import vote_contributions

    totals = vote_contributions(draws, vote, average=average, decay=decay, output=output).cumsum(0)
    return {m: (totals[m - 1] / m).argmax(1) == y for m in ms}


def load_split(config: SweepExperiment, split: str) -> Any:
    """The examples of ``split``: the first ``n_val`` of the validation split held out of the
    training data, or the first ``n_test`` test examples."""
    from advguard.data import first_n, load_dataset, train_val_split

    if split == "val":
        train = load_dataset(config.dataset, "train", root=config.data_root)
        _, val = train_val_split(train, config.val_size, seed=config.seed)
        return first_n(val, min(config.n_val, len(val)))
    test = load_dataset(config.dataset, "test", root=config.data_root)
    return first_n(test, min(config.n_test, len(test)))


def _check_held_out(config: SweepExperiment, meta: Mapping[str, Any], label: str) -> None:
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


def run_unit(config: SweepExperiment, model: nn.Module, label: str, split: str, sigma: float,
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


def run_sweep(config: SweepExperiment, *, only: str | None = None,
              progress: bool = True) -> None:
    """Compute every missing unit (split × model × σ) whose name matches ``only`` (a glob, e.g.
    ``'val/*'``) and commit each to the experiment's record store when it finishes."""
    from tqdm.auto import tqdm

    from advguard.checkpoint import load_checkpoint
    from advguard.evaluation import RecordStore
    from advguard.evaluation.harness import model_fingerprint
    from advguard.evaluation.store import UnitRecord
    from advguard.utils import environment_info, resolve_device

    wanted = set(config.selected(only))
    device = resolve_device(config.device)
    hashes = {split: config.unit_hash(split) for split in SPLITS}
    with RecordStore(config.store) as store, \
            tqdm(total=len(wanted), desc=config.name, unit="unit", disable=not progress) as bar:
        for split in SPLITS:
            labels = [m for m in config.models if any(
                unit_name(split, m, s) in wanted for s in config.sigmas)]
            if not labels:
                continue
            data = load_split(config, split)
            stored = store.units(config.name)
            for label in labels:
                checkpoint = config.models[label]
                loaded = load_checkpoint(checkpoint, device=device)
                if split == "val":
                    _check_held_out(config, loaded.metadata, label)
                model = loaded.model.eval()
                for p in model.parameters():
                    p.requires_grad_(False)
                fingerprint = model_fingerprint(model)
                done = {u.unit for u in stored
                        if u.config_hash == hashes[split] and u.fingerprint == fingerprint}
                for sigma in config.sigmas:
                    name = unit_name(split, label, sigma)
                    if name not in wanted:
                        continue
                    if name not in done:
                        unit = run_unit(config, model, label, split, sigma, data)
                        seconds = unit.pop("seconds")
                        store.write_unit(UnitRecord(
                            config.name, name, hashes[split], fingerprint,
                            environment_info(device), seconds,
                            {"split": split, "model": label, "sigma": sigma,
                             "checkpoint": checkpoint, **unit}))
                        best = max(r["acc"] for r in unit["rows"] if r["kind"] == "paper")
                        bar.set_postfix_str(f"{name}: {seconds:.0f} s, best PGD acc {best:.3f}")
                    bar.update(1)


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


def load_points(config: SweepExperiment) -> list[Point]:
    """The current units of this sweep (the latest per name) as points."""
    from advguard.evaluation import RecordStore

    if not Path(config.store).is_file():
        return []
    latest: dict[str, dict[str, Any]] = {}
    with RecordStore(config.store) as store:
        hashes = {split: config.unit_hash(split) for split in SPLITS}
        for u in store.units(config.name):
            r = u.result
            if u.config_hash == hashes[r["split"]] and r["model"] in config.models:
                latest[u.unit] = r
    return [Point(r["split"], r["model"], r["sigma"], row["kind"], row["vote"], row["m"],
                  row["acc"], r["n"]) for r in latest.values() for row in r["rows"]]


def sweep_seconds(config: SweepExperiment) -> float:
    """The compute time of the sweep's stored units."""
    from advguard.evaluation import RecordStore

    if not Path(config.store).is_file():
        return 0.0
    with RecordStore(config.store) as store:
        return sum(u.seconds for u in store.units(config.name))


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


def selection_dict(config: SweepExperiment) -> dict[str, Any]:
    """The validation choice as data (written next to the report)."""
    choices = select_setting(load_points(config), tolerance=config.tolerance)
    return {"sweep": config.name, "tolerance": config.tolerance,
            "choices": [dataclasses.asdict(c) for c in choices]}
