"""Attacks of the SMOOTH paper: EPGD (reduces to PGD for k = 1, averages draws otherwise),
SmoothAdv (the soft-smoothed objective; reduces to PGD without noise), NAttack (score-based,
works on non-differentiable defenses). Their ε-ball/bounds/accuracy/determinism contract is the
table in tests/test_attacks.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks import EPGD, PGD, NAttack, SmoothAdv, input_gradient, make_attack
from advguard.attacks.losses import get_loss
from advguard.attacks.smoothadv import _SoftSmoothed
from advguard.defenses import BitDepthReduction, GaussianNoise, Pipeline, Smoothed
from advguard.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("randomized", [False, True])
def test_epgd_with_one_draw_is_pgd_exactly(randomized: bool, fmnist_model: nn.Module,
                                           fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:50], fmnist_batch[1][:50]
    model: nn.Module = Pipeline([GaussianNoise(sigma=0.2)], fmnist_model, seed=3) \
        if randomized else fmnist_model
    results = []
    for attack in (PGD(eps=0.1, steps=5, restarts=2), EPGD(eps=0.1, steps=5, restarts=2, k=1)):
        if randomized:
            model.reseed(3)  # type: ignore[operator]
        results.append(attack(model, x, y, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(results[0].adv, results[1].adv)
    assert results[0].queries == results[1].queries


def test_epgd_gradient_is_the_mean_of_per_draw_loss_gradients(fmnist_model: nn.Module,
                                                              fmnist_batch: Batch) -> None:
    """With k draws, EPGD's first step follows ∇ (1/k) Σ_i L(f_i(x)) (Eq. 25): with α = ε and no
    random start, its one-step result is x + ε·sign of that gradient."""
    x, y = fmnist_batch[0][:8], fmnist_batch[1][:8]
    smoothed = Smoothed(fmnist_model, m=4, sigma=0.2, seed=2)
    adv = EPGD(eps=0.1, alpha=0.1, steps=1, k=4, random_start=False)(
        smoothed.base_model, x, y, generator=torch.Generator().manual_seed(0)).adv
    smoothed.reseed(2)
    xr = x.repeat(4, 1, 1, 1).requires_grad_(True)
    with torch.no_grad():
        smoothed.base_model(x)  # the clean forward the attack makes before crafting
    loss = get_loss("ce")(smoothed.base_model(xr), y.repeat(4), None).view(4, 8).mean(0)
    (grad,) = torch.autograd.grad(loss.sum(), xr)
    expected = (x + 0.1 * grad.view(4, *x.shape).sum(0).sign()).clamp(0, 1)
    assert torch.allclose(adv, expected, atol=1e-6)


def test_smoothadv_objective_is_the_log_of_the_mean_probability() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(5, 1, 4, 4)
    noise = torch.randn(6, 5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    soft = _SoftSmoothed(model, m=6, sigma=0.3, chunk=4, noise=noise,
                         generator=torch.Generator())
    with torch.no_grad():
        expected = torch.stack([model(x + 0.3 * n).softmax(-1) for n in noise]).mean(0).log()
        assert torch.allclose(soft(x), expected, atol=1e-6)


def test_smoothadv_without_noise_is_pgd(fmnist_model: nn.Module, fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:50], fmnist_batch[1][:50]
    pgd = PGD(eps=0.1, steps=10, random_start=False)(fmnist_model, x, y).adv
    smooth = SmoothAdv(eps=0.1, steps=10, m=1, sigma=0.0, random_start=False)(
        fmnist_model, x, y).adv
    # same objective (CE of log-softmax = CE of logits) up to float rounding of tiny gradients
    assert float((pgd - smooth).abs().mean()) < 1e-3
    assert accuracy(fmnist_model, smooth, y) == pytest.approx(accuracy(fmnist_model, pgd, y),
                                                              abs=0.02)


def test_smoothadv_fools_the_soft_smoothed_classifier(fmnist_model: nn.Module,
                                                      fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:60], fmnist_batch[1][:60]
    smoothed = Smoothed(fmnist_model, m=16, sigma=0.1, vote="soft", seed=0)
    adv = SmoothAdv(eps=0.1, steps=10, m=8, sigma=0.1)(
        fmnist_model, x, y, generator=torch.Generator().manual_seed(0)).adv
    assert accuracy(smoothed, adv, y) < accuracy(smoothed, x, y) - 0.2


def test_nattack_is_black_box(fmnist_model: nn.Module, fmnist_batch: Batch) -> None:
    """NAttack needs scores only: it works on a defense whose input gradient is zero almost
    everywhere (bit-depth reduction), and counts its queries."""
    x, y = fmnist_batch[0][:30], fmnist_batch[1][:30]
    masked = Pipeline([BitDepthReduction(bits=4)], fmnist_model)
    attack = NAttack(eps=0.15, steps=20, population=20, lr=0.05, search_size=14, check_every=5)
    result = attack(masked, x, y, generator=torch.Generator().manual_seed(0))
    assert accuracy(masked, result.adv, y) < accuracy(masked, x, y) - 0.15
    assert 2 <= result.queries <= 20 * 20 + 20 // 5 + 2
    with pytest.raises(ConfigError, match="untargeted"):
        attack(fmnist_model, x, y, target="random")


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("epgd", {"k": 0}, "k >= 1"),
    ("smoothadv", {"m": 0}, "m >= 1"),
    ("smoothadv", {"sigma": -1.0}, "sigma >= 0"),
    ("nattack", {"population": 1}, "population >= 2"),
    ("nattack", {"search_size": 0}, "search_size"),
])
def test_bad_configuration_fails_clearly(name: str, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_attack(name, eps=0.1, **kwargs)


def test_input_gradient_through_epgd_wrapper_touches_no_parameters() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    defense = Pipeline([GaussianNoise(sigma=0.1)], model)
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    EPGD(eps=0.1, steps=2, k=3)(defense, x, y, generator=torch.Generator().manual_seed(0))
    SmoothAdv(eps=0.1, steps=2, m=3, sigma=0.1)(model, x, y,
                                                generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # works under no_grad, as attacks call it
        values, grad = input_gradient(model, x, y, None, get_loss("ce"))
    assert all(p.grad is None for p in model.parameters())
    xg = x.clone().requires_grad_(True)
    ce = F.cross_entropy(model(xg), y, reduction="none")
    (want,) = torch.autograd.grad(ce.sum(), xg)
    assert torch.allclose(values, ce.detach()) and torch.allclose(grad, want)
    assert float(grad.abs().max()) > 0
