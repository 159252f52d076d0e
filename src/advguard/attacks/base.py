"""The attack protocol: a threat model, a result record, and a base class whose final
``__call__`` owns validation, target resolution, clipping, verification and bookkeeping, so that a
subclass implements one method, :meth:`Attack.perturb` (house rule 1, after foolbox 3).

Every result is verified: finite, inside the bounds and inside its threat model — the ε-ball of
:class:`ThreatModel` for most attacks (float tolerance ``1e-6``). A violation raises
:class:`~advguard.errors.AttackVerificationError` — it is a bug, never a number.

Threat models that are not an ε-ball (a patch mask, a spatial warp) subclass :class:`Threat`: the
base owns the shared checks (shape, finite, bounds) and a subclass implements one hook,
:meth:`Threat.check`. A threat model that cannot be checked from ``(x_adv, x)`` alone names the
*evidence* it needs (:attr:`Threat.evidence`, e.g. stAdv's flow field); an attack under it returns
that evidence from :meth:`Attack.perturb_evidenced`, and the verified evidence comes back in
:attr:`AttackResult.evidence`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, final

import torch
from torch import nn

from advguard.errors import AttackVerificationError, ConfigError, InputValidationError
from advguard.registry import Registry
from advguard.rng import rand_rows
from advguard.utils import check_images, check_labels

Norm = Literal["linf", "l2"]
Target = torch.Tensor | Literal["least_likely", "random"] | None
NORMS: tuple[str, ...] = ("linf", "l2")
TOLERANCE = 1e-6


class Threat(abc.ABC):
    """A threat model: which inputs an attack may return for clean inputs ``x``.

    The final :meth:`verify` checks what every threat model requires — the shape of ``x``,
    finite values, values inside :attr:`bounds`, the named :attr:`evidence` present — and then
    calls the one hook, :meth:`check`, for what this threat model adds. :meth:`project` maps a
    candidate into the threat model (default: clip to the bounds) and :meth:`unperturbed` gives
    the evidence that describes ``x`` itself (an attack's result for an example the model already
    misclassifies is ``x``).

    Example (a threat model that allows no change at all)::

        @dataclass(frozen=True)
        class Nothing(Threat):
            bounds: tuple[float, float] = (0.0, 1.0)

            def check(self, x_adv, x, evidence, *, who):
                if not torch.equal(x_adv, x):
                    raise AttackVerificationError(f"{who} changed its input")
    """

    bounds: tuple[float, float]
    #: names of the tensors (first dimension N) an attack must hand over with its result
    evidence: ClassVar[tuple[str, ...]] = ()

    @final
    def verify(self, x_adv: torch.Tensor, x: torch.Tensor, *, who: str = "attack",
               evidence: Mapping[str, torch.Tensor] | None = None) -> None:
        """Raise :class:`AttackVerificationError` unless ``x_adv`` has the shape of ``x``, is
        finite and in bounds (tolerance 1e-6), the :attr:`evidence` is there, and :meth:`check`
        passes."""
        if x_adv.shape != x.shape:
            raise AttackVerificationError(
                f"{who} returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x_adv).all()):
            raise AttackVerificationError(f"{who} returned non-finite values")
        lo, hi = self.bounds
        if bool((x_adv < lo - TOLERANCE).any()) or bool((x_adv > hi + TOLERANCE).any()):
            raise AttackVerificationError(
                f"{who} left the bounds {self.bounds}: values in "
                f"[{float(x_adv.min()):.6g}, {float(x_adv.max()):.6g}]")
        evidence = dict(evidence or {})
        missing = [name for name in self.evidence if name not in evidence]
        if missing:
            raise AttackVerificationError(
                f"{who} did not hand over the evidence its threat model "
                f"{type(self).__name__} verifies it by: {', '.join(missing)}")
        for name in self.evidence:
            value = evidence[name]
            if not isinstance(value, torch.Tensor) or value.ndim < 1 \
                    or value.shape[0] != x.shape[0]:
                raise AttackVerificationError(
                    f"{who}: evidence {name!r} must be a tensor with one row per example "
                    f"({x.shape[0]}), got "
                    f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)}")
            if not bool(torch.isfinite(value).all()):
                raise AttackVerificationError(f"{who}: evidence {name!r} is not finite")
        self.check(x_adv, x, evidence, who=who)

    @abc.abstractmethod
    def check(self, x_adv: torch.Tensor, x: torch.Tensor, evidence: Mapping[str, torch.Tensor],
              *, who: str) -> None:
        """Raise :class:`AttackVerificationError` unless ``x_adv`` (same shape as ``x``, finite,
        in bounds) is inside this threat model around ``x``, as ``evidence`` shows."""

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A point of the threat model near ``x_adv`` (default: ``x_adv`` clipped to the
        bounds)."""
        return x_adv.clamp(*self.bounds)

    def unperturbed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The evidence that shows ``x`` itself is inside the threat model (default: none)."""
        return {}


@dataclass(frozen=True)
class ThreatModel(Threat):
    """Perturbations ``δ`` with ``‖δ‖_norm ≤ eps`` and ``x + δ`` inside ``bounds``.

    Example::

        threat = ThreatModel("linf", 8 / 255)
        threat.verify(x_adv, x)            # raises AttackVerificationError outside the ball
    """

    norm: Norm = "linf"
    eps: float = 8 / 255
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; use one of {NORMS}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps)) or self.eps < 0:
            raise ConfigError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.norm == "linf" and self.eps > self.bounds[1] - self.bounds[0]:
            raise ConfigError(
                f"eps={self.eps:g} exceeds the pixel range {self.bounds} for an L-inf budget "
                f"(every image would be reachable); for images in [0, 1] write e.g. "
                f"{self.eps:g}/255 = {self.eps / 255:.4f}")
        lo, hi = self.bounds
        if not lo < hi:
            raise ConfigError(f"bounds must satisfy low < high, got {self.bounds}")

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example ``‖x_adv − x‖`` in this norm, shape (N,)."""
        d = (x_adv - x).flatten(1)
        if self.norm == "linf":
            return d.abs().amax(1) if d.shape[1] else d.new_zeros(d.shape[0])
        return d.norm(p=2, dim=1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project onto the ε-ball around ``x`` and then into the bounds (for L∞ this is the exact
        projection onto the intersection; for L2 the ball projection is followed by clipping,
        which keeps the result inside both)."""
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            factor = (self.eps / norms).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
            delta = delta * factor
        return (x + delta).clamp(*self.bounds)

    def check(self, x_adv: torch.Tensor, x: torch.Tensor, evidence: Mapping[str, torch.Tensor],
              *, who: str) -> None:
        """Inside the ball (tolerance 1e-6, plus a relative 1e-5 of ε for accumulated float
        error)."""
        if x.shape[0]:
            dist = float(self.distance(x_adv.double(), x.double()).max())
            if dist > self.eps * (1 + 1e-5) + TOLERANCE:
                raise AttackVerificationError(
                    f"{who} left its {self.norm} ε-ball: distance {dist:.8g} > eps {self.eps:.8g}")


@dataclass(frozen=True)
class Evidenced:
    """Candidate adversarial inputs ``adv`` (N,C,H,W) with the ``evidence`` their threat model
    verifies them by (names as in :attr:`Threat.evidence`; e.g. ``{"flow": (N,2,H,W)}``)."""

    adv: torch.Tensor
    evidence: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns.

    ``adv``: adversarial inputs (N,C,H,W), verified. ``success``: (N,) bool — the model's
    prediction on ``adv`` is wrong (untargeted) or the target (targeted), in one evaluation (for a
    randomized model, one draw). ``target``: the targets, or None. ``queries``: forward passes per
    example, averaged over the batch (gradient and prediction calls). ``iterations``: attack steps
    per restart. ``info``: attack-specific extras. ``evidence``: what the attack's threat model
    verified ``adv`` by, beyond ``adv`` itself (empty for ε-ball attacks; stAdv's flow field).
    """

    adv: torch.Tensor
    success: torch.Tensor
    target: torch.Tensor | None
    queries: float
    iterations: int
    info: dict[str, Any] = field(default_factory=dict)
    evidence: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")


class QueryCounter(nn.Module):
    """Wraps a model and counts the examples it is asked to classify (its ``queries``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.examples = 0
        self.traits = getattr(model, "traits", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.examples += int(x.shape[0])
        return self.model(x)

    def expected_loss(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                      loss: Any) -> torch.Tensor:
        """Forward :class:`~advguard.attacks.wrappers.EOT`'s expectation (counting every draw)."""
        inner = getattr(self.model, "expected_loss", None)
        if callable(inner):
            self.examples += int(x.shape[0]) * int(getattr(self.model, "samples", 1))
            return inner(x, y, target, loss)
        return loss(self(x), y, target)


def _output_kind(model: nn.Module) -> str:
    traits = getattr(model, "traits", None)
    return str(getattr(traits, "output", "logits"))


class LogitsOf(nn.Module):
    """Present a probability-output model as a logits model (``log p``; softmax(log p) = p)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        inner = getattr(model, "traits", None)
        self.traits = dataclasses.replace(inner, output="logits") if inner is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).clamp_min(1e-12).log()


def as_logits_model(model: nn.Module) -> nn.Module:
    """``model`` unchanged if it outputs logits, else wrapped in :class:`LogitsOf`."""
    return LogitsOf(model) if _output_kind(model) == "probs" else model


@dataclass(frozen=True, kw_only=True)
class Attack(abc.ABC):
    """Base class: an attack within a threat model ``(norm, eps, bounds=(0, 1))``.

    Subclasses are frozen keyword-only dataclasses (their fields are their hyper-parameters, with
    uniform names ``eps``, ``alpha``, ``steps``) and implement :meth:`perturb`.

    Calling ``attack(model, x, y, target=None, generator=None)``:

    * ``model``: nn.Module mapping (N,C,H,W) in [0,1] to scores (N,K) (logits; a defense that
      declares ``traits.output == "probs"`` is converted to log-probabilities);
    * ``x``: float (N,C,H,W) in [0,1]; ``y``: int64 (N,) true labels;
    * ``target``: None (untargeted), a tensor of target labels, ``"least_likely"`` (the class with
      the lowest clean score) or ``"random"`` (uniform over the other classes);
    * ``generator``: the source of all randomness (a fresh unseeded one if None).

    The model is used as given (its train/eval mode is not changed); input gradients are taken
    with ``torch.autograd.grad``, so no parameter ``.grad`` is touched.
    """

    name: ClassVar[str] = "attack"
    eps: float
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        from advguard.typecheck import check_values

        check_values(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                     what=f"attack {self.name!r}")
        ThreatModel(self.norm, self.eps)  # validates norm and eps

    @property
    def threat(self) -> Threat:
        """The threat model every result is verified against: the ε-ball ``(norm, eps)`` unless
        the attack declares another (a patch mask, a flow bound)."""
        return ThreatModel(self.norm, self.eps)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if isinstance(value, (int, float, str, bool, type(None), tuple,
                                                      list, dict)) else type(value).__name__
        return out

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in vars(cls):
            raise TypeError(f"{cls.__name__} overrides Attack.__call__, which is final "
                            "(implement perturb)")

    @abc.abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """Return candidate adversarial inputs for ``x`` (same shape). ``target`` is None for
        untargeted attacks. The base class verifies and clips the result."""

    def perturb_evidenced(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          target: torch.Tensor | None, generator: torch.Generator
                          ) -> Evidenced:
        """:meth:`perturb` with the evidence :attr:`threat` verifies it by (what ``__call__``
        runs). The default hands over none; an attack whose threat model names evidence
        (:attr:`Threat.evidence`) overrides this and derives :meth:`perturb` from it."""
        return Evidenced(self.perturb(model, x, y, target=target, generator=generator))

    @final
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 target: Target = None, generator: torch.Generator | None = None
                 ) -> AttackResult:
        check_images(x)
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
            raise InputValidationError(
                f"labels must be a tensor of shape ({x.shape[0]},), got "
                f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
        check_labels(y, x.shape[0])
        y = y.to(x.device)
        if generator is None:
            generator = torch.Generator(device=x.device)
            generator.seed()
        elif generator.device != x.device:
            raise InputValidationError(
                f"generator is on {generator.device} but inputs are on {x.device}")
        counter = QueryCounter(as_logits_model(model))
        try:
            with torch.no_grad():
                clean_logits = counter(x)
        except RuntimeError as exc:  # e.g. 3-channel images for a 1-channel model
            first = str(exc).strip().splitlines()[0]
            raise InputValidationError(f"{self.name} attack: the model cannot take inputs of "
                                       f"shape {tuple(x.shape)}: {first}") from None
        if not isinstance(clean_logits, torch.Tensor) or clean_logits.ndim != 2 \
                or clean_logits.shape[0] != x.shape[0]:
            shape = tuple(clean_logits.shape) if isinstance(clean_logits, torch.Tensor) \
                else type(clean_logits).__name__
            raise InputValidationError(f"{self.name} attack: the model must return scores of "
                                       f"shape (N, classes) = ({x.shape[0]}, K), got {shape}")
        if not bool(torch.isfinite(clean_logits).all()):
            raise InputValidationError(f"{self.name} attack: the model returns NaN or infinite "
                                       "scores on the clean inputs; an attack on it means nothing")
        num_classes = clean_logits.shape[1]
        check_labels(y, x.shape[0], num_classes)
        resolved = resolve_target(target, clean_logits, y, generator, x=x)

        original = x.clone()  # the check must not trust a tensor the attack could modify
        threat = self.threat
        crafted = self.perturb_evidenced(counter, x, y, target=resolved, generator=generator)
        adv, evidence = crafted.adv, {k: v.detach() if isinstance(v, torch.Tensor) else v
                                      for k, v in crafted.evidence.items()}
        if not torch.equal(x, original):
            raise AttackVerificationError(f"{self.name} attack modified its input tensor in "
                                          "place; attacks must return new tensors")
        threat.verify(adv, x, who=f"{self.name} attack", evidence=evidence)
        adv = threat.project(adv.detach().to(x.dtype), x)

        with torch.no_grad():
            adv_pred = counter(adv).argmax(1)
            clean_pred = clean_logits.argmax(1)
        if resolved is None:
            success = adv_pred != y
            # an input the model already gets wrong is its own adversarial example
            keep_clean = ~success & (clean_pred != y)
        else:
            success = adv_pred == resolved
            keep_clean = ~success & (clean_pred == resolved)
        if bool(keep_clean.any()):
            adv = torch.where(keep_clean.view(-1, 1, 1, 1), x, adv)
            success = success | keep_clean
            if evidence:  # those rows are x now: so must their evidence be
                unchanged = threat.unperturbed(x)
                evidence = {k: torch.where(keep_clean.view(-1, *([1] * (v.dim() - 1))),
                                           unchanged[k].to(v), v) if k in unchanged else v
                            for k, v in evidence.items()}
        return AttackResult(adv=adv, success=success, target=resolved,
                            queries=counter.examples / max(1, x.shape[0]),
                            iterations=int(getattr(self, "steps", 1)),
                            info={"attack": self.to_dict()}, evidence=evidence)


def resolve_target(target: Target, clean_logits: torch.Tensor, y: torch.Tensor,
                   generator: torch.Generator, *, x: torch.Tensor | None = None
                   ) -> torch.Tensor | None:
    """Turn the ``target`` argument into a label tensor (or None for untargeted); ``x``: the
    inputs, whose rows draw the random targets (per example inside the harness)."""
    n, k = clean_logits.shape
    if target is None:
        return None
    if isinstance(target, str):
        if target == "least_likely":
            return clean_logits.argmin(1)
        if target == "random":
            if x is not None:
                u = rand_rows(x, (), generator=generator, stream="target",
                              dtype=torch.float64).to(y.device)
                offset = 1 + (u * (k - 1)).floor().long().clamp_max(k - 2)
            else:
                offset = torch.randint(1, k, (n,), generator=generator,
                                       device=generator.device).to(y.device)
            return (y + offset) % k
        raise InputValidationError(
            f"target must be a tensor, 'least_likely', 'random' or None, got {target!r}")
    if not isinstance(target, torch.Tensor):
        raise InputValidationError(f"target must be a tensor of labels, got {type(target)}")
    target = target.to(y.device)
    check_labels(target, n, k, name="targets")
    return target


# --------------------------------------------------------------------------- registry
ATTACKS: Registry[type[Attack]] = Registry("attack")


def make_attack(name: str, **kwargs: Any) -> Attack:
    """Instantiate a registered attack from keyword arguments (e.g. from a config)."""
    from advguard.typecheck import coerce_numbers

    cls = ATTACKS.get(name)
    kwargs = coerce_numbers(cls, kwargs)  # alpha: "2/255"
    try:
        return cls(**kwargs)
    except TypeError as exc:
        allowed = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"bad arguments for attack {name!r}: {exc} (allowed: {allowed})") \
            from None
