"""Check (not a unit test): does a randomized defense's 5-run worst case still fall with more runs?

The harness counts an example as robust only if it survives every attack of the cascade in every
one of the config's ``runs`` (5 by default). On a defense whose per-example outcome depends
heavily on its draws, that worst case is an upper bound that keeps falling as runs are added.
This script measures how far: it reads a finished evaluation from a record store (its config:
model, defense, ε, data), takes the examples it left robust, and attacks them again in further
sets of runs (as many as it had), each with a new seed (fresh draws for the attack and the
defense) and one step of its own cascade — by default its last (for a randomized dynamic defense
under the preset: the fixed-step EOT-PGD-100 of revision 2) — keeping, each time, the examples
that survive; an example that fails a clean run under the new draws counts as not robust, as it
would in the harness.

    python benchmarks/runs_convergence.py --store results/cap/scale_s.sqlite \\
        --evaluation "cap_adaptive_fmnist_preset:Ours + Xie + IAT" --sets 3

``--evaluation`` is an evaluation id or name (the newest complete one of that name). The further
runs' records go to ``--scratch`` (a store of their own, so the results store is not touched).
Prints, and writes as markdown to ``--output``, the worst case after 5, 10, 15, ... runs, with
the seconds each set's evaluation took to compute (re-running the command resumes from the
scratch store: finished sets are read, not recomputed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import write_report
from advguard.data import load_dataset
from advguard.errors import AdvguardError
from advguard.evaluation import EvalConfig, RecordStore, evaluate

CELL_FIELDS = ("model", "defense", "dataset", "split", "data_root", "norm", "eps", "runs",
                  "batch_size", "device")


def _find(store: RecordStore, wanted: str) -> str:
    ids = store.evaluation_ids()
    if wanted in ids:
        return wanted
    infos = [store.evaluation(i) for i in ids]
    named = [e["id"] for e in infos if e["name"] == wanted and e["status"] == "complete"]
    if not named:
        raise AdvguardError(f"no complete evaluation named or with id {wanted!r} in {store.path}")
    return named[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--evaluation", required=True)
    parser.add_argument("--sets", type=int, default=2, help="further sets of runs (default 2)")
    parser.add_argument("--step", type=int, default=-1,
                        help="which step of the evaluation's cascade to repeat (default: the last)")
    parser.add_argument("--scratch", default="results/runs_convergence.sqlite")
    parser.add_argument("--output", default="benchmarks/results/runs_convergence.md")
    args = parser.parse_args()
    if args.sets < 1:
        parser.error(f"--sets must be >= 1, got {args.sets}")
    if not Path(args.store).is_file():
        parser.error(f"no record store at {args.store}")
    try:
        run(args)
    except AdvguardError as exc:
        parser.exit(2, f"runs_convergence: error: {exc}\n")


def run(args: argparse.Namespace) -> None:
    with RecordStore(args.store) as store:
        eval_id = _find(store, args.evaluation)
        info = store.evaluation(eval_id)
        survivors = [e.example for e in store.examples(eval_id) if e.fooled_by is None]
    recorded: dict[str, Any] = info["config"]
    base = {k: recorded[k] for k in CELL_FIELDS if k in recorded}
    n, runs = int(info["n"]), int(info["runs"])
    if not -len(recorded["steps"]) <= args.step < len(recorded["steps"]):
        raise AdvguardError(f"--step {args.step}: evaluation {eval_id} has "
                            f"{len(recorded['steps'])} steps (0–{len(recorded['steps']) - 1})")
    step = dict(recorded["steps"][args.step])
    step.pop("label", None)
    label = recorded["steps"][args.step].get("label") or step["attack"]
    data = load_dataset(base["dataset"], base["split"], root=base.get("data_root"))
    rows = [(runs, len(survivors), "—", "—", float(info["seconds"]))]
    print(f"{info['name']} ({eval_id}): {len(survivors)} of {n} robust over {runs} runs")
    seed = int(recorded.get("seed", 0))
    for k in range(1, args.sets + 1):
        if not survivors:
            break
        config = EvalConfig.from_dict({**base, "seed": seed + k, "checks": False,
                                       "preset": "none", "steps": [step],
                                       "name": f"runs_convergence:{info['name']}:set{k}"})
        started = time.perf_counter()
        subset = data.subset(survivors)  # dataset indices = positions in the full split
        summary = evaluate(config, store=args.scratch, data=subset, progress=False)
        with RecordStore(args.scratch) as scratch:
            examples = scratch.examples(summary.eval_id)
        clean_fail = sum(e.fooled_by == -1 for e in examples)
        fooled = sum(e.fooled_by == 0 for e in examples)
        survivors = [e.example for e in examples if e.fooled_by is None]
        rows.append((runs * (k + 1), len(survivors), str(clean_fail), str(fooled),
                     summary.seconds))
        print(f"after {runs * (k + 1)} runs: {len(survivors)} robust ({clean_fail} failed a "
              f"clean run, {fooled} fooled), {summary.seconds:.0f} s of computing "
              f"({time.perf_counter() - started:.0f} s now)", flush=True)
    lines = [f"# Worst case over more runs: {info['name']}", "",
             f"Evaluation `{eval_id}` in `{args.store}` ({n} examples, {runs} runs); each further "
             f"set: {runs} runs with a new seed of its step {args.step} ({label}) on the "
             "examples still robust.", "",
             "Seconds: each evaluation's computing time as recorded (the first row: the "
             "evaluation itself, every step).", "",
             "| runs | robust examples | worst case % | failed a clean run | fooled | seconds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r} | {s} | {100 * s / n:.1f} | {c} | {f} | {t:.0f} |" for r, s, c, f, t in rows]
    write_report(lines, args.output)


if __name__ == "__main__":
    main()
