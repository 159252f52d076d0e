"""Smoothed inference over a (noise-injected) classifier: vote over Monte Carlo draws of Gaussian
input noise and of the model's own injected noise.

Paper: Nemcovsky, Zheltonozhskii, Baskin, Chmiel, Fishman, Bronstein, Mendelson, "Smoothed
Inference for Improving Adversarial Robustness" (2019; reference code ``yanemcovsky/SIAM``).
Certification-style output after Cohen, Rosenfeld, Kolter, "Certified adversarial robustness via
randomized smoothing", ICML 2019.

For an input ``x`` the defense draws ``m`` samples ``f_i(x + σ·η_i)``, ``η_i ~ N(0, I)``, where
``f_i`` is the base model with its own injected noise (PNI/CNI weight noise, ...) drawn afresh,
and combines them with a **vote** (paper Eq. 8):

* ``"prediction"`` (Eq. 9–10): the fraction of draws whose top-1 class is ``c``;
* ``"weighted"`` (Eq. 11–12; the equations were lost in our copy of the paper): every draw gives
  class ``c`` a weight that decays with the rank ``r`` of ``c`` in that draw,
  ``w(r) = decay^r / Σ_{r'<K} decay^{r'}`` (``decay = 1/2``: the ``2^-rank`` weights;
  ``decay = 0``: prediction smoothing);
* ``"soft"`` (Eq. 13): the average class probability (``average="probs"``, the default — it is
  the paper's Eq. 13 and Salman et al.'s smoothed soft classifier) or the average raw logits
  (``average="logits"``, what the reference code's ``resnet_cpni_smooth_logits`` does).

What an attacker sees (house rule 2):

* **output** — the prediction and weighted votes return vote fractions, which are probabilities
  (``traits.output == "probs"``: attacks use their logarithm); the soft vote returns mean
  probabilities (``"probs"``) or mean logits (``"logits"``).
* **randomized** — when ``sigma > 0`` or the base model draws noise of its own.
* **differentiable** — only the soft vote. The hard votes declare a BPDA surrogate: the soft vote
  (mean probabilities) **over the same draws** (:meth:`Smoothed.forward_bpda`: value and gradient
  of the soft vote, so that attacks steering by the loss value, like APGD, see one that moves).
* **base model** — :attr:`Smoothed.base_model` is the randomized classifier whose votes are
  counted: the model with the smoothing's input noise, one draw per call (``f(x + σ·η)``). With
  ``sigma = 0`` it is the noise-injected model exactly as trained. An oblivious PGD on it, one
  draw per step, is the paper's attack protocol (the reference code attacks ``model.forward``,
  which adds the input noise and draws the weight noise).

The ``m`` draws run as batched forwards of ``chunk`` noisy copies of the batch (not a Python loop
over draws) when every noise source inside the base model gives the copies of one forward
independent draws. A noise module declares it with a class attribute: ``per_example_noise = True``
(it draws independently per example), or ``per_copy_noise = True`` (it draws once per forward,
shared by the batch, but once per stacked copy inside :func:`~advguard.rng.stacked_copies`) — the
draws protocol of :mod:`advguard.rng`, which every averaging, voting and EOT path shares. advguard's
PNI/CNI weight noise (``models/noise.py``) is of the second kind: a forward of ``k`` copies draws
``k`` weight perturbations, one grouped convolution / batched matmul per layer, in the order ``k``
separate forwards would draw them. Random modules that declare neither (a weight perturbation shared
by the whole batch and no way to split it) get a single copy per forward, so the draws stay
independent. :attr:`Smoothed.batched` says which applies.

Noise: ``σ`` is in pixel units of [0, 1] (our models normalize inside; the reference code adds
noise after normalization, so its ``noise_sd`` is in normalized units); ``x + σ·η`` is not clipped
(as in Cohen et al. and the reference code).

Ties in the prediction and weighted votes go to the lowest class index (``argmax``).

Example::

    defense = Smoothed(model, m=32, sigma=0.1, vote="prediction", seed=0)
    scores = defense(x)                  # (N, K) vote fractions
    cert = defense.certify(x, n0=100, n=1000, alpha=0.001)   # labels (-1: abstain), radii
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from advguard.defenses.base import (
    Defense,
    Randomness,
    Traits,
    Transform,
    inner_draws,
    inside_defense,
)
from advguard.defenses.registry import DEFENSES
from advguard.rng import (
    CopiesAware,
    draws_per_copy,
    is_randomized,
    iter_draws,
    keyed_normal,
    row_keys,
)
from advguard.stats import clopper_pearson

__all__ = ["ABSTAIN", "AVERAGES", "VOTES", "NoisyBase", "Smoothed", "SmoothedPrediction",
           "clopper_pearson", "vote_contributions", "vote_scores"]

Vote = Literal["prediction", "weighted", "soft"]
Average = Literal["probs", "logits"]
VOTES: tuple[str, ...] = ("prediction", "weighted", "soft")
AVERAGES: tuple[str, ...] = ("probs", "logits")
ABSTAIN = -1
#: default copies per forward (``Smoothed(chunk=None)``): on a 2-core CPU one stacked forward of
#: 16 copies took 1.4–1.9× the time of 16 separate forwards (benchmarks/bench_smoothing.py)
CPU_CHUNK = 1
ACCELERATOR_CHUNK = 16
PAPER = "Nemcovsky et al. 2019, Smoothed Inference for Improving Adversarial Robustness"


# --------------------------------------------------------------------------- votes
def _as_probs(outputs: torch.Tensor, kind: str) -> torch.Tensor:
    return outputs.float() if kind == "probs" else outputs.float().softmax(-1)


def vote_contributions(outputs: torch.Tensor, vote: str, *, average: str = "probs",
                       decay: float = 0.5, output: str = "logits") -> torch.Tensor:
    """What each draw contributes to each class: ``(..., K)`` per-draw base outputs (``output``:
    ``"logits"`` or ``"probs"``) → ``(..., K)`` contributions whose mean over draws is the vote.

    prediction: one-hot of the top-1 class; weighted: ``decay^rank`` normalized over the K ranks;
    soft: probabilities (``average="probs"``) or the raw outputs (``average="logits"``).
    """
    if vote == "prediction":
        return F.one_hot(outputs.argmax(-1), outputs.shape[-1]).float()
    if vote == "weighted":
        k = outputs.shape[-1]
        order = outputs.float().argsort(dim=-1, descending=True, stable=True)
        ranks = order.argsort(dim=-1, stable=True)
        base = torch.tensor(float(decay), device=outputs.device)
        weights = base.pow(torch.arange(k, device=outputs.device, dtype=torch.float32))
        return weights[ranks] / weights.sum()
    if vote == "soft":
        return _as_probs(outputs, output) if average == "probs" else outputs.float()
    raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")


def vote_scores(outputs: torch.Tensor, vote: str, *, average: str = "probs", decay: float = 0.5,
                output: str = "logits") -> torch.Tensor:
    """The smoothed output from ``(m, N, K)`` per-draw base outputs: the mean over draws of
    :func:`vote_contributions` — ``(N, K)``."""
    return vote_contributions(outputs, vote, average=average, decay=decay, output=output).mean(0)


# --------------------------------------------------------------------------- draws
def _is_randomized(model: nn.Module) -> bool:
    if isinstance(model, Defense):
        return model.traits.randomized
    return is_randomized(model)


class NoisyBase(CopiesAware, Randomness):
    """``model(x + σ·η)`` with one draw of ``η ~ N(0, I)`` (per example) per call; the model's own
    noise is drawn by the model. The base classifier of :class:`Smoothed`.

    Inside :func:`~advguard.rng.stacked_copies` with ``k`` copies (as :meth:`Smoothed.draws` runs
    it), the noise of the stacked batch is drawn copy by copy and the model's weight-noise layers
    draw one perturbation per copy, in order, so a batched draw equals the same draws made one
    copy at a time. Shapes: ``(copies·n, C, H, W)`` → ``(copies·n, K)``.
    """

    per_example_noise = True

    def __init__(self, model: nn.Module, *, sigma: float, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.model = model
        self.sigma = float(sigma)
        randomized = self.sigma > 0 or _is_randomized(model)
        inner = model.traits if isinstance(model, Defense) else Traits()
        self.traits = Traits(randomized=randomized, differentiable=inner.differentiable,
                             dynamic=inner.dynamic, output=inner.output)
        self._surrogate = False

    @contextlib.contextmanager
    def surrogate(self) -> Iterator[None]:
        """Inside, a wrapped :class:`Defense` runs its BPDA surrogate (``forward_bpda``: the
        same value, a usable gradient) instead of its forward."""
        previous, self._surrogate = self._surrogate, True
        try:
            yield
        finally:
            self._surrogate = previous

    def noisy(self, x: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """``x`` plus noise; ``x`` holds ``copies`` stacked copies of a batch, whose noise is drawn
        one copy after the other."""
        if self.sigma == 0:
            return x
        keys = row_keys(x, "noise", self)  # per-example draws inside the harness
        if keys is not None:
            return x + self.sigma * keyed_normal(keys, tuple(x.shape[1:]), dtype=x.dtype)
        gen = self.generator(x.device)
        n = x.shape[0] // copies
        noise = torch.cat([torch.randn((n, *x.shape[1:]), generator=gen, device=x.device,
                                       dtype=x.dtype) for _ in range(copies)])
        return x + self.sigma * noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noisy = self.noisy(x, self._split(x))
        with inside_defense():  # x + σ·η leaves [0, 1] by design (not clipped)
            if self._surrogate and isinstance(self.model, Defense):
                return self.model.forward_bpda(noisy)
            return self.model(noisy)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


# --------------------------------------------------------------------------- certification
@dataclass(frozen=True)
class SmoothedPrediction:
    """Certification-style output of :meth:`Smoothed.certify` / :meth:`Smoothed.predict_abstain`.

    ``label``: (N,) int64, the predicted class or :data:`ABSTAIN` (−1). ``counts``: (N, K) top-1
    votes of the estimation draws. ``p_lower``: (N,) lower confidence bound on the probability of
    the predicted class (one-sided Clopper–Pearson at level ``1 − alpha``). ``radius``: (N,)
    certified L2 radius ``σ·Φ⁻¹(p_lower)`` (Cohen et al. Theorem 1; 0 where abstaining, where
    ``σ = 0``, and for :meth:`Smoothed.predict_abstain`, which certifies nothing).
    """

    label: torch.Tensor
    counts: torch.Tensor
    p_lower: torch.Tensor
    radius: torch.Tensor


# --------------------------------------------------------------------------- the defense
@DEFENSES.register("smoothing", kind="defense", paper=PAPER)
class Smoothed(Defense):
    """Smoothed inference: a vote over ``m`` draws of input and injected noise (module docstring).

    Args: ``model`` (images in [0, 1] → logits, or a :class:`Defense`); ``m`` draws (32);
    ``sigma`` input-noise std in pixel units (0.0: smooth over the model's own noise only);
    ``vote`` ("prediction" | "weighted" | "soft"); ``average`` for the soft vote ("probs" —
    default, Eq. 13 — | "logits", the reference code); ``decay`` of the weighted vote (0.5:
    ``2^-rank``); ``chunk`` noisy copies of the batch per forward (None: :data:`CPU_CHUNK` on
    CPU, :data:`ACCELERATOR_CHUNK` on other devices — measured, stacking copies is *slower* on a
    2-core CPU: ``benchmarks/results/smoothing_throughput.md``; an int bounds memory); ``seed``.
    Choose ``sigma`` and ``m`` on a validation split
    (:func:`advguard.experiments.sweep.select_setting`), never on test data.

    Shapes: (N, C, H, W) in [0, 1] → (N, K) vote scores (see ``traits.output``).

    Example::

        defense = Smoothed(model, m=32, sigma=0.1, vote="soft", seed=0)
        defense.traits   # Traits(randomized=True, differentiable=True, output='probs')
    """

    def __init__(self, model: nn.Module, *, m: int = 32, sigma: float = 0.0,
                 vote: Vote = "prediction", average: Average = "probs", decay: float = 0.5,
                 chunk: int | None = None, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be an int >= 1, got {m!r}")
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if vote not in VOTES:
            raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.base = NoisyBase(model, sigma=sigma)
        self.m, self.vote, self.average, self.decay = m, vote, average, float(decay)
        self.bpda_value = "exact" if vote == "soft" else "surrogate"  # see forward_bpda
        self.chunk = None if chunk is None else max(1, int(chunk))
        self.batched = draws_per_copy(model)
        soft = vote == "soft"
        inner = self.base.traits  # a wrapped defense's traits carry through the vote
        self.traits = Traits(randomized=inner.randomized,
                             differentiable=soft and inner.differentiable, dynamic=inner.dynamic,
                             output="logits" if soft and average == "logits" else "probs")
        self.reseed(seed)

    @property
    def model(self) -> nn.Module:
        """The wrapped classifier (without the smoothing's input noise)."""
        return self.base.model

    @property
    def sigma(self) -> float:
        return self.base.sigma

    @property
    def draws_per_call(self) -> int:
        return self.m * inner_draws(self.base.model)

    @property
    def base_model(self) -> nn.Module:
        """The classifier whose draws are voted on: the model with the input noise, one draw per
        call (randomized; the model itself, as trained, when ``sigma = 0``)."""
        return self.base

    def chunk_size(self, device: torch.device) -> int:
        """Copies per forward on ``device``: ``chunk``, or the device default when None; 1 when
        the model's noise cannot be drawn per copy."""
        if not self.batched:
            return 1
        if self.chunk is not None:
            return self.chunk
        return CPU_CHUNK if device.type == "cpu" else ACCELERATOR_CHUNK

    def iter_draws(self, x: torch.Tensor, m: int | None = None) -> Iterator[torch.Tensor]:
        """Per-draw base outputs in chunks of shape (k, N, K), ``m`` draws in all (default
        ``self.m``); each chunk is one batched forward of ``k`` noisy copies of ``x`` (the draws
        protocol, :func:`advguard.rng.iter_draws`)."""
        return iter_draws(self.base, x, self.m if m is None else m,
                          chunk=self.chunk_size(x.device), module=self.base)

    def draws(self, x: torch.Tensor, m: int | None = None) -> torch.Tensor:
        """All per-draw base outputs, (m, N, K) (for sweeps over ``m`` and votes)."""
        return torch.cat(list(self.iter_draws(x, m)))

    def _contrib(self, out: torch.Tensor, vote: str, average: str) -> torch.Tensor:
        return vote_contributions(out, vote, average=average, decay=self.decay,
                                  output=self.base.traits.output)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for out in self.iter_draws(x):
            part = self._contrib(out, self.vote, self.average).sum(0)
            if out.requires_grad and not part.requires_grad:
                # a hard vote: keep the graph, with the true (zero) gradient, as other
                # piecewise-constant defenses do; the zero-gradient check flags naive attacks
                part = part + 0.0 * out.sum(0)
            total = part if total is None else total + part
        assert total is not None
        return total / self.m

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        """The BPDA surrogate of a hard vote: the soft vote (mean probabilities) over the same
        draws, as value and gradient (through a wrapped defense's own surrogate).

        Not the straight-through form (hard vote forward, soft vote backward): its value is a
        vote count that moves in steps of ``1/m``, so attacks that steer by the loss value
        (APGD's step-size rule and best point, restarts) stall on it, while the soft vote's value
        follows the gradient they are given. Measured on the quickstart model (F-MNIST sample,
        200 images, ε = 0.1, m = 8, σ = 0.2): see benchmarks/results/preset_acceptance.md.
        The vote itself still decides every recorded outcome (the harness classifies with the
        defense)."""
        if self.traits.differentiable:
            return self.forward(x)
        approx: torch.Tensor | None = None
        with self.base.surrogate():  # a wrapped non-differentiable defense: its own surrogate
            for out in self.iter_draws(x):
                a = self._contrib(out, "soft", "probs").sum(0)
                approx = a if approx is None else approx + a
        assert approx is not None
        return approx / self.m

    def transforms(self) -> Iterator[Transform]:
        model = self.model
        return model.transforms() if isinstance(model, Defense) else iter(())

    # ------------------------------------------------------------------ certification-style
    @torch.no_grad()
    def _counts(self, x: torch.Tensor, n: int) -> torch.Tensor:
        total = sum(self._contrib(out, "prediction", "probs").sum(0)
                    for out in self.iter_draws(x, n))
        assert isinstance(total, torch.Tensor)
        return total.round().long()

    def certify(self, x: torch.Tensor, *, n0: int = 100, n: int = 1000,
                alpha: float = 0.001) -> SmoothedPrediction:
        """Cohen et al.'s CERTIFY for the prediction vote: the class with most top-1 votes among
        ``n0`` selection draws, its probability bounded below from ``n`` fresh draws (one-sided
        Clopper–Pearson at level ``1 − alpha``); abstain unless the bound exceeds 1/2. With
        ``sigma > 0`` the prediction is certified within the L2 ``radius``."""
        from scipy.stats import norm

        guess = self._counts(x, n0).argmax(1)
        counts = self._counts(x, n)
        top = counts.gather(1, guess[:, None])[:, 0]
        p_lower = clopper_pearson(top.cpu(), n, 2 * alpha)[0].float()
        certified = p_lower > 0.5
        label = torch.where(certified.to(x.device), guess, torch.full_like(guess, ABSTAIN))
        radius = torch.as_tensor(self.sigma * norm.ppf(p_lower.double().numpy())).float()
        radius = torch.where(certified, radius.clamp_min(0), torch.zeros_like(radius))
        return SmoothedPrediction(label, counts, p_lower.to(x.device), radius.to(x.device))

    def predict_abstain(self, x: torch.Tensor, *, n: int | None = None,
                        alpha: float = 0.001) -> SmoothedPrediction:
        """Cohen et al.'s PREDICT: the prediction vote over ``n`` draws (default ``m``), abstaining
        where a two-sided binomial test cannot tell the top two classes apart at level
        ``alpha``. ``p_lower`` bounds the top class's probability; ``radius`` is 0."""
        from scipy.stats import binomtest

        n = self.m if n is None else n
        counts = self._counts(x, n)
        top2 = counts.topk(min(2, counts.shape[1]), dim=1)
        label = top2.indices[:, 0].clone()
        n_a = top2.values[:, 0].tolist()
        n_b = top2.values[:, 1].tolist() if counts.shape[1] > 1 else [0] * len(n_a)
        for i, (a, b) in enumerate(zip(n_a, n_b)):
            if a + b == 0 or binomtest(a, a + b, 0.5).pvalue > alpha:
                label[i] = ABSTAIN
        p_lower = clopper_pearson(top2.values[:, 0].cpu(), n, 2 * alpha)[0].float()
        return SmoothedPrediction(label, counts, p_lower.to(x.device),
                                  torch.zeros(x.shape[0], device=x.device))

    def extra_repr(self) -> str:
        soft = f", average={self.average!r}" if self.vote == "soft" else ""
        weighted = f", decay={self.decay}" if self.vote == "weighted" else ""
        return (f"m={self.m}, sigma={self.sigma}, vote={self.vote!r}{soft}{weighted}, "
                f"chunk={self.chunk}, batched={self.batched}")

