"""The defense protocol: what a defense is and what it declares to an attacker (house rule 2).

Two kinds of module:

* :class:`Transform` — a preprocessing defense mapping images in [0,1] to images in [0,1]
  (bit-depth reduction, Gaussian noise, random resize+pad, ...). One hook:
  :meth:`Transform.transform`.
* :class:`Defense` — maps images in [0,1] to class scores (logits, or probabilities when
  ``traits.output == "probs"``). One hook: :meth:`Defense.predict`. A plain classifier becomes a
  defense with :class:`Undefended`; transforms in front of a classifier form a :class:`Pipeline`,
  whose traits are derived from its parts.

Both declare :class:`Traits`: whether the output is **randomized** (EOT and repeated evaluation are
needed), whether they are **differentiable** end to end (otherwise a BPDA surrogate is used:
:meth:`surrogate` — identity unless a part declares a better differentiable approximation), whether
they are **dynamic** (run a gradient computation or optimization inside ``forward``; such code must
work under ``torch.no_grad()`` and inside an attack's graph without leaking gradients into it), and
the **base model** (the static classifier used by oblivious and transfer attacks).

Randomness comes only from generators the module owns (:class:`Randomness`), seeded by
``seed=`` or :meth:`reseed`, never from the global RNG — attack libraries reseed the global RNG.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from advguard.errors import ConfigError
from advguard.rng import Randomness, call_rows, derive_seed, is_randomized, mean_probs
from advguard.utils import check_images

__all__ = ["Averaged", "Defense", "Output", "Pipeline", "Randomness", "Traits", "Transform",
           "Undefended", "as_defense", "chosen_surrogate", "derive_seed",
           "gradient_inside_forward", "inside_defense", "surrogate_choice"]

Output = Literal["logits", "probs"]


@dataclass(frozen=True)
class Traits:
    """What an attacker needs to know about a defense or transform."""

    randomized: bool = False
    differentiable: bool = True
    dynamic: bool = False
    output: Output = "logits"

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def gradient_inside_forward(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                            differentiable: bool = True) -> torch.Tensor:
    """``∇ₓ loss(x)`` computed inside a dynamic defense's forward pass.

    Works when the caller runs under ``torch.no_grad()``. When ``differentiable`` and the caller
    is building a graph through ``x`` (``x.requires_grad`` with grad mode on), the gradient is
    itself differentiable (``create_graph=True``: attacks can double-backpropagate through the
    defense); otherwise it is computed on a detached copy and returned detached, so nothing leaks
    into the caller's graph. Parameter ``.grad`` fields are never touched (``autograd.grad``).
    ``loss`` maps (N,C,H,W) inputs to a scalar.
    """
    through = differentiable and torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        xin = x if through else x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(xin), xin, create_graph=through)
    return grad if through else grad.detach()


# --------------------------------------------------------------------------- transforms
_SURROGATE: contextvars.ContextVar[str | None] = contextvars.ContextVar("advguard_surrogate",
                                                                        default=None)


@contextlib.contextmanager
def surrogate_choice(name: str | None) -> Iterator[None]:
    """Within the context, BPDA passes use the surrogate ``name`` of transforms that offer it
    (:attr:`Transform.surrogates`) instead of their configured one (None: no change). Set by
    :class:`~advguard.attacks.wrappers.BPDA` for a cascade step that names a surrogate."""
    token = _SURROGATE.set(name)
    try:
        yield
    finally:
        _SURROGATE.reset(token)


#: the BPDA surrogate every transform offers: the identity in the backward pass, also for a
#: transform that is differentiable (a cascade step's ``bpda: identity``)
IDENTITY_SURROGATE = "identity"


def chosen_surrogate(default: str) -> str:
    """The surrogate a BPDA pass asks for (:func:`surrogate_choice`), else ``default``."""
    return _SURROGATE.get() or default


class Transform(Randomness):
    """A preprocessing defense: images (N,C,H,W) in [0,1] → images in [0,1] (same N, C).

    Subclasses set ``traits`` (class attribute or property) and implement :meth:`transform`;
    non-differentiable ones may override :meth:`surrogate` (default: identity) for BPDA, and
    those offering several surrogates list their names in :attr:`surrogates` (a cascade step may
    then pick one, :func:`surrogate_choice`).
    """

    traits: Traits = Traits()
    #: the BPDA surrogates a cascade step may name (``StepSpec.bpda``)
    surrogates: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, model: nn.Module, params: Mapping[str, Any]) -> Transform:
        """The registry's builder hook: a transform takes only its parameters."""
        return cls(**params)

    @classmethod
    def declared_traits(cls) -> Traits | None:
        """The traits every instance has, when the class fixes them (None otherwise)."""
        for klass in cls.__mro__:
            if klass is Transform:
                return None
            if isinstance(vars(klass).get("traits"), Traits):
                return vars(klass)["traits"]
        return None

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable approximation used by BPDA for the backward pass (default identity)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x, self.generator(x.device))

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        """Forward value of :meth:`forward`, gradient of :meth:`surrogate` (straight-through)
        where the transform is not differentiable. A differentiable transform keeps its exact
        gradient, unless the BPDA pass asks for the ``"identity"`` surrogate
        (:data:`IDENTITY_SURROGATE`, offered by every transform): then its backward pass is the
        identity too — the BPDA of a purifier that is differentiable (ADD-Defense's Sec. 4.3)."""
        identity = chosen_surrogate("") == IDENTITY_SURROGATE
        if self.traits.differentiable and not identity:
            return self.forward(x)
        approx = x if identity and IDENTITY_SURROGATE not in self.surrogates \
            else self.surrogate(x)
        with torch.no_grad():
            exact = self.forward(x)
        return approx + (exact - approx).detach()


# --------------------------------------------------------------------------- defenses
_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("advguard_inside_defense",
                                                               default=False)


@contextlib.contextmanager
def inside_defense() -> Iterator[None]:
    """Within the context, defense calls skip input validation: for code that feeds a defense
    inputs it made itself, legitimately outside [0, 1] (the smoothing's noisy inputs ``x + σ·η``
    given to an inner defense). Nested defense calls are inside automatically."""
    token = _INSIDE.set(True)
    try:
        yield
    finally:
        _INSIDE.reset(token)


class Defense(Randomness):
    """A defended classifier: images (N,C,H,W) in [0,1] → scores (N, K).

    Subclasses implement :meth:`predict` and declare ``traits`` and ``base_model``. Calling a
    defense validates its inputs once, at the outermost call (a floating-point (N, C, H, W) batch,
    finite, in [0, 1]; :class:`~advguard.errors.InputValidationError` otherwise): ``__call__`` is
    final, subclasses cannot override it.

    Registry hook: :meth:`from_spec` builds the defense from a spec's parameters around ``model``
    (default: ``cls(model, **params)``). Parameters naming trained parts or data (a checkpoint, a
    dataset) take paths or specs and are loaded and checked against ``model`` in the constructor,
    before any work starts (:func:`advguard.defenses.resources.load_checkpoint_part` and
    :func:`~advguard.defenses.resources.load_data_part`).
    """

    traits: Traits = Traits()
    #: what :meth:`forward_bpda` returns as value: ``"exact"`` (the defense's output, the
    #: straight-through convention) or ``"surrogate"`` (the surrogate's own value, e.g. the soft
    #: vote standing in for a hard vote)
    bpda_value: Literal["exact", "surrogate"] = "exact"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in vars(cls):
            raise TypeError(f"{cls.__name__} overrides Defense.__call__, which is final "
                            "(implement predict)")

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if _INSIDE.get():
            return super().__call__(x, *args, **kwargs)
        check_images(x, name=f"inputs to the {type(self).__name__} defense")
        _check_fits(self, x)
        with inside_defense(), call_rows(x):
            return super().__call__(x, *args, **kwargs)

    @classmethod
    def from_spec(cls, model: nn.Module, params: Mapping[str, Any]) -> Defense:
        """The registry's builder hook (see the class docstring)."""
        factory: Callable[..., Defense] = cls
        return factory(model, **params)

    @classmethod
    def declared_traits(cls) -> Traits | None:
        """The traits every instance has, when the class fixes them; None when they depend on
        the model and the parameters (read them from an instance)."""
        for klass in cls.__mro__:
            if klass in (Defense, Transform):
                return None
            if isinstance(vars(klass).get("traits"), Traits):
                return vars(klass)["traits"]
        return None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def base_model(self) -> nn.Module:
        """The static classifier the defense is built on (for oblivious and transfer attacks)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass with every non-differentiable part replaced, in the backward pass, by
        its declared surrogate. Defenses that are differentiable return :meth:`forward`."""
        if self.traits.differentiable:
            return self.forward(x)
        raise NotImplementedError(
            f"{type(self).__name__} is not differentiable and declares no BPDA surrogate")

    def transforms(self) -> Iterator[Transform]:
        """The preprocessing transforms in front of the classifier (none by default)."""
        return iter(())

    @property
    def draws_per_call(self) -> int:
        """How many draws of its randomness one call of the defense averages or votes over (1
        by default; a vote over ``m`` noisy copies: ``m``). Attack presets size their EOT in
        draws: ``⌈draws / draws_per_call⌉`` calls per gradient."""
        return 1


def inner_draws(part: nn.Module) -> int:
    """:attr:`Defense.draws_per_call` of ``part`` if it is a defense, else 1."""
    return part.draws_per_call if isinstance(part, Defense) else 1


class Undefended(Defense):
    """A plain classifier presented as a (trivial) defense: differentiable; randomized when the
    model draws noise itself (a PNI/CNI model), so that evaluations use EOT and repeated runs."""

    def __init__(self, model: nn.Module, *, output: Output = "logits") -> None:
        super().__init__()
        self.model = model
        self.traits = Traits(randomized=is_randomized(model), output=output)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def base_model(self) -> nn.Module:
        return self.model


def as_defense(model: nn.Module) -> Defense:
    """``model`` itself if it is a :class:`Defense`, else :class:`Undefended` around it."""
    return model if isinstance(model, Defense) else Undefended(model)


class Pipeline(Defense):
    """Transforms applied in order, then a classifier (a plain model or a :class:`Defense`).

    Traits are derived: randomized if any part is; differentiable only if all parts are; dynamic
    if any part is; the output type and base model are the classifier's.

    Example::

        defense = Pipeline([BitDepthReduction(bits=3)], model)
        defense.traits   # Traits(randomized=False, differentiable=False, ...)
    """

    def __init__(self, transforms: Sequence[Transform], classifier: nn.Module, *,
                 seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.steps = nn.ModuleList(transforms)
        self.classifier = classifier
        parts = [t.traits for t in transforms]
        head = classifier.traits if isinstance(classifier, Defense) else Traits()
        parts.append(head)
        self.traits = Traits(
            randomized=any(p.randomized for p in parts),
            differentiable=all(p.differentiable for p in parts),
            dynamic=any(p.dynamic for p in parts),
            output=head.output,
        )
        self.reseed(seed)

    @classmethod
    def from_spec(cls, model: nn.Module, params: Mapping[str, Any]) -> Pipeline:
        """``{"name": "pipeline", "steps": [spec, ...]}``: transforms in order, then ``model``;
        the last step may be a classifier-level defense (it then wraps ``model``)."""
        from advguard.defenses.registry import build_part

        unknown = sorted(set(params) - {"steps", "seed"})
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown} for defense 'pipeline' "
                              "(parameters: steps, seed)")
        steps = params.get("steps")
        if not isinstance(steps, Sequence) or isinstance(steps, str) or not steps:
            raise ConfigError("a 'pipeline' defense needs a non-empty 'steps' list of specs")
        transforms: list[Transform] = []
        classifier: nn.Module = model
        for i, step in enumerate(steps):
            part = build_part(step, model)
            if isinstance(part, Transform):
                transforms.append(part)
            elif i == len(steps) - 1:
                classifier = part
            else:
                raise ConfigError(f"pipeline step {i} ({_name_of(step)!r}) is a classifier-level"
                                  " defense; only the last step may be one")
        return cls(transforms, classifier, seed=int(params.get("seed", 0)))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return self.classifier(x)

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            assert isinstance(step, Transform)
            x = step.forward_bpda(x)
        if isinstance(self.classifier, Defense):
            return self.classifier.forward_bpda(x)
        return self.classifier(x)

    @property
    def base_model(self) -> nn.Module:
        if isinstance(self.classifier, Defense):
            return self.classifier.base_model
        return self.classifier

    @property
    def draws_per_call(self) -> int:
        return inner_draws(self.classifier)

    def transforms(self) -> Iterator[Transform]:
        for step in self.steps:
            assert isinstance(step, Transform)
            yield step
        if isinstance(self.classifier, Defense):
            yield from self.classifier.transforms()


class Averaged(Defense):
    """Run a randomized defense ``n`` times and average its output probabilities.

    Returns ``log(mean_i softmax(f_i(x)))`` — valid logits whose softmax is the averaged
    probability vector — so it stays a logits-output defense. The ``n`` executions follow the
    draws protocol (:func:`advguard.rng.iter_draws`): batched forwards of at most ``chunk``
    stacked copies, every copy an independent draw (PNI/CNI weight noise
    included). Used for e.g. 50 executions of Xie/Guo in the CAP paper.
    """

    def __init__(self, defense: Defense, n: int, *, chunk: int = 8, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be an int >= 1, got {n!r}")
        if not isinstance(defense, Defense):
            raise ConfigError(f"defense must be a Defense, got {type(defense).__name__}")
        self.defense = defense
        self.n = n
        self.chunk = max(1, chunk)
        inner = defense.traits
        self.traits = dataclasses.replace(inner, output="logits")
        self.reseed(seed)

    def _average(self, fn: Callable[[torch.Tensor], torch.Tensor],
                 x: torch.Tensor) -> torch.Tensor:
        return mean_probs(fn, x, self.n, chunk=self.chunk, module=self.defense,
                          output=self.defense.traits.output)

    @classmethod
    def from_spec(cls, model: nn.Module, params: Mapping[str, Any]) -> Averaged:
        """``{"name": "averaged", "n": 50, "defense": spec}``: ``n`` executions of ``spec``."""
        from advguard.defenses.registry import build_defense

        kwargs = dict(params)
        inner = kwargs.pop("defense", None)
        if not isinstance(inner, Mapping) and not isinstance(inner, str):
            raise ConfigError("an 'averaged' defense needs a 'defense' spec")
        check_params(cls, kwargs, "averaged", skip=("defense",))
        return cls(build_defense(inner, model), **kwargs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._average(self.defense, x)

    @property
    def draws_per_call(self) -> int:
        return self.n * self.defense.draws_per_call

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        return self._average(self.defense.forward_bpda, x)

    @property
    def base_model(self) -> nn.Module:
        return self.defense.base_model

    def transforms(self) -> Iterator[Transform]:
        return self.defense.transforms()


def _name_of(spec: object) -> object:
    return spec.get("name") if isinstance(spec, Mapping) else spec


def _check_fits(defense: nn.Module, x: torch.Tensor) -> None:
    """Inputs the defended model cannot take — another dtype than its weights (outside
    autocast), other channels or image size than its spec records — are refused naming both."""
    from advguard.defenses.resources import input_facts
    from advguard.errors import InputValidationError

    who = f"inputs to the {type(defense).__name__} defense"
    weight = next((p for p in defense.parameters() if p.is_floating_point()), None)
    if weight is not None and x.dtype != weight.dtype:
        try:
            autocast = torch.is_autocast_enabled(x.device.type)
        except TypeError:  # older torch: no device argument
            autocast = torch.is_autocast_enabled()
        if not autocast:
            raise InputValidationError(f"{who} are {x.dtype} but the model's weights are "
                                       f"{weight.dtype}; convert them (e.g. x.float())")
    facts = input_facts(defense)
    if not facts.takes(tuple(x.shape[1:])):
        c, h, w = x.shape[1:]
        raise InputValidationError(f"{who} have shape {c}x{h}x{w} but the model takes "
                                   f"{facts.image_shape()} images")


def check_params(cls: type, params: Mapping[str, Any], name: str,
                  skip: Sequence[str] = ()) -> None:
    """Raise :class:`ConfigError` for keyword arguments ``cls`` does not take, naming close
    matches and the accepted parameters."""
    import difflib

    sig = inspect.signature(cls)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [p for p, v in sig.parameters.items()
                if p not in ("self", "model") and v.kind in (v.KEYWORD_ONLY,
                                                              v.POSITIONAL_OR_KEYWORD)]
    accepted = [p for p in accepted if p not in skip] + list(skip)
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown parameter {key!r} for defense {name!r}{hint} "
                              f"(parameters: {', '.join(sorted(accepted))})")
    from advguard.typecheck import check_values

    check_values(cls, params, what=f"defense {name!r}")
