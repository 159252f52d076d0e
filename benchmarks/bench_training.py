"""Benchmark: training throughput and achieved FLOP/s of each training recipe, side by side with the
standard recipe, through the one training loop (``advguard.training.train``).

Each recipe trains for two epochs of ``--steps`` steps; the second epoch's wall time (no
evaluation, no checkpoint, data already resident on the device, everything compiled/warmed up in
epoch one) is the measurement. Recipes are timed interleaved (standard, A, B, ..., standard, A,
B, ...) over ``--repeats`` rounds, so background load hits all alike; the median and the spread
(min–max) are reported.

FLOP accounting (per training example, in units of one forward pass = ``2·MACs`` from
:func:`advguard.models.count_flops`): a training forward+backward costs 3 (forward, gradient
w.r.t. activations, gradient w.r.t. weights); an attack step costs 2 (forward and the input
gradient only: the attacks call ``torch.autograd.grad`` on the input, so no weight gradients are
computed); a forward without gradient costs 1. Hence standard/mixup 3, ``pgd_at`` 2k+3 (2k+6
with clean mixing), ``fast_at`` 5, ``trades`` 2k+7, ``iat`` 2k+6, ``noise_injection`` as its
base recipe (the noise itself is elementwise work on the weights, not counted). The forward
count of each formula is checked against a forward-hook count of one real step.

Achieved FLOP/s = counted FLOPs / measured time; fraction of peak = that / the device's dense
bf16 peak (``--peak-tflops``, or a built-in table for common GPUs; none for CPUs).

    python benchmarks/bench_training.py                         # CPU: SmallCNN, F-MNIST sample
    python benchmarks/bench_training.py --device cuda --model preact_resnet18 --dataset cifar10 \\
        --batch-size 512 --steps 50 --compile                    # GPU: bf16, channels_last, compile

On CUDA the loop runs with bf16 autocast and channels_last by default (``precision: auto``), data
resident on the GPU, no host sync inside a step (``progress=False``). Results are written as
markdown to ``--output`` with the command, machine and commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from _common import write_report
from advguard.data import dataset_info
from advguard.models import count_flops, create_model
from advguard.training import Recipe, TrainConfig, make_recipe, train
from advguard.utils import environment_info, resolve_device

#: Dense bf16 tensor-core peaks (FLOP/s) by device-name substring, from the vendors' data sheets.
GPU_BF16_PEAK = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # SXM
    "A100": 312.0e12,
    "L40S": 362.1e12,
    "L4": 121.0e12,
    "A10G": 70.0e12,
    "RTX 4090": 165.2e12,
}

#: Per recipe: the recipe kwargs used here (attacks at eps 0.1, the Scale S settings).
RECIPES: dict[str, dict[str, Any]] = {
    "standard": {},
    "mixup": {},
    "fast_at": {"eps": 0.1},
    "pgd_at": {"eps": 0.1, "alpha": 0.025, "steps": 10},
    "trades": {"eps": 0.1, "alpha": 0.025, "steps": 10},
    "iat": {"eps": 0.1, "alpha": 0.025, "steps": 10},
    "noise_injection": {"noise": {"kind": "pni"},
                        "base_kwargs": {"eps": 0.1, "alpha": 0.025, "steps": 10,
                                        "adv_weight": 0.5}},
}


@dataclass(frozen=True)
class Passes:
    """Per training example: forward passes, attack (input-gradient) backward passes and
    training (weight-gradient) backward passes."""

    forwards: int
    attack_backwards: int
    train_backwards: int

    @property
    def forward_equivalents(self) -> int:
        return self.forwards + self.attack_backwards + 2 * self.train_backwards


def passes(recipe: Recipe) -> Passes:
    """The pass counts of one step of ``recipe`` (see the module docstring)."""
    name = recipe.name
    if name in ("standard", "mixup"):
        return Passes(1, 0, 1)
    if name == "fast_at":
        return Passes(2, 1, 1)
    k = int(getattr(recipe, "steps", 0))
    if name == "pgd_at":
        mixed = getattr(recipe, "adv_weight", 1.0) < 1
        return Passes(k + 1 + mixed, k, 1 + mixed)
    if name == "trades":
        return Passes(1 + k + 2, k, 2)
    if name == "iat":
        return Passes(k + 2, k, 2)
    if name == "noise_injection":
        inner = getattr(recipe, "inner", None)
        assert isinstance(inner, Recipe)
        return passes(inner)
    raise ValueError(f"no FLOP accounting for recipe {name!r}")


def counted_forwards(recipe: Recipe, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     device: torch.device) -> float:
    """Forward examples per training example in one real step (forward-hook count)."""
    seen = {"n": 0}

    def hook(_m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
        seen["n"] += int(inputs[0].shape[0])

    handle = model.register_forward_hook(hook)
    try:
        recipe.loss(model.train(), x, y, generator=torch.Generator(device=device).manual_seed(0))
    finally:
        handle.remove()
    return seen["n"] / x.shape[0]


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in GPU_BF16_PEAK.items():
        if key in name:
            return value
    return None


def epoch_time(config: TrainConfig) -> float:
    """Wall time of the second epoch (the first warms up caches, autotuning and compilation)."""
    history = train(config, progress=False).record.history
    return float(history[1]["elapsed_s"]) - float(history[0]["elapsed_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", default="fashion-mnist-sample")
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak in TFLOP/s (default: table for known GPUs)")
    parser.add_argument("--output", default="benchmarks/results/training_recipes_cpu.md")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    info = dataset_info(args.dataset)
    c, h, _ = info.image_shape
    model = create_model(args.model, num_classes=info.num_classes, in_channels=c, input_size=h,
                         seed=0).to(device)
    macs = count_flops(model, (c, h, h)).macs
    base = TrainConfig(dataset=args.dataset, model=args.model, epochs=2,
                       batch_size=args.batch_size, train_size=args.steps * args.batch_size,
                       test_size=0, device=str(device), precision=args.precision,
                       compile=args.compile, augment="none", schedule="constant", lr=0.01,
                       seed=0)

    names = ["standard", *[r for r in args.recipes if r != "standard"]]
    recipes = {n: make_recipe(n, **RECIPES.get(n, {})) for n in names}
    x = torch.rand(args.batch_size, c, h, h, device=device)
    y = torch.randint(0, info.num_classes, (args.batch_size,), device=device)
    for name, recipe in recipes.items():  # the formulas' forward counts against the real step
        probe = recipe.prepare_model(create_model(args.model, num_classes=info.num_classes,
                                                  in_channels=c, input_size=h, seed=0))
        got = counted_forwards(recipe, probe.to(device), x, y, device)
        want = passes(recipe).forwards
        if got != want:
            raise SystemExit(f"{name}: {got} forwards per example, the accounting says {want}")

    times: dict[str, list[float]] = {n: [] for n in names}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    for _ in range(args.repeats):
        for name in names:
            cfg = base.replace(recipe=name, recipe_kwargs=RECIPES.get(name, {}))
            times[name].append(epoch_time(cfg))
    total = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    peak = peak_flops(device, args.peak_tflops)
    examples = args.steps * args.batch_size
    std_time = statistics.median(times["standard"])
    rows = []
    for name in names:
        t = statistics.median(times[name])
        p = passes(recipes[name])
        flops = 2 * macs * p.forward_equivalents * examples
        rows.append([
            name, str(p.forward_equivalents), f"{examples / t:,.0f}",
            f"{t / args.steps * 1e3:.1f} ({min(times[name]) / args.steps * 1e3:.1f}–"
            f"{max(times[name]) / args.steps * 1e3:.1f})",
            f"{t / std_time:.2f}", f"{flops / t / 1e9:.1f}",
            f"{flops / t / (2 * macs * 3 * examples / std_time):.2f}",
            f"{flops / t / peak:.1%}" if peak else "n/a",
        ])
    header = ["recipe", "fwd-equiv/example", "examples/s", "ms/step median (min–max)",
              "time × standard", "achieved GFLOP/s", "GFLOP/s ÷ standard's", "of bf16 peak"]
    env = environment_info(device)
    command = "python benchmarks/bench_training.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv)
    lines = [
        "# Training throughput per recipe (advguard.training.train)", "",
        f"Command: `{command}`  ",
        f"Machine: {env['device_name']}; torch {env['torch']}; python {env['python']}; "
        f"{env['platform']}  ",
        f"Commit: {env['git_commit']}  ",
        f"Model: {args.model} on {args.dataset} ({c}×{h}×{h}), {macs / 1e6:.2f} M MACs per "
        f"forward; batch {args.batch_size}; {args.steps} timed steps per run (second epoch of "
        f"two); {args.repeats} interleaved repeats; precision {args.precision}; "
        f"compile {args.compile}. Total benchmark time {total:.0f} s; 1-min load average "
        f"{load_before:.1f} before, {load_after:.1f} after (other jobs share the machine).  ",
        "Attack settings: eps 0.1, PGD-10 (step 0.025) for pgd_at/trades/iat/noise_injection "
        "(PNI, 1:1 clean/adv), Fast-FGSM α = 1.25·eps.", "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(r) + " |" for r in rows], "",
        "FLOPs per example = fwd-equiv × 2 × MACs (training forward+backward = 3, attack step = 2, "
        "gradient-free forward = 1). 'of bf16 peak' needs a known device peak "
        "(n/a on CPUs unless --peak-tflops is given).",
    ]
    return write_report(lines, args.output)


if __name__ == "__main__":
    sys.exit(main())
