"""Benchmark: the cost of purifier defenses — (1) inference of ``M_t(purifier(x))`` relative to one
``M_t`` forward, against the FLOP-implied ratio, for ADD-Defense at several widths and APE-GAN;
(2) where a training step's time goes: crafting the known attacks' examples on ``M_t`` vs the
purifier's own forward/backward/update, measured side by side in one run (this is what decides
whether crafting once and caching, as the paper does, would pay: the crafting share of a step).

(1) Time per image of ``M_t(x)`` and of the defended model, interleaved over ``--repeats`` runs,
median ± half the range; FLOP ideal = (MACs(purifier) + MACs(M_t)) / MACs(M_t) (transposed
convolutions counted). Target: measured ≤ 1.5 × the FLOP ideal (the purifiers' layers are large
convolutions on tiny maps: their efficiency differs from M_t's).

(2) One ``add`` / ``ape_gan`` training step on a batch of ``--batch`` clean images with two known
attacks (PGD-``--attack-steps``, ε 0.15, untargeted and targeted), split into the crafting of
both attacks' examples and the rest of the step; the recipe's training throughput in clean
images per second (each with its two adversarial versions) is ``batch / step``.

    python benchmarks/bench_add.py                   # CPU, Fashion-MNIST shapes, M_t = smallcnn

Models are randomly initialized (the cost does not depend on the weights). Results: --output
(default benchmarks/results/add_cost.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from _common import interleaved, write_report
from advguard.checkpoint import save_checkpoint
from advguard.defenses import build_defense
from advguard.models import count_flops, create_model
from advguard.training.recipes import make_recipe
from advguard.utils import environment_info, resolve_device

SHAPE = (1, 28, 28)


def _purifiers(widths: list[float]) -> dict[str, tuple[str, dict[str, Any]]]:
    out = {f"ADD (width {w:g})": ("add_purifier", {"width": w}) for w in widths}
    out["APE-GAN (width 0.5)"] = ("ape_gan", {"width": 0.5})
    return out


def inference(target: torch.nn.Module, widths: list[float], device: torch.device, batch: int,
              repeats: int) -> list[dict[str, Any]]:
    x = torch.rand(batch, *SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    macs_t = count_flops(target, SHAPE).macs
    rows = []
    for label, (name, kwargs) in _purifiers(widths).items():
        purifier = create_model(name, num_classes=10, in_channels=1, input_size=28, seed=0,
                                **kwargs).to(device).eval()
        spec = {"name": "add" if name == "add_purifier" else "ape_gan", "purifier": purifier}
        defense = build_defense(spec, target).to(device)

        def plain() -> object:
            with torch.no_grad():
                return target(x)

        def defended(defense: torch.nn.Module = defense) -> object:
            with torch.no_grad():
                return defense(x)

        med, spread = interleaved({"plain": plain, "defended": defended}, device, repeats,
                                  per=batch)
        macs_p = count_flops(purifier, SHAPE).macs
        rows.append({"label": label, "macs_p": macs_p, "macs_t": macs_t, "med": med,
                     "spread": spread, "flop_ratio": (macs_p + macs_t) / macs_t})
    return rows


def training_split(target_path: Path, widths: list[float], device: torch.device, batch: int,
                   attack_steps: int, repeats: int) -> list[dict[str, Any]]:
    attacks = [{"attack": "pgd", "eps": 0.15, "steps": attack_steps},
               {"attack": "pgd", "eps": 0.15, "steps": attack_steps, "target": "random"}]
    x = torch.rand(batch, *SHAPE, generator=torch.Generator().manual_seed(1)).to(device)
    y = (torch.arange(batch) % 10).to(device)
    rows = []
    for label, (name, kwargs) in _purifiers(widths).items():
        model = create_model(name, num_classes=10, in_channels=1, input_size=28, seed=0,
                             **kwargs).to(device).train()
        recipe = make_recipe("add" if name == "add_purifier" else "ape_gan",
                             target=str(target_path), known_attacks=attacks)
        recipe.prepare_model(model)
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)

        def craft(recipe: Any = recipe) -> object:
            return recipe.domains_of(x, y, torch.Generator(device=device).manual_seed(0))

        def step(recipe: Any = recipe, model: torch.nn.Module = model,
                 opt: torch.optim.Optimizer = opt) -> object:
            out = recipe.loss(model, x, y, generator=torch.Generator(device=device).manual_seed(0))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            return out

        med, spread = interleaved({"craft": craft, "step": step}, device, repeats)
        rows.append({"label": label, "med": med, "spread": spread})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--target", default="smallcnn", help="architecture of M_t")
    parser.add_argument("--widths", default="0.25,0.5,1.0", help="ADD purifier widths")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/add_cost.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    widths = [float(w) for w in args.widths.split(",")]
    target = create_model(args.target, num_classes=10, in_channels=1, input_size=28,
                          seed=0).to(device).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    inf = inference(target, widths, device, args.batch, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp) / "target.safetensors", target.cpu(),
                               metadata={"dataset": "fashion-mnist"})
        target.to(device)
        split = training_split(path, [w for w in widths if w <= 0.5], device, args.batch,
                               args.attack_steps, args.step_repeats)
    env = environment_info(device)
    cmd = "python benchmarks/bench_add.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if v != parser.get_default(k))
    lines = [
        "# Purifier defenses (ADD-Defense, APE-GAN): inference overhead and training-step split",
        "", f"Command: `{cmd}`", "",
        f"Machine: {env['device_name']} ({env['platform']}, {torch.get_num_threads()} torch "
        f"threads); torch {env['torch']}; advguard {env['advguard']} (commit "
        f"{env['git_commit']}). M_t = {args.target}, inputs 1×28×28.", "",
        f"## (1) M_t(purifier(x)) relative to one M_t forward (batch {args.batch})", "",
        f"Time per image, median of {args.repeats} interleaved runs (± half the range). FLOP "
        "ideal: (MACs(purifier) + MACs(M_t)) / MACs(M_t). Target: measured ≤ 1.5 × FLOP ideal.",
        "", "| purifier | MACs purifier / M_t | M_t forward (ms/img) | defended (ms/img) | "
        "measured ratio | FLOP ideal | measured / FLOP ideal |", "|---|---|---|---|---|---|---|"]
    for r in inf:
        med, spr = r["med"], r["spread"]
        ratio = med["defended"] / med["plain"]
        lines.append(
            f"| {r['label']} | {r['macs_p'] / 1e6:.2f} M / {r['macs_t'] / 1e6:.2f} M | "
            f"{1e3 * med['plain']:.4f} (±{1e3 * spr['plain']:.4f}) | "
            f"{1e3 * med['defended']:.4f} (±{1e3 * spr['defended']:.4f}) | {ratio:.2f} | "
            f"{r['flop_ratio']:.2f} | {ratio / r['flop_ratio']:.2f} |")
    lines += ["", f"## (2) One training step: crafting the known attacks vs the whole step "
              f"(batch {args.batch} clean + 2 × {args.batch} adversarial, PGD-{args.attack_steps}"
              f" on M_t, {args.step_repeats} interleaved repeats)", "",
              "| purifier | crafting both attacks (s) | whole step (s) | crafting share | "
              "training throughput (clean images/s) |", "|---|---|---|---|---|"]
    for r in split:
        med, spr = r["med"], r["spread"]
        lines.append(f"| {r['label']} | {med['craft']:.3f} (±{spr['craft']:.3f}) | "
                     f"{med['step']:.3f} (±{spr['step']:.3f}) | "
                     f"{med['craft'] / med['step']:.2f} | {args.batch / med['step']:.1f} |")
    return write_report(lines, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
