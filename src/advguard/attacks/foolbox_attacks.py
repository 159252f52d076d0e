"""Adapters to **foolbox 3.3.4** (Rauber, Zimmermann, Bethge, Brendel, JOSS 2020) behind advguard's
:class:`~advguard.attacks.base.Attack` protocol: Carlini–Wagner L2, DDN, HopSkipJump, Boundary and
GenAttack.

foolbox is optional (``pip install 'advguard[eval]'``); it is imported when an adapter runs, never
when advguard is imported. Each adapter wraps the model in ``foolbox.PyTorchModel(model,
bounds=(0, 1), device=x.device)``, builds the criterion ``Misclassification(y)`` (or
``TargetedMisclassification(target)`` when called with ``target=``), calls the attack with
``epsilons=eps`` and returns foolbox's *clipped* adversarials (perturbations projected onto the
ε-ball; the base class then verifies them and decides success with the model). Under advguard's
rules:

* **randomness** — foolbox draws from torch's global RNG (through eagerpy) and numpy's global RNG
  (GenAttack). Both are seeded from the attack's ``generator`` (a fixed generator gives identical
  results on a deterministic model) and restored afterwards, so the caller's global RNG states are
  unchanged (:func:`~advguard.attacks.autoattack.isolated_global_rng`);
* **the model** is used as given: its train/eval mode is not changed (foolbox expects eval mode
  — put the model in eval mode yourself), it is not moved, and its parameters are frozen while
  foolbox runs (eagerpy takes input gradients with ``loss.backward()``, which would otherwise
  accumulate into the parameters' ``.grad``);
* **output** — foolbox's warnings are logged at INFO on ``advguard.attacks.foolbox_attacks``;
  errors propagate.

Decision-based attacks (HopSkipJump, Boundary) need an adversarial starting point. By default it
is found with foolbox's own default, ``LinearSearchBlendedUniformNoiseAttack`` (50 blending
steps), run here rather than inside foolbox because foolbox raises ``ValueError`` for the whole
batch when it fails for a single input; inputs without a starting point are returned unchanged
(the base then reports them as not fooled). With ``start_from`` (a pool of training images, as
MI-OL's and POST's: ``{"dataset": "fashion-mnist"}``) an input starts instead from the nearest,
in the attack's norm, of ``start_candidates`` pool images of other classes (of the target class
when targeted) that the model classifies adversarially — real images, which a model rarely
assigns to one class the way it may assign all uniform noise, at the cost of
``start_candidates`` queries and no blending search; inputs none of whose candidates is
adversarial fall back to the noise search.

On a model that declares ``traits.randomized`` the decision flips between identical queries, which
breaks both attacks, so they query a :class:`~advguard.attacks.wrappers.MajorityVote` over
``vote_samples`` draws instead — and, because HopSkipJump re-queries the points of its binary
search and *asserts* that they are still adversarial, while a vote taken on the decision boundary
is still a coin flip, a repeated query is answered with the first vote taken at that point (the
attack sees one fixed realization of the voted decision; queries answered from memory are not
counted).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks.autoattack import (
    import_optional,
    isolated_global_rng,
    library_output,
    library_seed,
)
from advguard.attacks.base import ATTACKS, Attack, Norm
from advguard.attacks.wrappers import MajorityVote
from advguard.data import ImageDataset
from advguard.errors import ConfigError
from advguard.utils import frozen_params

LOG = logging.getLogger(__name__)
_BLEND_STEPS = 50  # foolbox's default for the start of HopSkipJump and Boundary


class _AsGiven(nn.Module):
    """The model as foolbox sees it: an eval-mode module without parameters of its own that calls
    the model. ``PyTorchModel`` calls ``.to(device)`` on the module it gets and warns when that
    module is in training mode; this keeps the first away from the caller's model and the second
    away from advguard's internal wrappers (the model itself runs as given)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._call = model.__call__  # a bound method, not a registered submodule
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(x)


class _FirstAnswer(nn.Module):
    """Answer a repeated query with the class first returned for that exact input (one-hot
    scores), so that a randomized decision is consistent across identical queries. Remembers the
    last ``capacity`` distinct inputs (a repeated query in HopSkipJump is a recent one)."""

    def __init__(self, model: nn.Module, capacity: int = 2**18) -> None:
        super().__init__()
        self.model = model
        self.capacity = capacity
        self._answers: dict[bytes, int] = {}
        self._classes = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().flatten(1).cpu().numpy()
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]
        new = [i for i, key in enumerate(keys) if key not in self._answers]
        if new:
            scores = self.model(x[new])
            self._classes = int(scores.shape[-1])
            for i, label in zip(new, scores.argmax(-1).tolist()):
                self._answers[keys[i]] = label
            while len(self._answers) > self.capacity:
                del self._answers[next(iter(self._answers))]
        labels = torch.tensor([self._answers[key] for key in keys], device=x.device)
        return F.one_hot(labels, self._classes).to(x.dtype)


def _is_randomized(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "traits", None), "randomized", False))


def _hits(scores: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = scores.argmax(-1)
    return pred == labels if targeted else pred != labels


class _Foolbox(Attack):
    """Shared run of a foolbox attack (not registered). Subclasses implement :meth:`_build`."""

    name: ClassVar[str] = "foolbox"
    decision_based: ClassVar[bool] = False
    needs_target: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        norms = ATTACKS.metadata(self.name)["norms"]
        if self.norm not in norms:
            raise ConfigError(f"attack {self.name!r} supports norms {norms}, got {self.norm!r}")
        for key in ("steps", "binary_search_steps", "initial_gradient_eval_steps",
                    "max_gradient_eval_steps", "population", "vote_samples", "start_candidates"):
            value = getattr(self, key, 1)
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        pool = getattr(self, "start_from", None)
        if pool is not None:  # checked (and loaded: cached) before any query
            if not isinstance(pool, (str, Mapping, ImageDataset)):
                raise ConfigError(f"start_from must be a pool spec (e.g. {{dataset: "
                                  f"fashion-mnist}}) or a dataset, got {type(pool).__name__} "
                                  f"{pool!r:.60}")
            from advguard.defenses.mixup_inference import pool_tensors

            pool_tensors(pool, role="starting-point pool")

    def _build(self, fb: Any) -> Any:
        """The configured foolbox attack object."""
        raise NotImplementedError

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if self.needs_target and target is None:
            raise ConfigError(f"{self.name} is targeted only: call it with target= (labels, "
                              "'random' or 'least_likely')")
        fb = import_optional("foolbox", needed_by=f"attack {self.name!r}")
        attack = self._build(fb)
        seed = library_seed(generator)
        with isolated_global_rng(seed), library_output(["foolbox", "eagerpy"], logger=LOG), \
                frozen_params(model):
            if self.decision_based:
                adv = self._run_decision(fb, attack, model, x, y, target)
            else:
                fmodel = fb.PyTorchModel(_AsGiven(model), bounds=(0, 1), device=x.device)
                _, adv, _ = attack(fmodel, x, _criterion(fb, y, target), epsilons=self.eps)
        return adv.detach()

    def _run_decision(self, fb: Any, attack: Any, model: nn.Module, x: torch.Tensor,
                      y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if _is_randomized(model):
            model = _FirstAnswer(MajorityVote(model, samples=int(getattr(self, "vote_samples",
                                                                         15))))
        fmodel = fb.PyTorchModel(_AsGiven(model), bounds=(0, 1), device=x.device)
        labels, targeted = (y, False) if target is None else (target, True)
        starts = x.clone()
        noise = torch.ones(len(x), dtype=torch.bool, device=x.device)
        wrong: torch.Tensor | None = None  # the clean inputs the model already gets wrong
        pool = getattr(self, "start_from", None)
        if pool is not None:  # inputs the model already gets wrong need no start
            with torch.no_grad():
                wrong = _hits(model(x), labels, targeted)
            noise = ~wrong
            rows = noise.nonzero().flatten()
            if rows.numel():
                found_starts, found = _data_starts(
                    model, x[rows], labels[rows], targeted, pool,
                    int(getattr(self, "start_candidates", 20)), self.norm)
                starts[rows] = found_starts
                noise[rows[found]] = False
        if noise.any():  # foolbox's default: blended uniform noise
            rows = noise.nonzero().flatten()
            init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=_BLEND_STEPS)
            starts[rows] = init.run(fmodel, x[rows], _criterion(
                fb, y[rows], None if target is None else target[rows])).to(starts.dtype)
        with torch.no_grad():
            if wrong is None:
                wrong = _hits(model(x), labels, targeted)
            todo = ~wrong & _hits(model(starts), labels, targeted)
        adv = x.clone()
        idx = todo.nonzero().flatten()
        if idx.numel():
            criterion = _criterion(fb, y[idx], None if target is None else target[idx])
            _, found, _ = attack(fmodel, x[idx], criterion, epsilons=self.eps,
                                 starting_points=starts[idx])
            adv[idx] = found.to(adv.dtype)
        return adv


StartPool = str | Mapping[str, Any] | ImageDataset


def _data_starts(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
                 pool: StartPool | tuple[torch.Tensor, torch.Tensor], candidates: int,
                 norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting points from a pool of training images: per input, ``candidates`` pool images of
    another class (untargeted; of ``labels`` when targeted) drawn uniformly from torch's global
    RNG (seeded by the attack), queried in one batch; the nearest adversarial one in ``norm``.
    Returns ``(starts, found)``: ``starts`` holds ``x`` where ``found`` is False."""
    from advguard.defenses.mixup_inference import pool_tensors

    images, pool_labels = pool_tensors(pool, role="starting-point pool")
    if tuple(images.shape[1:]) != tuple(x.shape[1:]):
        raise ConfigError(f"starting-point pool images are {tuple(images.shape[1:])}, the inputs "
                          f"{tuple(x.shape[1:])}: the pool must come from the inputs' dataset")
    pool_labels = pool_labels.to(labels.device)
    rows = []
    for label in labels.tolist():
        eligible = ((pool_labels == label) if targeted else (pool_labels != label)
                    ).nonzero().flatten()
        if len(eligible) == 0:
            raise ConfigError(f"the starting-point pool has no image of "
                              f"{'class' if targeted else 'a class other than'} {label}")
        rows.append(eligible[torch.randint(len(eligible), (candidates,)).to(eligible.device)])
    idx = torch.stack(rows).cpu()                                    # (B, candidates)
    cand = images[idx.flatten()].to(device=x.device, dtype=x.dtype)  # (B·candidates, C, H, W)
    with torch.no_grad():
        hit = _hits(model(cand), labels.repeat_interleave(candidates), targeted)
    hit = hit.view(len(x), candidates)
    diff = (cand.view(len(x), candidates, -1) - x.flatten(1)[:, None])
    dist = diff.abs().amax(2) if norm == "linf" else diff.norm(dim=2)
    best = dist.masked_fill(~hit, float("inf")).argmin(1)
    found = hit.any(1)
    chosen = cand.view(len(x), candidates, *x.shape[1:])[torch.arange(len(x)), best]
    starts = torch.where(found.view(-1, *([1] * (x.dim() - 1))), chosen, x)
    return starts, found


def _criterion(fb: Any, y: torch.Tensor, target: torch.Tensor | None) -> Any:
    if target is None:
        return fb.criteria.Misclassification(y)
    return fb.criteria.TargetedMisclassification(target)


# --------------------------------------------------------------------------- gradient-based
@ATTACKS.register("cw-l2", source="foolbox", kind="gradient", norms=("l2",), targets="optional",
                  paper="Carlini & Wagner, IEEE S&P 2017")
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2(_Foolbox):
    """Carlini–Wagner L2: minimize ``‖δ‖² + c·margin`` with Adam in tanh space, binary-searching
    the constant ``c``; the minimal perturbation found is then projected onto the ε-ball.

    Paper: Carlini & Wagner, "Towards evaluating the robustness of neural networks", IEEE S&P
    2017. Library: foolbox 3.3.4 (``L2CarliniWagnerAttack``). Inputs (N,C,H,W) in [0, 1], model
    outputs logits (N,K).

    Args (library defaults): ``eps`` (L2); ``steps`` (10000 per binary-search step);
    ``binary_search_steps`` (9); ``confidence`` (0, the logit margin required); ``lr`` (0.01,
    Adam step size — foolbox's ``stepsize``); ``initial_const`` (1e-3); ``abort_early`` (True).
    Targeted when called with ``target=``.

    Example::

        result = CarliniWagnerL2(eps=0.5, steps=1000)(model, x, y)
    """

    name = "cw-l2"
    norm: Norm = "l2"
    steps: int = 10000
    binary_search_steps: int = 9
    confidence: float = 0.0
    lr: float = 0.01
    initial_const: float = 1e-3
    abort_early: bool = True

    def _build(self, fb: Any) -> Any:
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, stepsize=self.lr,
            confidence=self.confidence, initial_const=self.initial_const,
            abort_early=self.abort_early)


@ATTACKS.register("ddn", source="foolbox", kind="gradient", norms=("l2",), targets="optional",
                  paper="Rony et al., CVPR 2019")
@dataclass(frozen=True, kw_only=True)
class DDN(_Foolbox):
    """Decoupled Direction and Norm: gradient steps on the cross-entropy with the L2 norm of the
    perturbation adjusted separately (shrunk by ``gamma`` when adversarial, grown otherwise).

    Paper: Rony, Hafemann, Oliveira, Ben Ayed, Sabourin, Granger, "Decoupling direction and norm
    for efficient gradient-based L2 adversarial attacks and defenses", CVPR 2019. Library:
    foolbox 3.3.4 (``DDNAttack``). Inputs (N,C,H,W) in [0, 1], model outputs logits (N,K).

    Args (library defaults): ``eps`` (L2); ``steps`` (100); ``gamma`` (0.05); ``init_epsilon``
    (1.0, the initial norm). Targeted when called with ``target=``.

    Example::

        result = DDN(eps=0.5, steps=100)(model, x, y)
    """

    name = "ddn"
    norm: Norm = "l2"
    steps: int = 100
    gamma: float = 0.05
    init_epsilon: float = 1.0

    def _build(self, fb: Any) -> Any:
        return fb.attacks.DDNAttack(init_epsilon=self.init_epsilon, steps=self.steps,
                                    gamma=self.gamma)


# --------------------------------------------------------------------------- decision-based
@ATTACKS.register("hsj", source="foolbox", kind="decision", norms=("l2", "linf"),
                  targets="optional", paper="Chen, Jordan, Wainwright, IEEE S&P 2020")
@dataclass(frozen=True, kw_only=True)
class HopSkipJump(_Foolbox):
    """HopSkipJump: a decision-based (hard-label) attack that estimates the gradient at the
    decision boundary from label queries, steps along it and binary-searches back to the
    boundary.

    Paper: Chen, Jordan, Wainwright, "HopSkipJumpAttack: a query-efficient decision-based
    attack", IEEE S&P 2020. Library: foolbox 3.3.4 (``HopSkipJumpAttack``). Inputs (N,C,H,W) in
    [0, 1]; only the model's argmax is used.

    Args (library defaults): ``eps``; ``norm`` ("l2", the library's default, | "linf");
    ``steps`` (64); ``initial_gradient_eval_steps`` (100); ``max_gradient_eval_steps`` (10000);
    ``gamma`` (1.0, binary-search threshold factor); ``stepsize_search``
    ("geometric_progression" | "grid_search"); ``vote_samples`` (15): a model that declares
    ``traits.randomized`` is queried through a majority vote over this many draws, a repeated
    query being answered with its first vote (see the module docstring). Starting points come
    from foolbox's blended uniform noise search, or with ``start_from`` (a pool spec of training
    images; None) from the nearest adversarial one of ``start_candidates`` (20) pool images (see
    the module docstring); inputs for which none is found are returned unchanged. Targeted when
    called with ``target=``.

    Example::

        result = HopSkipJump(eps=1.0, steps=20)(model, x, y)
        result = HopSkipJump(eps=1.0)(Pipeline([GaussianNoise(sigma=0.1)], model), x, y)  # voted
        result = HopSkipJump(eps=0.1, norm="linf", start_from={"dataset": "fashion-mnist"})(
            model, x, y)
    """

    name = "hsj"
    decision_based = True
    norm: Norm = "l2"
    steps: int = 64
    initial_gradient_eval_steps: int = 100
    max_gradient_eval_steps: int = 10000
    gamma: float = 1.0
    stepsize_search: Literal["geometric_progression", "grid_search"] = "geometric_progression"
    vote_samples: int = 15
    start_from: StartPool | None = None
    start_candidates: int = 20

    def _build(self, fb: Any) -> Any:
        return fb.attacks.HopSkipJumpAttack(
            steps=self.steps, initial_gradient_eval_steps=self.initial_gradient_eval_steps,
            max_gradient_eval_steps=self.max_gradient_eval_steps,
            stepsize_search=self.stepsize_search, gamma=self.gamma, constraint=self.norm)


@ATTACKS.register("boundary", source="foolbox", kind="decision", norms=("l2",),
                  targets="optional", paper="Brendel, Rauber, Bethge, ICLR 2018")
@dataclass(frozen=True, kw_only=True)
class Boundary(_Foolbox):
    """Boundary attack: a random walk along the decision boundary (orthogonal steps, then steps
    towards the original) that starts from an adversarial point and shrinks the L2 distance.

    Paper: Brendel, Rauber, Bethge, "Decision-based adversarial attacks: reliable attacks against
    black-box machine learning models", ICLR 2018. Library: foolbox 3.3.4 (``BoundaryAttack``).
    Inputs (N,C,H,W) in [0, 1]; only the model's argmax is used.

    Args (library defaults): ``eps`` (L2); ``steps`` (25000); ``spherical_step`` (0.01);
    ``source_step`` (0.01); ``source_step_convergence`` (1e-7); ``step_adaptation`` (1.5);
    ``update_stats_every_k`` (10); ``vote_samples`` (15): a model that declares
    ``traits.randomized`` is queried through a majority vote over this many draws, as for
    :class:`HopSkipJump`. Starting points as for :class:`HopSkipJump` (``start_from``,
    ``start_candidates``). Targeted when called with ``target=``.

    Example::

        result = Boundary(eps=1.0, steps=1000)(model, x, y)
    """

    name = "boundary"
    decision_based = True
    norm: Norm = "l2"
    steps: int = 25000
    spherical_step: float = 0.01
    source_step: float = 0.01
    source_step_convergence: float = 1e-7
    step_adaptation: float = 1.5
    update_stats_every_k: int = 10
    vote_samples: int = 15
    start_from: StartPool | None = None
    start_candidates: int = 20

    def _build(self, fb: Any) -> Any:
        return fb.attacks.BoundaryAttack(
            steps=self.steps, spherical_step=self.spherical_step, source_step=self.source_step,
            source_step_convergance=self.source_step_convergence,
            step_adaptation=self.step_adaptation, update_stats_every_k=self.update_stats_every_k)


# --------------------------------------------------------------------------- score-based
@ATTACKS.register("genattack", source="foolbox", kind="score", norms=("linf",),
                  targets="required", paper="Alzantot et al., GECCO 2019")
@dataclass(frozen=True, kw_only=True)
class GenAttack(_Foolbox):
    """GenAttack: a genetic algorithm over L∞ noise (population, elitism, crossover, mutation)
    that uses the model's scores only.

    Paper: Alzantot, Sharma, Chakraborty, Zhang, Hsieh, Srivastava, "GenAttack: practical
    black-box attacks with gradient-free optimization", GECCO 2019. Library: foolbox 3.3.4
    (``GenAttack``). Inputs (N,C,H,W) in [0, 1], model outputs logits (N,K).

    Targeted only (foolbox's GenAttack accepts only ``TargetedMisclassification``): calling it
    without ``target=`` raises :class:`ConfigError`. Args (library defaults): ``eps`` (L∞);
    ``steps`` (1000 generations; each costs ``population`` queries); ``population`` (10);
    ``mutation_probability`` (0.1); ``mutation_range`` (0.15); ``sampling_temperature`` (0.3).
    Noise is searched at full resolution (foolbox's ``reduced_dims=None``).

    Example::

        result = GenAttack(eps=8/255, steps=200)(model, x, y, target="random")
    """

    name = "genattack"
    needs_target = True
    steps: int = 1000
    population: int = 10
    mutation_probability: float = 0.10
    mutation_range: float = 0.15
    sampling_temperature: float = 0.3

    def _build(self, fb: Any) -> Any:
        return fb.attacks.GenAttack(
            steps=self.steps, population=self.population,
            mutation_probability=self.mutation_probability, mutation_range=self.mutation_range,
            sampling_temperature=self.sampling_temperature)
