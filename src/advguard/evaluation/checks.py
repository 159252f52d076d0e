"""Reliability flags: probes that tell the user when a robustness number should not be trusted
(after AutoAttack's checks and Carlini et al. 2019, "On Evaluating Adversarial Robustness").

Each flag is stored with the evaluation (fired or not, with a detail line) and explained in the
report by :data:`FLAG_EXPLANATIONS`. Probes run on a few clean-correct examples.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch
from torch import nn

from advguard.attacks.base import Attack
from advguard.attacks.losses import cw_margin
from advguard.attacks.wrappers import input_gradient
from advguard.evaluation.store import FlagRecord

FLAG_EXPLANATIONS: dict[str, str] = {
    "randomized_output": (
        "The defense's output changes between identical calls. Gradient attacks need EOT and the "
        "evaluation must be repeated: robust accuracy is the worst case over independent runs."),
    "undeclared_randomness": (
        "The defense's output changes between identical calls although it declares itself "
        "deterministic: it was evaluated once, and attacks did not use EOT. Fix its traits."),
    "dynamic_forward": (
        "The defense computes gradients inside its forward pass (a dynamic defense). Attacks "
        "must differentiate through that computation (double backpropagation) or use BPDA; "
        "numbers from attacks that ignore it overstate robustness."),
    "zero_gradients": (
        "A large fraction of examples have zero input gradients through the model this step "
        "differentiates: gradient masking. Gradient attacks cannot make progress; use BPDA "
        "with a differentiable surrogate, or a score/decision-based attack."),
    "eps_insensitive": (
        "Robust accuracy does not fall towards 0% as the perturbation budget grows large. An "
        "unbounded attack must always succeed, so the attack is failing, not the classifier "
        "succeeding (masked or obfuscated gradients)."),
    "more_steps_higher_accuracy": (
        "Running the same attack for more iterations gave HIGHER accuracy, which a working "
        "attack should never do beyond noise: the attack is unreliable here (noisy or masked "
        "gradients, or a randomized defense needing more EOT samples)."),
    "dataset_mismatch": (
        "The checkpoint was trained on another dataset than the one evaluated (same image shape, "
        "so it runs): the numbers describe a model applied out of its domain."),
    "fewer_examples": (
        "The evaluation asked for more examples than the split has; it evaluated all of them."),
    "blackbox_beats_whitebox": (
        "A black-box (transfer, oblivious or query) attack fooled examples that the preceding "
        "white-box attacks had not: the white-box attacks are not using the defense's gradients "
        "effectively (gradient masking or a wrong surrogate)."),
}

Predict = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def count_gradient_calls() -> Iterator[list[int]]:
    """Count calls of ``torch.autograd.grad`` and ``Tensor.backward`` while active."""
    counter = [0]
    original_grad = torch.autograd.grad
    original_backward = torch.Tensor.backward

    def grad(*args, **kwargs):  # type: ignore[no-untyped-def]
        counter[0] += 1
        return original_grad(*args, **kwargs)

    def backward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        counter[0] += 1
        return original_backward(self, *args, **kwargs)

    torch.autograd.grad = grad
    torch.Tensor.backward = backward  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        torch.autograd.grad = original_grad
        torch.Tensor.backward = original_backward  # type: ignore[method-assign]


def check_randomness(defense: nn.Module, x: torch.Tensor, *, declared: bool) -> FlagRecord:
    """Fires ``randomized_output`` (or ``undeclared_randomness``) when two calls differ."""
    with torch.no_grad():
        a, b = defense(x), defense(x)
    diff = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    varies = diff > 0
    if varies and not declared:
        return FlagRecord("undeclared_randomness", -1, True,
                          f"max output difference between two identical calls: {diff:.3g}")
    detail = (f"max output difference between two identical calls: {diff:.3g}" if varies
              else "identical outputs on repeated calls")
    return FlagRecord("randomized_output", -1, varies or declared, detail)


def check_dynamic(defense: nn.Module, x: torch.Tensor, *, declared: bool) -> FlagRecord:
    with count_gradient_calls() as calls, torch.no_grad():
        defense(x)
    fired = calls[0] > 0 or declared
    detail = f"{calls[0]} gradient call(s) during one forward pass" + \
        ("" if calls[0] or not declared else " (declared dynamic)")
    return FlagRecord("dynamic_forward", -1, fired, detail)


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int,
                    *, threshold: float = 0.1) -> FlagRecord:
    """Fires when ≥ ``threshold`` of examples have a zero (≤ 1e-10) or non-finite gradient of the
    CW margin (which does not saturate like cross-entropy) through ``model``."""
    try:
        _, grad = input_gradient(model, x, y, None, cw_margin)
    except RuntimeError as exc:  # e.g. "element 0 of tensors does not require grad"
        return FlagRecord("zero_gradients", step, True, f"no gradient at all: {exc}")
    norms = grad.flatten(1).norm(dim=1)
    bad = (~torch.isfinite(norms)) | (norms <= 1e-10)
    frac = float(bad.float().mean())
    return FlagRecord("zero_gradients", step, frac >= threshold,
                      f"{100 * frac:.0f}% of {x.shape[0]} probe examples have zero or "
                      f"non-finite input gradients")


def _accuracy(attack: Attack, model: nn.Module, predict: Predict, x: torch.Tensor,
              y: torch.Tensor, seed: int) -> float:
    gen = torch.Generator(device=x.device).manual_seed(seed)
    adv = attack(model, x, y, generator=gen).adv
    with torch.no_grad():
        return float((predict(adv).argmax(1) == y).float().mean())


def _scaled(attack: Attack, eps: float) -> Attack:
    changes: dict[str, float] = {"eps": eps}
    alpha = getattr(attack, "alpha", None)
    if isinstance(alpha, float) and attack.eps > 0:
        changes["alpha"] = alpha * eps / attack.eps
    return dataclasses.replace(attack, **changes)  # type: ignore[arg-type]


PROBE_STEPS = 10


def probe_attack(attack: Attack) -> Attack:
    """The attack the probes run: ``attack`` with at most :data:`PROBE_STEPS` steps and one
    target class (the probes compare budgets; they need not be the step's full strength)."""
    fields = {f.name for f in dataclasses.fields(attack)}
    changes: dict[str, int] = {}
    steps = getattr(attack, "steps", None)
    if "steps" in fields and isinstance(steps, int) and steps > PROBE_STEPS:
        changes["steps"] = PROBE_STEPS
    targets = getattr(attack, "targets", None)
    if "targets" in fields and isinstance(targets, int) and targets > 1:
        changes["targets"] = 1
    return dataclasses.replace(attack, **changes) if changes else attack  # type: ignore[arg-type]


def check_eps_sweep(attack: Attack, model: nn.Module, predict: Predict, x: torch.Tensor,
                    y: torch.Tensor, step: int, *, seed: int) -> FlagRecord:
    """Fires ``eps_insensitive`` when accuracy at a very large budget stays above 10%."""
    if attack.norm == "linf":
        budgets = sorted({attack.eps, min(4 * attack.eps, 0.5), 0.5})
    else:
        budgets = [attack.eps, 4 * attack.eps, 16 * attack.eps]
    budgets = [b for b in budgets if b > 0]
    accs = [_accuracy(_scaled(attack, b), model, predict, x, y, seed) for b in budgets]
    curve = ", ".join(f"eps={b:.4g}: {100 * a:.0f}%" for b, a in zip(budgets, accs))
    return FlagRecord("eps_insensitive", step, accs[-1] > 0.1, f"probe accuracy {curve}")


def check_more_steps(attack: Attack, model: nn.Module, predict: Predict, x: torch.Tensor,
                     y: torch.Tensor, step: int, *, seed: int, factor: int = 4) -> FlagRecord:
    """Fires when ``factor``× the iterations gives higher accuracy by more than 3 points and 2
    examples."""
    steps = int(getattr(attack, "steps", 0))
    if steps < 1 or "steps" not in {f.name for f in dataclasses.fields(attack)}:
        return FlagRecord("more_steps_higher_accuracy", step, False,
                          "not applicable (attack has no steps parameter)")
    base = _accuracy(attack, model, predict, x, y, seed)
    longer = _accuracy(dataclasses.replace(attack, steps=steps * factor),  # type: ignore[call-arg]
                       model, predict, x, y, seed)
    margin = max(0.03, 2 / max(1, x.shape[0]))
    return FlagRecord("more_steps_higher_accuracy", step, longer > base + margin,
                      f"probe accuracy {100 * base:.0f}% with {steps} steps, "
                      f"{100 * longer:.0f}% with {steps * factor}")


def blackbox_flag(white_box_steps: list[int], fooled_by: list[int | None],
                  black_box_steps: list[int], n: int) -> FlagRecord:
    """Fires when black-box steps after a white-box step fool ≥ max(1, 0.5%·n) examples."""
    first_white = min(white_box_steps) if white_box_steps else None
    later_black = [s for s in black_box_steps if first_white is not None and s > first_white]
    count = sum(f in later_black for f in fooled_by if f is not None)
    if first_white is None or not later_black:
        return FlagRecord("blackbox_beats_whitebox", -1, False,
                          "not applicable (no black-box step after a white-box step)")
    fired = count >= max(1, 0.005 * n)
    return FlagRecord("blackbox_beats_whitebox", -1, fired,
                      f"{count} example(s) robust to the white-box steps were fooled by later "
                      "black-box steps")
