"""LocalSearch (Narodytska & Kasiviswanathan, "Simple Black-Box Adversarial Perturbations for Deep
Networks", arXiv 1612.06299, 2016; CVPR Workshops 2017), Algorithm 3 "LocSearchAdv": a
score-based black-box attack that greedily picks the pixel locations whose perturbation lowers the
true class's probability most, changes them, and searches again around them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks.base import ATTACKS, Attack
from advguard.errors import ConfigError
from advguard.rng import rand_rows


def _in_top_k(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: the label ``y`` is among the ``k`` highest scores."""
    return (logits.topk(k, dim=1).indices == y[:, None]).any(1)


def cyclic(z: torch.Tensor) -> torch.Tensor:
    """The paper's ``CYC`` on the centred range [−½, ½]: values beyond a bound re-enter from the
    other side (``z − 1`` above ½, ``z + 1`` below −½); exact for ``z`` in [−1, 1].

    Example::

        cyclic(1.5 * torch.tensor([0.4, -0.5, 0.2]))   # tensor([-0.4000, 0.2500, 0.3000])
    """
    return torch.where(z > 0.5, z - 1, torch.where(z < -0.5, z + 1, z))


@ATTACKS.register("local_search", source="advguard", kind="score", norms=("linf", "l2"),
                  threat="lp", paper="Narodytska & Kasiviswanathan, arXiv 1612.06299 (2016)")
@dataclass(frozen=True, kw_only=True)
class LocalSearch(Attack):
    """LocSearchAdv: greedy local search over pixel locations, using only the model's scores.

    Works on the image centred to ``z = (x − lo)/(hi − lo) − ½`` in [−½, ½] (the paper's
    ``[LB, UB]``). Start: a random ``seed_ratio`` of the pixel locations (per example). Each round
    (at most ``round_ub``):

    1. for each candidate location ``(i, j)``, query the current image with every channel of that
       pixel set to ``PERT = p·sign(z)`` and score it by the model's probability of the true class;
    2. take the ``t`` locations with the lowest probability (the largest drop);
    3. transform them, every channel: ``z ← CYC(r·z)`` (:func:`cyclic`), then project the image
       into the threat model;
    4. stop (this example) once the true label is not among the ``k`` most probable classes;
    5. the next candidates: every location within ``d`` (Chebyshev distance) of the ``t`` chosen.

    At most ``max_candidates`` candidates are probed per round (a uniformly random subset when
    there are more; advertorch's ``max_nb_seeds``, default 128; None probes all). Examples the
    model already ranks outside the top ``k`` are returned unchanged. Untargeted only, as in the
    paper (``target=`` raises :class:`ConfigError`). No gradients: every model call runs under
    ``torch.no_grad()``. Queries per example: one to check, then per round the candidates probed
    plus one check.

    Threat model — read this: the paper's attack is unconstrained (pixels only stay in range), and
    its ``PERT`` queries images outside the valid range. Here every query and every result is a
    valid image inside the caller's threat model ``(norm, eps)``: probes are clipped to the range
    (so ``PERT`` moves a pixel to the bound on its side of the midpoint — the same for every
    ``p ≥ ½``; the paper's ``p = 10`` is the default) and, with the transformed image after each
    round, projected into the ε-ball around ``x`` and the bounds. For the paper's unconstrained
    attack use ``norm="linf", eps=1.0`` (the whole pixel range). Results are verified against that
    ball like every attack's.

    Args (defaults: the ADD-Defense paper's F-MNIST/MNIST/SVHN ``p = 10, r = 1.5, t = 300``, on
    advertorch's ``d = 5, k = 1, round_ub = 10, seed_ratio = 0.1, max_nb_seeds = 128``; CIFAR-10
    used ``t = 15``): ``eps``, ``norm`` ("linf" | "l2"); ``p`` (> 0); ``r`` (in [0, 2]); ``d``
    (>= 0); ``t`` (>= 1); ``k`` (>= 1, below the number of classes); ``round_ub`` (>= 1);
    ``seed_ratio`` (in (0, 1]); ``max_candidates`` (None or >= 1); ``batch_size`` (4096): probe
    images per model call. Inputs (N,C,H,W) in [0, 1]; the model's outputs are logits (or
    probabilities, declared by ``traits.output``).

    Example::

        result = LocalSearch(eps=1.0, t=300)(model, x, y)     # the paper's unconstrained LS
        result = LocalSearch(eps=0.15, t=30)(model, x, y)     # within an L-inf ball
        result.queries                                        # model calls per example
    """

    name = "local_search"
    p: float = 10.0
    r: float = 1.5
    d: int = 5
    t: int = 300
    k: int = 1
    round_ub: int = 10
    seed_ratio: float = 0.1
    max_candidates: int | None = 128
    batch_size: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.p > 0 and math.isfinite(self.p)):
            raise ConfigError(f"local_search needs a finite p > 0, got {self.p!r}")
        if not 0 <= self.r <= 2:
            raise ConfigError(f"local_search needs r in [0, 2] (the paper's range), got "
                              f"{self.r!r}")
        if self.d < 0 or self.t < 1 or self.k < 1 or self.round_ub < 1 or self.batch_size < 1:
            raise ConfigError("local_search needs d >= 0, t >= 1, k >= 1, round_ub >= 1 and "
                              f"batch_size >= 1, got d={self.d}, t={self.t}, k={self.k}, "
                              f"round_ub={self.round_ub}, batch_size={self.batch_size}")
        if not 0 < self.seed_ratio <= 1:
            raise ConfigError(f"local_search needs seed_ratio in (0, 1], got {self.seed_ratio!r}")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ConfigError(f"max_candidates must be >= 1 or None, got {self.max_candidates}")

    @property
    def steps(self) -> int:
        """The round bound (reported as the attack's iterations)."""
        return self.round_ub

    def _subsample(self, candidates: torch.Tensor, x: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        """At most ``max_candidates`` of each row's candidate locations, uniformly at random."""
        limit = self.max_candidates
        if limit is None or limit >= candidates.shape[1] \
                or not bool((candidates.sum(1) > limit).any()):
            return candidates
        keys = rand_rows(x, (candidates.shape[1],), generator=generator,
                         stream="local_search/candidates", dtype=torch.float32)
        keys = torch.where(candidates, keys, torch.full_like(keys, 2.0))
        chosen = keys.topk(limit, dim=1, largest=False)
        out = torch.zeros_like(candidates)
        return out.scatter_(1, chosen.indices, chosen.values < 2)

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if target is not None:
            raise ConfigError("local_search is untargeted (the paper's LS_u): call it without "
                              "target=")
        threat = self.threat
        lo, hi = threat.bounds
        n, c, h, w = x.shape
        hw = h * w

        def centred(images: torch.Tensor) -> torch.Tensor:
            return (images - lo) / (hi - lo) - 0.5

        def pixels(z: torch.Tensor) -> torch.Tensor:
            return lo + (z + 0.5) * (hi - lo)

        current = x.clone()
        logits = model(current)
        if self.k >= logits.shape[1]:
            raise ConfigError(f"local_search needs k below the number of classes "
                              f"({logits.shape[1]}), got k={self.k}")
        active = _in_top_k(logits, y, self.k)
        seeds = max(1, min(hw, round(self.seed_ratio * hw)))
        order = rand_rows(x, (hw,), generator=generator, stream="local_search/seeds",
                          dtype=torch.float32).argsort(1)
        candidates = torch.zeros(n, hw, dtype=torch.bool, device=x.device)
        candidates.scatter_(1, order[:, :seeds], True)
        for _ in range(self.round_ub):
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            m, x_a, y_a = idx.numel(), x[idx], y[idx]
            cand = self._subsample(candidates[idx], x_a, generator)
            z = centred(current[idx]).flatten(2)  # (m, C, HW)
            rows, locs = cand.nonzero(as_tuple=True)
            scores = torch.full((m, hw), math.inf, device=x.device)
            for start in range(0, rows.numel(), self.batch_size):
                r_, l_ = rows[start:start + self.batch_size], locs[start:start + self.batch_size]
                probe = z[r_].clone()
                at = torch.arange(r_.numel(), device=x.device)
                probe[at, :, l_] = (self.p * probe[at, :, l_].sign()).clamp(-0.5, 0.5)
                probe = threat.project(pixels(probe).view(-1, c, h, w), x_a[r_])
                probs = model(probe).float().softmax(-1)
                scores[r_, l_] = probs.gather(1, y_a[r_, None])[:, 0]
            top = scores.topk(min(self.t, hw), dim=1, largest=False)
            chosen = torch.zeros_like(cand).scatter_(1, top.indices, torch.isfinite(top.values))
            z = torch.where(chosen[:, None, :], cyclic(self.r * z), z)
            current[idx] = threat.project(pixels(z).view(m, c, h, w), x_a)
            fooled = ~_in_top_k(model(current[idx]), y_a, self.k)
            active[idx[fooled]] = False
            near = F.max_pool2d(chosen.view(m, 1, h, w).float(), 2 * self.d + 1, stride=1,
                                padding=self.d)
            candidates[idx] = near.view(m, hw) > 0
        return current
