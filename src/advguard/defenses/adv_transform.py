"""AdvT: resisting adversarial examples by adversarial examples (adversarial transformation).

Paper: Xiao & Zheng, "One man's trash is another man's treasure: resisting adversarial examples
by adversarial examples", CVPR 2020 (Sec. 3.2, Eq. 2–3, Sec. 4.1 and Appendix A). The defended
classifier is ``f_a(g(x))``, where ``g(x)`` is the process of crafting an adversarial example of
``x`` on a small pre-trained (adversarially trained) model ``f_b``, with a deliberately large
L∞ budget ``Δ``:

1. the target: ``f_b``'s **least-likely** class of the clean input ``y_L = argmin f_b(x)``
   (``targeting="least_likely"``, Eq. 2, the paper) — or, as in the authors' released code
   (``adv_mode='adv'``), **untargeted** away from ``f_b``'s own prediction ``argmax f_b(x)``
   (``targeting="untargeted"``);
2. a random start ``x′₀ = clip₀₁(x + δ)``, ``δ`` uniform in ``[−Δ, Δ]`` per pixel
   (``random_start``; the released code sets it up and then overwrites it with zeros, so it never
   starts at random);
3. ``steps`` iterations (Eq. 3) of ``x′ₜ = clip₀₁(x + Π_Δ(x′ₜ₋₁ ∓ ε·sgn ∇ℓ(f_b(x′ₜ₋₁), y) − x))``
   with step ``ε = step_size`` (default ``Δ/6``): descending the cross-entropy towards ``y_L``,
   or ascending it away from the prediction. ``Π_Δ`` clips the perturbation to ``[−Δ, Δ]``;
   the clip to the image domain [0, 1] is ours (the paper's Eq. 3 and code omit it: their
   transformed images leave [0, 1]);
4. ``g(x) = x′_N``, classified by ``f_a``.

Paper defaults: ``Δ = 0.2``, 13 steps, step ``Δ/6``, random start on. ``f_b`` runs in eval mode
(BatchNorm running statistics, no dropout) and stays frozen; the per-example gradient is that of
the summed loss, so an example's transformation does not depend on its batch.

Gradients for attackers (traits: randomized when ``random_start``, **not differentiable**,
dynamic). ``g`` is built from ``sgn`` and clipping. Automatic differentiation of the exact
forward (an attack with ``bpda: false``) gives ``g``'s almost-everywhere Jacobian, which is the
identity except on pixels the [0, 1] clip holds: ``g(x) − x`` is piecewise constant in ``x``
(sgn has derivative 0 and the Δ-projection is relative to ``x``) — so "AD" coincides with BPDA-I
on F-MNIST's interior pixels and differs where the clip acts. Attacks go through BPDA
(:meth:`forward_bpda`) with the surrogate named by ``bpda``:

* ``"identity"`` — BPDA-I (Sec. 4.1): ``g`` replaced by the identity in the backward pass;
* ``"softsign"`` / ``"tanh"`` — the smooth BPDA of Fig. 5: every LL-PGD step is unrolled and
  differentiated (double backpropagation through ``f_b``), with ``sgn(v)`` differentiated as the
  soft sign ``v/(1+|v|)`` or as ``tanh(v)``, and the projection ``Π_Δ`` as Eq. 5: derivative 1
  inside the ball, ``1/(1+|d|)²`` at a perturbation ``d`` outside it (the [0, 1] clip likewise,
  at ``d`` the distance outside [0, 1]). ``bpda_temperature`` ``τ`` rescales the gradient
  fed to the smooth sign (``a(v/τ)``; 1.0 is the paper's; ``"auto"`` uses each example's mean
  ``|v|``, so that the surrogate is neither flat nor a step whatever the gradient's scale). The
  forward value is the exact ``g(x)`` (every operator is straight-through), from the same
  random start;
* ``"learned"`` — reparameterization (Sec. 3.3, Appendix A.2): a network ``h`` trained to imitate
  ``g`` (``surrogate_model``, a checkpoint path: an ``image_fcn`` trained by the recipe
  ``advt_imitate``), whose gradient stands in for ``g``'s (straight-through: the forward value
  stays the exact ``g(x)``).

Shapes: inputs and outputs (B, C, H, W) in [0, 1].

Example::

    advt = build_defense({"name": "advt", "f_b": "runs/advt/f_b/model.safetensors",
                          "delta": 0.2, "steps": 13}, f_a)
    logits = advt(x)                               # f_a(g(x))
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from advguard.defenses.base import Traits, Transform, chosen_surrogate
from advguard.defenses.registry import DEFENSES
from advguard.defenses.resources import load_checkpoint_part
from advguard.errors import ConfigError
from advguard.rng import rand_rows

__all__ = ["AdvTransform", "expected_distance", "ll_pgd", "smooth_clip", "smooth_sign"]

Targeting = Literal["least_likely", "untargeted"]
Surrogate = Literal["identity", "softsign", "tanh", "learned"]
SmoothKind = Literal["softsign", "tanh"]


class _SmoothSign(torch.autograd.Function):
    """``sgn(v)`` forward; backward the derivative of ``a(v/τ)``, ``a`` soft sign or tanh."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, tau: torch.Tensor, kind: str) -> torch.Tensor:
        ctx.save_for_backward(v, tau)
        ctx.kind = kind
        return torch.sign(v)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        v, tau = ctx.saved_tensors
        z = v / tau
        d = 1.0 / (1.0 + z.abs()) ** 2 if ctx.kind == "softsign" else 1.0 - torch.tanh(z) ** 2
        return grad * d / tau, None, None


class _SmoothClip(torch.autograd.Function):
    """``clamp(z, lo, hi)`` forward; backward 1 inside, ``1/(1+d)²`` at distance ``d`` outside
    (Eq. 5 of the AdvT paper for the projection onto the Δ-ball)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        out = torch.clamp(z, lo, hi)
        ctx.save_for_backward(z - out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (outside,) = ctx.saved_tensors
        return grad / (1.0 + outside.abs()) ** 2, None, None


def smooth_sign(v: torch.Tensor, kind: SmoothKind, tau: torch.Tensor | float = 1.0
                ) -> torch.Tensor:
    """``sgn(v)`` whose derivative is that of ``a(v/τ)`` (``a`` = ``v/(1+|v|)`` or ``tanh``)."""
    t = torch.as_tensor(tau, dtype=v.dtype, device=v.device)
    out: torch.Tensor = _SmoothSign.apply(v, t.expand_as(v) if t.dim() else t, kind)
    return out


def smooth_clip(z: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``clamp(z, lo, hi)`` with derivative 1 inside and ``1/(1+d)²`` at distance ``d`` outside."""
    out: torch.Tensor = _SmoothClip.apply(z, lo, hi)
    return out


def _target(f_b: nn.Module, x: torch.Tensor, targeting: Targeting) -> torch.Tensor:
    with torch.no_grad():
        logits = f_b(x.detach())
    return logits.argmin(1) if targeting == "least_likely" else logits.argmax(1)


def _clip(z: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return z.clamp(lo, hi)


def ll_pgd(f_b: nn.Module, x: torch.Tensor, *, delta: float, steps: int, step_size: float,
           start: torch.Tensor | None, targeting: Targeting = "least_likely",
           smooth: SmoothKind | None = None,
           temperature: float | Literal["auto"] = 1.0) -> torch.Tensor:
    """The adversarial transformation ``g(x)`` for a given random start (Eq. 3).

    ``start``: the initial perturbation ``δ`` (same shape as ``x``, in ``[−Δ, Δ]``) or None (no
    random start). Works under ``torch.no_grad()`` (values only). When the caller builds a graph
    through ``x``: with ``smooth`` None the result carries ``g``'s exact almost-everywhere
    gradient (``sgn`` has derivative 0, so only the projections and clips pass gradient: the
    "automatic differentiation" attack of Sec. 3.3); with ``smooth`` "softsign"/"tanh" the same
    values carry the smooth BPDA gradient of the module docstring (double backpropagation
    through ``f_b``). Nothing leaks into ``f_b``'s parameters.
    """
    sign = +1.0 if targeting == "untargeted" else -1.0
    y = _target(f_b, x, targeting)
    track = torch.is_grad_enabled() and x.requires_grad
    smooth_on = smooth is not None and track
    clip = smooth_clip if smooth_on else _clip
    base = x if track else x.detach()
    adv = base if start is None else clip(base + start.to(base), 0.0, 1.0)
    with torch.enable_grad():
        for _ in range(steps):
            xin = adv if smooth_on else adv.detach().requires_grad_(True)
            loss = F.cross_entropy(f_b(xin), y, reduction="sum")
            (v,) = torch.autograd.grad(loss, xin, create_graph=smooth_on)
            if smooth_on:
                assert smooth is not None
                tau: torch.Tensor | float = float(temperature) if temperature != "auto" else \
                    v.detach().abs().flatten(1).mean(1).clamp_min(1e-12).view(
                        -1, *([1] * (v.dim() - 1)))
                step = smooth_sign(v, smooth, tau)
            else:
                step = v.sign()
            d = clip(adv + sign * step_size * step - base, -delta, delta)
            adv = clip(base + d, 0.0, 1.0)
    return adv if track else adv.detach()


@DEFENSES.register("advt", kind="transform",
                   paper="Xiao & Zheng, CVPR 2020 (adversarial transformation on f_b)")
class AdvTransform(Transform):
    """The adversarial transformation ``g`` of AdvT (see the module docstring).

    Args (keyword-only): ``f_b`` (a checkpoint path or a module; loaded frozen, in eval mode,
    checked against the defended model), ``delta`` Δ (0.2), ``steps`` (13), ``step_size``
    (None: Δ/6), ``random_start`` (True), ``targeting`` ("least_likely" | "untargeted"),
    ``bpda`` ("identity" | "softsign" | "tanh" | "learned": the BPDA surrogate),
    ``bpda_temperature`` (1.0 | "auto"), ``surrogate_model`` (checkpoint of the imitation network
    ``h``: needed by ``bpda="learned"``; with another ``bpda`` it makes "learned" available to
    cascade steps that name it), ``model`` (the defended classifier the parts are checked against;
    a spec passes it), ``seed``.
    """

    per_example_noise = True  # every row draws its own random start (rng's draws protocol)

    def __init__(self, *, f_b: str | Path | nn.Module, delta: float = 0.2, steps: int = 13,
                 step_size: float | None = None, random_start: bool = True,
                 targeting: Targeting = "least_likely", bpda: Surrogate = "identity",
                 bpda_temperature: float | Literal["auto"] = 1.0,
                 surrogate_model: str | Path | nn.Module | None = None,
                 model: nn.Module | None = None, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if not 0 < float(delta) <= 1:
            raise ConfigError(f"delta must be in (0, 1] (pixel units of [0, 1]), got {delta}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be an int >= 1, got {steps!r}")
        if step_size is not None and not float(step_size) > 0:
            raise ConfigError(f"step_size must be > 0, got {step_size}")
        if targeting not in ("least_likely", "untargeted"):
            raise ConfigError(f"targeting must be 'least_likely' or 'untargeted', got "
                              f"{targeting!r}")
        if bpda not in ("identity", "softsign", "tanh", "learned"):
            raise ConfigError(f"bpda must be one of identity, softsign, tanh, learned, got "
                              f"{bpda!r}")
        if bpda_temperature != "auto" and not float(bpda_temperature) > 0:
            raise ConfigError(f"bpda_temperature must be > 0 or 'auto', got "
                              f"{bpda_temperature!r}")
        if bpda == "learned" and surrogate_model is None:
            raise ConfigError("bpda 'learned' needs a surrogate_model checkpoint (the imitation "
                              "network h)")
        self.f_b = load_checkpoint_part(f_b, like=model, role="f_b")
        self.h = None if surrogate_model is None else load_checkpoint_part(
            surrogate_model, like=model, role="surrogate_model", same_classes=False)
        _probe(self.f_b, self.h, model)
        self.delta = float(delta)
        self.steps = steps
        self.step_size = float(step_size) if step_size is not None else self.delta / 6
        self.random_start = bool(random_start)
        self.targeting: Targeting = targeting
        self.bpda: Surrogate = bpda
        self.bpda_temperature: float | Literal["auto"] = bpda_temperature \
            if bpda_temperature == "auto" else float(bpda_temperature)
        self.surrogate_model = str(surrogate_model) if isinstance(surrogate_model, (str, Path)) \
            else None
        self.traits = Traits(randomized=self.random_start, differentiable=False, dynamic=True)

    @classmethod
    def from_spec(cls, model: nn.Module, params: Mapping[str, Any]) -> AdvTransform:
        """Build from a spec, loading ``f_b`` (and ``surrogate_model``) against ``model``."""
        if "f_b" not in params:
            raise ConfigError("defense 'advt' needs 'f_b': the checkpoint of the pre-trained "
                              "transformation model (e.g. runs/scale_s/advt/f_b/model.safetensors)")
        return cls(**params, model=model)

    # ------------------------------------------------------------------ the transformation
    def start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """The random start ``δ`` (uniform in [−Δ, Δ], one draw per row) or None."""
        if not self.random_start:
            return None
        u = rand_rows(x, generator=generator, stream="start", module=self)
        return (2 * u - 1) * self.delta

    def apply_start(self, x: torch.Tensor, start: torch.Tensor | None, *,
                    smooth: SmoothKind | None = None) -> torch.Tensor:
        """``g(x)`` from a given random start (exact, or with smooth BPDA gradients)."""
        return ll_pgd(self.f_b, x, delta=self.delta, steps=self.steps,
                      step_size=self.step_size, start=start, targeting=self.targeting,
                      smooth=smooth, temperature=self.bpda_temperature)

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply_start(x, self.start(x, generator))

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The imitation network ``h(x)`` when one is loaded, else the identity."""
        if self.h is not None:
            out: torch.Tensor = self.h(x)
            return out
        return x

    @property
    def surrogates(self) -> tuple[str, ...]:  # type: ignore[override]
        """The BPDA surrogates a cascade step may name: identity, softsign, tanh (and learned
        when an imitation network is loaded)."""
        return ("identity", "softsign", "tanh") + (("learned",) if self.h is not None else ())

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        """The exact ``g(x)`` as value; the gradient of the surrogate :attr:`bpda` (or the one a
        cascade step names, :func:`~advguard.defenses.base.surrogate_choice`)."""
        kind = chosen_surrogate(self.bpda)
        if kind in ("softsign", "tanh"):
            smooth: SmoothKind = "softsign" if kind == "softsign" else "tanh"
            return self.apply_start(x, self.start(x, self.generator(x.device)), smooth=smooth)
        approx = self.surrogate(x) if kind == "learned" else x
        with torch.no_grad():
            exact = self.forward(x)
        return approx + (exact - approx).detach()

    def expected(self, x: torch.Tensor, samples: int, *, generator: torch.Generator,
                 chunk: int = 64) -> torch.Tensor:
        """Monte-Carlo estimate of ``E g(x)`` over ``samples`` random starts (Table 1, Fig. 4)."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        total = torch.zeros_like(x)
        done = 0
        while done < samples:
            k = min(chunk, samples - done)
            xs = x.detach().repeat(k, *([1] * (x.dim() - 1)))
            out = self.transform(xs, generator)
            total += out.view(k, *x.shape).sum(0)
            done += k
        return total / samples

    def extra_repr(self) -> str:
        return (f"delta={self.delta}, steps={self.steps}, step_size={self.step_size:.4g}, "
                f"random_start={self.random_start}, targeting={self.targeting!r}, "
                f"bpda={self.bpda!r}")


def _probe(f_b: nn.Module, h: nn.Module | None, model: nn.Module | None) -> None:
    """One forward of a blank image through ``f_b`` (and ``h``) when the input shape is known:
    ``f_b`` must give one score per class, ``h`` an image of the input's shape — a checkpoint of
    the wrong kind is refused here, not as a shape error in the middle of an evaluation."""
    from advguard.defenses.resources import input_facts

    facts = input_facts(model) if model is not None else input_facts(f_b)
    if facts.channels is None or facts.size is None:
        return
    try:
        param = next(f_b.parameters())
    except StopIteration:
        return
    x = torch.zeros(1, facts.channels, facts.size, facts.size, device=param.device,
                    dtype=param.dtype)
    with torch.no_grad():
        out = f_b(x)
        if out.dim() != 2 or (facts.num_classes is not None and out.shape[1] != facts.num_classes):
            raise ConfigError(f"f_b must be a classifier giving one score per class; it maps a "
                              f"{tuple(x.shape[1:])} image to shape {tuple(out.shape[1:])}")
        if h is not None and tuple(h(x).shape) != tuple(x.shape):
            raise ConfigError(f"surrogate_model must map images to images of the same shape; it "
                              f"maps {tuple(x.shape[1:])} to {tuple(h(x).shape[1:])}")


def expected_distance(transform: AdvTransform, x: torch.Tensor, samples: int, *,
                      generator: torch.Generator, batch: int = 50,
                      progress: bool = False) -> torch.Tensor:
    """``‖x − E g(x)‖∞`` per example (AdvT's Table 1, third row; Fig. 4): how far the expected
    transformation lies from the input, ``E g`` estimated over ``samples`` random starts.
    Returns a (N,) tensor; ``batch`` examples are transformed at a time (each ``samples``
    times, in chunks of 64 copies); ``progress`` shows a bar over the examples."""
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=x.shape[0], desc="E g(x)", unit="img", disable=not progress) as bar:
        for i in range(0, x.shape[0], batch):
            xb = x[i:i + batch]
            mean = transform.expected(xb, samples, generator=generator)
            out.append((mean - xb).flatten(1).abs().amax(1))
            bar.update(xb.shape[0])
    return torch.cat(out)
