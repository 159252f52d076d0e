"""Threat-model settings as data: each composes, from a defense's declared traits, the attack to
run and the model it is run against (house rule 2).

==============  ==========================================================================
``clean``       no attack (always the first row of an evaluation)
``oblivious``   the attacker ignores the defense: crafts on its static base model (the
                protocol of the CAP and POST papers); examples are then classified by the
                defense
``adaptive``    the attacker differentiates through the defense: full gradients where it is
                differentiable, BPDA through its declared surrogates where not, EOT over
                ``eot`` draws of its randomness where it is randomized
``transfer``    crafted on an independent source model (a checkpoint), then classified by the
                defense
``query``       score- or decision-based attacks on the defense's outputs only (on randomized
                defenses, decision-based attacks see a majority vote over ``vote`` draws, a
                repeated query answered with its first vote)
==============  ==========================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from advguard.attacks.base import ATTACKS, Attack, make_attack
from advguard.attacks.transfer import transfer
from advguard.attacks.wrappers import BPDA, EOT, MajorityVote
from advguard.defenses.base import Defense
from advguard.errors import ConfigError
from advguard.evaluation.config import StepSpec
from advguard.registry import Registry

ModelLoader = Callable[[str], nn.Module]


@dataclass(frozen=True)
class Prepared:
    """A cascade step ready to run: ``attack(model, x, y, target=...)``."""

    spec: StepSpec
    attack: Attack
    model: nn.Module
    white_box: bool
    gradient_model: nn.Module | None  # what the attack differentiates, for reliability checks


class Setting:
    """Base class: one hook, :meth:`prepare`."""

    name: ClassVar[str] = "setting"
    white_box: ClassVar[bool] = False

    def prepare(self, spec: StepSpec, defense: Defense, attack: Attack,
                load_model: ModelLoader) -> Prepared:
        raise NotImplementedError


SETTINGS: Registry[type[Setting]] = Registry("threat-model setting")


@SETTINGS.register("oblivious", white_box=False)
class Oblivious(Setting):
    name = "oblivious"

    def prepare(self, spec: StepSpec, defense: Defense, attack: Attack,
                load_model: ModelLoader) -> Prepared:
        base = defense.base_model
        return Prepared(spec, transfer(base, attack), defense, False, base)


@SETTINGS.register("adaptive", white_box=True)
class Adaptive(Setting):
    name = "adaptive"
    white_box = True

    def prepare(self, spec: StepSpec, defense: Defense, attack: Attack,
                load_model: ModelLoader) -> Prepared:
        traits = defense.traits
        use_bpda = (not traits.differentiable) if spec.bpda is None else bool(spec.bpda)
        surrogate = spec.bpda if isinstance(spec.bpda, str) else None
        try:
            model: nn.Module = BPDA(defense, surrogate=surrogate) if use_bpda else defense
        except ConfigError as exc:
            raise ConfigError(f"step {spec.display}: {exc}") from None
        field_names = {f.name for f in dataclasses.fields(attack)}
        if traits.randomized and spec.eot > 1:
            library_eot = "eot_iter" in field_names and spec.eot_objective == "mean_loss"
            if library_eot:  # the library averages gradients itself
                if "eot_iter" not in spec.params:
                    attack = dataclasses.replace(attack, eot_iter=spec.eot)  # type: ignore[call-arg]
            else:  # our attacks, or any attack on the expected softmax (a module over draws)
                model = EOT(model, spec.eot, objective=spec.eot_objective)
        return Prepared(spec, attack, model, True, model)


@SETTINGS.register("transfer", white_box=False)
class TransferSetting(Setting):
    name = "transfer"

    def prepare(self, spec: StepSpec, defense: Defense, attack: Attack,
                load_model: ModelLoader) -> Prepared:
        if not spec.source:
            raise ConfigError(f"step {spec.display}: the transfer setting needs a 'source' "
                              "checkpoint")
        source = load_model(spec.source)
        return Prepared(spec, transfer(source, attack), defense, False, source)


@SETTINGS.register("query", white_box=False)
class Query(Setting):
    name = "query"

    def prepare(self, spec: StepSpec, defense: Defense, attack: Attack,
                load_model: ModelLoader) -> Prepared:
        kind = ATTACKS.metadata(spec.attack).get("kind")
        if kind not in ("score", "decision"):
            raise ConfigError(f"step {spec.display}: the query setting takes score- or "
                              f"decision-based attacks; {spec.attack!r} is {kind!r}")
        model: nn.Module = defense
        if kind == "decision" and defense.traits.randomized:
            if "vote_samples" in {f.name for f in dataclasses.fields(attack)}:
                # the attack takes the vote itself and answers a repeated query with its first
                # vote: a vote re-drawn at a point on the decision boundary is a coin flip, and
                # HopSkipJump asserts that the points it re-queries are still adversarial
                # (an explicit 'vote_samples' among the attack's parameters wins over 'vote')
                if "vote_samples" not in spec.params:
                    votes: dict[str, Any] = {"vote_samples": spec.vote}
                    attack = dataclasses.replace(attack, **votes)
            elif spec.vote > 1:
                model = MajorityVote(defense, spec.vote)
        return Prepared(spec, attack, model, False, None)


def prepare_step(spec: StepSpec, defense: Defense, *, norm: str, eps: float,
                 load_model: ModelLoader) -> Prepared:
    """Build the attack of ``spec`` (with the evaluation's ``norm``/``eps``) and compose it with
    the defense as the step's setting says."""
    if spec.setting == "clean":
        raise ConfigError("'clean' is always evaluated first; do not list it as a step")
    setting = SETTINGS.get(spec.setting)()
    for key in ("eps", "norm"):
        if key in spec.params:
            raise ConfigError(f"step {spec.display}: '{key}' is set by the evaluation, not a step")
    attack = make_attack(spec.attack, eps=eps, norm=norm, **spec.params)
    return setting.prepare(spec, defense, attack, load_model)
