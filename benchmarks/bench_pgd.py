"""Benchmark: advguard's PGD-20 against torchattacks' PGD-20 on the same model, data and machine.

Prints, side by side in one run, the throughput (examples/s) of each and their ratio, and the
robust-accuracy difference — first with no random start (the two implementations then compute
the same iterates), then with random starts. Timings are interleaved (A, B, A, B, ...) over
``--repeats`` runs and reported as median and spread, so background load hits both alike.

    python benchmarks/bench_pgd.py                      # CPU, quickstart SmallCNN, 1,000 images
    python benchmarks/bench_pgd.py --device cuda --bf16 --channels-last

The model is the quickstart SmallCNN (trained on the fly, ~15 s on 2 cores, unless --checkpoint
is given). torchattacks must be installed with ``pip install --no-deps torchattacks==3.5.1``.
Results are written as markdown to --output (default: benchmarks/results/pgd_vs_torchattacks.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from advguard.attacks import PGD
from advguard.checkpoint import load_checkpoint
from advguard.configs import config_path
from advguard.data import first_n, load_dataset
from advguard.training import TrainConfig, train
from advguard.utils import environment_info, resolve_device

EPS, ALPHA, STEPS = 0.1, 0.01, 20


def _model(checkpoint: str | None, device: torch.device) -> torch.nn.Module:
    if checkpoint:
        return load_checkpoint(checkpoint, device=device).model
    config = TrainConfig.from_file(config_path("train/quickstart"), device="cpu")
    return train(config, progress=False).model.to(device).eval()


def _time(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="run both under bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--output", default="benchmarks/results/pgd_vs_torchattacks.md")
    args = parser.parse_args(argv)

    import torchattacks

    device = resolve_device(args.device)
    model = _model(args.checkpoint, device)
    for p in model.parameters():
        p.requires_grad_(False)
    data = first_n(load_dataset("fashion-mnist-sample", "test"), args.n)
    x, y = data.images.to(device), data.labels.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def accuracy(adv: torch.Tensor) -> float:
        with torch.no_grad(), autocast:
            return float((model(adv).argmax(1) == y).float().mean())

    rows = []
    for random_start in (False, True):
        ours_attack = PGD(eps=EPS, alpha=ALPHA, steps=STEPS, random_start=random_start)
        theirs_attack = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS,
                                         random_start=random_start)

        def ours(attack: PGD = ours_attack) -> torch.Tensor:
            gen = torch.Generator(device=device).manual_seed(0)
            with autocast:
                return attack(model, x, y, generator=gen).adv

        def theirs(attack: torchattacks.PGD = theirs_attack) -> torch.Tensor:
            torch.manual_seed(0)
            with autocast:
                return attack(x, y)

        ours(), theirs()  # warm-up
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            dt, adv_ours = _time(ours, device)
            t_ours.append(dt)
            dt, adv_theirs = _time(theirs, device)
            t_theirs.append(dt)
        acc_ours, acc_theirs = accuracy(adv_ours), accuracy(adv_theirs)
        med_ours, med_theirs = statistics.median(t_ours), statistics.median(t_theirs)
        rows.append({
            "random start": "yes" if random_start else "no",
            "advguard ex/s": f"{args.n / med_ours:.0f} (±{_spread(t_ours, args.n)})",
            "torchattacks ex/s": f"{args.n / med_theirs:.0f} (±{_spread(t_theirs, args.n)})",
            "throughput ratio (advguard / torchattacks)": f"{med_theirs / med_ours:.3f}",
            "robust acc advguard": f"{100 * acc_ours:.1f}%",
            "robust acc torchattacks": f"{100 * acc_theirs:.1f}%",
            "difference (points)": f"{100 * (acc_ours - acc_theirs):+.1f}",
            "max |adv_a − adv_t|": f"{float((adv_ours - adv_theirs).abs().max()):.3g}",
        })

    env = environment_info(device)
    header = list(rows[0])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]
    with torch.no_grad(), autocast:
        clean = float((model(x).argmax(1) == y).float().mean())
    text = "\n".join([
        "# PGD-20: advguard vs torchattacks 3.5.1",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"Machine: {env['device_name']}; torch {env['torch']}; advguard {env['advguard']} "
        f"(commit {env['git_commit']}); bf16={args.bf16}, channels_last={args.channels_last}.",
        "",
        f"Model: quickstart SmallCNN (clean accuracy {100 * clean:.1f}% on the {args.n} "
        f"F-MNIST-sample test images used); L∞ ε = {EPS}, α = {ALPHA}, {STEPS} steps; "
        f"median of {args.repeats} interleaved runs (± half the range).",
        "",
        *table,
        "",
        "advguard's PGD runs inside the verified Attack protocol: it also validates the inputs, "
        "classifies the clean batch (least-likely targets, already-misclassified inputs) and the "
        "result (success mask), and checks the ε-ball — two extra forward passes out of 20 "
        "forward/backward steps.",
        "",
    ])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)
    return 0


def _spread(times: list[float], n: int) -> str:
    rates = [n / t for t in times]
    return f"{(max(rates) - min(rates)) / 2:.0f}"


if __name__ == "__main__":
    sys.exit(main())
