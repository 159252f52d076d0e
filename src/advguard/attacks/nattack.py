"""NAttack (Li, Li, Wang, Zhang, Gong, "NATTACK: Learning the Distributions of Adversarial Examples
for an Improved Black-Box Attack on Deep Neural Networks", ICML 2019): a score-based black-box
attack that learns, with natural evolution strategies, a Gaussian distribution over
perturbations in tanh space whose samples fool the model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks.base import ATTACKS, Attack
from advguard.errors import ConfigError
from advguard.rng import randn_rows

_TANH_BOUND = 1 - 1e-6  # arctanh(±1) is infinite: the reference code scales by 0.999999


def _margin(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max(0, log p_y − max_{j≠y} log p_j)`` per example: 0 once misclassified."""
    true = log_probs.gather(1, y[:, None])[:, 0]
    other = log_probs.masked_fill(F.one_hot(y, log_probs.shape[1]).bool(), float("-inf"))
    return (true - other.amax(1)).clamp_min(0)


@ATTACKS.register("nattack", source="advguard", kind="score", norms=("linf", "l2"),
                  paper="Li et al., ICML 2019")
@dataclass(frozen=True, kw_only=True)
class NAttack(Attack):
    """NAttack: search the mean ``μ`` of a Gaussian ``N(μ, σ²I)`` over tanh-space perturbations.

    Each iteration draws ``population`` samples ``z_j = μ + σ·ε_j``, maps them to images
    ``x_j = Π(½(tanh(arctanh(2x − 1) + z_j) + 1))`` (Π: the ε-ball and [0, 1]), scores each with
    the margin loss ``max(0, log p_y − max_{j≠y} log p_j)`` of the model's output (its scores
    only — no gradients), standardizes the scores and moves ``μ ← μ − lr/(population·σ)·Σ_j
    ẑ_j ε_j``. Every ``check_every`` iterations the image at ``μ`` is queried and the examples it
    fools stop (the reference code checks every 10); the returned example is the image at ``μ``
    when it fooled the model, else the last one.

    Args (reference defaults for CIFAR-10): ``eps``; ``norm`` ("linf" | "l2"); ``steps`` (500
    iterations); ``population`` (300); ``sigma`` (0.1, search std in tanh space); ``lr`` (0.02);
    ``check_every`` (10); ``search_size`` (None: full resolution; an int ``s`` searches an
    ``s×s`` perturbation upsampled bilinearly, as the paper does for ImageNet with s = 32);
    ``batch_size`` (4096): images per model call. Queries per example:
    ``steps·population`` plus the checks. Untargeted only (``target=`` raises
    :class:`ConfigError`). Inputs (N,C,H,W) in [0, 1]; the model's outputs are logits (or
    probabilities, declared by ``traits.output``).

    Example::

        result = NAttack(eps=0.1, steps=100, population=50)(defense, x, y)
    """

    name = "nattack"
    steps: int = 500
    population: int = 300
    sigma: float = 0.1
    lr: float = 0.02
    check_every: int = 10
    search_size: int | None = None
    batch_size: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.population < 2 or self.check_every < 1 or self.batch_size < 1:
            raise ConfigError("NAttack needs steps >= 1, population >= 2, check_every >= 1 and "
                              "batch_size >= 1")
        if self.search_size is not None and self.search_size < 1:
            raise ConfigError(f"search_size must be >= 1 or None, got {self.search_size}")
        if not (self.sigma > 0 and self.lr > 0):
            raise ConfigError(f"NAttack needs sigma > 0 and lr > 0, got {self.sigma}, {self.lr}")

    def _images(self, x: torch.Tensor, base: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        lo, hi = self.threat.bounds
        if z.shape[-2:] != x.shape[-2:]:
            z = F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)
        candidate = lo + (hi - lo) * 0.5 * (torch.tanh(base + z) + 1)
        return self.threat.project(candidate, x)

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if target is not None:
            raise ConfigError("nattack is untargeted: call it without target=")
        lo, hi = self.threat.bounds
        unit = (2 * (x - lo) / (hi - lo) - 1).clamp(-_TANH_BOUND, _TANH_BOUND)
        base = torch.atanh(unit)
        shape = x.shape if self.search_size is None else \
            (*x.shape[:-2], self.search_size, self.search_size)
        mu = 0.001 * randn_rows(x, tuple(shape[1:]), generator=generator, stream="nattack/mu")
        best = x.clone()
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        p = self.population
        for step in range(self.steps):
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            if step % self.check_every == 0:
                current = self._images(x[idx], base[idx], mu[idx])
                fooled = model(current).argmax(1) != y[idx]
                best[idx] = current
                active[idx[fooled]] = False
                idx = idx[~fooled]
                if idx.numel() == 0:
                    break
            n = idx.numel()
            eps_ = randn_rows(x[idx], (p, *shape[1:]), generator=generator,
                              stream="nattack/search").transpose(0, 1)
            z = mu[idx].unsqueeze(0) + self.sigma * eps_
            full = (p, n, *x.shape[1:])
            images = self._images(x[idx].unsqueeze(0).expand(full).flatten(0, 1),
                                  base[idx].unsqueeze(0).expand(full).flatten(0, 1),
                                  z.flatten(0, 1))
            log_probs = torch.cat([model(images[i:i + self.batch_size]).float()
                                   for i in range(0, images.shape[0], self.batch_size)]
                                  ).log_softmax(-1)
            loss = _margin(log_probs, y[idx].repeat(p)).view(p, n)
            score = (loss - loss.mean(0)) / (loss.std(0, unbiased=False) + 1e-7)
            update = (score.view(p, n, *([1] * (mu.dim() - 1))) * eps_).sum(0)
            mu[idx] = mu[idx] - self.lr / (p * self.sigma) * update.to(mu.dtype)
        idx = active.nonzero().flatten()
        if idx.numel():
            best[idx] = self._images(x[idx], base[idx], mu[idx])
        return best
