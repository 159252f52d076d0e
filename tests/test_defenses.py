"""The defense protocol: declared traits, composition, owned randomness, BPDA surrogates, dynamic
defenses that work under no_grad and inside an attack's graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advguard.attacks import BPDA, PGD
from advguard.defenses import (
    DEFENSES,
    Averaged,
    BitDepthReduction,
    Defense,
    GaussianNoise,
    Pipeline,
    Traits,
    Transform,
    Undefended,
    build_defense,
    gradient_inside_forward,
)
from advguard.errors import ConfigError, UnknownNameError


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()


def test_reference_transforms_do_what_they_say() -> None:
    x = torch.rand(3, 1, 4, 4)
    q = BitDepthReduction(bits=2)(x)
    assert set(torch.unique(q * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert torch.allclose(q, torch.round(x * 3) / 3)
    noisy = GaussianNoise(sigma=0.1, seed=0)(torch.full((1000, 1, 4, 4), 0.5))
    assert float(noisy.std()) == pytest.approx(0.1, rel=0.05)
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    with pytest.raises(ValueError, match="bits"):
        BitDepthReduction(bits=9)


def test_pipeline_traits_are_derived_from_parts() -> None:
    model = _linear()
    assert Undefended(model).traits == Traits()
    assert Pipeline([BitDepthReduction()], model).traits == Traits(differentiable=False)
    both = Pipeline([GaussianNoise(sigma=0.1), BitDepthReduction()], model)
    assert both.traits == Traits(randomized=True, differentiable=False)
    assert both.base_model is model
    nested = Pipeline([GaussianNoise(sigma=0.1)], Pipeline([BitDepthReduction()], model))
    assert nested.traits.randomized and not nested.traits.differentiable
    assert nested.base_model is model
    assert [type(t).__name__ for t in nested.transforms()] == ["GaussianNoise",
                                                              "BitDepthReduction"]


def test_randomness_comes_from_the_defense_generator_only() -> None:
    model = _linear()
    defense = Pipeline([GaussianNoise(sigma=0.3)], model, seed=7)
    x = torch.rand(4, 1, 4, 4)
    state = torch.get_rng_state()
    first = defense(x)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert not torch.equal(defense(x), first)  # randomized
    defense.reseed(7)
    assert torch.equal(defense(x), first)  # reseeding reproduces
    torch.manual_seed(123)  # attack libraries reseed the global RNG: no effect on the defense
    defense.reseed(7)
    assert torch.equal(defense(x), first)
    defense.reseed(8)
    assert not torch.equal(defense(x), first)


def test_bpda_uses_the_surrogate_gradient() -> None:
    model = _linear()
    defense = Pipeline([BitDepthReduction(bits=1)], model)
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    out = BPDA(defense)(x)
    assert torch.equal(out, defense(x))  # forward value of the true defense
    (g_bpda,) = torch.autograd.grad(out.sum(), x)
    xq = torch.round(x.detach()).requires_grad_(True)
    (g_identity,) = torch.autograd.grad(model(xq).sum(), xq)
    assert torch.allclose(g_bpda, g_identity)  # identity surrogate: gradient at the quantized x
    (g_plain,) = torch.autograd.grad(defense(x).sum(), x, allow_unused=True)
    assert g_plain is None or float(g_plain.abs().max()) == 0.0


class _Halve(Transform):
    """A differentiable transform (x ↦ x / 2) standing in for a purifier network."""

    traits = Traits(differentiable=True)

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x / 2


def test_bpda_identity_replaces_a_differentiable_transform_and_plain_bpda_keeps_it() -> None:
    model = _linear()
    defense = Pipeline([_Halve()], model)
    x = torch.rand(3, 1, 4, 4)

    def grad(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        xr = x.clone().requires_grad_(True)
        out = m(xr)
        return out.detach(), torch.autograd.grad(out[:, 1].sum(), xr)[0]

    z = (x / 2).requires_grad_(True)
    (at_z,) = torch.autograd.grad(model(z)[:, 1].sum(), z)  # ∇f at the transformed input
    out_exact, g_exact = grad(BPDA(defense))
    out_id, g_id = grad(BPDA(defense, surrogate="identity"))
    assert torch.equal(out_exact, defense(x)) and torch.equal(out_id, defense(x))
    assert torch.allclose(g_exact, at_z / 2, atol=1e-6)  # bpda: true — the exact chain rule
    assert torch.allclose(g_id, at_z, atol=1e-6)  # bpda: identity — the transform skipped
    assert not torch.allclose(g_id, g_exact, atol=1e-4)
    _, g_bare = grad(BPDA(Undefended(model), surrogate="identity"))  # nothing to replace
    xr = x.clone().requires_grad_(True)
    assert torch.allclose(g_bare, torch.autograd.grad(model(xr)[:, 1].sum(), xr)[0], atol=1e-6)
    with pytest.raises(ConfigError, match=r"'tanh' is not offered by the defense \(offered: "
                                          r"identity\)"):
        BPDA(defense, surrogate="tanh")


def test_averaged_is_log_of_mean_probabilities() -> None:
    model = _linear()
    inner = Pipeline([GaussianNoise(sigma=0.2)], model, seed=1)
    avg = Averaged(inner, 6, chunk=4, seed=1)
    x = torch.rand(3, 1, 4, 4)
    out = avg(x)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    avg.reseed(1)
    again = avg(x)
    assert torch.equal(out, again)
    # Same as averaging 6 independent calls of the (identically seeded) inner defense.
    avg.reseed(1)
    draws = []
    gen_inner = avg.defense
    probs = torch.cat([gen_inner(x.repeat(4, 1, 1, 1)), gen_inner(x.repeat(2, 1, 1, 1))]).softmax(1)
    draws = probs.view(6, 3, -1).mean(0).log()
    assert torch.allclose(out, draws, atol=1e-6)
    assert avg.traits.randomized


class _OneStepDefense(Defense):
    """A toy dynamic defense: one FGSM step away from the predicted class before classifying."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.traits = Traits(dynamic=True)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        pred = self.model(x).argmax(1).detach()
        grad = gradient_inside_forward(
            lambda z: nn.functional.cross_entropy(self.model(z), pred, reduction="sum"), x)
        return self.model((x - 0.05 * grad.sign()).clamp(0, 1))

    @property
    def base_model(self) -> nn.Module:
        return self.model


def test_dynamic_defense_works_under_no_grad_and_inside_attacks() -> None:
    model = _linear()
    for p in model.parameters():
        p.requires_grad_(True)
    defense = _OneStepDefense(model)
    x = torch.rand(6, 1, 4, 4)
    with torch.no_grad():
        out = defense(x)
    assert out.shape == (6, 5) and out.grad_fn is None
    y = out.argmax(1)
    result = PGD(eps=0.2, steps=3)(defense, x, y, generator=torch.Generator().manual_seed(0))
    assert result.adv.shape == x.shape and not torch.equal(result.adv, x)  # the attack moved
    assert float((result.adv - x).abs().max()) <= 0.2 + 1e-6
    assert float(result.adv.min()) >= 0 and float(result.adv.max()) <= 1
    assert all(p.grad is None for p in model.parameters())  # nothing leaked into .grad
    # Inside a graph the inner gradient is differentiable (double backprop).
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(defense(xg).logsumexp(1).sum(), xg)
    assert torch.isfinite(g).all()


def test_build_defense_from_specs() -> None:
    model = _linear()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    none = build_defense({"name": "none"}, model)
    assert type(none) is Undefended and none.base_model is model and none.traits == Traits()
    d = build_defense({"name": "bit_depth", "bits": 3}, model)
    assert [(type(t), t.bits) for t in d.transforms()] == [(BitDepthReduction, 3)]
    assert d.traits == Traits(differentiable=False) and d.base_model is model
    with torch.no_grad():
        assert torch.equal(none(x), model(x))  # the model itself, unchanged
        assert torch.equal(d(x), model(torch.round(x * 7) / 7))  # 3 bits: 8 levels, then model
    p = build_defense({"name": "pipeline", "steps": [{"name": "gaussian_noise", "sigma": 0.1},
                                                     {"name": "bit_depth"}]}, model, seed=3)
    assert p.traits == Traits(randomized=True, differentiable=False)
    a = build_defense({"name": "averaged", "n": 3, "defense": {"name": "gaussian_noise"}}, model)
    assert isinstance(a, Averaged) and a.n == 3 and a.traits == Traits(randomized=True)
    assert [(type(t), t.sigma) for t in a.transforms()] == [(GaussianNoise, 0.1)]  # the default
    with torch.no_grad():
        out = a(x)
        assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)  # log-probabilities
        # without noise every execution is the model: the average is its softmax
        clean = build_defense({"name": "averaged", "n": 3,
                               "defense": {"name": "gaussian_noise", "sigma": 0.0}}, model)
        assert torch.allclose(clean(x), model(x).log_softmax(1), atol=1e-6)
    with pytest.raises(UnknownNameError, match="did you mean 'bit_depth'"):
        build_defense({"name": "bitdepth"}, model)
    with pytest.raises(ConfigError, match="unknown parameter 'bitz' for defense 'bit_depth'; "
                                          "did you mean 'bits'"):
        build_defense({"name": "bit_depth", "bitz": 3}, model)
    with pytest.raises(ConfigError, match=r"defense 'bit_depth': .*bits"):
        build_defense({"name": "bit_depth", "bits": 0}, model)
    with pytest.raises(ConfigError, match="needs a 'name'"):
        build_defense({"bits": 3}, model)
    assert {"bit_depth", "gaussian_noise"} <= set(DEFENSES.names())
