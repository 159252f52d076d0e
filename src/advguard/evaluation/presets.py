"""Attack presets: the default adaptive cascade, composed from a defense's declared traits with
the strength of AutoAttack (Croce & Hein, ICML 2020), used when an evaluation names no attacks.

A preset resolves, for one defense, to ordinary cascade steps (:class:`StepSpec`), which the
harness runs and records like any others (the resolved steps are part of the evaluation id and
stored with its config). For a defense with budget ``steps`` (iterations), ``targets`` and
``eot`` (draws):

1. ``oblivious`` APGD-CE on the defense's static base model (transfer from the base model; only
   when the defense is more than its base model);
2. ``adaptive`` APGD-CE through the defense — BPDA where the defense is not differentiable, EOT
   over at least ``eot`` draws where it is randomized (counted in draws of its randomness: a
   defense whose call already averages or votes over ``m`` draws, :attr:`Defense.draws_per_call`,
   is called ``⌈eot/m⌉`` times per gradient), on the **expected softmax** (the loss of
   ``log mean_i softmax(f_i(x))``, what a vote or an average over draws outputs);
3. ``adaptive`` APGD-CE through the declared BPDA surrogates as well, for a defense that is
   differentiable but dynamic (its exact gradient runs through an optimization, e.g. CAP);
4. ``adaptive`` APGD-T: targeted DLR towards each of the ``targets`` most likely other classes;
5. for a defense that is randomized **and** dynamic (e.g. CAP followed by random resizing), a
   fixed-step ``adaptive`` PGD as well: ``iterations`` steps of ε/10 from a random start, EOT
   on the mean loss over the draws. APGD's adaptive step size, fed the noisy gradients of an
   optimization that redraws its randomness each call, missed examples that this simpler attack
   fooled (issue 12: one image of the first 200 on CAP + Xie + Mixup); it is added after the
   first four steps, so that records made before it existed are extended, not recomputed.

A preset's **revision** numbers its compositions: a composition that changed after records were
made under it gets a new revision, which enters the evaluation id (``rand/2``), so that old
records are never resumed under new steps. The harness extends such records instead of redoing
them: the steps they share are a prefix of the new cascade, computed with the same seeds, so the
new evaluation copies them and runs only the added steps, on the examples that survived
(:func:`advguard.evaluation.harness.evaluate`). Revisions: 2 for randomized dynamic defenses
(step 5, added 2026-12-07), 1 for every other defense.

Each step runs only on the examples all earlier steps failed on, and randomized defenses are
evaluated in the config's ``runs`` (≥ 5 recommended) with the worst case per example kept.

==========  =========================================================================
``auto``    the default: ``standard`` for deterministic defenses, ``rand`` for randomized
``standard`` APGD-CE 100 iterations, APGD-T 100 iterations × 9 targets (AutoAttack standard's
            gradient attacks)
``rand``    as ``standard``, with EOT over 20 draws (AutoAttack rand's EOT budget) and 3 targets
``quick``   a reduced budget for demonstrations: 20 iterations, 1 target, EOT over 4 draws
==========  =========================================================================

Example::

    EvalConfig(model="runs/q/model.safetensors", defense={"name": "gaussian_noise"},
               eps=0.1, preset="rand")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advguard.defenses.base import Defense, Undefended
from advguard.evaluation.config import StepSpec
from advguard.registry import Registry


@dataclass(frozen=True)
class Preset:
    """A budget; :meth:`steps` composes the cascade for a defense (the one hook)."""

    name: str
    iterations: int
    targets: int
    eot: int
    reduced: bool = False
    description: str = ""

    def revision(self, defense: Defense) -> int:
        """The composition's revision for ``defense`` (see the module docstring)."""
        return 2 if defense.traits.randomized and defense.traits.dynamic else 1

    def steps(self, defense: Defense, eps: float) -> list[StepSpec]:
        traits = defense.traits
        n = self.iterations
        per_call = max(1, defense.draws_per_call)
        calls = -(-self.eot // per_call) if traits.randomized else 1
        eot: dict[str, Any] = {"eot": calls, "eot_objective": "expected_softmax"} \
            if traits.randomized else {}
        suffix = (f", EOT-{calls}" + (f"×{per_call}" if per_call > 1 else "")) \
            if traits.randomized else ""
        tag = f"{self.name}: "
        out: list[StepSpec] = []
        if not isinstance(defense, Undefended):
            out.append(StepSpec(setting="oblivious", attack="auto-pgd",
                                params={"steps": n, "loss": "ce"},
                                label=f"{tag}oblivious APGD-CE-{n} (base model)"))
        how = "BPDA" if not traits.differentiable else "exact gradient"
        out.append(StepSpec(setting="adaptive", attack="auto-pgd",
                            params={"steps": n, "loss": "ce"},
                            label=f"{tag}adaptive APGD-CE-{n} ({how}{suffix})", **eot))
        if traits.differentiable and traits.dynamic:
            out.append(StepSpec(setting="adaptive", attack="auto-pgd",
                                params={"steps": n, "loss": "ce"}, bpda=True,
                                label=f"{tag}adaptive APGD-CE-{n} (BPDA surrogates{suffix})",
                                **eot))
        out.append(StepSpec(setting="adaptive", attack="auto-pgd",
                            params={"steps": n, "targets": self.targets},
                            label=f"{tag}adaptive APGD-T-{n}×{self.targets} ({how}{suffix})",
                            **eot))
        if self.revision(defense) >= 2:
            out.append(StepSpec(setting="adaptive", attack="pgd",
                                params={"steps": n, "alpha": eps / 10},
                                label=f"{tag}adaptive PGD-{n}, step ε/10 ({how}{suffix}, "
                                      "mean loss)", eot=calls))
        return out


PRESETS: Registry[Preset] = Registry("attack preset")
PRESETS.add("standard", Preset("standard", 100, 9, 20,
                               description="APGD-CE-100 and APGD-T-100 × 9 targets"))
PRESETS.add("rand", Preset("rand", 100, 3, 20,
                           description="APGD-CE-100 and APGD-T-100 × 3 targets, EOT-20 on the "
                                       "expected softmax"))
PRESETS.add("quick", Preset("quick", 20, 1, 4, reduced=True,
                            description="reduced budget: APGD-CE-20 and APGD-T-20 × 1 target, "
                                        "EOT over 4 draws"))
AUTO = "auto"
NONE = "none"


def _concrete(name: str, defense: Defense) -> str:
    """The preset ``auto`` stands for: ``rand`` for a randomized defense, else ``standard``."""
    if name != AUTO:
        return name
    return "rand" if defense.traits.randomized else "standard"


def resolve_preset(name: str, defense: Defense, eps: float) -> tuple[str, list[StepSpec]]:
    """The preset ``name`` (``auto``: ``rand`` for a randomized defense, else ``standard``;
    ``none``: no steps) resolved for ``defense`` at budget ``eps``: (the preset's name, its
    steps)."""
    if name == NONE:
        return NONE, []
    name = _concrete(name, defense)
    return name, PRESETS.get(name).steps(defense, eps)


def preset_revision(name: str, defense: Defense) -> int:
    """The revision of the composition ``name`` resolves to for ``defense`` (1 for ``none``):
    part of the evaluation id from revision 2 on."""
    return 1 if name == NONE else PRESETS.get(_concrete(name, defense)).revision(defense)


def preset_names() -> list[str]:
    return [AUTO, *PRESETS.names(), NONE]
