"""CAP (counteracting adversarial perturbations): Eq. 3 against independently computed one-step
perturbations, clipping, one batched pass, label sampling, owned randomness, gradients for
attackers (exact a.e. vs. the soft-sign BPDA surrogate), composition from specs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks import BPDA, FGSM, PGD
from advguard.defenses import CAP, DEFENSES, Averaged, Traits, build_defense
from advguard.defenses.cap import cap_perturbation, sample_labels
from advguard.rng import rng_states, set_rng_states

ALPHA, MU = 4 / 255, 8 / 255


def _tiny(seed: int = 0, k: int = 10) -> nn.Module:
    """A small conv net with trainable parameters (to catch gradient leaks)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 26 * 26, k)).eval()


def _reference(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, targeted: bool,
               alpha: float = ALPHA, mu: float = MU) -> torch.Tensor:
    """Eq. 3 with each η_i from advguard's FGSM attack, one label at a time (a Python loop)."""
    fgsm = FGSM(eps=alpha, alpha=alpha)
    gen = torch.Generator()
    total = torch.zeros_like(x)
    for i in range(labels.shape[1]):
        li = labels[:, i]
        adv = fgsm.perturb(model, x, li, target=li if targeted else None, generator=gen)
        total += adv - x
    return (x + total.clamp(-mu, mu)).clamp(0, 1)


@pytest.mark.parametrize("targeted", [True, False])
def test_cap_is_the_clipped_sum_of_separate_one_step_perturbations(
        fmnist_model: nn.Module, fmnist_batch: tuple[torch.Tensor, torch.Tensor],
        targeted: bool) -> None:
    x = fmnist_batch[0][:40]
    cap = CAP(fmnist_model, n_labels=5, targeted=targeted, seed=3)
    out = cap.counteract(x)
    # the module's labels are those drawn from a generator seeded like the module's own
    same, labels = cap_perturbation(fmnist_model, x, n_labels=5, targeted=targeted,
                                    generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, same)
    assert labels.shape == (40, 5)
    assert torch.allclose(out, _reference(fmnist_model, x, labels, targeted=targeted), atol=1e-6)
    assert float((out - x).abs().max()) > 0  # it does perturb


def test_targeted_and_untargeted_perturbations_have_opposite_signs(
        fmnist_model: nn.Module, fmnist_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = 0.3 + 0.4 * fmnist_batch[0][:20]  # interior points: no clipping to [0, 1]
    pred = fmnist_model(x).argmax(1)
    labels = sample_labels(pred, 10, 1, torch.Generator().manual_seed(0))
    t, _ = cap_perturbation(fmnist_model, x, labels, targeted=True, mu=1.0)
    u, _ = cap_perturbation(fmnist_model, x, labels, targeted=False, mu=1.0)
    assert torch.allclose(t - x, -(u - x), atol=1e-6)
    # [T] moves towards its label, [U] away from it
    with torch.no_grad():
        def p(z: torch.Tensor) -> torch.Tensor:
            return fmnist_model(z).softmax(1).gather(1, labels).squeeze(1)
        assert bool((p(t) > p(x)).float().mean() > 0.9)
        assert bool((p(u) < p(x)).float().mean() > 0.9)


def test_sum_is_clipped_to_mu_and_the_image_to_unit_range(
        fmnist_model: nn.Module, fmnist_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = fmnist_batch[0][:40]
    pred = fmnist_model(x).argmax(1)
    labels = sample_labels(pred, 10, 9, torch.Generator().manual_seed(0))
    out, _ = cap_perturbation(fmnist_model, x, labels, alpha=ALPHA, mu=MU)
    unclipped, _ = cap_perturbation(fmnist_model, x, labels, alpha=ALPHA, mu=1.0)
    assert float((out - x).abs().max()) <= MU + 1e-6
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((unclipped - x).abs().max()) > MU + 1e-3  # 9 steps of 4/255 exceed μ = 8/255
    # where the sum is inside the ball and no [0,1] clip acts, CAP adds exactly that sum
    inside = ((unclipped - x).abs() <= MU) & (unclipped > 0) & (unclipped < 1)
    assert torch.allclose(out[inside], unclipped[inside])
    assert bool(((out - x).abs() > MU - 1e-6).any())  # and the clip to μ is active elsewhere


class _Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.batches = model, []  # type: ignore[var-annotated]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.model(x)


def test_n_gradients_come_from_one_batched_pass_equal_to_a_loop(
        fmnist_model: nn.Module, fmnist_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = fmnist_batch[0][:16]
    counted = _Counting(fmnist_model)
    cap = CAP(counted, n_labels=9, num_classes=10)
    with torch.no_grad():
        cap(x)
    assert counted.batches == [9 * 16, 16]  # one N·B gradient pass, one classification pass
    # batched == looped: the same labels, one forward/backward per label
    pred = fmnist_model(x).argmax(1)
    labels = sample_labels(pred, 10, 9, torch.Generator().manual_seed(1))
    batched, _ = cap_perturbation(fmnist_model, x, labels)
    total = torch.zeros_like(x)
    for i in range(9):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(fmnist_model(xi), labels[:, i],
                                                   reduction="sum"), xi)
        total += (x - ALPHA * g.sign()).clamp(0, 1) - x
    assert torch.allclose(batched, (x + total.clamp(-MU, MU)).clamp(0, 1), atol=1e-6)


def test_labels_are_distinct_uniform_and_exclude_the_prediction() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.arange(10).repeat(300)  # 3000 examples, every class predicted equally often
    labels = sample_labels(pred, 10, 4, gen)
    assert labels.shape == (3000, 4)
    assert all(len(set(row)) == 4 for row in labels.tolist())  # distinct
    assert not bool((labels == pred[:, None]).any())  # never the predicted class
    counts = torch.bincount(labels.flatten(), minlength=10).float()
    assert float(counts.min() / counts.max()) > 0.9  # uniform over classes
    everything = sample_labels(pred, 10, 10, gen, exclude_predicted=False)
    assert bool((everything.sort(1).values == torch.arange(10)).all())
    with pytest.raises(ValueError, match="n_labels"):
        sample_labels(pred, 10, 10, gen)  # only 9 non-predicted labels exist


def test_randomness_is_owned_reproducible_and_declared(
        fmnist_model: nn.Module, fmnist_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = fmnist_batch[0][:30]
    cap = CAP(fmnist_model, n_labels=3, seed=5)
    assert cap.num_classes == 10 and cap.traits == Traits(randomized=True, dynamic=True)
    state = torch.get_rng_state()
    first = cap.counteract(x)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert not torch.equal(cap.counteract(x), first)  # new labels on the next call
    torch.manual_seed(123)
    cap.reseed(5)
    assert torch.equal(cap.counteract(x), first)  # reseeding reproduces, whatever the global RNG
    cap.reseed(6)
    assert not torch.equal(cap.counteract(x), first)
    # N = K - 1 non-predicted labels: all of them, every time — deterministic, and declared so
    full = CAP(fmnist_model, n_labels=9, seed=0)
    assert not full.traits.randomized
    other = CAP(fmnist_model, n_labels=9, seed=1)
    assert torch.equal(full.counteract(x), other.counteract(x))
    assert CAP(fmnist_model, n_labels=9, exclude_predicted=False).traits.randomized
    with pytest.raises(ValueError, match="exceeds"):
        CAP(fmnist_model, n_labels=10)


def _naive_double_backprop(model: nn.Module, x: torch.Tensor, labels: torch.Tensor
                           ) -> torch.Tensor:
    """CAP written the obvious way, differentiating through the inner gradient (create_graph)."""
    n = labels.shape[1]
    xr = x.repeat(n, 1, 1, 1)
    loss = F.cross_entropy(model(xr), labels.t().reshape(-1), reduction="sum")
    (g,) = torch.autograd.grad(loss, xr, create_graph=True)
    eta = (xr - ALPHA * g.sign()).clamp(0, 1) - xr
    delta = eta.view(n, *x.shape).sum(0).clamp(-MU, MU)
    return model((x + delta).clamp(0, 1))


def test_gradients_exact_equals_double_backprop_and_bpda_sees_the_reaction(
        fmnist_model: nn.Module, fmnist_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, y = fmnist_batch[0][:12], fmnist_batch[1][:12]
    cap = CAP(fmnist_model, n_labels=9, seed=0)
    pred = fmnist_model(x0).argmax(1)
    labels = sample_labels(pred, 10, 9, torch.Generator().manual_seed(0))  # = all non-predicted

    def grad(fn: object) -> torch.Tensor:
        x = x0.clone().requires_grad_(True)
        assert callable(fn)
        (g,) = torch.autograd.grad(F.cross_entropy(fn(x), y, reduction="sum"), x)
        return g

    exact = grad(cap)
    naive = grad(lambda z: _naive_double_backprop(fmnist_model, z, labels))
    assert torch.allclose(exact, naive, atol=1e-6)  # sign' = 0: double backprop adds nothing
    assert float(exact.abs().sum()) > 0
    bpda = grad(BPDA(cap))
    assert torch.isfinite(bpda).all()
    assert not torch.allclose(bpda, exact, atol=1e-4)  # the surrogate path contributes
    with torch.no_grad():
        assert torch.equal(cap.forward_bpda(x0), cap(x0))  # same forward value


def test_works_under_no_grad_and_inside_attacks_without_leaking_gradients() -> None:
    model = _tiny()
    assert all(p.requires_grad for p in model.parameters())
    cap = CAP(model, n_labels=3, seed=0)
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        out = cap(x)
    assert out.shape == (8, 10) and out.grad_fn is None
    y = out.argmax(1)
    gen = torch.Generator().manual_seed(0)
    PGD(eps=0.1, steps=2)(cap, x, y, generator=gen)
    PGD(eps=0.1, steps=2)(BPDA(cap), x, y, generator=gen)  # double backprop
    assert all(p.grad is None for p in model.parameters())


def test_built_from_specs_and_composed_with_a_baseline(
        fmnist_model: nn.Module, fmnist_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    meta = DEFENSES.metadata("cap")
    assert meta["kind"] == "defense" and "traits" not in meta  # traits live on instances
    spec = {"name": "cap", "n_labels": 9, "alpha": 0.05, "mu": 0.1, "targeted": False,
            "then": {"name": "averaged", "n": 4, "defense": {"name": "guo", "size": [20, 26]}}}
    cap = build_defense(spec, fmnist_model, seed=2)
    assert isinstance(cap, CAP) and cap.base_model is fmnist_model
    assert (cap.n_labels, cap.alpha, cap.mu, cap.targeted) == (9, 0.05, 0.1, False)
    assert isinstance(cap.classifier, Averaged) and cap.classifier.n == 4
    assert [t.size for t in cap.transforms()] == [(20, 26)]
    assert cap.traits == Traits(randomized=True, differentiable=True, dynamic=True)
    assert [type(t).__name__ for t in cap.transforms()] == ["GuoCropRescale"]
    x = fmnist_batch[0][:10]
    with torch.no_grad():
        a = cap(x)
        cap.reseed(2)
        assert torch.equal(cap(x), a)
    assert torch.allclose(a.exp().sum(1), torch.ones(10), atol=1e-5)  # averaged probabilities
    # CAP then Guo is Guo (built alone from the same spec, with the same draws as CAP's head)
    # classifying the counteracted input, which moved within μ
    cap.reseed(2)
    guo_only = build_defense(spec["then"], fmnist_model)
    set_rng_states(guo_only, rng_states(cap.classifier))
    with torch.no_grad():
        z = cap.counteract(x)
        assert torch.equal(guo_only(z), a)
    assert 0 < float((z - x).abs().max()) <= 0.1 + 1e-6
