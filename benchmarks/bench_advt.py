"""Benchmark: AdvT's cost — (1) the inference cost of f_a(g(x)) relative to one plain f_a forward,
against the FLOP-implied ratio; (2) the paper's claim (Sec. 3.4, 5) that training f_a on g(x) is
cheaper than PGD adversarial training of f_a: time per epoch of the ``advt`` recipe vs ``pgd_at``
(PGD-7) on the same f_a, measured side by side in one run.

(1) g runs one f_b forward (the least-likely target) and ``steps`` forward + input-only backward
passes of f_b; an input-only backward costs about one forward, so the FLOP-implied ratio is
``((2·steps + 1)·MACs(f_b) + MACs(f_a)) / MACs(f_a)``. Also shown: the "primitive" ideal, built
from the measured time of one f_b forward+backward and one f_a forward in isolation (what the
steps cost without any per-step overhead of ours). Interleaved over ``--repeats`` runs, median
± half the range. Target: measured ≤ 1.3 × the FLOP ideal.

(2) One epoch over ``--train-size`` images of the same model and data, with each recipe, timed by
the training loop (``record.wall_time_s``), interleaved over ``--epoch-repeats``.

    python benchmarks/bench_advt.py                  # CPU: Scale S (smallcnn f_a, lenet5 f_b)
    python benchmarks/bench_advt.py --device cuda --pairs resnet18:vgg_small --batch 256

Models are randomly initialized for (1); (2) trains from scratch on the Fashion-MNIST sample
(CIFAR-10 shapes for 32×32 pairs need the CIFAR-10 data). Results: --output (default
benchmarks/results/advt_cost.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from _common import timed, write_report
from advguard.checkpoint import save_checkpoint
from advguard.defenses import AdvTransform, Pipeline
from advguard.models import count_flops, create_model
from advguard.utils import environment_info, resolve_device

SHAPES = {"smallcnn": (1, 28, 28), "lenet5": (1, 28, 28)}


def _model(name: str, shape: tuple[int, int, int], device: torch.device) -> torch.nn.Module:
    model = create_model(name, num_classes=10, in_channels=shape[0], input_size=shape[1], seed=0)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def inference(f_a_name: str, f_b_name: str, device: torch.device, batch: int, steps: int,
              repeats: int) -> dict[str, Any]:
    shape = SHAPES.get(f_a_name, (3, 32, 32))
    f_a, f_b = _model(f_a_name, shape, device), _model(f_b_name, shape, device)
    macs_a, macs_b = count_flops(f_a, shape).macs, count_flops(f_b, shape).macs
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.arange(batch, device=device) % 10
    defense = Pipeline([AdvTransform(f_b=f_b, delta=0.2, steps=steps, seed=0)], f_a).to(device)

    def plain() -> object:
        with torch.no_grad():
            return f_a(x)

    def defended() -> object:
        with torch.no_grad():
            return defense(x)

    def f_b_step() -> object:  # one forward + input-only backward of f_b
        xi = x.detach().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(f_b(xi), y, reduction="sum"), xi)

    fns = {"plain": plain, "defended": defended, "f_b_step": f_b_step}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(timed(fn, device) / batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (max(v) - min(v)) / 2 for k, v in times.items()}
    flop_ratio = ((2 * steps + 1) * macs_b + macs_a) / macs_a
    primitive = (steps * med["f_b_step"] + med["plain"]) / med["plain"]
    return {"pair": f"{f_a_name} ← g on {f_b_name}", "macs_a": macs_a, "macs_b": macs_b,
            "med": med, "spread": spread, "flop_ratio": flop_ratio, "primitive": primitive}


def epochs(f_a_name: str, f_b_name: str, device: str, train_size: int, repeats: int,
           batch: int) -> dict[str, Any]:
    from advguard.training import TrainConfig, train

    shape = SHAPES.get(f_a_name, (3, 32, 32))
    dataset = "fashion-mnist-sample" if shape[0] == 1 else "cifar10"
    with tempfile.TemporaryDirectory() as tmp:
        f_b = create_model(f_b_name, num_classes=10, in_channels=shape[0], input_size=shape[1],
                           seed=0)
        path = save_checkpoint(Path(tmp) / "f_b.safetensors", f_b, metadata={"dataset": dataset})
        common = dict(dataset=dataset, model=f_a_name, epochs=1, batch_size=batch,
                      train_size=train_size, test_size=0, augment="none", device=device, seed=0)
        configs = {
            "advt (Δ 0.2, 13 steps on f_b)": TrainConfig(
                recipe="advt", recipe_kwargs={"f_b": str(path), "delta": 0.2, "steps": 13},
                **common),  # type: ignore[arg-type]
            "pgd_at (PGD-7 on f_a)": TrainConfig(
                recipe="pgd_at", recipe_kwargs={"eps": 8 / 255, "alpha": 2 / 255, "steps": 7},
                **common),  # type: ignore[arg-type]
        }
        times: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(repeats):
            for key, cfg in configs.items():
                times[key].append(train(cfg, progress=False).record.wall_time_s)
    return {"pair": f"{f_a_name} (f_b {f_b_name})", "times": times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="smallcnn:lenet5,smallcnn:smallcnn",
                        help="f_a:f_b architecture pairs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-size", type=int, default=2560)
    parser.add_argument("--epoch-repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/advt_cost.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    inf = [inference(a, b, device, args.batch, args.steps, args.repeats) for a, b in pairs]
    ep = [epochs(a, b, args.device, args.train_size, args.epoch_repeats, args.batch)
          for a, b in pairs]
    env = environment_info(device)
    cmd = "python benchmarks/bench_advt.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if v != parser.get_default(k))
    lines = [
        "# AdvT cost: inference overhead of g, and training time per epoch vs PGD-AT", "",
        f"Command: `{cmd}`", "",
        f"Machine: {env['device_name']} ({env['platform']}, {torch.get_num_threads()} torch "
        f"threads); torch {env['torch']}; advguard {env['advguard']} (commit "
        f"{env['git_commit']}).", "",
        f"## (1) f_a(g(x)) relative to one f_a forward (batch {args.batch}, {args.steps} LL-PGD "
        "steps)", "",
        f"Time per image, median of {args.repeats} interleaved runs (± half the range). FLOP "
        f"ideal: ((2·{args.steps} + 1)·MACs(f_b) + MACs(f_a)) / MACs(f_a); primitive ideal: "
        f"({args.steps} × measured f_b forward+backward + f_a forward) / f_a forward. Target: "
        "measured ≤ 1.3 × FLOP ideal.", "",
        "| pair | MACs f_a / f_b | f_a forward (ms/img) | f_a(g(x)) (ms/img) | measured ratio | "
        "FLOP ideal | measured / FLOP ideal | primitive ideal | measured / primitive |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in inf:
        med, spr = r["med"], r["spread"]
        ratio = med["defended"] / med["plain"]
        lines.append(
            f"| {r['pair']} | {r['macs_a'] / 1e6:.2f} M / {r['macs_b'] / 1e6:.2f} M | "
            f"{1e3 * med['plain']:.4f} (±{1e3 * spr['plain']:.4f}) | "
            f"{1e3 * med['defended']:.3f} (±{1e3 * spr['defended']:.3f}) | {ratio:.1f} | "
            f"{r['flop_ratio']:.1f} | {ratio / r['flop_ratio']:.2f} | {r['primitive']:.1f} | "
            f"{ratio / r['primitive']:.2f} |")
    lines += ["", f"## (2) One training epoch of f_a: advt vs pgd_at ({args.train_size} images, "
              f"batch {args.batch}, {args.epoch_repeats} interleaved repeats)", "",
              "| f_a (f_b) | recipe | seconds per epoch (median, ± half range) | "
              "ratio to pgd_at |", "|---|---|---|---|"]
    for r in ep:
        med = {k: statistics.median(v) for k, v in r["times"].items()}
        base = med["pgd_at (PGD-7 on f_a)"]
        for key, values in r["times"].items():
            lines.append(f"| {r['pair']} | {key} | {med[key]:.2f} "
                         f"(±{(max(values) - min(values)) / 2:.2f}) | {med[key] / base:.2f} |")
    return write_report(lines, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
