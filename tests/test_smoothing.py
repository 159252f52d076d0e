"""Smoothed inference (SMOOTH): each vote's definition on scripted draws, batched == looped
sampling, owned randomness, reductions (σ = 0, decay = 0), BPDA surrogate, Clopper–Pearson and
abstention, the registry, and noise-injected (PNI) base models."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from torch import nn

from advguard.defenses import DEFENSES, GaussianNoise, Pipeline, Randomness, build_defense
from advguard.defenses.smoothing import (
    ABSTAIN,
    Smoothed,
    clopper_pearson,
    vote_scores,
)
from advguard.rng import draw_chunks, draws_per_copy, stacked_copies

# Four draws of a 3-class model on one example (logits), and what each vote makes of them.
SCRIPT = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [1.0, 0.0, 2.0]])
RANKS = [[0, 1, 2], [2, 0, 1], [0, 2, 1], [1, 2, 0]]  # rank of each class in each draw
EXPECTED = {
    "prediction": [2 / 4, 1 / 4, 1 / 4],
    "weighted": [sum(0.5 ** r[c] for r in RANKS) / 4 / 1.75 for c in range(3)],
    "soft-probs": SCRIPT.softmax(-1).mean(0).tolist(),
    "soft-logits": [7 / 4, 3 / 4, 4 / 4],
}


class Scripted(Randomness):
    """Returns the next row of a script (for every example) on each call: one draw per forward
    (it declares no per-example noise, so :class:`Smoothed` calls it once per draw)."""

    def __init__(self, script: torch.Tensor) -> None:
        super().__init__()
        self.script = script
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = self.script[self.calls % len(self.script)]
        self.calls += 1
        return row.expand(x.shape[0], -1).clone()


class PerExampleNoisyLinear(Randomness):
    """A linear classifier whose weight gets fresh Gaussian noise **per example** from its own
    generator (declared with ``per_example_noise``)."""

    per_example_noise = True

    def __init__(self, d: int = 16, k: int = 4, scale: float = 0.5, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.weight = nn.Parameter(torch.randn(k, d, generator=torch.Generator().manual_seed(1)))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        z = torch.randn((x.shape[0], *self.weight.shape), generator=self.generator(x.device))
        return torch.einsum("bkd,bd->bk", self.weight + self.scale * z, flat)


class SharedNoisyLinear(PerExampleNoisyLinear):
    """The same, but one weight draw per forward shared by the batch (like PNI layers)."""

    per_example_noise = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.randn(self.weight.shape, generator=self.generator(x.device))
        return x.flatten(1) @ (self.weight + self.scale * z).T


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()


def _x(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------- vote definitions
@pytest.mark.parametrize(("vote", "average", "key"), [
    ("prediction", "probs", "prediction"), ("weighted", "probs", "weighted"),
    ("soft", "probs", "soft-probs"), ("soft", "logits", "soft-logits")])
def test_each_vote_on_known_draws(vote: str, average: str, key: str) -> None:
    direct = vote_scores(SCRIPT[:, None, :], vote, average=average)
    assert direct[0].tolist() == pytest.approx(EXPECTED[key], abs=1e-6)
    defense = Smoothed(Scripted(SCRIPT), m=4, vote=vote, average=average)  # type: ignore[arg-type]
    with torch.no_grad():
        out = defense(_x(3))
    assert out.shape == (3, 3)
    assert out[1].tolist() == pytest.approx(EXPECTED[key], abs=1e-6)
    if key != "soft-logits":  # vote fractions and mean probabilities sum to one
        assert out.sum(1).tolist() == pytest.approx([1.0] * 3, abs=1e-6)


def test_weighted_vote_with_zero_decay_is_prediction_vote() -> None:
    outputs = torch.randn(16, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(vote_scores(outputs, "weighted", decay=0.0),
                          vote_scores(outputs, "prediction"))


@pytest.mark.parametrize(("vote", "average", "differentiable", "output"), [
    ("prediction", "probs", False, "probs"), ("weighted", "probs", False, "probs"),
    ("soft", "probs", True, "probs"), ("soft", "logits", True, "logits")])
def test_traits_follow_the_vote(vote: str, average: str, differentiable: bool,
                                output: str) -> None:
    defense = Smoothed(_linear(), m=4, sigma=0.1, vote=vote, average=average)  # type: ignore[arg-type]
    assert defense.traits.randomized
    assert defense.traits.differentiable is differentiable
    assert defense.traits.output == output
    assert not Smoothed(_linear(), m=4, sigma=0.0).traits.randomized
    assert Smoothed(SharedNoisyLinear(), m=4, sigma=0.0).traits.randomized


# --------------------------------------------------------------------------- sampling
def test_batched_sampling_equals_a_loop_over_draws() -> None:
    x = _x()
    model = PerExampleNoisyLinear()
    batched = Smoothed(model, m=8, sigma=0.2, vote="soft", chunk=8, seed=5)
    looped = Smoothed(model, m=8, sigma=0.2, vote="soft", chunk=1, seed=5)
    assert batched.batched
    with torch.no_grad():
        draws = batched.draws(x)
        looped.reseed(5)  # the two share the model, hence its generator
        assert torch.allclose(draws, looped.draws(x), atol=1e-6)
        # the reference: a Python loop of single draws from the same generators
        looped.reseed(5)
        manual = torch.stack([looped.base_model(x) for _ in range(8)])
    assert torch.allclose(draws, manual, atol=1e-6)
    assert not torch.allclose(draws[0], draws[1])  # copies of one forward are independent
    batched.reseed(5)
    assert torch.allclose(batched(x), manual.softmax(-1).mean(0), atol=1e-6)


def test_models_sharing_noise_across_the_batch_get_one_copy_per_forward() -> None:
    x = _x()
    model = SharedNoisyLinear()
    assert not draws_per_copy(model)
    assert draws_per_copy(PerExampleNoisyLinear()) and draws_per_copy(_linear())
    defense = Smoothed(model, m=6, sigma=0.0, vote="soft", chunk=6)
    assert not defense.batched
    with torch.no_grad():
        draws = defense.draws(x)
    assert draws.shape == (6, 6, 4)
    assert len({round(float(d.sum()), 4) for d in draws}) == 6  # six distinct weight draws


def test_randomness_is_owned_reproducible_and_leaves_the_global_rng_alone() -> None:
    x = _x()
    defense = Smoothed(PerExampleNoisyLinear(), m=8, sigma=0.3, vote="soft", seed=1)
    state = torch.get_rng_state()
    with torch.no_grad():
        first = defense(x)
        defense.reseed(1)
        again = defense(x)
        defense.reseed(2)
        other = defense(x)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("vote", "average"), [("prediction", "probs"), ("weighted", "probs"),
                                               ("soft", "probs"), ("soft", "logits")])
def test_sigma_zero_on_a_deterministic_model_is_the_model(vote: str, average: str) -> None:
    model, x = _linear(), _x(8)
    defense = Smoothed(model, m=4, sigma=0.0, vote=vote, average=average)  # type: ignore[arg-type]
    with torch.no_grad():
        logits = model(x)
        out = defense(x)
        assert torch.equal(defense.base_model(x), logits)
    assert torch.equal(out.argmax(1), logits.argmax(1))
    if vote == "prediction":
        assert torch.equal(out, nn.functional.one_hot(logits.argmax(1), 5).float())
    if vote == "soft":
        expected = logits.softmax(-1) if average == "probs" else logits
        assert torch.allclose(out, expected, atol=1e-6)


# --------------------------------------------------------------------------- gradients
def test_hard_votes_are_not_differentiable_and_bpda_uses_the_soft_vote() -> None:
    model, x = _linear(), _x(4)
    hard = Smoothed(model, m=16, sigma=0.3, vote="prediction", seed=3)
    soft = Smoothed(model, m=16, sigma=0.3, vote="soft", seed=3)
    xg = x.clone().requires_grad_(True)
    value = hard.forward_bpda(xg)
    hard.reseed(3)
    with torch.no_grad():
        vote = hard(x)
    xs = x.clone().requires_grad_(True)
    soft_value = soft(xs)  # same draws (same seed)
    # the surrogate is the soft vote over the same draws, value and gradient: it agrees with the
    # hard vote's decision here, and keeps a gradient for every class -- including one that no
    # draw votes for, where a straight-through estimator's ∇ log vanishes (clamped 1/0)
    assert torch.allclose(value.detach(), soft_value.detach(), atol=1e-6)
    assert bool((value.detach().argmax(1) == vote.argmax(1)).float().mean() >= 0.75)
    zero_vote = (vote < 1e-6).any(0)
    assert bool(zero_vote.any()), "the toy setting should leave some class without votes"
    for c in range(value.shape[1]):
        (grad,) = torch.autograd.grad(value[:, c].log().sum(), xg, retain_graph=True)
        (expected,) = torch.autograd.grad(soft_value[:, c].log().sum(), xs, retain_graph=True)
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-6), c
        assert float(grad.abs().sum()) > 0
    hard.reseed(3)
    xp = x.clone().requires_grad_(True)
    (naive,) = torch.autograd.grad(hard(xp)[:, 0].sum(), xp)
    assert float(naive.abs().max()) == 0.0  # the vote itself is piecewise constant


# --------------------------------------------------------------------------- certification
def test_clopper_pearson_against_hand_computed_values() -> None:
    lo, hi = clopper_pearson(10, 10, 0.05)
    assert float(lo) == pytest.approx(0.025 ** (1 / 10), abs=1e-9)  # = 0.69150
    assert float(hi) == 1.0
    lo, hi = clopper_pearson(0, 10, 0.05)
    assert (float(lo), float(hi)) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)), abs=1e-9)
    lo, hi = clopper_pearson(torch.tensor([5]), 10, 0.05)  # the textbook 5/10 interval
    assert (float(lo[0]), float(hi[0])) == pytest.approx((0.187086, 0.812914), abs=1e-6)


def test_certify_and_abstain() -> None:
    x = _x(3)
    sure = Smoothed(Scripted(torch.tensor([[0.0, 0.0, 9.0]])), m=10, sigma=0.25)
    cert = sure.certify(x, n0=10, n=100, alpha=0.001)
    p = 0.001 ** (1 / 100)  # one-sided lower bound for 100 successes out of 100
    assert cert.label.tolist() == [2, 2, 2]
    assert cert.p_lower.tolist() == pytest.approx([p] * 3, abs=1e-6)
    assert cert.radius.tolist() == pytest.approx([0.25 * NormalDist().inv_cdf(p)] * 3, abs=1e-5)
    assert cert.counts[:, 2].tolist() == [100] * 3
    coin = Smoothed(Scripted(torch.tensor([[1.0, 0.0], [0.0, 1.0]])), m=50, sigma=0.25)
    assert coin.certify(x, n0=10, n=100).label.tolist() == [ABSTAIN] * 3
    assert coin.predict_abstain(x).label.tolist() == [ABSTAIN] * 3
    assert sure.predict_abstain(x, n=20).label.tolist() == [2, 2, 2]
    assert math.isfinite(float(cert.radius.max()))


# --------------------------------------------------------------------------- registry, PNI
def test_registered_and_built_from_a_spec() -> None:
    assert DEFENSES.metadata("smoothing")["kind"] == "defense"
    defense = build_defense({"name": "smoothing", "m": 4, "sigma": 0.1, "vote": "weighted"},
                            _linear(), seed=3)
    assert isinstance(defense, Smoothed)
    assert (defense.m, defense.sigma, defense.vote, defense.seed) == (4, 0.1, "weighted", 3)
    with pytest.raises(ValueError, match="vote"):
        Smoothed(_linear(), vote="majority")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="m must"):
        Smoothed(_linear(), m=0)


def test_smoothing_a_defense_keeps_its_traits_and_uses_its_surrogate() -> None:
    """A vote over a non-differentiable defense is not differentiable (its exact gradient is
    zero), and its BPDA path goes through the defense's own surrogate; dynamic carries over."""
    from advguard.defenses import CAP, build_defense

    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(196, 5)).eval()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    soft = Smoothed(build_defense({"name": "bit_depth", "bits": 2}, model), m=3, vote="soft")
    assert not soft.traits.differentiable and soft.traits.output == "probs"
    exact = torch.autograd.grad(soft(x).log().sum(), x)[0]
    assert exact.abs().max() == 0  # rounding: the true gradient is zero
    surrogate = soft.forward_bpda(x)
    grad = torch.autograd.grad(surrogate.log().sum(), x)[0]
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    with torch.no_grad():
        assert torch.allclose(surrogate, soft(x), atol=1e-6)  # same value as the vote
    assert Smoothed(CAP(model, n_labels=2), m=2, sigma=0.1, vote="soft").traits.dynamic
    assert Smoothed(model, m=2, sigma=0.1, vote="soft").traits.differentiable


def test_smoothing_a_pipeline_and_a_pni_model() -> None:
    from advguard.models import create_model, noise

    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    pni = noise.inject_noise(create_model("lenet5", in_channels=1), {"kind": "pni"}, seed=0).eval()
    defense = Smoothed(pni, m=4, sigma=0.0, vote="prediction", seed=0)
    assert defense.traits.randomized and defense.batched  # one weight draw per stacked copy
    with torch.no_grad():
        draws = defense.draws(x)
    assert not torch.allclose(draws[0], draws[1])
    piped = Smoothed(Pipeline([GaussianNoise(sigma=0.1)], _linear()), m=4, vote="soft")
    assert piped.traits.randomized and piped.batched  # GaussianNoise draws per example
    assert piped(_x()).shape == (6, 5)


# --------------------------------------------------------------------------- sweeps
def test_the_first_m_of_shared_draws_are_the_m_draw_classifier() -> None:
    from advguard.experiments.sweep import cumulative_correct

    x, y = _x(), torch.tensor([0, 1, 2, 3, 0, 1])
    for vote in ("prediction", "weighted", "soft"):
        many = Smoothed(PerExampleNoisyLinear(), m=8, sigma=0.3, vote=vote, seed=4)
        few = Smoothed(PerExampleNoisyLinear(), m=4, sigma=0.3, vote=vote, seed=4)
        with torch.no_grad():
            correct = cumulative_correct(many.draws(x), y, [4, 8], vote, average="probs",
                                         decay=0.5, output="logits")
            assert torch.equal(correct[4], few(x).argmax(1) == y)
            many.reseed(4)
            scores = many(x)
            top2 = scores.topk(2, dim=1).values
            clear = top2[:, 0] - top2[:, 1] > 1e-5  # exact ties (e.g. 2·(1/2+1/8) vs ...) are
            assert bool(clear.sum() >= 4)          # decided by float summation order
            assert torch.equal(correct[8][clear], (scores.argmax(1) == y)[clear])


def test_selection_prefers_the_best_then_the_fewest_draws() -> None:
    from advguard.experiments.sweep import Point, select_setting

    def pts(sigma: float, m: int, clean: float, paper: float) -> list[Point]:
        return [Point("val", "A", sigma, "clean", "soft", m, clean, 100),
                Point("val", "A", sigma, "paper", "soft", m, paper, 100),
                Point("test", "A", sigma, "paper", "soft", m, 0.99, 100)]  # never looked at

    points = pts(0.0, 1, 0.9, 0.40) + pts(0.1, 1, 0.8, 0.55) + pts(0.1, 32, 0.8, 0.60) \
        + pts(0.2, 8, 0.7, 0.605) + pts(0.2, 512, 0.7, 0.61) + pts(0.3, 1, 0.6, 0.59)
    (choice,) = select_setting(points, tolerance=0.01)
    assert (choice.sigma, choice.m, choice.val_paper) == (0.2, 8, 0.605)
    (strict,) = select_setting(points, tolerance=0.0)
    assert (strict.sigma, strict.m) == (0.2, 512)


@pytest.mark.parametrize(("name", "spec"), [
    ("smallcnn", {"kind": "pni"}), ("lenet5", {"kind": "cni", "rank": 2})])
def test_weight_noise_models_batch_their_draws_exactly(name: str, spec: dict[str, object]
                                                       ) -> None:
    """PNI/CNI layers draw one weight perturbation per stacked copy: chunk=16 (two forwards for
    m = 20) gives the draws, votes and input gradients of chunk=1 (twenty forwards)."""
    from advguard.models import create_model
    from advguard.rng import rng_states

    model = create_model(name, num_classes=10, in_channels=1, seed=0, noise=spec).eval()
    with torch.no_grad():  # smallcnn zero-initializes its last layer (constant logits)
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(5))
    assert draws_per_copy(model)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    fast = Smoothed(model, m=20, sigma=0.1, vote="prediction", chunk=16, seed=7)
    slow = Smoothed(model, m=20, sigma=0.1, vote="prediction", chunk=1, seed=7)
    cpu = torch.device("cpu")
    assert fast.batched and fast.chunk_size(cpu) == 16 and slow.chunk_size(cpu) == 1
    x0 = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert [d.shape[0] for d in fast.iter_draws(x0)] == [16, 4]
        assert [d.shape[0] for d in slow.iter_draws(x0)] == [1] * 20
    draws = {}
    for key, defense in (("fast", fast), ("slow", slow)):
        defense.reseed(7)  # the two share the model, hence its noise generators
        with torch.no_grad():
            draws[key] = defense.draws(x)
        draws[key + "-rng"] = rng_states(model)
    assert torch.allclose(draws["fast"], draws["slow"], atol=1e-5)
    assert not torch.allclose(draws["fast"][0], draws["fast"][1])  # independent weight draws
    fast_rng, slow_rng = draws["fast-rng"], draws["slow-rng"]
    assert all(torch.equal(fast_rng[n]["generators"]["cpu"],  # type: ignore[index]
                           slow_rng[n]["generators"]["cpu"])  # type: ignore[index]
               for n in fast_rng if fast_rng[n]["generators"])
    votes = []
    for defense in (fast, slow):
        defense.reseed(7)
        with torch.no_grad():
            votes.append(defense(x))
    assert torch.equal(votes[0], votes[1])
    grads = []
    for defense in (fast, slow):
        soft = Smoothed(model, m=20, sigma=0.1, vote="soft", chunk=defense.chunk, seed=7)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(soft(xg)[:, 0].sum(), xg)
        grads.append(grad)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_eot_over_a_weight_noise_model_draws_weights_per_copy() -> None:
    from advguard.attacks import EOT
    from advguard.models import create_model
    from advguard.rng import rng_states, set_rng_states

    model = create_model("lenet5", num_classes=10, in_channels=1, seed=0,
                         noise={"kind": "pni"}).eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    start = rng_states(model)
    with torch.no_grad():
        eot = EOT(model, 4, chunk=4)(x)
        set_rng_states(model, start)
        expected = torch.stack([model(x).softmax(-1) for _ in range(4)]).mean(0).log()
    assert torch.allclose(eot, expected, atol=1e-5)


def test_stacked_copies_need_a_divisible_batch() -> None:
    from advguard.models import create_model

    model = create_model("lenet5", num_classes=10, in_channels=1, noise={"kind": "pni"})
    base = Smoothed(model, m=4, sigma=0.1).base
    with pytest.raises(ValueError, match="cannot hold 4 stacked copies"), stacked_copies(base, 4):
        base(torch.rand(6, 1, 28, 28))


def test_default_chunk_follows_the_device() -> None:
    """``chunk=None``: one copy per forward on CPU (measured faster there), 16 elsewhere; an
    explicit chunk wins; a model whose noise cannot be drawn per copy always gets 1."""
    from advguard.defenses.smoothing import ACCELERATOR_CHUNK, CPU_CHUNK

    model = _linear()
    default = Smoothed(model, m=40, sigma=0.1)
    assert default.chunk_size(torch.device("cpu")) == CPU_CHUNK == 1
    assert default.chunk_size(torch.device("cuda")) == ACCELERATOR_CHUNK == 16
    assert Smoothed(model, m=40, sigma=0.1, chunk=8).chunk_size(torch.device("cpu")) == 8
    assert draw_chunks(40, default.chunk_size(torch.device("cuda"))) == [16, 16, 8]
