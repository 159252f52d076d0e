"""SmoothAdv (Salman, Yang, Li, Zhang, Zhang, Razenshteyn, Bubeck, "Provably Robust Deep Learning
via Adversarially Trained Smoothed Classifiers", NeurIPS 2019): PGD on the soft-smoothed
classifier ``G(x) = E_η softmax(f(x + σ·η))``, estimated with ``m`` noise draws (Nemcovsky et al.'s
Eq. 24: the loss of the averaged probabilities, not the average of the losses as in EPGD)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advguard.attacks.base import ATTACKS, as_logits_model
from advguard.attacks.pgd import PGD
from advguard.errors import ConfigError
from advguard.rng import mean_probs, randn_rows


class _SoftSmoothed(nn.Module):
    """``log((1/m) Σ_i softmax(model(x + σ·η_i)))`` with the noise ``η`` (m, N, C, H, W) either
    fixed (drawn once, reused at every step) or drawn afresh from ``generator`` at every call.
    The draws follow the draws protocol (:func:`advguard.rng.iter_draws`: forwards of ``chunk``
    stacked copies, PNI/CNI layers drawing per copy; one copy per forward when the model's noise
    cannot be drawn per copy)."""

    def __init__(self, model: nn.Module, *, m: int, sigma: float, chunk: int,
                 noise: torch.Tensor | None, generator: torch.Generator) -> None:
        super().__init__()
        self.model = as_logits_model(model)
        self.m, self.sigma, self.chunk = m, sigma, chunk
        self.noise, self.gen = noise, generator

    def _noise(self, x: torch.Tensor, i: int, k: int) -> torch.Tensor:
        if self.noise is not None:
            return self.noise[i:i + k].reshape(k * x.shape[0], *x.shape[1:])
        return torch.cat([randn_rows(x, generator=self.gen, stream="smoothadv/noise")
                          for _ in range(k)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = [0]

        def noisy(xr: torch.Tensor) -> torch.Tensor:
            k = xr.shape[0] // x.shape[0]
            if self.sigma > 0:
                xr = xr + self.sigma * self._noise(x, start[0], k)
            start[0] += k
            return self.model(xr)

        return mean_probs(noisy, x, self.m, chunk=self.chunk, module=self.model)


@ATTACKS.register("smoothadv", source="advguard", kind="gradient", norms=("linf", "l2"),
                  paper="Salman et al., NeurIPS 2019")
@dataclass(frozen=True, kw_only=True)
class SmoothAdv(PGD):
    """PGD maximizing the loss of the soft-smoothed classifier, whose log-probabilities are
    ``log((1/m) Σ_i softmax(f(x' + σ·η_i)))`` (Salman et al.'s SmoothAdv_PGD; Eq. 24 of
    Nemcovsky et al.). ``f`` is the model given (its own noise — PNI/CNI weights — is drawn by
    the model on every forward); ``σ·η`` is Gaussian input noise drawn from the attack's
    generator. With ``fixed_noise`` (Salman et al.'s choice) the ``m`` draws are made once per
    restart and reused at every step; otherwise they are drawn afresh at every step.

    Attacking a soft-smoothed classifier: give it the classifier's base model and its ``σ`` (or
    attack :class:`~advguard.defenses.Smoothed` with ``vote="soft"`` directly with :class:`PGD`).
    As a transfer source, ``SmoothAdv`` on an independent model is "PGD with smoothing at the
    source".

    Args: those of :class:`PGD` (``eps``, ``norm``, ``steps`` (10), ``alpha``, ``random_start``
    (True; Salman et al. start at δ = 0: pass False), ``restarts``, ``loss``) and ``m`` noise
    draws (8), ``sigma`` (0.25, pixel units), ``fixed_noise`` (True), ``chunk`` copies per
    forward (8).

    Example::

        adv = SmoothAdv(eps=0.1, steps=10, m=8, sigma=0.1)(model, x, y).adv
    """

    name = "smoothadv"
    m: int = 8
    sigma: float = 0.25
    fixed_noise: bool = True
    chunk: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.m < 1 or self.chunk < 1 or not self.sigma >= 0:
            raise ConfigError(f"SmoothAdv needs m >= 1, chunk >= 1 and sigma >= 0, got m={self.m}"
                              f", chunk={self.chunk}, sigma={self.sigma}")

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        noise = None
        if self.fixed_noise and self.sigma > 0:
            noise = torch.stack([randn_rows(x, generator=generator, stream="smoothadv/fixed")
                                 for _ in range(self.m)])
        smoothed = _SoftSmoothed(model, m=self.m, sigma=self.sigma, chunk=self.chunk, noise=noise,
                                 generator=generator)
        return super()._run(smoothed, x, y, target, generator)
