"""Every registered defense, table-driven over the registry (house rule 5): each entry has an
example spec and the traits it must declare; built around a tiny CNN, each gives finite scores of
the declared kind, is deterministic or reproducible from its own seed as declared (never touching
the global RNG), has useful input gradients when declared differentiable, a working BPDA path, and
rejects malformed inputs with a clear error.

Registering a defense without adding it to :data:`EXAMPLE_SPECS` and :data:`TRAITS` fails
:func:`test_every_registered_defense_has_an_example`.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.defenses import DEFENSES, Defense, Pipeline, Traits, Transform, build_defense
from advguard.defenses.base import Output
from advguard.defenses.registry import defense_parameters
from advguard.errors import InputValidationError

BATCH, CLASSES = 5, 10

def _f_b() -> nn.Module:
    """A tiny frozen transformation model for AdvT's f_b (a module stands in for a checkpoint)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.Flatten(),
                             nn.Linear(3 * 13 * 13, CLASSES)).eval()


def _purifier(name: str, **kwargs: Any) -> nn.Module:
    """A tiny untrained purifier (ADD or APE-GAN) standing in for a trained checkpoint."""
    from advguard.models import create_model

    return create_model(name, num_classes=CLASSES, in_channels=1, input_size=28, seed=3,
                        **kwargs).eval()


#: One small example per registered name: the entry's parameters (a spec without its "name").
EXAMPLE_SPECS: dict[str, dict[str, Any]] = {
    "none": {},
    "gaussian_noise": {"sigma": 0.1},
    "bit_depth": {"bits": 3},
    "xie": {"size": [20, 26], "mode": "crop"},
    "guo": {"size": [20, 26]},
    "rotation": {"degrees": 15.0},
    "cap": {"n_labels": 3, "alpha": 0.05, "mu": 0.1},
    "mi_ol": {"lam": 0.6, "samples": 4, "chunk": 2,
              "pool": {"dataset": "fashion-mnist-sample", "n": 50}},
    "smoothing": {"m": 4, "sigma": 0.25},  # prediction vote: probabilities, BPDA surrogate
    "pipeline": {"steps": [{"name": "bit_depth", "bits": 4}, {"name": "cap", "n_labels": 2}]},
    "averaged": {"n": 3, "defense": {"name": "xie", "size": [20, 26]}},
    "advt": {"f_b": _f_b(), "delta": 0.3, "steps": 3},
    "post_train": {"data": {"dataset": "fashion-mnist-sample", "n": 100}, "eps": 0.1,
                   "neighbour_alpha": 0.125, "neighbour_steps": 3, "iterations": 2,
                   "per_class": 4},
    "add": {"purifier": _purifier("add_purifier", width=0.0625)},
    "ape_gan": {"purifier": _purifier("ape_gan", width=0.125)},
}

#: Further specs whose traits differ from their entry's example, so that every branch below runs.
VARIANTS: dict[str, dict[str, Any]] = {
    "cap[all labels]": {"name": "cap", "n_labels": 9, "num_classes": 10},
    "smoothing[soft logits]": {"name": "smoothing", "m": 3, "sigma": 0.25, "vote": "soft",
                               "average": "logits"},
    "averaged[bit_depth]": {"name": "averaged", "n": 2,
                            "defense": {"name": "bit_depth", "bits": 2}},
    "add[sampled latent]": {"name": "add", "sample": True,
                            "purifier": _purifier("add_purifier", width=0.0625)},
    "advt[smooth, no start]": {"name": "advt", "f_b": _f_b(), "delta": 0.3, "steps": 3,
                               "random_start": False, "bpda": "tanh"},
}

SPECS: dict[str, dict[str, Any]] = {
    **{name: {"name": name, **params} for name, params in EXAMPLE_SPECS.items()}, **VARIANTS}

#: The traits each spec must declare around a plain classifier (whose class count CAP cannot
#: read: with fewer labels than the 9 admissible ones, CAP is randomized).
TRAITS: dict[str, Traits] = {
    "none": Traits(),
    "gaussian_noise": Traits(randomized=True),
    "bit_depth": Traits(differentiable=False),
    "xie": Traits(randomized=True),
    "guo": Traits(randomized=True),
    "rotation": Traits(randomized=True),
    "cap": Traits(randomized=True, dynamic=True),
    "mi_ol": Traits(randomized=True),
    "smoothing": Traits(randomized=True, differentiable=False, output="probs"),
    "pipeline": Traits(randomized=True, differentiable=False, dynamic=True),
    "averaged": Traits(randomized=True),
    "advt": Traits(randomized=True, differentiable=False, dynamic=True),
    "post_train": Traits(randomized=True, differentiable=False, dynamic=True),
    "add": Traits(),
    "ape_gan": Traits(),
    "add[sampled latent]": Traits(randomized=True),
    "advt[smooth, no start]": Traits(differentiable=False, dynamic=True),
    "cap[all labels]": Traits(dynamic=True),
    "smoothing[soft logits]": Traits(randomized=True),
    "averaged[bit_depth]": Traits(differentiable=False),
}

ALL = list(SPECS)
RANDOMIZED = [s for s in ALL if TRAITS.get(s, Traits()).randomized]
DETERMINISTIC = [s for s in ALL if not TRAITS.get(s, Traits()).randomized]
DIFFERENTIABLE = [s for s in ALL if TRAITS.get(s, Traits()).differentiable]


def _model() -> nn.Module:
    """A tiny CNN on 1×28×28 with trainable parameters (to catch gradient leaks); building it
    leaves the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 13 * 13, CLASSES)).eval()


def _inputs() -> torch.Tensor:
    return torch.rand(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _build(spec_id: str, model: nn.Module | None = None, seed: int = 0) -> Defense:
    return build_defense(SPECS[spec_id], _model() if model is None else model, seed=seed)


def _loss(out: torch.Tensor, output: str) -> torch.Tensor:
    """Cross-entropy on fixed labels, reading a "probs" output through its logarithm (as
    attacks do)."""
    y = torch.arange(out.shape[0]) % out.shape[1]
    logp = out.clamp_min(1e-12).log() if output == "probs" else out.log_softmax(1)
    return F.nll_loss(logp, y)


# --------------------------------------------------------------------------- the table
def test_every_registered_defense_has_an_example() -> None:
    registered = set(DEFENSES.names())
    missing, stale = sorted(registered - set(EXAMPLE_SPECS)), sorted(set(EXAMPLE_SPECS) -
                                                                       registered)
    assert not missing, f"add an example spec (and its traits) for {missing} to EXAMPLE_SPECS"
    assert not stale, f"{stale} are not registered defenses"
    assert set(TRAITS) == set(SPECS), f"declare the traits of {sorted(set(SPECS) - set(TRAITS))}"


def test_the_table_covers_every_trait_value() -> None:
    """Each check below runs on both sides of every trait (else it could silently test nothing)."""
    for field in ("randomized", "differentiable", "dynamic"):
        assert {getattr(t, field) for t in TRAITS.values()} == {True, False}, field
    assert {t.output for t in TRAITS.values()} == set(typing.get_args(Output))


@pytest.mark.parametrize("spec_id", ALL)
def test_spec_builds_the_entry_with_its_parameters_and_traits(spec_id: str) -> None:
    spec = SPECS[spec_id]
    name = spec["name"]
    params = {k: v for k, v in spec.items() if k != "name"}
    meta = DEFENSES.metadata(name)
    assert meta["kind"] in {"transform", "defense", "composite"} and meta["paper"]
    accepted = defense_parameters(name)
    assert set(params) <= set(accepted), f"{sorted(set(params) - set(accepted))} not listed"
    required = {p for p, default in accepted.items() if default == "required"}
    assert required <= set(params)

    defense = _build(spec_id)
    assert defense.traits == TRAITS[spec_id]
    cls = DEFENSES.get(name)
    if meta["kind"] == "transform":  # a lone transform is put in front of the model
        assert isinstance(defense, Pipeline) and len(defense.steps) == 1
        part: nn.Module = defense.steps[0]
        assert isinstance(part, Transform)
        assert [type(t) for t in defense.transforms()] == [cls]
    else:
        part = defense
    assert type(part) is cls
    declared = cls.declared_traits()
    assert declared is None or declared == part.traits
    for key, value in params.items():  # scalar parameters reach the instance unchanged
        if isinstance(value, Mapping) or (isinstance(value, list) and
                                          any(isinstance(v, Mapping) for v in value)):
            continue
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(part, key) == expected, f"{name}.{key}"


# --------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("spec_id", ALL)
def test_outputs_are_finite_scores_of_the_declared_kind(spec_id: str) -> None:
    defense = _build(spec_id)
    with torch.no_grad():  # dynamic defenses too: they compute their gradients themselves
        out = defense(_inputs())
    assert out.shape == (BATCH, CLASSES)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    assert not out.requires_grad  # nothing leaks out of a dynamic defense under no_grad
    if defense.traits.output == "probs":
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.allclose(out.sum(1), torch.ones(BATCH), atol=1e-5)
    else:
        assert defense.traits.output == "logits"


# --------------------------------------------------------------------------- randomness
@pytest.mark.parametrize("spec_id", DETERMINISTIC)
def test_deterministic_defense_gives_identical_outputs(spec_id: str) -> None:
    defense, x = _build(spec_id), _inputs()
    state = torch.get_rng_state()
    with torch.no_grad():
        first = defense(x)
        assert torch.equal(defense(x), first)
        defense.reseed(1)  # the seed of a deterministic defense changes nothing
        assert torch.equal(defense(x), first)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched


@pytest.mark.parametrize("spec_id", ALL)
def test_weights_fingerprint_is_the_same_in_every_build(spec_id: str) -> None:
    """The evaluation harness refuses to resume records made with other defense weights (a
    replaced purifier) by comparing this fingerprint across processes and sessions: building the
    same spec around the same model must give the same one, whatever the seed."""
    from advguard.evaluation import model_fingerprint

    first = model_fingerprint(_build(spec_id, seed=0))
    assert model_fingerprint(_build(spec_id, seed=0)) == first
    assert model_fingerprint(_build(spec_id, seed=5)) == first


@pytest.mark.parametrize("spec_id", RANDOMIZED)
def test_randomized_defense_is_reproducible_from_its_own_seed(spec_id: str) -> None:
    defense, x = _build(spec_id, seed=3), _inputs()
    state = torch.get_rng_state()
    with torch.no_grad():
        first = defense(x)
        assert torch.equal(torch.get_rng_state(), state)  # draws only from its own generators
        assert not torch.equal(defense(x), first)  # declared randomized: a new draw per call
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)  # attack libraries reseed the global RNG: no effect
            defense.reseed(3)
            assert torch.equal(defense(x), first)
        defense.reseed(4)
        assert not torch.equal(defense(x), first)
    # the same spec built anew with the same seed reproduces it too
    with torch.no_grad():
        assert torch.equal(_build(spec_id, seed=3)(x), first)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("spec_id", DIFFERENTIABLE)
def test_differentiable_defense_has_finite_nonzero_input_gradients(spec_id: str) -> None:
    model = _model()
    defense = _build(spec_id, model)
    x = _inputs().requires_grad_(True)
    (grad,) = torch.autograd.grad(_loss(defense(x), defense.traits.output), x, allow_unused=True)
    assert grad is not None, "the output does not depend on the input through autograd"
    assert grad.shape == x.shape
    assert bool(torch.isfinite(grad).all())
    assert float(grad.abs().max()) > 0
    assert all(p.grad is None for p in model.parameters())  # input gradients only


@pytest.mark.parametrize("spec_id", ALL)
def test_bpda_path_has_the_forward_value_and_a_useful_gradient(spec_id: str) -> None:
    """``forward_bpda``: the defense's output (same draws for the same seed) with the gradient
    of its declared surrogates, finite and non-zero also where the defense is not
    differentiable — or, for a defense declaring ``bpda_value = "surrogate"`` (a hard vote), the
    surrogate's own value: a probability vector over the same draws."""
    model = _model()
    defense, x = _build(spec_id, model), _inputs()
    with torch.no_grad():
        exact = defense(x)
    defense.reseed(0)
    xg = x.clone().requires_grad_(True)
    out = defense.forward_bpda(xg)
    assert out.shape == (BATCH, CLASSES)
    assert bool(torch.isfinite(out).all())
    if defense.bpda_value == "exact":
        torch.testing.assert_close(out.detach(), exact, rtol=1e-5, atol=1e-6)
    else:
        assert defense.bpda_value == "surrogate" and defense.traits.output == "probs"
        torch.testing.assert_close(out.detach().sum(1), torch.ones(BATCH), rtol=1e-5, atol=1e-5)
        assert not torch.equal(out.detach(), exact)  # a soft vote, not the hard one
    (grad,) = torch.autograd.grad(_loss(out, defense.traits.output), xg, allow_unused=True)
    assert grad is not None, "the BPDA output does not depend on the input through autograd"
    assert bool(torch.isfinite(grad).all())
    assert float(grad.abs().max()) > 0
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("spec_id", ALL)
def test_malformed_inputs_raise_a_clear_error(spec_id: str) -> None:
    defense = _build(spec_id)
    who = f"inputs to the {type(defense).__name__} defense"
    x = _inputs()
    nan = x.clone()
    nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputValidationError, match=f"{who} contain NaN or inf"):
        defense(nan)
    for bad in (x + 0.5, x - 0.5):
        span = f"[{float(bad.min()):.4g}, {float(bad.max()):.4g}]"
        with pytest.raises(InputValidationError,
                           match=re.escape(f"{who} must lie in [0, 1], got values in {span}")):
            defense(bad)
    with pytest.raises(InputValidationError, match=r"shape \(N, C, H, W\)"):
        defense(x[0])
    with pytest.raises(InputValidationError, match="floating-point"):
        defense((x * 255).to(torch.uint8))
