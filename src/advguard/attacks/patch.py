"""A masked ("sticker") attack in the spirit of RP2 (Eykholt, Evtimov, Fernandes, Li, Rahmati,
Xiao, Prakash, Kohno, Song, "Robust Physical-World Attacks on Deep Learning Visual
Classification", CVPR 2018), as the ADD-Defense paper uses it (its Eq. 14): the perturbation lives
only on a mask ``M``, its magnitude there is unbounded (pixel bounds only), and it is optimized
over a distribution of transformations (here: small random translations).

The paper attacks road signs of the LISA dataset with five hand-drawn masks; LISA is not available
in advguard, so masks are rectangles or ellipses placed on the image (:data:`MASK_SHAPES`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from advguard.attacks.base import ATTACKS, Attack, Norm, ThreatModel
from advguard.attacks.losses import get_loss
from advguard.attacks.pgd import ascent_step, random_start
from advguard.attacks.stadv import warp
from advguard.attacks.wrappers import per_example_loss
from advguard.errors import AttackVerificationError, ConfigError, UnknownNameError
from advguard.registry import Registry
from advguard.rng import rand_rows

Region = tuple[int, int, int, int]
#: ``shape(height, width, device) -> (height, width) bool``: which pixels of the region's box the
#: sticker covers
MASK_SHAPES: Registry[Callable[[int, int, torch.device], torch.Tensor]] = Registry("mask shape")


@MASK_SHAPES.register("rectangle")
def rectangle(height: int, width: int, device: torch.device) -> torch.Tensor:
    """The whole box."""
    return torch.ones(height, width, dtype=torch.bool, device=device)


@MASK_SHAPES.register("ellipse")
def ellipse(height: int, width: int, device: torch.device) -> torch.Tensor:
    """The ellipse inscribed in the box (pixel centres inside it; a disc in a square box)."""
    i = (torch.arange(height, device=device, dtype=torch.float64) + 0.5) / height - 0.5
    j = (torch.arange(width, device=device, dtype=torch.float64) + 0.5) / width - 0.5
    return (i[:, None] ** 2 + j[None, :] ** 2) <= 0.25


def default_region(height: int, width: int) -> Region:
    """A centred square of side ``⌈min(H, W)/4⌉`` (7×7 at (10, 10) on a 28×28 image)."""
    side = max(1, math.ceil(min(height, width) / 4))
    return ((height - side) // 2, (width - side) // 2, side, side)


@dataclass(frozen=True)
class PatchThreat(ThreatModel):
    """The ε-ball of :class:`ThreatModel` restricted to a mask: ``x_adv`` equals ``x`` exactly
    outside the mask, ``‖x_adv − x‖_norm ≤ eps`` (default L∞ with eps = 1: no limit inside the mask
    but the bounds) and ``x_adv`` stays inside ``bounds``.

    The mask: ``shape`` (a :data:`MASK_SHAPES` name: "rectangle" or "ellipse") drawn in the box
    ``region = (top, left, height, width)`` in pixels, or in :func:`default_region` (a centred
    square) when ``region`` is None; the same for every image and channel.

    Example::

        threat = PatchThreat(region=(2, 2, 8, 8))
        threat.mask(x)                     # (1, 1, H, W) bool
        threat.verify(x_adv, x)            # raises if a pixel outside the box changed
    """

    norm: Norm = "linf"
    eps: float = 1.0
    bounds: tuple[float, float] = (0.0, 1.0)
    region: Region | None = None
    shape: str = "rectangle"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.region is not None:
            if len(self.region) != 4 or not all(isinstance(v, int) for v in self.region):
                raise ConfigError(f"region must be 4 ints (top, left, height, width), got "
                                  f"{self.region!r}")
            top, left, height, width = self.region
            if top < 0 or left < 0 or height < 1 or width < 1:
                raise ConfigError(f"region (top, left, height, width) needs top, left >= 0 and "
                                  f"height, width >= 1, got {self.region!r}")
        try:
            MASK_SHAPES.get(self.shape)
        except UnknownNameError as exc:
            raise ConfigError(str(exc)) from None

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The mask for images shaped like ``x`` (N,C,H,W): (1, 1, H, W) bool on ``x``'s device.
        A region that does not fit the image raises :class:`ConfigError`."""
        h, w = x.shape[-2:]
        top, left, height, width = self.region if self.region is not None \
            else default_region(h, w)
        if top + height > h or left + width > w:
            raise ConfigError(f"the patch region (top, left, height, width) = "
                              f"{(top, left, height, width)} does not fit a {h}×{w} image")
        out = torch.zeros(h, w, dtype=torch.bool, device=x.device)
        out[top:top + height, left:left + width] = MASK_SHAPES.get(self.shape)(
            height, width, x.device)
        return out.view(1, 1, h, w)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Zero the change outside the mask, then project as :class:`ThreatModel` (which keeps
        the zeros: it clamps or scales the change and clips ``x`` itself unchanged)."""
        return super().project(torch.where(self.mask(x), x_adv, x), x)

    def check(self, x_adv: torch.Tensor, x: torch.Tensor, evidence: Mapping[str, torch.Tensor],
              *, who: str) -> None:
        super().check(x_adv, x, evidence, who=who)
        outside = (x_adv != x) & ~self.mask(x)
        if bool(outside.any()):
            changed = int(outside.flatten(1).any(1).sum())
            raise AttackVerificationError(
                f"{who} changed pixels outside its patch mask ({changed} of {x.shape[0]} "
                f"examples; {int(outside.sum())} values)")


@ATTACKS.register("patch", source="advguard", kind="gradient", norms=("linf", "l2"),
                  threat="patch", paper="Eykholt et al., CVPR 2018 (RP2); ADD-Defense Eq. 14")
@dataclass(frozen=True, kw_only=True)
class Patch(Attack):
    """A masked attack (RP2-style sticker): gradient ascent on the pixels of a mask ``M`` only.

    Maximizes, per example, ``E_T[J(f(T(x + M·δ)), y)] − lam·‖M·δ‖_reg_norm`` over ``δ`` (the
    ADD-Defense paper's Eq. 14, an ascent on the loss ``J`` instead of a descent on the loss of
    a target ``y*``): ``steps`` signed-gradient steps of size ``alpha`` (L2: normalized gradient
    steps) on the masked pixels, each followed by projection onto :class:`PatchThreat`. ``T``:
    the identity, or, with ``max_shift > 0``, an average over ``eot`` random translations by
    whole pixels in ``[−max_shift, max_shift]²`` per example and step (:func:`~advguard.attacks.
    stadv.warp`, border pixels replicated) — RP2's expectation over physical conditions,
    reduced to small shifts. Returns the last iterate. Targeted (towards labels,
    ``"least_likely"``, ``"random"``) when called with ``target=``.

    Threat model: :class:`PatchThreat` — ``x_adv == x`` exactly outside the mask, inside the
    bounds, and ``‖x_adv − x‖_norm ≤ eps`` (default ``norm="linf", eps=1.0``: no limit inside
    the mask but [0, 1]; RP2's magnitude is unbounded). Every result is verified against it.

    The paper's RP2 runs on LISA road signs with hand-drawn sticker masks; LISA is not available
    here, and the mask is a rectangle or an inscribed ellipse (``shape``) in the box ``region =
    (top, left, height, width)`` (None: a centred square of side ⌈min(H, W)/4⌉). Each example gets
    its own perturbation (RP2 fits one sticker to many photos of one sign).

    Args: ``eps`` (1.0), ``norm`` ("linf" | "l2"); ``region`` (None); ``shape`` ("rectangle" |
    "ellipse"); ``steps`` (100); ``alpha`` (None: ``2.5·eps/steps``); ``loss`` ("ce" | "cw" |
    ...); ``lam`` (0: no regularizer); ``reg_norm`` ("l1" | "l2"); ``eot`` (1 translation per
    step); ``max_shift`` (0 pixels: no translation); ``random_start`` (True: uniform inside the
    mask's ball). Queries per example: ``steps·eot`` gradient calls.

    Example::

        result = Patch(region=(4, 4, 10, 10), steps=50)(model, x, y)
        result = Patch(shape="ellipse", eot=4, max_shift=2)(model, x, y, target="random")
    """

    name = "patch"
    eps: float = 1.0
    region: Region | None = None
    shape: str = "rectangle"
    steps: int = 100
    alpha: float | None = None
    loss: str = "ce"
    lam: float = 0.0
    reg_norm: Literal["l1", "l2"] = "l2"
    eot: int = 1
    max_shift: int = 0
    random_start: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.region, list):  # from a config file
            object.__setattr__(self, "region", tuple(self.region))
        super().__post_init__()
        if self.steps < 0:
            raise ConfigError(f"patch needs steps >= 0, got {self.steps}")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"patch needs a finite alpha > 0 (or None), got {self.alpha!r}")
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            raise ConfigError(f"patch needs a finite lam >= 0, got {self.lam!r}")
        if self.eot < 1 or self.max_shift < 0:
            raise ConfigError(f"patch needs eot >= 1 and max_shift >= 0 pixels, got "
                              f"eot={self.eot}, max_shift={self.max_shift}")
        get_loss(self.loss)
        PatchThreat(self.norm, self.eps, region=self.region, shape=self.shape)  # validates them

    @property
    def threat(self) -> PatchThreat:
        return PatchThreat(self.norm, self.eps, region=self.region, shape=self.shape)

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2.5 * self.eps / max(1, self.steps)

    def _shifts(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(eot, N, 2, 1, 1) whole-pixel translations in ``[−max_shift, max_shift]``."""
        u = rand_rows(x, (self.eot, 2), generator=generator, stream="patch/shift",
                      dtype=torch.float64)
        span = 2 * self.max_shift + 1
        s = (u * span).floor().clamp_max(span - 1) - self.max_shift
        return s.to(x.dtype).permute(1, 0, 2)[..., None, None]

    def _objective(self, model: nn.Module, adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   target: torch.Tensor | None, mask: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        loss = get_loss(self.loss)
        if self.max_shift == 0:
            value = per_example_loss(model, adv, y, target, loss)
        else:
            h, w = x.shape[-2:]
            value = x.new_zeros(x.shape[0], dtype=torch.float32)
            for shift in self._shifts(x, generator):
                moved = warp(adv, shift.expand(-1, 2, h, w))
                value = value + per_example_loss(model, moved, y, target, loss) / self.eot
        if self.lam:
            delta = ((adv - x) * mask).flatten(1)
            size = delta.abs().sum(1) if self.reg_norm == "l1" \
                else (delta.pow(2).sum(1) + 1e-12).sqrt()
            value = value - self.lam * size
        return value

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        threat = self.threat
        mask = threat.mask(x)
        x = x.detach()
        adv = threat.project(random_start(x, self.norm, self.eps, generator,
                                          stream="patch/start"), x) \
            if self.random_start else x.clone()
        for _ in range(self.steps):
            current = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                value = self._objective(model, current, x, y, target, mask, generator)
                (grad,) = torch.autograd.grad(value.sum(), current)
            step = ascent_step(adv, grad * mask, self.norm, self.step_size)
            adv = threat.project(step, x).detach()
        return adv
