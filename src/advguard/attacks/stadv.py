"""Spatially transformed adversarial examples (Xiao, Zhu, Li, He, Liu, Song, "Spatially
Transformed Adversarial Examples", ICLR 2018): instead of adding a perturbation, move every pixel
by a small, smooth flow field and resample the image bilinearly.

Its threat model, :class:`FlowThreat`, is not an ε-ball: a result is the bilinear warp of ``x``
by a flow field whose displacements are bounded (``max_flow`` pixels per component) and, if asked,
whose smoothness loss is bounded too. The flow is the evidence: every result is verified by
recomputing ``warp(x, flow)`` and checking the flow's bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks.base import ATTACKS, TOLERANCE, Attack, Evidenced, Threat
from advguard.attacks.losses import get_loss
from advguard.errors import AttackVerificationError, ConfigError

#: how far ``x_adv`` may be from ``warp(x, flow)`` (float error of a recomputed warp)
WARP_TOLERANCE = 1e-5


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear warp: ``out[n, :, i, j] = x[n, :, i + v, j + u]``, ``(u, v) = flow[n, :, i, j]``.

    ``x``: (N,C,H,W); ``flow``: (N,2,H,W) in pixels, channel 0 the horizontal displacement ``u``
    (columns, + is right), channel 1 the vertical ``v`` (rows, + is down) of the point each output
    pixel is sampled from. Positions outside the image take the nearest border pixel, so every
    output value is a convex combination of input values (a warp of an image in [0, 1] stays in
    [0, 1]). A zero flow is the identity; a constant integer flow shifts the image by whole pixels.
    Differentiable in ``x`` and ``flow`` (``grid_sample``, ``align_corners=True``: pixel ``k``
    sits at normalized coordinate ``2k/(size−1) − 1``).

    Example::

        flow = torch.zeros(len(x), 2, *x.shape[-2:])
        flow[:, 0] = 1.0                        # sample each pixel from its right neighbour
        shifted = warp(x, flow)                 # shifted[..., :-1] == x[..., 1:]: one pixel left
    """
    n, _, h, w = x.shape
    if flow.shape != (n, 2, h, w):
        raise ValueError(f"flow must have shape {(n, 2, h, w)}, got {tuple(flow.shape)}")
    flow = flow.to(x.dtype)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    gx = 2 * (cols + flow[:, 0]) / max(w - 1, 1) - 1
    gy = 2 * (rows + flow[:, 1]) / max(h - 1, 1) - 1
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def flow_loss(flow: torch.Tensor, *, eps: float = 0.0) -> torch.Tensor:
    """The stAdv smoothness loss per example, shape (N,):
    ``L_flow(f) = Σ_p Σ_{q ∈ N(p)} sqrt(‖u_p − u_q‖² + ‖v_p − v_q‖² + eps)`` over every pixel ``p``
    and its (up to 4) neighbours ``q`` inside the image — each neighbouring pair counted from both
    sides, as the paper's double sum does. ``eps > 0`` makes it differentiable at a constant flow
    (the attack's objective uses 1e-8); the threat model measures with ``eps = 0``, where
    ``L_flow(s·f) = s·L_flow(f)``.

    Example::

        flow_loss(torch.zeros(1, 2, 28, 28))   # tensor([0.])
    """
    dh = flow[..., :, 1:] - flow[..., :, :-1]
    dv = flow[..., 1:, :] - flow[..., :-1, :]
    horizontal = (dh.pow(2).sum(1) + eps).sqrt().flatten(1).sum(1)
    vertical = (dv.pow(2).sum(1) + eps).sqrt().flatten(1).sum(1)
    return 2 * (horizontal + vertical)


@dataclass(frozen=True)
class FlowThreat(Threat):
    """Spatial transformations: ``x_adv = warp(x, flow)`` (:func:`warp`) for a flow field with
    ``max |flow| ≤ max_flow`` pixels (each component, each pixel) and, when ``max_flow_loss`` is
    set, ``flow_loss(flow) ≤ max_flow_loss`` (:func:`flow_loss` with eps = 0). The flow
    (N,2,H,W) is the evidence: :meth:`check` recomputes the warp (tolerance 1e-5) and the bounds
    (tolerance 1e-6 plus a relative 1e-5).

    Example::

        threat = FlowThreat(max_flow=1.0)
        threat.verify(warp(x, flow), x, evidence={"flow": flow})
    """

    max_flow: float = 1.0
    max_flow_loss: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    evidence: ClassVar[tuple[str, ...]] = ("flow",)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_flow) and self.max_flow >= 0):
            raise ConfigError(f"max_flow must be a finite number of pixels >= 0, got "
                              f"{self.max_flow!r}")
        if self.max_flow_loss is not None and not (math.isfinite(self.max_flow_loss)
                                                   and self.max_flow_loss >= 0):
            raise ConfigError(f"max_flow_loss must be a finite number >= 0 or None, got "
                              f"{self.max_flow_loss!r}")
        lo, hi = self.bounds
        if not lo < hi:
            raise ConfigError(f"bounds must satisfy low < high, got {self.bounds}")

    def limit(self, flow: torch.Tensor) -> torch.Tensor:
        """``flow`` clipped to ``±max_flow`` and then scaled down (per example) to
        ``max_flow_loss``: a flow inside this threat model. The scale is computed without
        gradient, so gradients flow through as through a fixed scaling."""
        flow = flow.clamp(-self.max_flow, self.max_flow)
        if self.max_flow_loss is None:
            return flow
        with torch.no_grad():
            scale = (self.max_flow_loss / flow_loss(flow.double()).clamp_min(1e-30)).clamp(max=1)
            scale = scale * (1 - 1e-6)  # stay strictly inside after float error
        return flow * scale.to(flow.dtype).view(-1, 1, 1, 1)

    def check(self, x_adv: torch.Tensor, x: torch.Tensor, evidence: Mapping[str, torch.Tensor],
              *, who: str) -> None:
        flow = evidence["flow"]
        expected = (x.shape[0], 2, *x.shape[-2:])
        if tuple(flow.shape) != expected:
            raise AttackVerificationError(
                f"{who}: flow must have shape {expected}, got {tuple(flow.shape)}")
        if not x.shape[0]:
            return
        largest = float(flow.abs().max())
        if largest > self.max_flow * (1 + 1e-5) + TOLERANCE:
            raise AttackVerificationError(
                f"{who} left its flow bound: a displacement of {largest:.6g} pixels > max_flow "
                f"{self.max_flow:g}")
        if self.max_flow_loss is not None:
            smooth = float(flow_loss(flow.double()).max())
            if smooth > self.max_flow_loss * (1 + 1e-5) + TOLERANCE:
                raise AttackVerificationError(
                    f"{who} left its flow bound: flow loss {smooth:.6g} > max_flow_loss "
                    f"{self.max_flow_loss:g}")
        gap = float((warp(x, flow) - x_adv).abs().max())
        if gap > WARP_TOLERANCE:
            raise AttackVerificationError(
                f"{who} returned an input that is not the warp of x by its flow "
                f"(max difference {gap:.3g} > {WARP_TOLERANCE:g})")

    def unperturbed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"flow": x.new_zeros(x.shape[0], 2, *x.shape[-2:])}


@ATTACKS.register("stadv", source="advguard", kind="gradient", norms=(), threat="flow",
                  paper="Xiao et al., ICLR 2018")
@dataclass(frozen=True, kw_only=True)
class StAdv(Attack):
    """stAdv: find a flow field ``f`` whose warp of ``x`` fools the model.

    Minimizes, per example, ``L_adv(f) + tau · L_flow(f)`` over ``f`` (N,2,H,W) with
    ``x_adv = warp(x, f)`` (:func:`warp`, bilinear), where
    ``L_adv = max(z_y − max_{j≠y} z_j, −kappa)`` untargeted or
    ``max(max_{j≠t} z_j − z_t, −kappa)`` targeted (the C&W margin on logits ``z``) and
    ``L_flow`` is the paper's smoothness loss (:func:`flow_loss`, eps = 1e-8). The flow is kept
    inside :class:`FlowThreat` throughout: it is parametrized as ``max_flow·tanh(w / max_flow)``
    (≈ ``w`` for small flows, so ``lr`` is in pixels) and scaled down to ``max_flow_loss`` when
    that is set. Per example the result is the fooling iterate with the smallest flow loss, or
    the last iterate if none fooled the model.

    Optimizer (``optimizer``): ``"adam"`` (default; ``steps`` Adam steps of rate ``lr``; each
    example's optimization is independent of the rest of the batch) or ``"lbfgs"`` (the paper's
    L-BFGS, ``torch.optim.LBFGS`` with a strong-Wolfe line search, at most ``steps`` iterations;
    one quasi-Newton run on the objective summed over the batch, so results depend on the batch
    they are computed in). ``tau``: the paper's 0.05 by default. With ``search_steps > 1`` the
    optimization restarts from the zero flow that many times, with a per-example binary search
    over ``tau`` (fooled: a larger ``tau``, a smoother flow; not fooled: a smaller one, ×10 up
    until the first failure), C&W-style, as advertorch's implementation the ADD-Defense paper
    ran does on the weight of ``L_adv`` (it used 20 search steps of up to 5000 iterations). A
    single fixed ``tau = 0.05`` is weak on models with small logit margins: search, or lower it.

    Args: ``steps`` (100), ``lr`` (0.05, Adam's rate, ≈ pixels per step for small flows),
    ``tau`` (0.05), ``kappa`` (0: the margin to reach), ``max_flow`` (1.0 pixel),
    ``max_flow_loss`` (None), ``optimizer`` ("adam" | "lbfgs"), ``search_steps`` (1).

    Threat model: :class:`FlowThreat` (``max_flow`` pixels, default 1; optional
    ``max_flow_loss``), not an ε-ball: ``eps`` and ``norm`` do not apply and must be left at their
    defaults; the flow comes back, verified, in ``result.evidence["flow"]``. Targeted or not
    (``target=``). Inputs (N,C,H,W) in [0, 1]; queries: one forward and backward per step and
    search step, plus one per search step (L-BFGS: per function evaluation, up to 1.25 per
    iteration).

    Example::

        result = StAdv(steps=100, tau=0.05, max_flow=1.0)(model, x, y)
        result = StAdv(steps=50, search_steps=5)(model, x, y, target="least_likely")
        result.evidence["flow"]          # (N, 2, H, W), in pixels, verified
    """

    name = "stadv"
    eps: float = 0.0
    steps: int = 100
    lr: float = 0.05
    tau: float = 0.05
    kappa: float = 0.0
    max_flow: float = 1.0
    max_flow_loss: float | None = None
    optimizer: Literal["adam", "lbfgs"] = "adam"
    search_steps: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps != 0 or self.norm != "linf":
            raise ConfigError(
                "stadv's threat model is a flow field (max_flow pixels, max_flow_loss), not an "
                f"ε-ball: leave eps and norm unset (got eps={self.eps!r}, norm={self.norm!r})")
        if self.steps < 1 or self.search_steps < 1:
            raise ConfigError(f"stadv needs steps >= 1 and search_steps >= 1, got "
                              f"steps={self.steps}, search_steps={self.search_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"stadv needs a finite lr > 0, got {self.lr!r}")
        if not (self.tau >= 0 and math.isfinite(self.tau)):
            raise ConfigError(f"stadv needs a finite tau >= 0, got {self.tau!r}")
        if not (self.kappa >= 0 and math.isfinite(self.kappa)):
            raise ConfigError(f"stadv needs a finite kappa >= 0, got {self.kappa!r}")
        if self.max_flow <= 0:
            raise ConfigError(f"stadv needs max_flow > 0 pixels, got {self.max_flow!r}")
        FlowThreat(max_flow=self.max_flow, max_flow_loss=self.max_flow_loss)  # validates them

    @property
    def threat(self) -> FlowThreat:
        return FlowThreat(max_flow=self.max_flow, max_flow_loss=self.max_flow_loss)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return self.perturb_evidenced(model, x, y, target=target, generator=generator).adv

    def _optimize(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  target: torch.Tensor | None, tau: torch.Tensor, best: torch.Tensor,
                  best_smooth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimization from the zero flow with per-example weights ``tau`` (N,); updates
        ``best``/``best_smooth`` (the fooling flow with the smallest flow loss) in place and
        returns ``(fooled at some iterate, last flow)``."""
        threat, margin = self.threat, get_loss("cw")
        w = torch.zeros(x.shape[0], 2, *x.shape[-2:], device=x.device, dtype=x.dtype,
                        requires_grad=True)
        fooled_any = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        last = w.detach().clone()

        def objective() -> torch.Tensor:
            nonlocal last, fooled_any
            flow = threat.limit(self.max_flow * torch.tanh(w / self.max_flow))
            logits = model(warp(x, flow))
            adv_loss = (-margin(logits, y, target)).clamp_min(-self.kappa)
            value = adv_loss + tau * flow_loss(flow, eps=1e-8).float()
            with torch.no_grad():
                pred = logits.argmax(1)
                fooled = pred != y if target is None else pred == target
                smooth = flow_loss(flow.detach().double())
                better = fooled & (smooth < best_smooth)
                best[better] = flow.detach()[better]
                best_smooth[better] = smooth[better]
                fooled_any = fooled_any | fooled
                last = flow.detach()
            return value.sum()

        with torch.enable_grad():
            if self.optimizer == "adam":
                adam = torch.optim.Adam([w], lr=self.lr)
                for _ in range(self.steps):
                    adam.zero_grad(set_to_none=True)
                    objective().backward()
                    adam.step()
            else:
                lbfgs = torch.optim.LBFGS([w], lr=1.0, max_iter=self.steps,
                                          line_search_fn="strong_wolfe")

                def closure() -> torch.Tensor:
                    lbfgs.zero_grad(set_to_none=True)
                    value = objective()
                    value.backward()
                    return value

                lbfgs.step(closure)
        with torch.no_grad():
            objective()  # the final iterate is a candidate too
        return fooled_any, last

    def perturb_evidenced(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          target: torch.Tensor | None, generator: torch.Generator
                          ) -> Evidenced:
        x = x.detach()
        n = x.shape[0]
        best = x.new_zeros(n, 2, *x.shape[-2:])
        best_smooth = torch.full((n,), math.inf, device=x.device, dtype=torch.float64)
        tau = torch.full((n,), self.tau, device=x.device)
        low, high = torch.zeros_like(tau), torch.full_like(tau, math.inf)
        last = best
        for _ in range(self.search_steps):
            fooled, last = self._optimize(model, x, y, target, tau, best, best_smooth)
            # fooled: try a smoother flow (larger tau); not fooled: a weaker smoothness weight
            low = torch.where(fooled, tau, low)
            high = torch.where(fooled, high, tau)
            tau = torch.where(torch.isfinite(high), (low + high) / 2, tau * 10)
        found = torch.isfinite(best_smooth).view(-1, 1, 1, 1)
        flow = torch.where(found, best, last)
        with torch.no_grad():
            adv = warp(x, flow)
        return Evidenced(adv, {"flow": flow})
