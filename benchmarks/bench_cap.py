"""Benchmark: the inference overhead of CAP (N labels) relative to one plain forward pass, against
the ratio implied by FLOPs.

A CAP inference runs the base model forward on the batch repeated N times, back-propagates to the
input (no weight gradients), and classifies the counteracted batch: N·(F + B) + F, where F is one
forward and B one input-only backward. An input-only backward of a conv/linear network costs about
as many multiply-accumulates as its forward (each layer's input gradient is a transposed
convolution / matrix product of the same size), so the FLOP-implied ratio is about 2N + 1 (19 for
the paper's N = 9). Measured: time per image of ``CAP(model, n_labels=N)`` (one batched pass, as
implemented) and of a Python loop of N separate forward/backward passes, each relative to a plain
``model(x)`` under ``torch.no_grad()``. Timings are interleaved (plain, batched, looped, ...) over
``--repeats`` runs and reported as median ± half the range, so background load hits all alike.

    python benchmarks/bench_cap.py                         # CPU: smallcnn (28×28), resnet20 (32×32)
    python benchmarks/bench_cap.py --device cuda --models smallcnn,resnet20,resnet50 --batch 256

Models are randomly initialized (timing does not depend on the weights). Results are written as
markdown to --output (default: benchmarks/results/cap_overhead.md).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
import torch.nn.functional as F

from _common import timed, write_report
from advguard.defenses import CAP
from advguard.models import count_flops, create_model
from advguard.utils import environment_info, resolve_device

SHAPES = {"smallcnn": (1, 28, 28), "lenet5": (1, 28, 28)}



def _looped_cap(model: torch.nn.Module, x: torch.Tensor, n_labels: int) -> torch.Tensor:
    """CAP with one forward/backward per label (the naive implementation), for comparison."""
    with torch.no_grad():
        pred = model(x).argmax(1)
    total = torch.zeros_like(x)
    for i in range(n_labels):
        label = (pred + 1 + i) % 10
        xi = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(F.cross_entropy(model(xi), label, reduction="sum"), xi)
        total += (x - 4 / 255 * g.sign()).clamp(0, 1) - x
    with torch.no_grad():
        return model((x + total.clamp(-8 / 255, 8 / 255)).clamp(0, 1))


def bench(name: str, device: torch.device, batch: int, n_labels: int, repeats: int
          ) -> dict[str, Any]:
    shape = SHAPES.get(name, (3, 32, 32))
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=shape[0], input_size=shape[1])
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    macs = count_flops(model, shape).macs
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    cap = CAP(model, n_labels=n_labels, num_classes=10, seed=0).to(device)

    def plain() -> object:
        with torch.no_grad():
            return model(x)

    def batched() -> object:
        with torch.no_grad():
            return cap(x)

    def looped() -> object:
        return _looped_cap(model, x, n_labels)

    fns = {"plain": plain, "batched": batched, "looped": looped}
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(timed(fn, device) / batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (max(v) - min(v)) / 2 for k, v in times.items()}
    return {"model": name, "shape": shape, "macs": macs, "batch": batch, "med": med,
            "spread": spread, "flop_ratio": 2 * n_labels + 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smallcnn,resnet20")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--labels", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default="benchmarks/results/cap_overhead.md")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    rows = [bench(m, device, args.batch, args.labels, args.repeats)
            for m in args.models.split(",")]
    env = environment_info(device)
    threads = torch.get_num_threads()
    cmd = "python benchmarks/bench_cap.py" + "".join(
        f" --{k} {v}" for k, v in (("models", args.models), ("device", args.device),
                                   ("batch", args.batch), ("labels", args.labels),
                                   ("repeats", args.repeats))
        if v != parser.get_default(k))
    lines = [
        f"# CAP inference overhead (N = {args.labels}) relative to one plain forward pass", "",
        f"Command: `{cmd}`", "",
        f"Machine: {env['device_name']} ({env['platform']}, {threads} torch threads); torch "
        f"{env['torch']}; advguard {env['advguard']} (commit {env['git_commit']}).", "",
        f"Batch {args.batch} random images, randomly initialized models; time per image, median "
        f"of {args.repeats} interleaved runs (± half the range). FLOP-implied ratio: "
        f"N·(forward + input-only backward) + forward ≈ (2N + 1) forwards = "
        f"{2 * args.labels + 1}.", "",
        "| model | input | MACs/image | plain forward (ms/image) | CAP batched (ms/image) | "
        "ratio batched / plain | CAP looped (ms/image) | ratio looped / plain | "
        "FLOP-implied ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        med, spr = r["med"], r["spread"]
        shape = "×".join(map(str, r["shape"]))
        lines.append(
            f"| {r['model']} | {shape} | {r['macs'] / 1e6:.1f} M | "
            f"{1e3 * med['plain']:.3f} (±{1e3 * spr['plain']:.3f}) | "
            f"{1e3 * med['batched']:.3f} (±{1e3 * spr['batched']:.3f}) | "
            f"{med['batched'] / med['plain']:.1f} | "
            f"{1e3 * med['looped']:.3f} (±{1e3 * spr['looped']:.3f}) | "
            f"{med['looped'] / med['plain']:.1f} | {r['flop_ratio']} |")
    return write_report(lines, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
