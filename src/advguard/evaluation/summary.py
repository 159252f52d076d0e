"""Summaries computed from stored per-example records (never typed by hand)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from advguard.errors import AdvguardError
from advguard.evaluation.store import FlagRecord, RecordStore, StepRecord
from advguard.stats import accuracy_interval


@dataclass(frozen=True)
class StepSummary:
    """One cascade step: robust accuracy after it (cumulative worst case over the steps so far
    and all runs) and how many examples it was the first to fool."""

    step: int
    label: str
    setting: str
    white_box: bool
    robust_acc: float
    fooled: int
    seconds: float
    mean_queries: float


@dataclass(frozen=True)
class EvalSummary:
    """The numbers of one evaluation.

    ``clean_acc``: mean over runs of clean accuracy; ``clean_worst``: fraction classified
    correctly in every run; ``robust_acc``: final worst-case robust accuracy (correct in every run
    under every attack); ``strongest``: label of the step that fooled the most examples.

    What a number is worth: ``robust_ci`` is the 95% Clopper–Pearson interval of ``robust_acc``
    over the ``n`` examples; for randomized defenses (``runs > 1``), ``clean_flips`` counts the
    examples classified correctly in some clean runs but not all, and ``late_fooled`` those that
    survived every attack in the first run and fell in a later one — outcomes that depend on the
    draws, i.e. Monte-Carlo noise in the number.
    """

    eval_id: str
    name: str
    n: int
    runs: int
    complete: bool
    traits: dict[str, Any]
    config: dict[str, Any]
    clean_acc: float
    clean_worst: float
    steps: list[StepSummary]
    robust_acc: float
    strongest: str | None
    flags: list[FlagRecord] = field(default_factory=list)
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    #: the distinct environments its chunks were computed in (the evaluation's own environment
    #: for chunks recorded before advguard kept one per chunk), in chunk order
    computed_in: list[dict[str, Any]] = field(default_factory=list)
    robust_ci: tuple[float, float] = (float("nan"), float("nan"))
    clean_flips: int = 0
    late_fooled: int = 0

    @property
    def fired_flags(self) -> list[FlagRecord]:
        return [f for f in self.flags if f.fired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval_id": self.eval_id, "name": self.name, "n": self.n, "runs": self.runs,
            "complete": self.complete, "clean_acc": self.clean_acc,
            "clean_worst": self.clean_worst, "robust_acc": self.robust_acc,
            "strongest": self.strongest,
            "steps": [s.__dict__ for s in self.steps],
            "flags": [f.__dict__ for f in self.flags], "seconds": self.seconds,
            "robust_ci": list(self.robust_ci), "clean_flips": self.clean_flips,
            "late_fooled": self.late_fooled,
        }


def summarize(store: RecordStore, eval_id: str) -> EvalSummary:
    """Compute an :class:`EvalSummary` from the records of ``eval_id``."""
    info = store.evaluation(eval_id)
    examples = store.examples(eval_id)
    steps: list[StepRecord] = [s for s in store.steps(eval_id) if s.step >= 0]
    runs = int(info["runs"])
    n = len(examples)
    seconds = store.chunk_seconds(eval_id)
    outcomes = store.outcomes(eval_id)
    queries: dict[int, list[float]] = {}
    for o in outcomes:
        queries.setdefault(o.step, []).append(o.queries)

    def frac(count: int) -> float:
        return count / n if n else float("nan")

    clean_acc = sum(e.clean_correct_runs for e in examples) / (n * runs) if n else float("nan")
    clean_worst = frac(sum(e.fooled_by != -1 for e in examples))
    rows = []
    for s in steps:
        robust = sum(e.fooled_by is None or e.fooled_by > s.step for e in examples)
        fooled = sum(e.fooled_by == s.step for e in examples)
        q = queries.get(s.step, [])
        rows.append(StepSummary(s.step, s.label, s.setting, s.white_box, frac(robust), fooled,
                                round(seconds.get(s.step, 0.0), 3),
                                sum(q) / len(q) if q else 0.0))
    robust_count = sum(e.fooled_by is None for e in examples)
    robust_acc = frac(robust_count)
    first_fooled: dict[int, int] = {}
    for o in outcomes:
        if not o.correct:
            first_fooled[o.example] = min(first_fooled.get(o.example, o.run), o.run)
    strongest = max(rows, key=lambda r: r.fooled).label if rows and any(r.fooled for r in rows) \
        else None
    return EvalSummary(
        eval_id=eval_id, name=info["name"], n=n, runs=runs,
        complete=info["status"] == "complete" and n == int(info["n"]),
        traits=info["traits"], config=info["config"], clean_acc=clean_acc,
        clean_worst=clean_worst, steps=rows, robust_acc=robust_acc, strongest=strongest,
        flags=store.flags(eval_id), seconds=float(info["seconds"]),
        environment=info["environment"],
        computed_in=_computed_in(store, eval_id, info["environment"]),
        robust_ci=accuracy_interval(robust_count, n),
        clean_flips=sum(0 < e.clean_correct_runs < runs for e in examples),
        late_fooled=sum(r > 0 for r in first_fooled.values()))


def _computed_in(store: RecordStore, eval_id: str,
                 environment: dict[str, Any]) -> list[dict[str, Any]]:
    """The distinct environments (by device and commit) that computed the evaluation's chunks —
    and, for an evaluation that extends an earlier one, those that computed the records it
    copied (when that evaluation is in the store)."""
    recorded = store.chunk_environments(eval_id)
    chunks = sorted(store.finished_chunks(eval_id))
    envs = [recorded.get(c, environment) for c in chunks] or [environment]
    extends = (environment.get("extends") or {}).get("evaluation")
    if extends and extends != eval_id:
        try:
            earlier = store.evaluation(extends)["environment"]
        except AdvguardError:  # not in this store (e.g. records loaded without it)
            earlier = None
        if earlier is not None:
            envs = _computed_in(store, extends, earlier) + envs
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, Any]] = set()
    for env in envs:
        key = (env.get("device_name"), env.get("git_commit"))
        if key not in seen:
            seen.add(key)
            out.append(env)
    return out
