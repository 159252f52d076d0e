"""Randomized input transforms used as inference-time defenses (and as the CAP paper's
baselines): Xie et al.'s random resize (or crop) + random zero padding, Guo et al.'s random crop +
rescale, and random rotation. Gaussian noise lives in :mod:`advguard.defenses.reference`.

All are :class:`~advguard.defenses.base.Transform` s: images (B, C, H, W) in [0, 1] → images of
the same shape in [0, 1]. Every example draws its own random parameters (so the repeated copies
of :class:`~advguard.defenses.base.Averaged` and of EOT are independent draws), only from the
transform's generator. Given the draw, each is a linear map of the pixels, so they are declared
randomized and differentiable (EOT, no BPDA). Each splits into :meth:`sample` (the random
parameters) and :meth:`apply_draw` (the deterministic map), so a draw can be inspected and replayed.

Sizes are in pixels of the input. The CAP paper's settings for 32×32 CIFAR inputs (its Tables
5–6) are crop sizes [22, 30], [24, 32] and [26, 32]; for 28×28 inputs the advguard configs scale
them by 28/32 ([19, 26], [21, 28], [23, 28]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from advguard.defenses.base import Traits, Transform
from advguard.defenses.registry import DEFENSES
from advguard.rng import rand_rows

__all__ = ["CropParams", "GuoCropRescale", "RandomRotation", "XiePadding", "resolve_sizes"]

Interpolation = Literal["nearest", "bilinear"]


@dataclass(frozen=True)
class CropParams:
    """Per-example draws (each int64 (B,)): square ``size``, source offsets ``top``/``left`` (of
    a crop; zero for a resize) and, for padding, destination offsets ``pad_top``/``pad_left``."""

    size: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    pad_top: torch.Tensor
    pad_left: torch.Tensor


_ANY_SIDE = 1 << 30  # checks a size range without an input side (the side is checked per call)


def resolve_sizes(size: tuple[int, int] | list[int] | None, side: int,
                  default: tuple[float, float]) -> tuple[int, int]:
    """The inclusive size range ``[lo, hi]`` in pixels for an input of ``side`` pixels: ``size``
    as given (validated), or ``default`` fractions of ``side`` rounded."""
    if size is None:
        lo, hi = (round(f * side) for f in default)
    else:
        if len(size) != 2:
            raise ValueError(f"size must be [low, high], got {size!r}")
        lo, hi = int(size[0]), int(size[1])
    if not 1 <= lo <= hi <= side:
        bound = "" if side == _ANY_SIDE else f" <= {side} (the input side)"
        raise ValueError(f"size range [{lo}, {hi}] must satisfy 1 <= low <= high{bound}")
    return lo, hi


def _randint(low: torch.Tensor | int, high: torch.Tensor, generator: torch.Generator,
             u: torch.Tensor | None = None) -> torch.Tensor:
    """Per-element uniform integers in ``[low, high]`` (inclusive), int64; from ``u`` (uniforms
    in [0, 1) of ``high``'s shape) when given, else drawn from ``generator``."""
    if u is None:
        u = torch.rand(high.shape, generator=generator, device=generator.device)
    u = u.to(high.device)
    span = (high - low + 1).to(torch.float64)
    return (low + (u.double() * span).floor().long().clamp_max(high - low)).long()


def _interp_matrix(coord: torch.Tensor, n: int) -> torch.Tensor:
    """Linear-interpolation weights (B, M, n) reading fractional source coordinates ``coord``
    (B, M), each in [0, n − 1]: row ``i`` holds ``1 − t`` at ``⌊c_i⌋`` and ``t`` at
    ``⌊c_i⌋ + 1``."""
    low = coord.floor().clamp(0, n - 1)
    frac = (coord - low)[..., None]
    high = (low + 1).clamp_max(n - 1)
    weights = torch.zeros((*coord.shape, n), device=coord.device, dtype=coord.dtype)
    weights.scatter_add_(-1, low.long()[..., None], 1 - frac)
    return weights.scatter_add_(-1, high.long()[..., None], frac)


def _shift(canvas: torch.Tensor, size: torch.Tensor, src_top: torch.Tensor,
           src_left: torch.Tensor, dst_top: torch.Tensor, dst_left: torch.Tensor
           ) -> torch.Tensor:
    """Zeros everywhere except the ``size``×``size`` square of ``canvas`` at (src_top, src_left),
    moved to (dst_top, dst_left): a per-example gather, differentiable in the pixels."""
    B, C, H, W = canvas.shape
    dev = canvas.device
    r = torch.arange(H, device=dev)[None, :] - dst_top[:, None]             # (B, H)
    c = torch.arange(W, device=dev)[None, :] - dst_left[:, None]            # (B, W)
    valid = ((r >= 0) & (r < size[:, None]))[:, :, None] & \
        ((c >= 0) & (c < size[:, None]))[:, None, :]                        # (B, H, W)
    src_r = (src_top[:, None] + r).clamp(0, H - 1)
    src_c = (src_left[:, None] + c).clamp(0, W - 1)
    index = (src_r[:, :, None] * W + src_c[:, None, :]).view(B, 1, H * W).expand(B, C, H * W)
    out = canvas.flatten(2).gather(2, index).view(B, C, H, W)
    return out * valid[:, None].to(out.dtype)


@DEFENSES.register("xie", kind="transform",
                   paper="Xie, Wang, Zhang, Ren, Yuille, ICLR 2018 (random resizing and padding)")
class XiePadding(Transform):
    """Random resizing (or cropping) to ``s × s`` then random zero padding back to the input size.

    Paper: Xie et al., "Mitigating adversarial effects through randomization", ICLR 2018 — there
    the input is enlarged (299 → [299, 331)) and padded to 331; here the classifier's input size
    is kept, so the image is shrunk to ``s ≤ H`` and zero-padded back to ``H × W`` at a random
    offset. ``mode``:

    * ``"resize"`` (default, Xie et al.): the whole image is resized to ``s × s``
      (``interpolation`` "nearest" as in Xie et al.'s code, or "bilinear");
    * ``"crop"`` (the variant in Pang et al.'s MI-OL code, which the CAP paper follows — its
      Tables 5–6 give a "random crop size" for Xie): a random ``s × s`` crop, zero-padded.

    Args: ``size`` [low, high] inclusive, in pixels (default: 22/32 to 30/32 of the input side,
    the CAP paper's CIFAR-10 range), ``mode``, ``interpolation``, ``seed``.

    Example::

        defense = Averaged(Pipeline([XiePadding(size=(19, 26), mode="crop")], model), n=50)
    """

    per_example_noise = True  # every row draws its own randomness (rng's draws protocol)

    traits = Traits(randomized=True)

    def __init__(self, *, size: tuple[int, int] | list[int] | None = None,
                 mode: Literal["resize", "crop"] = "resize",
                 interpolation: Interpolation = "nearest", seed: int = 0) -> None:
        super().__init__(seed=seed)
        if mode not in ("resize", "crop"):
            raise ValueError(f"mode must be 'resize' or 'crop', got {mode!r}")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got "
                             f"{interpolation!r}")
        self.size = None if size is None else resolve_sizes(size, _ANY_SIDE, (0.0, 0.0))
        self.mode = mode
        self.interpolation = interpolation

    def sample(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator,
               uniforms: torch.Tensor | None = None) -> CropParams:
        """Draw per-example sizes and offsets for inputs of ``shape`` (B, C, H, W), from
        ``uniforms`` (B, 5) in [0, 1) when given, else from ``generator``."""
        B, _, H, W = shape
        lo, hi = resolve_sizes(self.size, min(H, W), (22 / 32, 30 / 32))
        dev = generator.device if uniforms is None else uniforms.device
        u = [None] * 5 if uniforms is None else list(uniforms.unbind(1))
        size = _randint(lo, torch.full((B,), hi, device=dev), generator, u[0])
        if self.mode == "crop":
            top, left = (_randint(0, H - size, generator, u[1]),
                         _randint(0, W - size, generator, u[2]))
        else:
            top = left = torch.zeros_like(size)
        return CropParams(size, top, left, _randint(0, H - size, generator, u[3]),
                          _randint(0, W - size, generator, u[4]))

    def apply_draw(self, x: torch.Tensor, p: CropParams) -> torch.Tensor:
        """The transform for given draws ``p``."""
        p = CropParams(*(t.to(x.device) for t in (p.size, p.top, p.left, p.pad_top,
                                                      p.pad_left)))
        canvas = x
        if self.mode == "resize":
            canvas = torch.zeros_like(x)
            for s in p.size.unique().tolist():
                rows = (p.size == s).nonzero().flatten()
                small = F.interpolate(x[rows], size=(s, s), mode=self.interpolation,
                                      **({} if self.interpolation == "nearest"
                                         else {"align_corners": False}))
                canvas = canvas.index_put((rows,), F.pad(small, (0, x.shape[3] - s,
                                                                 0, x.shape[2] - s)))
        return _shift(canvas, p.size, p.top, p.left, p.pad_top, p.pad_left)

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = rand_rows(x, (5,), generator=generator, stream="params", module=self,
                      dtype=torch.float64)
        return self.apply_draw(x, self.sample(x.shape, generator, u))

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode!r}, interpolation={self.interpolation!r}"


@DEFENSES.register("guo", kind="transform",
                   paper="Guo, Rana, Cisse, van der Maaten, ICLR 2018 (random crop and rescale)")
class GuoCropRescale(Transform):
    """A random ``s × s`` crop rescaled (bilinear) to the input size.

    Paper: Guo et al., "Countering adversarial images using input transformations", ICLR 2018;
    as in Pang et al.'s MI-OL code (``RandomCrop(s)`` then bilinear ``Resize``), which the CAP paper
    follows. The rescale equals ``F.interpolate(crop, (H, W), mode="bilinear",
    align_corners=False)`` of each crop, computed for the whole batch as two batched matrix
    products with per-example interpolation matrices (bilinear is separable).

    Args: ``size`` [low, high] inclusive, in pixels (default: 22/32 to 30/32 of the input side),
    ``seed``.

    Example::

        defense = Averaged(Pipeline([GuoCropRescale(size=(19, 26))], model), n=50)
    """

    per_example_noise = True  # every row draws its own randomness (rng's draws protocol)

    traits = Traits(randomized=True)

    def __init__(self, *, size: tuple[int, int] | list[int] | None = None, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.size = None if size is None else resolve_sizes(size, _ANY_SIDE, (0.0, 0.0))

    def sample(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator,
               uniforms: torch.Tensor | None = None) -> CropParams:
        """Per-example crop sizes and offsets, from ``uniforms`` (B, 3) when given."""
        B, _, H, W = shape
        lo, hi = resolve_sizes(self.size, min(H, W), (22 / 32, 30 / 32))
        dev = generator.device if uniforms is None else uniforms.device
        u = [None] * 3 if uniforms is None else list(uniforms.unbind(1))
        size = _randint(lo, torch.full((B,), hi, device=dev), generator, u[0])
        zero = torch.zeros_like(size)
        return CropParams(size, _randint(0, H - size, generator, u[1]),
                          _randint(0, W - size, generator, u[2]), zero, zero)

    def apply_draw(self, x: torch.Tensor, p: CropParams) -> torch.Tensor:
        _, _, H, W = x.shape
        size = p.size.to(x.device, x.dtype)[:, None]
        top, left = p.top.to(x.device, x.dtype)[:, None], p.left.to(x.device, x.dtype)[:, None]
        u = torch.arange(H, device=x.device, dtype=x.dtype)[None, :]
        v = torch.arange(W, device=x.device, dtype=x.dtype)[None, :]
        # source pixel coordinates of F.interpolate(align_corners=False), clamped to the crop
        rows = torch.minimum(torch.maximum(top + (u + 0.5) * size / H - 0.5, top),
                             top + size - 1)
        cols = torch.minimum(torch.maximum(left + (v + 0.5) * size / W - 0.5, left),
                             left + size - 1)
        # bilinear interpolation is separable: out = R_rows · x · R_colsᵀ per example, two batched
        # matrix products (forward and backward far cheaper on CPU than grid_sample's)
        r_rows, r_cols = _interp_matrix(rows, H), _interp_matrix(cols, W)
        return torch.matmul(torch.matmul(r_rows[:, None], x), r_cols.transpose(1, 2)[:, None])

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = rand_rows(x, (3,), generator=generator, stream="params", module=self,
                      dtype=torch.float64)
        return self.apply_draw(x, self.sample(x.shape, generator, u))

    def extra_repr(self) -> str:
        return f"size={self.size}"


@DEFENSES.register("rotation", kind="transform",
                   paper="random rotation (a baseline of the CAP paper's Table 3; MI-OL code)")
class RandomRotation(Transform):
    """Rotate each image about its centre by an angle drawn uniformly from
    ``[−degrees, degrees]`` (positive = counter-clockwise, as torchvision), zero fill.

    Args: ``degrees`` (10, as torchvision's ``RandomRotation(10)`` in Pang et al.'s MI-OL code);
    ``interpolation`` ("bilinear"; "nearest" is PIL's default used there); ``seed``.

    Example::

        defense = Averaged(Pipeline([RandomRotation(degrees=10)], model), n=50)
    """

    per_example_noise = True  # every row draws its own randomness (rng's draws protocol)

    traits = Traits(randomized=True)

    def __init__(self, *, degrees: float = 10.0, interpolation: Interpolation = "bilinear",
                 seed: int = 0) -> None:
        super().__init__(seed=seed)
        if not 0 <= degrees <= 180:
            raise ValueError(f"degrees must be in [0, 180], got {degrees}")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got "
                             f"{interpolation!r}")
        self.degrees = float(degrees)
        self.interpolation = interpolation

    def sample(self, batch: int, generator: torch.Generator,
               uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """Angles in degrees, float (B,), from ``uniforms`` (B,) when given."""
        u = torch.rand(batch, generator=generator, device=generator.device) \
            if uniforms is None else uniforms
        return (2 * u - 1) * self.degrees

    def apply_draw(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        t = angles.to(x.device, x.dtype) * (math.pi / 180)
        cos, sin = torch.cos(t), torch.sin(t)
        # output pixel (x, y) (y down, normalized) samples the input at R(−θ) in pixel units;
        # counter-clockwise on screen for θ > 0.
        theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * H / W
        theta[:, 1, 0] = sin * W / H
        theta[:, 1, 1] = cos
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="zeros",
                             align_corners=False)

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = rand_rows(x, (), generator=generator, stream="angle", module=self,
                      dtype=torch.float32)
        return self.apply_draw(x, self.sample(x.shape[0], generator, u))

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}, interpolation={self.interpolation!r}"
