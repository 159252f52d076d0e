"""CAP: counteracting adversarial perturbations with small first-order perturbations.

Paper: "Towards counteracting adversarial perturbations to resist adversarial examples",
anonymous ICLR 2021 submission (Algorithm 1, Eq. 3). For an input ``x`` the defense

1. selects ``N`` class labels at random (``n_labels``; default 9);
2. for each label ``l_i`` computes the one-step PGD (= FGSM, no random start) perturbation of step
   ``α`` (``alpha``; default 4/255): **targeted** towards ``l_i`` ([T], the paper's default:
   ``η_i = clip₀₁(x − α·sign ∇ₓCE(f(x), l_i)) − x``) or **untargeted** away from it ([U]:
   ``+α·sign``); like any PGD step it stays inside the image domain [0, 1];
3. sums them, clips the sum to the L∞ ball of radius ``μ`` (``mu``; default 8/255), adds it to
   ``x``, clips to [0, 1] and classifies: ``f(clip₀₁(x + Π_μ(Σ_i η_i)))``.

The ``N`` gradients are computed in **one** batched forward/backward (the batch repeated ``N``
times), so a CAP inference costs ``N`` forward+backward passes of ``f`` plus one forward.

Label sampling. The paper motivates CAP with "perturbations generated for non-predicted class
labels" (abstract, Fig. 1) and sweeps N up to 9 = K − 1 on CIFAR-10 (Fig. 3), while Algorithm 1
only says "randomly select N class labels". Here the ``N`` labels are distinct, drawn uniformly
without replacement, per example, from the classes **other than the base model's prediction**
(``exclude_predicted=True``, default) or from all classes (``False``). With the paper's N = 9 on a
10-class problem the label set is therefore *all* non-predicted labels and CAP is deterministic:
the traits say so when the number of classes is known (``num_classes=``, or read from an advguard
model's ``spec``).

Composition. CAP is the first step ("a preliminary step before applying existing inference time
defense methods"): its perturbation is computed with the gradients of the base model ``f``, and
the perturbed input is then classified by ``then`` — the base model (default), or any defense
built on it from a spec, e.g. ``{"name": "averaged", "n": 50, "defense": {"name": "guo"}}`` for
"Ours + Guo et al." (one CAP perturbation, then 50 averaged executions of Guo's transform).

Gradients for attackers (traits: dynamic, differentiable a.e.). ``sign`` has zero derivative
almost everywhere, so differentiating through the inner gradient step (double backpropagation)
contributes *exactly nothing*: the a.e. gradient of CAP is that of ``f`` at the counteracted input
with the counter-perturbation held fixed (the per-step and final clipping still act). ``forward``
computes that exact a.e. gradient without building the (useless) second-order graph. Because this
gradient cannot see how the counter-perturbation *reacts* to the attacker's input,
:meth:`forward_bpda` offers the alternative a BPDA attacker would use: the forward value is
unchanged, but in the backward pass ``sign(g)`` is replaced by ``tanh(g/τ)`` (``τ`` = mean
``|g|`` of that example and label, held fixed) and the inner gradient is differentiated by double
backpropagation — the attacker then anticipates the counter-perturbation. The evaluation harness
uses the first in ``adaptive`` steps and the second in ``adaptive`` steps with ``bpda: true``; run
both and keep the worst case.

Shapes: inputs (B, C, H, W) in [0, 1]; outputs (B, K) — logits of ``then`` (or its declared
output type).

Example::

    cap = CAP(model, n_labels=9, alpha=4/255, mu=8/255, seed=0)         # [T], paper defaults
    logits = cap(x)
    cap_guo = build_defense({"name": "cap", "then": {"name": "averaged", "n": 50,
                             "defense": {"name": "guo", "size": [22, 30]}}}, model)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advguard.defenses.base import (
    Defense,
    Traits,
    Transform,
    gradient_inside_forward,
    inner_draws,
)
from advguard.defenses.registry import DEFENSES
from advguard.rng import rand_rows

__all__ = ["CAP", "cap_perturbation", "sample_labels"]

PAPER = ("Towards counteracting adversarial perturbations to resist adversarial examples "
         "(anonymous ICLR 2021 submission)")


def sample_labels(pred: torch.Tensor, num_classes: int, n_labels: int,
                  generator: torch.Generator, *, exclude_predicted: bool = True,
                  uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """``n_labels`` distinct labels per example, uniformly without replacement, from all
    ``num_classes`` classes or (``exclude_predicted``) from those other than ``pred`` (B,).
    Returns int64 (B, n_labels), sorted per row, on ``pred``'s device; draws only from
    ``generator``, or uses ``uniforms`` (B, num_classes) in [0, 1) drawn by the caller."""
    available = num_classes - (1 if exclude_predicted else 0)
    if not 1 <= n_labels <= available:
        raise ValueError(f"n_labels must be in [1, {available}] for {num_classes} classes"
                         f"{' excluding the predicted one' if exclude_predicted else ''}, "
                         f"got {n_labels}")
    keys = uniforms.to(pred.device).clone() if uniforms is not None else \
        torch.rand((pred.shape[0], num_classes), generator=generator,
                   device=generator.device).to(pred.device)
    if exclude_predicted:  # the predicted class sorts last and is never among the first N
        keys.scatter_(1, pred[:, None], 2.0)
    # ascending label order: the sum over labels is then computed in the same order for the
    # same label set (float addition is not associative), so a full label set is deterministic
    return keys.argsort(dim=1)[:, :n_labels].sort(dim=1).values


def cap_perturbation(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None, *,
                     n_labels: int = 9, alpha: float = 4 / 255, mu: float = 8 / 255,
                     targeted: bool = True, exclude_predicted: bool = True,
                     generator: torch.Generator | None = None, surrogate: bool = False,
                     module: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The counteracted input ``clip₀₁(x + Π_μ(Σ_i η_i))`` and the labels used, (B, N).

    ``labels`` (B, N) fixes the labels; otherwise they are drawn with :func:`sample_labels` from
    ``generator`` after the batched forward pass (which also gives the prediction to exclude).
    ``surrogate``: build the BPDA soft-sign graph (see the module docstring); otherwise the result
    carries the exact a.e. gradient with respect to ``x`` when the caller builds a graph.
    ``module``: the drawing defense (names its draws for :func:`advguard.rng.rand_rows`).
    """
    B = x.shape[0]
    N = n_labels if labels is None else labels.shape[1]
    xr = x.repeat(N, 1, 1, 1) if surrogate else x.detach().repeat(N, 1, 1, 1)
    chosen: list[torch.Tensor] = []

    def loss(z: torch.Tensor) -> torch.Tensor:
        logits = model(z)
        lab = labels
        if lab is None:
            assert generator is not None, "cap_perturbation needs labels or a generator"
            pred = logits[:B].detach().argmax(1)
            u = rand_rows(x, (logits.shape[1],), generator=generator, stream="labels",
                          module=module, dtype=torch.float32)
            lab = sample_labels(pred, logits.shape[1], N, generator,
                                exclude_predicted=exclude_predicted, uniforms=u)
        chosen.append(lab)
        # copy i of the repeated batch gets label i of every example
        return F.cross_entropy(logits.float(), lab.t().reshape(-1), reduction="sum")

    g = gradient_inside_forward(loss, xr, differentiable=surrogate)
    direction = -1.0 if targeted else 1.0
    if surrogate and g.requires_grad:
        tau = g.detach().abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        soft = torch.tanh(g / tau)
        step = soft + (g.sign() - soft).detach()      # forward: sign; backward: soft sign
    else:
        step = g.detach().sign()
    xn = x.repeat(N, 1, 1, 1)
    eta = (xn + direction * alpha * step).clamp(0.0, 1.0) - xn   # one PGD step, in [0, 1]
    delta = eta.view(N, B, *x.shape[1:]).sum(0).clamp(-mu, mu)
    return (x + delta).clamp(0.0, 1.0), chosen[0]


def _num_classes_of(model: nn.Module) -> int | None:
    spec = getattr(model, "spec", None)
    kwargs = getattr(spec, "kwargs", None)
    value = kwargs.get("num_classes") if isinstance(kwargs, Mapping) else None
    return int(value) if isinstance(value, int) else None


@DEFENSES.register("cap", kind="defense", paper=PAPER)
class CAP(Defense):
    """Counteracting adversarial perturbations (Algorithm 1 of the paper; see the module
    docstring for the sampling, composition and gradient conventions).

    Args: ``model`` (the base classifier, images in [0, 1] → logits); ``n_labels`` N (9);
    ``alpha`` α, the one-step size (4/255); ``mu`` μ, the L∞ bound of the summed perturbation
    (8/255); ``targeted`` ([T], True) or untargeted ([U], False) defense perturbations;
    ``exclude_predicted`` (True: labels drawn from the non-predicted classes); ``num_classes``
    (None: read from an advguard model's spec; only used to declare whether CAP is randomized);
    ``then`` (None: classify with ``model``; a defense spec or module classifying the counteracted
    input); ``seed``.

    Traits: dynamic (gradients inside forward), differentiable a.e. (exact gradients; BPDA
    soft-sign surrogate in :meth:`forward_bpda`), randomized unless every admissible label is used
    and ``then`` is deterministic.

    Example::

        defense = CAP(model, n_labels=9, alpha=4/255, mu=8/255, targeted=True, seed=0)
    """

    per_example_noise = True  # every row draws its own randomness (rng's draws protocol)

    def __init__(self, model: nn.Module, *, n_labels: int = 9, alpha: float = 4 / 255,
                 mu: float = 8 / 255, targeted: bool = True, exclude_predicted: bool = True,
                 num_classes: int | None = None,
                 then: Mapping[str, Any] | nn.Module | None = None, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if n_labels < 1:
            raise ValueError(f"n_labels must be >= 1, got {n_labels}")
        if alpha < 0 or mu < 0:
            raise ValueError(f"alpha and mu must be >= 0, got {alpha}, {mu}")
        self.model = model
        self.n_labels = int(n_labels)
        self.alpha = float(alpha)
        self.mu = float(mu)
        self.targeted = bool(targeted)
        self.exclude_predicted = bool(exclude_predicted)
        self.num_classes = num_classes if num_classes is not None else _num_classes_of(model)
        available = None if self.num_classes is None else \
            self.num_classes - (1 if self.exclude_predicted else 0)
        if available is not None and self.n_labels > available:
            raise ValueError(f"n_labels={self.n_labels} exceeds the {available} admissible "
                             f"labels of a {self.num_classes}-class model")
        head_module: nn.Module = model
        if isinstance(then, Mapping):
            from advguard.defenses.registry import build_defense

            head_module = build_defense(then, model)
        elif then is not None:
            head_module = then
        self.classifier = head_module
        head = self.classifier.traits if isinstance(self.classifier, Defense) else Traits()
        labels_random = available is None or self.n_labels < available
        self.traits = Traits(randomized=labels_random or head.randomized,
                             differentiable=head.differentiable, dynamic=True,
                             output=head.output)
        self.reseed(seed)

    def counteract(self, x: torch.Tensor, *, surrogate: bool = False) -> torch.Tensor:
        """The counteracted input ``clip₀₁(x + Π_μ(Σ_i η_i))`` (B, C, H, W), labels drawn from
        this defense's generator."""
        out, _ = cap_perturbation(self.model, x, n_labels=self.n_labels, alpha=self.alpha,
                                  mu=self.mu, targeted=self.targeted,
                                  exclude_predicted=self.exclude_predicted,
                                  generator=self.generator(x.device), surrogate=surrogate,
                                  module=self)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.counteract(x))

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        """Same forward value; backward through the soft-sign surrogate of the inner step
        (double backpropagation) and through the declared surrogates of ``then``."""
        z = self.counteract(x, surrogate=True)
        if isinstance(self.classifier, Defense):
            return self.classifier.forward_bpda(z)
        return self.classifier(z)

    @property
    def draws_per_call(self) -> int:
        return inner_draws(self.classifier)

    @property
    def base_model(self) -> nn.Module:
        return self.model

    def transforms(self) -> Iterator[Transform]:
        if isinstance(self.classifier, Defense):
            yield from self.classifier.transforms()

    def extra_repr(self) -> str:
        return (f"n_labels={self.n_labels}, alpha={self.alpha:.4g}, mu={self.mu:.4g}, "
                f"{'targeted' if self.targeted else 'untargeted'}, "
                f"exclude_predicted={self.exclude_predicted}")
