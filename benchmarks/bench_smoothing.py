"""Benchmark: throughput of the smoothed classifier with m draws against m plain forward passes.

A smoothed inference with ``m`` draws costs ``m`` forwards of the base model by FLOPs; what
implementation can change is how well the hardware is used. :class:`advguard.defenses.Smoothed`
runs the draws as batched forwards of ``chunk`` noisy copies of the batch when the model's noise
can be drawn per copy: Gaussian input noise, and the PNI/CNI weight noise of ``models/noise.py``
(inside ``weight_noise_copies`` a noisy conv runs ``chunk`` weight draws as one grouped
convolution, a noisy linear layer as one batched matmul). ``--noise`` picks the weight-noise
models to time next to the plain one ("pni", "cni", both, or "none"); ``--looped`` adds, for each
weight-noise model, the same defense with ``chunk=1`` (one copy per forward, the implementation
before per-copy weight noise), so the batched-vs-looped ratio is measured directly.
Measured, per configuration and ``m``: time of ``Smoothed(model, m=m)(x)`` and of ``m`` plain
``model(x)`` calls on the same batch (both under ``torch.no_grad()``), reported as images·draws
per second and as the ratio smoothed / (m × plain); 1.0 means no overhead, below 1.0 faster than
the plain loop. Timings are interleaved over ``--repeats`` runs: median ± half the range.

    python benchmarks/bench_smoothing.py                       # CPU, smallcnn (28×28), batch 256
    python benchmarks/bench_smoothing.py --device cuda --model resnet20 --batch 256 --ms 1,8,32,128
    python benchmarks/bench_smoothing.py --noise pni,cni --looped --ms 1,8,32 --repeats 3

Models are randomly initialized (timing does not depend on the weights). Results are written as
markdown to --output (default: benchmarks/results/smoothing_throughput.md).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from _common import timed, write_report
from advguard.defenses import Smoothed
from advguard.models import create_model
from advguard.models.noise import inject_noise
from advguard.utils import environment_info, resolve_device

SHAPES = {"smallcnn": (1, 28, 28), "lenet5": (1, 28, 28)}



def bench(model: nn.Module, label: str, x: torch.Tensor, ms: list[int], sigma: float,
          chunk: int, repeats: int) -> list[dict[str, Any]]:
    device = x.device
    rows = []
    for m in ms:
        defense = Smoothed(model, m=m, sigma=sigma, vote="prediction", chunk=chunk, seed=0)

        def plain(m: int = m) -> object:
            with torch.no_grad():
                return [model(x) for _ in range(m)]

        def smoothed(defense: Smoothed = defense) -> object:
            with torch.no_grad():
                return defense(x)

        fns: dict[str, Callable[[], object]] = {"plain": plain, "smoothed": smoothed}
        for fn in fns.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for key, fn in fns.items():
                times[key].append(timed(fn, device))
        med = {k: statistics.median(v) for k, v in times.items()}
        spread = {k: (max(v) - min(v)) / 2 for k, v in times.items()}
        batched = defense.batched and chunk > 1
        rows.append({"label": label, "m": m, "batched": batched, "med": med,
                     "spread": spread, "n": x.shape[0]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ms", default="1,8,32,128")
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--noise", default="pni",
                        help="weight-noise models to time: comma-separated pni, cni, or none")
    parser.add_argument("--looped", action="store_true",
                        help="also time weight-noise models with chunk=1 (one copy per forward)")
    parser.add_argument("--output", default="benchmarks/results/smoothing_throughput.md")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    shape = SHAPES.get(args.model, (3, 32, 32))
    torch.manual_seed(0)
    plain = create_model(args.model, num_classes=10, in_channels=shape[0], input_size=shape[1])
    kinds = [k for k in args.noise.split(",") if k and k != "none"]
    x = torch.rand(args.batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    ms = [int(m) for m in args.ms.split(",")]
    configs: list[tuple[str, nn.Module, int]] = [
        (f"{args.model} + input noise σ={args.sigma}", plain, args.chunk)]
    for kind in kinds:
        noisy = inject_noise(plain, {"kind": kind}, seed=0)
        label = f"{args.model} {kind.upper()}-W (weight noise) + input noise σ={args.sigma}"
        configs.append((label, noisy, args.chunk))
        if args.looped:
            configs.append((label + ", chunk=1 (looped)", noisy, 1))
    rows = []
    for label, model, chunk in configs:
        model = model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        rows += bench(model, label, x, ms, args.sigma, chunk, args.repeats)

    env = environment_info(device)
    cmd = "python benchmarks/bench_smoothing.py" + "".join(
        f" --{k} {v}" for k, v in (("model", args.model), ("device", args.device),
                                   ("batch", args.batch), ("ms", args.ms),
                                   ("sigma", args.sigma), ("chunk", args.chunk),
                                   ("repeats", args.repeats), ("noise", args.noise))
        if v != parser.get_default(k)) + (" --looped" if args.looped else "")
    lines = [
        "# Smoothed inference: throughput with m draws vs m plain forward passes", "",
        f"Command: `{cmd}`", "",
        f"Machine: {env['device_name']} ({env['platform']}, {torch.get_num_threads()} torch "
        f"threads; shared with other jobs); torch {env['torch']}; advguard {env['advguard']} "
        f"(commit {env['git_commit']}).", "",
        f"Batch of {args.batch} random images; randomly initialized models; median of "
        f"{args.repeats} interleaved runs (± half the range). 'batched' says whether the draws "
        f"ran as forwards of up to {args.chunk} stacked noisy copies (input noise drawn per "
        "example, weight noise per copy) or one copy per forward (chunk=1 rows).", "",
        "| model | m | batched | m × plain forward (s) | smoothed (s) | "
        "images·draws / s, smoothed | ratio smoothed / (m × plain) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        med, spr = r["med"], r["spread"]
        lines.append(
            f"| {r['label']} | {r['m']} | {'yes' if r['batched'] else 'no'} | "
            f"{med['plain']:.3f} (±{spr['plain']:.3f}) | "
            f"{med['smoothed']:.3f} (±{spr['smoothed']:.3f}) | "
            f"{r['n'] * r['m'] / med['smoothed']:.0f} | "
            f"{med['smoothed'] / med['plain']:.2f} |")
    return write_report(lines, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
