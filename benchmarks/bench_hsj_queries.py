"""Benchmark: HopSkipJump's query count per image, one batch of N images vs one image at a time,
and how many of its queries a POST defense would post-train on.

foolbox's HopSkipJump runs its binary searches and step-size searches until the *last* input of
a batch is done, and queries every input of the batch at every round; against a defense whose
every query is expensive (POST post-trains a model per query) the batch size therefore decides
the cost. Measured side by side in one run on the same model and images: the rows the model
received (every call's batch) and foolbox's own per-image query count, for one batch of ``--n``
images and for ``--n`` batches of one. Then, for the points sent one image at a time, the
base model's neighbour search (POST's Algorithm 1: untargeted PGD away from the predicted class)
tells how many of them would be post-trained (a neighbour of another class found). With
``--start-from`` (default fashion-mnist; '' skips it) the same one image at a time with starting
points from that dataset's training split (``start_from``: the nearest adversarial of
``--start-candidates`` images of other classes) instead of foolbox's blended uniform noise.

    python benchmarks/bench_hsj_queries.py --model runs/scale_s/fast_at/model.safetensors

Results: --output (default benchmarks/results/hsj_queries.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch import nn

from _common import write_report
from advguard.attacks.foolbox_attacks import HopSkipJump
from advguard.checkpoint import load_checkpoint
from advguard.data import load_dataset
from advguard.defenses.post_training import find_neighbours
from advguard.errors import AdvguardError
from advguard.utils import environment_info


class _Recorder(nn.Module):
    """The model, with every batch it is called on kept (detached copies)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.detach().clone())
        out: torch.Tensor = self.model(x)
        return out

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)


def _measure(path: str, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
             ) -> list[str]:
    """The markdown lines of one model: the two batchings side by side, then per image."""
    model = load_checkpoint(path).model.eval()
    attack = HopSkipJump(eps=args.eps, norm="linf", steps=args.steps,
                         initial_gradient_eval_steps=args.initial_gradient_eval_steps,
                         max_gradient_eval_steps=args.max_gradient_eval_steps, vote_samples=1)

    batch = _Recorder(model)
    start = time.perf_counter()
    result = attack(batch, x, y, generator=torch.Generator().manual_seed(args.seed))
    batch_seconds = time.perf_counter() - start
    batch_queries = float(result.queries)
    batch_fooled = int(result.success.sum())

    per_image, one_seconds = _one_at_a_time(model, attack, x, y, args)
    rows_one = sum(r for _, _, r, _, _ in per_image)
    active = sum(a for _, _, _, a, _ in per_image)
    queries_one = sum(q for _, q, _, _, _ in per_image)
    pool_rows: list[str] = []
    pool_per_image: list[tuple[int, float, int, int, bool]] = []
    if args.start_from:
        pool_attack = dataclasses.replace(attack, start_from={"dataset": args.start_from,
                                                              "split": "train"},
                                          start_candidates=args.start_candidates)
        pool_per_image, pool_seconds = _one_at_a_time(model, pool_attack, x, y, args)
        p_rows = sum(r for _, _, r, _, _ in pool_per_image)
        p_active = sum(a for _, _, _, a, _ in pool_per_image)
        pool_rows = [
            f"| {args.n} batches of 1, starts from {args.start_candidates} {args.start_from} "
            f"training images | {p_rows} | {p_rows / args.n:.1f} | "
            f"{sum(q for _, q, _, _, _ in pool_per_image) / args.n:.1f} | "
            f"{sum(f for *_, f in pool_per_image)} | {pool_seconds:.1f} | {p_active} |"]
    return [
        "| batching | model rows | per image | foolbox's queries per image | fooled | seconds "
        "| would post-train |",
        "|---|---|---|---|---|---|---|",
        f"| one batch of {args.n} (noise starts) | {batch.rows} | {batch.rows / args.n:.1f} | "
        f"{batch_queries:.1f} | {batch_fooled} | {batch_seconds:.1f} | — |",
        f"| {args.n} batches of 1 (noise starts) | {rows_one} | {rows_one / args.n:.1f} | "
        f"{queries_one / args.n:.1f} | {sum(f for *_, f in per_image)} | {one_seconds:.1f} | "
        f"{active} |",
        *pool_rows,
        "",
        f"Ratio of model rows, batch of {args.n} / one at a time: {batch.rows / rows_one:.2f}×.",
        "",
        f"Of the {rows_one} points sent one image at a time, the base model's neighbour search "
        f"(PGD-{args.neighbour_steps}, step {args.neighbour_alpha}) found another class for "
        f"**{active}**: the post-trainings a POST defense runs for them.",
        "",
        "| image | foolbox's queries | model rows | would post-train | fooled |"
        + (" queries, pool starts | would post-train | fooled |" if pool_per_image else ""),
        "|---|---|---|---|---|" + ("---|---|---|" if pool_per_image else ""),
        *(f"| {i} | {q:.0f} | {r} | {a} | {'yes' if f else 'no'} |"
          + (f" {pool_per_image[i][1]:.0f} | {pool_per_image[i][3]} | "
             f"{'yes' if pool_per_image[i][4] else 'no'} |" if pool_per_image else "")
          for i, q, r, a, f in per_image),
    ]


def _one_at_a_time(model: nn.Module, attack: HopSkipJump, x: torch.Tensor, y: torch.Tensor,
                   args: argparse.Namespace) -> tuple[list[tuple[int, float, int, int, bool]],
                                                      float]:
    """Per image (image, foolbox's queries, model rows, rows with a neighbour of another
    class, fooled) and the seconds of the attack calls, one image per call."""
    per_image: list[tuple[int, float, int, int, bool]] = []
    seconds = 0.0
    for i in range(len(x)):
        rec = _Recorder(model)
        start = time.perf_counter()
        res = attack(rec, x[i:i + 1], y[i:i + 1],
                     generator=torch.Generator().manual_seed(args.seed))
        seconds += time.perf_counter() - start
        points = torch.cat(rec.batches)
        with torch.no_grad():
            y1 = model(points).argmax(1)
        y2, _ = find_neighbours(model, points, y1, eps=args.eps, alpha=args.neighbour_alpha,
                                steps=args.neighbour_steps)
        per_image.append((i, float(res.queries), rec.rows, int((y2 != y1).sum()),
                          bool(res.success[0])))
    return per_image, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, nargs="+",
                        help="trained advguard checkpoints")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--n", type=int, default=20, help="first N test images")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--initial-gradient-eval-steps", type=int, default=10)
    parser.add_argument("--max-gradient-eval-steps", type=int, default=30)
    parser.add_argument("--neighbour-alpha", type=float, default=0.125)
    parser.add_argument("--neighbour-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-from", default="fashion-mnist",
                        help="also run with starts from this dataset's training split ('' to skip)")
    parser.add_argument("--start-candidates", type=int, default=20)
    parser.add_argument("--output", default="benchmarks/results/hsj_queries.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    env = environment_info()
    lines = [
        "# HopSkipJump: queries per image by batch size, and POST's post-trainings",
        "",
        "Command: `python benchmarks/bench_hsj_queries.py --model " + " ".join(args.model) + " "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                   if k not in ("output", "model")) + "`",
        "",
        f"Machine: {env['device_name']}; torch {env['torch']}; advguard {env['advguard']} "
        f"(commit {env['git_commit']}).",
        "",
        f"HopSkipJump (foolbox 3.3.4; L∞, eps {args.eps}, {args.steps} steps, "
        f"{args.initial_gradient_eval_steps}–{args.max_gradient_eval_steps} queries per "
        f"gradient estimate, blended-noise start; each attack call given a generator seeded "
        f"with {args.seed}) on the model alone, first {args.n} {args.dataset} test images.",
    ]
    try:
        data = load_dataset(args.dataset, "test")
        for path in args.model:
            lines += ["", f"## {path}", "", *_measure(path, data.images[:args.n],
                                                         data.labels[:args.n], args)]
    except AdvguardError as exc:  # a missing or unreadable checkpoint, an unknown dataset...
        parser.exit(2, f"bench_hsj_queries: error: {exc}\n")
    return write_report(lines, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
