"""ADD-Defense's adaptive worst case against independent attacks (issue 15).

The harness's number for ADD-Defense / APE-GAN under attacks that see the purifier
(``experiments/add_adaptive_fmnist``: the paper's protocol, BPDA-identity PGD-40, exact-gradient
PGD-40, transfer, then the ``standard`` preset) is only worth something if an outside attacker
cannot go lower. Side by side in one run, on the first ``--n`` Fashion-MNIST test images, per ε:

* **harness** — that experiment's cell, re-run here into a temporary store (same config);
* **AutoAttack standard** (pyautoattack 0.2.0, the reference implementation: APGD-CE, APGD-T,
  FAB-T, Square) on ``M_t(purifier(x))`` with exact gradients;
* **AutoAttack APGD-CE + APGD-T through BPDA** (pyautoattack; forward through the purifier, its
  backward pass replaced by the identity);
* **BPDA PGD** written here in plain torch: ``--restarts`` random starts × (CE, then margin loss),
  ``--steps`` iterations, step size decaying from ε/4 to ε/40.

An example counts as robust for the independent attacker only if it survives every one of them;
the target is the harness at or below that, up to the examples an attack's own randomness moves
(the per-example comparison is printed: examples the independent attacker breaks that the harness
does not).

    python benchmarks/bench_add_independent.py --n 200 --eps 0.1 \
        --output benchmarks/results/add_independent_eps0.1.md
    python benchmarks/bench_add_independent.py --n 200 --eps 0.15 \
        --output benchmarks/results/add_independent_eps0.15.md

(needs the Scale S checkpoints ``runs/scale_s/standard``, ``runs/scale_s/standard_seed1``,
``runs/scale_s/add/{add,ape_gan}``, committed, and Fashion-MNIST installed). Writes markdown to
--output (default benchmarks/results/add_independent.md), rewritten after every finished row.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from advguard.checkpoint import load_checkpoint
from advguard.data import first_n, load_dataset
from advguard.defenses import build_defense
from advguard.errors import AdvguardError
from advguard.evaluation import evaluate
from advguard.evaluation.store import RecordStore
from advguard.experiments import load_experiment
from advguard.experiments.grid import expand
from advguard.stats import accuracy_interval
from advguard.utils import environment_info

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_report


class BPDA(nn.Module):
    """``M_t(purifier(x))`` forward; the purifier's backward pass is the identity."""

    def __init__(self, defense: nn.Module, base: nn.Module) -> None:
        super().__init__()
        self.defense, self.base = defense, base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            purified = x
            for step in self.defense.steps:  # type: ignore[union-attr]
                purified = step(purified)
        return self.base(x + (purified - x).detach())


def harness_robust(store: Path, eval_id: str, n: int) -> torch.Tensor:
    """Per-example worst-case outcome the harness recorded: fooled by no step (the store marks
    an example wrong in a clean run as fooled too)."""
    robust = torch.zeros(n, dtype=torch.bool)
    with RecordStore(store) as records:
        for e in records.examples(eval_id):
            robust[e.example] = e.fooled_by is None
    return robust


def in_ball(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The independent attack's examples, checked: in the L∞ ball, in [0, 1], finite."""
    if not (torch.isfinite(adv).all() and (adv - x).abs().max() <= eps + 1e-6
            and adv.min() >= 0 and adv.max() <= 1):
        raise SystemExit("an independent attack returned an example outside its threat model")
    return adv


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def bpda_pgd(attacked: nn.Module, defense: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             eps: float, steps: int, restarts: int, seed: int) -> torch.Tensor:
    """Robust mask (N,) after ``restarts`` × (CE, margin) BPDA-PGD runs, each checked on the
    defense itself."""
    gen = torch.Generator().manual_seed(seed)
    robust = torch.ones(len(x), dtype=torch.bool)
    for _ in range(restarts):
        for loss_fn in (lambda z, t: F.cross_entropy(z, t, reduction="none"), margin_loss):
            idx = robust.nonzero()[:, 0]
            if len(idx) == 0:
                return robust
            xs, ys = x[idx], y[idx]
            adv = (xs + (torch.rand(xs.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
            for i in range(steps):
                step = eps / 4 * (0.1 ** (i / max(steps - 1, 1)))
                adv.requires_grad_(True)
                loss = loss_fn(attacked(adv), ys).sum()
                grad, = torch.autograd.grad(loss, adv)
                with torch.no_grad():
                    adv = adv + step * grad.sign()
                    adv = torch.min(torch.max(adv, xs - eps), xs + eps).clamp(0, 1)
                    fooled = defense(adv).argmax(1) != ys
                    robust[idx[fooled]] = False
            adv = adv.detach()
    return robust


def report(rows: list[list[str]], details: list[str], args: argparse.Namespace,
           env: dict[str, str]) -> int:
    lines = [
        "# ADD-Defense / APE-GAN: the harness's adaptive worst case vs independent attacks",
        "",
        f"Command: `python benchmarks/bench_add_independent.py --n {args.n} --defenses "
        f"{' '.join(args.defenses)} --eps {' '.join(f'{e:g}' for e in args.eps)} --steps "
        f"{args.steps} --restarts {args.restarts} --output {args.output}`. "
        f"Machine: {platform.machine()} CPU, "
        f"torch {env['torch']}, {torch.get_num_threads()} thread(s), commit {env['git_commit']}.",
        f"First {args.n} Fashion-MNIST test images, L∞; robust accuracy in %. Independent = "
        "robust under every independent attack (per-example worst case).",
        "",
        "| defense | ε | harness (95% interval) | AutoAttack standard, exact gradients | "
        "AutoAttack APGD-CE + APGD-T, BPDA | BPDA PGD (plain torch) | independent, worst case | "
        "harness − independent | harness ≤ independent | seconds harness / independent |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        *details,
    ]
    return write_report(lines, args.output)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.15])
    p.add_argument("--defenses", nargs="+", default=["ADD-Defense", "APE-GAN"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--output", default="benchmarks/results/add_independent.md")
    args = p.parse_args()
    torch.manual_seed(0)
    spec = load_experiment("experiments/add_adaptive_fmnist")
    cells = {"/".join(c.labels.values()): c for c in expand(spec)}  # type: ignore[arg-type]
    if args.n < 1 or args.steps < 1 or args.restarts < 1:
        p.error("--n, --steps and --restarts must be >= 1")
    missing = [f"{d}/{e:g}" for d in args.defenses for e in args.eps if f"{d}/{e:g}" not in cells]
    if missing:
        p.error(f"no cell {', '.join(missing)} in experiments/add_adaptive_fmnist "
                f"(cells: {', '.join(cells)})")
    base, _ = load_checkpoint("runs/scale_s/standard/model.safetensors")
    base.eval()
    for q in base.parameters():
        q.requires_grad_(False)
    data = first_n(load_dataset("fashion-mnist", "test"), args.n)
    x, y = data.images, data.labels
    rows: list[list[str]] = []
    details: list[str] = []
    env = environment_info(torch.device("cpu"))
    from pyautoattack import AutoAttack as PyAutoAttack

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.defenses:
            for eps in args.eps:
                cell = cells[f"{name}/{eps:g}"]
                config = dataclasses.replace(cell.config, n=args.n, batch_size=args.n)
                started = time.perf_counter()
                store = Path(tmp) / "r.sqlite"
                summary = evaluate(config, store=store, progress=False)
                sec_h = time.perf_counter() - started
                ours = harness_robust(store, summary.eval_id, args.n)
                defense = build_defense(config.defense, base, seed=0).eval()
                for q in defense.parameters():
                    q.requires_grad_(False)
                with torch.no_grad():
                    clean = defense(x).argmax(1) == y
                started = time.perf_counter()
                aa = PyAutoAttack(defense, eps=eps, version="standard", seed=0)
                adv = in_ball(aa.run_standard_evaluation(x.clone(), y.clone(),
                                                         batch_size=args.n)[0], x, eps)
                with torch.no_grad():
                    r_aa = clean & (defense(adv).argmax(1) == y)
                aab = PyAutoAttack(BPDA(defense, base), eps=eps, version="custom",
                                   attacks=["apgd-ce", "apgd-t"], seed=0)
                adv_b = in_ball(aab.run_standard_evaluation(x.clone(), y.clone(),
                                                            batch_size=args.n)[0], x, eps)
                with torch.no_grad():
                    r_aab = clean & (defense(adv_b).argmax(1) == y)
                r_pgd = clean & bpda_pgd(BPDA(defense, base), defense, x, y, eps=eps,
                                         steps=args.steps, restarts=args.restarts, seed=0)
                sec_i = time.perf_counter() - started
                indep = r_aa & r_aab & r_pgd
                h = summary.robust_acc
                ind = float(indep.float().mean())
                n_h = round(h * args.n)
                lo, hi = accuracy_interval(n_h, args.n)
                rows.append([name, f"{eps:g}", f"{100 * h:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
                             f"{100 * float(r_aa.float().mean()):.1f}",
                             f"{100 * float(r_aab.float().mean()):.1f}",
                             f"{100 * float(r_pgd.float().mean()):.1f}",
                             f"{100 * ind:.1f}", f"{100 * (h - ind):+.1f}",
                             "yes" if h <= ind + 1e-9 else "NO", f"{sec_h:.0f} / {sec_i:.0f}"])
                details.append(f"- {name} ε {eps:g}: {int((ours & ~indep).sum())} examples the "
                               f"independent attacks break that the harness's cascade does not; "
                               f"{int((indep & ~ours).sum())} the reverse")
                report(rows, details, args, env)
    return report(rows, details, args, env)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except AdvguardError as exc:  # a missing checkpoint or dataset: one line, not a traceback
        raise SystemExit(f"bench_add_independent: error: {exc}") from None
