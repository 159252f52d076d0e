"""Evaluation configuration as data: which data, which model and defense, which threat model, and
the ordered cascade of (setting, attack) steps. Loadable from YAML; hashed into the evaluation id
under which records are stored and resumed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from advguard.configs import FileConfig
from advguard.errors import ConfigError

SUBSETS = ("first", "balanced")
# How random draws are made, recorded with every evaluation's environment: "per-example"
# (advguard.rng.example_draws; evaluations recorded before it have no entry).
DRAWS_PROTOCOL = "per-example"


@dataclass(frozen=True, kw_only=True)
class StepSpec:
    """One step of the worst-case cascade: an attack run in a threat-model setting.

    ``setting``: ``oblivious`` (craft on the defense's static base model), ``adaptive`` (attack
    the defense itself, BPDA where it declares non-differentiable parts, EOT over ``eot`` draws
    where it is randomized), ``transfer`` (craft on the model in checkpoint ``source``) or
    ``query`` (score-/decision-based, on the defense's outputs; majority vote of ``vote`` draws
    for decision-based attacks on randomized defenses).
    ``attack``: a registered attack name; ``params`` its keyword arguments (``eps`` and ``norm``
    come from the evaluation). ``target``: None, ``"least_likely"`` or ``"random"``.
    ``bpda``: force BPDA on/off (None: from the defense's traits), or the name of one of the
    defense's BPDA surrogates (e.g. ``"softsign"`` for AdvT), which turns BPDA on with it.
    BPDA replaces only what is not differentiable: with ``true``, a differentiable transform
    (e.g. a purifier network) keeps its exact gradient; ``"identity"`` (offered by every
    transform) makes every transform the identity in the backward pass — the BPDA that papers
    run against differentiable purifiers.
    ``eot_objective``: what an EOT attack maximizes over the draws — ``"mean_loss"`` (the mean
    of the per-draw losses: the averaged gradient of Athalye et al.) or ``"expected_softmax"``
    (the loss of ``log mean_i softmax(f_i(x))``, the prediction of a vote or an average over
    draws).
    ``label``: display name.
    """

    setting: str
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    target: Literal["least_likely", "random"] | None = None
    eot: int = 20
    bpda: bool | str | None = None
    source: str | None = None
    vote: int = 15
    eot_objective: Literal["mean_loss", "expected_softmax"] = "mean_loss"
    label: str | None = None

    def __post_init__(self) -> None:
        from advguard.typecheck import check_values

        check_values(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                     what=f"step {self.setting}:{self.attack}")
        if self.eot < 1 or self.vote < 1:
            raise ConfigError(f"step {self.setting}:{self.attack}: eot and vote must be >= 1 (the "
                              f"number of draws), got eot={self.eot}, vote={self.vote}")
        from advguard.attacks import ATTACKS

        if (self.target is None and self.attack in ATTACKS
                and ATTACKS.metadata(self.attack).get("targets") == "required"):
            raise ConfigError(f"step {self.setting}:{self.attack}: {self.attack} is targeted only; "
                              "give the step a target ('random' or 'least_likely')")

    @property
    def display(self) -> str:
        """A readable label: ``setting:attack(params, target, bpda/eot/source/vote)``."""
        if self.label:
            return self.label
        extras = [f"{k}={v}" for k, v in sorted(self.params.items())]
        if self.target:
            extras.append(f"target={self.target}")
        if self.bpda is not None:
            extras.append(f"bpda={self.bpda}" if isinstance(self.bpda, str)
                          else f"bpda={'on' if self.bpda else 'off'}")
        if self.setting == "adaptive" and self.eot != 20:
            extras.append(f"eot={self.eot}")
        if self.eot_objective != "mean_loss":
            extras.append(f"eot_objective={self.eot_objective}")
        if self.setting == "transfer" and self.source:
            extras.append(f"source={Path(self.source).parent.name or self.source}")
        if self.setting == "query" and self.vote != 15:
            extras.append(f"vote={self.vote}")
        return f"{self.setting}:{self.attack}" + (f"({','.join(extras)})" if extras else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepSpec:
        if isinstance(data, StepSpec):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"each step is a mapping such as {{setting: adaptive, attack: pgd, "
                              f"steps: 20}}, got {data!r}")
        data = dict(data)
        given = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        # allow attack parameters inline: {setting: adaptive, attack: pgd, steps: 20}
        params = dict(data.pop("params", {}) or {})
        for key in list(data):
            if key not in known:
                params[key] = data.pop(key)
        if data.get("target") not in (None, "least_likely", "random"):
            raise ConfigError(f"step target must be 'least_likely', 'random' or absent, got "
                              f"{data['target']!r}")
        missing = [k for k in ("setting", "attack") if k not in data]
        if missing:
            raise ConfigError(f"each step needs 'setting' and 'attack' (missing: "
                              f"{', '.join(missing)}), e.g. {{setting: adaptive, attack: pgd, "
                              f"steps: 20}}; got {given}")
        try:
            return cls(params=params, **data)
        except TypeError as exc:
            raise ConfigError(f"invalid step {data}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class EvalConfig(FileConfig):
    """An evaluation: ``n`` examples of ``dataset``/``split`` (``subset`` "first" or class-
    "balanced"), the checkpoint ``model`` behind ``defense`` (a defense spec, see
    :func:`advguard.defenses.build_defense`), threat model (``norm``, ``eps``), the cascade
    ``steps``, ``preset`` (an attack preset, :mod:`advguard.evaluation.presets`: its steps,
    composed from the defense's traits, run after ``steps``; ``auto`` — the default when
    ``steps`` is empty — picks ``standard`` or ``rand``; ``none``: clean accuracy only),
    ``split`` "val" is the validation split a training config holds out of "train"
    (``val_size`` examples, stratified, seeded by ``val_seed``: the ``val_size`` and ``seed`` of
    the :class:`~advguard.training.TrainConfig`), for tuning a defense without the test set;
    ``runs`` independent runs for randomized defenses (worst case kept; ≥ 5
    recommended), ``seed``, ``batch_size`` (examples per chunk: the unit of work committed to the
    record store), reliability ``checks`` on ``check_examples`` examples.

    Example (YAML)::

        name: bitdepth-fmnist
        dataset: fashion-mnist-sample
        n: 500
        model: runs/quickstart/model.safetensors
        defense: {name: bit_depth, bits: 2}
        eps: 0.1
        steps:
          - {setting: oblivious, attack: pgd, steps: 20, alpha: 0.01}
          - {setting: adaptive, attack: pgd, steps: 20, alpha: 0.01}
    """

    config_what = "evaluation config"
    config_section = "eval"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalConfig:
        """As :meth:`FileConfig.from_dict`; ``eps`` may be written as a fraction ("8/255")."""
        from advguard.typecheck import coerce_numbers

        return super().from_dict(coerce_numbers(cls, data) if isinstance(data, Mapping) else data)

    name: str = ""
    dataset: str = "fashion-mnist-sample"
    split: str = "test"
    val_size: int = 5000
    val_seed: int = 0
    data_root: str | None = None
    n: int | None = None
    subset: str = "first"
    model: str = ""
    defense: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    norm: str = "linf"
    eps: float = 8 / 255
    steps: tuple[StepSpec, ...] = ()
    preset: str | None = None
    runs: int = 5
    seed: int = 0
    batch_size: int = 250
    device: str = "auto"
    checks: bool = True
    check_examples: int = 64

    def __post_init__(self) -> None:
        from advguard.attacks.base import ThreatModel

        ThreatModel(self.norm, self.eps)  # type: ignore[arg-type]
        if self.subset not in SUBSETS:
            raise ConfigError(f"subset must be one of {SUBSETS}, got {self.subset!r}")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.split == "val" and self.val_size < 1:
            raise ConfigError(f"val_size must be >= 1, got {self.val_size}")
        if self.runs < 1 or self.batch_size < 1 or self.check_examples < 1:
            raise ConfigError("runs, batch_size and check_examples must be >= 1")
        steps = tuple(s if isinstance(s, StepSpec) else StepSpec.from_dict(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if self.preset is not None:
            from advguard.evaluation.presets import preset_names

            if self.preset not in preset_names():
                import difflib

                close = difflib.get_close_matches(self.preset, preset_names(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown attack preset {self.preset!r}{hint} (presets: "
                                  f"{', '.join(preset_names())})")

    @property
    def preset_name(self) -> str:
        """The preset this evaluation runs: ``preset``, else ``auto`` when it lists no steps,
        else ``none``."""
        if self.preset is not None:
            return self.preset
        return "auto" if not self.steps else "none"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["steps"] = [s.to_dict() for s in self.steps]
        return out

    def identity(self, model_fingerprint: str, preset_revision: int = 1) -> str:
        """The evaluation id: a hash of everything that determines the results (the config minus
        the device and display-only fields, plus the model weights' fingerprint). The preset
        enters by name (:attr:`preset_name`; its steps follow from it, the defense and the
        revision of its composition for that defense, which is appended from revision 2 on:
        ``rand/2``), and not at all when it is ``none``, so that ids made before presets (or
        before a revision) existed stay valid."""
        payload = self.to_dict()
        payload.pop("device")
        payload.pop("name")
        payload.pop("preset")
        if self.split != "val":  # only the validation split depends on them (old ids stay valid)
            payload.pop("val_size")
            payload.pop("val_seed")
        if self.preset_name != "none":
            payload["preset"] = self.preset_name if preset_revision == 1 else \
                f"{self.preset_name}/{preset_revision}"
        for step in payload["steps"]:
            step.pop("label")
            if step["eot_objective"] == "mean_loss":  # the default: ids made before it existed
                step.pop("eot_objective")
        payload["model"] = model_fingerprint
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
