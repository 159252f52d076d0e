"""The attacks the ADD-Defense paper adds to the suite (its Appendix A.5, A.6, C.1): LocalSearch
(score-based, no gradients), stAdv (a flow field, verified by its own threat model) and a masked
RP2-style patch attack (verified: nothing changes outside the mask).

Each stays inside its threat model and the verification catches forged violations; accuracy does
not rise; a fixed generator gives identical results; bad parameters raise ConfigError; and the
pieces are checked against independent simple implementations (warp against roll and a hand
bilinear interpolation, the flow loss against a loop over pixels, one LocalSearch round against
a hand-computed round on a linear model)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
from torch import nn

from advguard.attacks import (
    ATTACKS,
    PGD,
    Attack,
    Evidenced,
    FlowThreat,
    LocalSearch,
    Patch,
    PatchThreat,
    StAdv,
    ThreatModel,
    flow_loss,
    make_attack,
    warp,
)
from advguard.attacks.local_search import cyclic
from advguard.errors import AttackVerificationError, ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def _tiny_batch(n: int = 4) -> Batch:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=gen), torch.arange(n) % 3


# --------------------------------------------------------------------------- registry
def test_the_three_attacks_are_registered_with_their_threat_models() -> None:
    for name, cls, threat, kind in [("local_search", LocalSearch, "lp", "score"),
                                    ("stadv", StAdv, "flow", "gradient"),
                                    ("patch", Patch, "patch", "gradient")]:
        assert ATTACKS.get(name) is cls
        meta = ATTACKS.metadata(name)
        assert meta["source"] == "advguard" and meta["threat"] == threat
        assert meta["kind"] == kind and meta["paper"]
        assert "Example::" in (cls.__doc__ or "")
    assert isinstance(make_attack("local_search", eps=0.1).threat, ThreatModel)
    assert isinstance(make_attack("stadv", max_flow=0.5).threat, FlowThreat)
    patch = make_attack("patch", region=[2, 3, 4, 5])  # a list, as from a config file
    assert patch.region == (2, 3, 4, 5) and isinstance(patch.threat, PatchThreat)
    assert make_attack("patch", eps="8/255", steps=1).eps == pytest.approx(8 / 255)


# --------------------------------------------------------------------------- the contract
# (id, attack, minimum drop in accuracy on 16 F-MNIST test images of the 79%-accurate LeNet-5,
# 75% on these). LocalSearch is strong only unconstrained, as the paper runs it (75% -> 6%);
# inside a ball its cyclic pixel flips are clamped and its probes of saturated pixels change
# nothing (measured with the default t = 300: 75% -> 69% at L-inf 0.2, 75% at L2 2.0), so there
# it is only checked not to help.
CASES: list[tuple[str, Callable[[], Attack], float]] = [
    ("local_search-unconstrained", lambda: LocalSearch(eps=1.0), 0.5),
    ("local_search-linf", lambda: LocalSearch(eps=0.2, t=30, round_ub=5, max_candidates=64),
     0.0),
    ("local_search-l2", lambda: LocalSearch(eps=2.0, norm="l2", t=30, round_ub=5,
                                            max_candidates=64), 0.0),
    ("stadv-search", lambda: StAdv(steps=30, search_steps=3), 0.3),
    ("stadv-lbfgs", lambda: StAdv(steps=20, tau=0.005, optimizer="lbfgs"), 0.1),
    ("stadv-flow-loss", lambda: StAdv(steps=20, search_steps=3, max_flow_loss=100.0), 0.2),
    ("patch", lambda: Patch(steps=20, region=(6, 6, 16, 16)), 0.3),
    ("patch-ellipse-eot", lambda: Patch(steps=10, shape="ellipse", region=(4, 4, 20, 20), eot=2,
                                        max_shift=2, lam=0.01, reg_norm="l1"), 0.2),
    ("patch-l2", lambda: Patch(norm="l2", eps=4.0, steps=20, region=(6, 6, 16, 16)), 0.2),
]


@pytest.mark.parametrize(("case_id", "factory", "drop"), CASES, ids=[c[0] for c in CASES])
def test_attack_contract(case_id: str, factory: Callable[[], Attack], drop: float,
                         fmnist_model: nn.Module, fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:16], fmnist_batch[1][:16]
    attack = factory()
    result = attack(fmnist_model, x, y, generator=torch.Generator().manual_seed(0))
    assert result.adv.shape == x.shape and result.adv.dtype == x.dtype
    assert float(result.adv.min()) >= 0.0 and float(result.adv.max()) <= 1.0
    attack.threat.verify(result.adv, x, evidence=result.evidence)  # again, from the outside
    if isinstance(attack.threat, ThreatModel):
        assert float(attack.threat.distance(result.adv, x).max()) <= attack.eps * (1 + 1e-5) + 1e-6
    clean, robust = accuracy(fmnist_model, x, y), accuracy(fmnist_model, result.adv, y)
    assert robust <= clean - drop, f"{case_id}: {clean:.2f} -> {robust:.2f}"
    assert torch.equal(result.success, fmnist_model(result.adv).argmax(1) != y)
    assert result.queries >= 2
    again = attack(fmnist_model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.adv, result.adv)


# --------------------------------------------------------------------------- bad parameters
@pytest.mark.parametrize(("factory", "match"), [
    (lambda: LocalSearch(eps=0.1, r=2.5), r"r in \[0, 2\]"),
    (lambda: LocalSearch(eps=0.1, p=0.0), "p > 0"),
    (lambda: LocalSearch(eps=0.1, t=0), "t >= 1"),
    (lambda: LocalSearch(eps=0.1, d=-1), "d >= 0"),
    (lambda: LocalSearch(eps=0.1, seed_ratio=0.0), r"seed_ratio in \(0, 1\]"),
    (lambda: LocalSearch(eps=0.1, max_candidates=0), "max_candidates"),
    (lambda: LocalSearch(eps=0.1, round_ub=2.5), "'round_ub' must be an int"),
    (lambda: StAdv(eps=0.1), "not an ε-ball: leave eps and norm unset"),
    (lambda: StAdv(max_flow=0.0), "max_flow > 0"),
    (lambda: StAdv(max_flow_loss=-1.0), "max_flow_loss must be"),
    (lambda: StAdv(search_steps=0), "search_steps >= 1"),
    (lambda: StAdv(optimizer="sgd"), "'optimizer' must be one of 'adam', 'lbfgs'"),
    (lambda: StAdv(tau=-1.0), "tau >= 0"),
    (lambda: Patch(region=(0, 0, 0, 4)), "height, width >= 1"),
    (lambda: Patch(region=(0, 0, 4)), "'region' must be"),
    (lambda: Patch(shape="star"), "unknown mask shape 'star'"),
    (lambda: Patch(eot=0), "eot >= 1"),
    (lambda: Patch(lam=-0.5), "lam >= 0"),
    (lambda: Patch(alpha=0.0), "alpha > 0"),
    (lambda: Patch(eps=2.0), "exceeds the pixel range"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_parameters_raise_config_errors(factory: Callable[[], Attack], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()


def test_bad_calls_raise_config_errors() -> None:
    model, (x, y) = _tiny_model(), _tiny_batch()
    with pytest.raises(ConfigError, match="does not fit a 4×4 image"):
        Patch(region=(2, 2, 3, 3), steps=1)(model, x, y)
    with pytest.raises(ConfigError, match="untargeted"):
        LocalSearch(eps=0.1)(model, x, y, target="random")
    with pytest.raises(ConfigError, match="k below the number of classes"):
        LocalSearch(eps=0.1, k=3)(model, x, y)


# --------------------------------------------------------------------------- patch threat
def test_patch_threat_catches_a_change_outside_the_mask() -> None:
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    threat = PatchThreat(region=(2, 2, 4, 4))
    mask = threat.mask(x)
    assert mask.shape == (1, 1, 8, 8) and int(mask.sum()) == 16 and bool(mask[0, 0, 2:6, 2:6].all())
    inside = torch.where(mask, 1 - x, x)  # any magnitude inside the mask
    threat.verify(inside, x)
    leaked = inside.clone()
    leaked[1, 0, 0, 0] += 1e-4 if float(x[1, 0, 0, 0]) < 0.5 else -1e-4
    with pytest.raises(AttackVerificationError, match=r"outside its patch mask \(1 of 2"):
        threat.verify(leaked, x)
    with pytest.raises(AttackVerificationError, match="left its linf ε-ball"):
        PatchThreat(region=(2, 2, 4, 4), eps=0.1).verify(inside, x)
    with pytest.raises(AttackVerificationError, match="left the bounds"):
        threat.verify(torch.where(mask, x + 2, x), x)
    assert torch.allclose(threat.project(leaked, x), torch.where(mask, leaked, x).clamp(0, 1))
    assert torch.equal(threat.project(leaked, x)[~mask.expand_as(x)], x[~mask.expand_as(x)])
    disc = PatchThreat(region=(0, 0, 8, 8), shape="ellipse").mask(x)
    assert not bool(disc[0, 0, 0, 0]) and bool(disc[0, 0, 4, 4]) and 40 <= int(disc.sum()) <= 56
    assert PatchThreat().mask(torch.zeros(1, 1, 28, 28))[0, 0].nonzero().tolist()[0] == [10, 10]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LeakyPatch(Patch):
    """Forged: a patch attack that also darkens a corner pixel, outside its mask."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        adv = super().perturb(model, x, y, target=target, generator=generator).clone()
        adv[:, :, 0, 0] = 1 - x[:, :, 0, 0]
        return adv


def test_a_patch_attack_leaving_its_mask_is_a_bug_not_a_number(fmnist_model: nn.Module,
                                                               fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:4], fmnist_batch[1][:4]
    with pytest.raises(AttackVerificationError, match="patch attack changed pixels outside"):
        _LeakyPatch(steps=1)(fmnist_model, x, y)


def test_patch_changes_nothing_outside_its_mask_and_a_bigger_mask_hurts_more(
        fmnist_model: nn.Module, fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:40], fmnist_batch[1][:40]
    robust = []
    for side in (3, 7, 14):  # measured: 72.5% clean -> 70%, 45%, 0%
        top = (28 - side) // 2
        attack = Patch(steps=10, region=(top, top, side, side), random_start=False)
        result = attack(fmnist_model, x, y, generator=torch.Generator().manual_seed(0))
        outside = ~attack.threat.mask(x)
        assert torch.equal(result.adv[outside.expand_as(x)], x[outside.expand_as(x)])
        robust.append(accuracy(fmnist_model, result.adv, y))
    assert robust[0] > robust[1] > robust[2], robust


def test_patch_regularizer_shrinks_the_sticker(fmnist_model: nn.Module,
                                               fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:16], fmnist_batch[1][:16]
    sizes = []
    for lam in (0.0, 5.0):
        adv = Patch(steps=10, lam=lam, alpha=0.05, region=(6, 6, 16, 16), random_start=False)(
            fmnist_model, x, y, generator=torch.Generator().manual_seed(0)).adv
        sizes.append(float((adv - x).flatten(1).norm(dim=1).mean()))
    assert sizes[1] < 0.8 * sizes[0], sizes


def test_patch_targeted_and_eot_translations(fmnist_model: nn.Module,
                                             fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:16], fmnist_batch[1][:16]
    target = (y + 1) % 10
    result = Patch(steps=20, region=(4, 4, 20, 20), eot=2, max_shift=1)(
        fmnist_model, x, y, target=target, generator=torch.Generator().manual_seed(0))
    assert result.target is not None and torch.equal(result.target, target)
    assert float(result.success.float().mean()) >= 0.6
    # robust to the translations it was optimized over: still mostly the target when shifted
    flow = torch.zeros(16, 2, 28, 28)
    flow[:, 0] = 1.0
    shifted = fmnist_model(warp(result.adv, flow)).argmax(1)
    assert float((shifted == target).float().mean()) >= 0.5


# --------------------------------------------------------------------------- warp and flow loss
def test_zero_flow_is_the_identity_and_integer_flows_are_shifts() -> None:
    x = torch.rand(3, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros(3, 2, 7, 9)
    assert torch.allclose(warp(x, zero), x, atol=1e-6)
    for du, dv in [(1, 0), (0, 2), (-1, -1), (3, -2)]:
        flow = torch.zeros(3, 2, 7, 9)
        flow[:, 0], flow[:, 1] = float(du), float(dv)
        rolled = torch.roll(x, shifts=(-dv, -du), dims=(2, 3))  # out[i, j] = x[i + dv, j + du]
        rows = slice(max(0, -dv), 7 - max(0, dv))
        cols = slice(max(0, -du), 9 - max(0, du))
        assert torch.allclose(warp(x, flow)[..., rows, cols], rolled[..., rows, cols], atol=1e-5)
    # beyond the image: the border pixel is repeated
    flow = torch.zeros(3, 2, 7, 9)
    flow[:, 0] = 20.0
    assert torch.allclose(warp(x, flow), x[..., -1:].expand_as(x), atol=1e-5)


def test_warp_is_bilinear_interpolation() -> None:
    x = torch.rand(2, 1, 5, 6, generator=torch.Generator().manual_seed(2))
    flow = (torch.rand(2, 2, 5, 6, generator=torch.Generator().manual_seed(3)) - 0.5) * 1.8
    out = warp(x, flow)
    for n, i, j in [(0, 2, 3), (1, 1, 1), (1, 3, 4), (0, 0, 0), (1, 4, 5)]:
        sx = min(max(j + float(flow[n, 0, i, j]), 0.0), 5.0)  # border: clamp the position
        sy = min(max(i + float(flow[n, 1, i, j]), 0.0), 4.0)
        j0, i0 = int(sx), int(sy)
        j1, i1 = min(j0 + 1, 5), min(i0 + 1, 4)
        a, b = sx - j0, sy - i0
        img = x[n, 0]
        expected = ((1 - a) * (1 - b) * img[i0, j0] + a * (1 - b) * img[i0, j1]
                    + (1 - a) * b * img[i1, j0] + a * b * img[i1, j1])
        assert float(out[n, 0, i, j]) == pytest.approx(float(expected), abs=1e-5)


def test_flow_loss_matches_a_loop_over_pixels_and_neighbours() -> None:
    flow = torch.randn(2, 2, 4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = torch.zeros(2, dtype=torch.float64)
    for n in range(2):
        for i in range(4):
            for j in range(5):
                for di, dj in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
                    qi, qj = i + di, j + dj
                    if 0 <= qi < 4 and 0 <= qj < 5:
                        d = flow[n, :, i, j] - flow[n, :, qi, qj]
                        expected[n] += float((d.pow(2).sum() + 1e-3).sqrt())
    assert torch.allclose(flow_loss(flow, eps=1e-3), expected)
    assert float(flow_loss(torch.zeros(1, 2, 6, 6)).max()) == 0.0
    assert float(flow_loss(torch.full((1, 2, 6, 6), 0.7)).max()) == pytest.approx(0.0, abs=1e-6)
    one = torch.zeros(1, 2, 5, 5)
    one[0, :, 2, 2] = torch.tensor([3.0, 4.0])  # one interior pixel moved by 5 pixels
    assert float(flow_loss(one)[0]) == pytest.approx(2 * 4 * 5.0)


# --------------------------------------------------------------------------- flow threat
def test_flow_threat_catches_large_flows_rough_flows_and_non_warps() -> None:
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    flow = (torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.8
    threat = FlowThreat(max_flow=0.5)
    threat.verify(warp(x, flow), x, evidence={"flow": flow})
    with pytest.raises(AttackVerificationError, match="left its flow bound: a displacement"):
        threat.verify(warp(x, 2 * flow), x, evidence={"flow": 2 * flow})
    smooth = float(flow_loss(flow).max())
    with pytest.raises(AttackVerificationError, match=r"flow loss .* > max_flow_loss"):
        FlowThreat(max_flow=0.5, max_flow_loss=smooth / 2).verify(warp(x, flow), x,
                                                                  evidence={"flow": flow})
    forged = (warp(x, flow) + 0.01).clamp(0, 1)
    with pytest.raises(AttackVerificationError, match="not the warp of x by its flow"):
        threat.verify(forged, x, evidence={"flow": flow})
    with pytest.raises(AttackVerificationError, match=r"did not hand over the evidence .*flow"):
        threat.verify(warp(x, flow), x)
    with pytest.raises(AttackVerificationError, match="flow must have shape"):
        threat.verify(warp(x, flow), x, evidence={"flow": flow[:, :1]})
    with pytest.raises(AttackVerificationError, match="evidence 'flow' is not finite"):
        threat.verify(x, x, evidence={"flow": torch.full_like(flow, float("nan"))})
    limited = FlowThreat(max_flow=0.1, max_flow_loss=1.0).limit(flow)
    assert float(limited.abs().max()) <= 0.1 and float(flow_loss(limited).max()) <= 1.0
    assert torch.equal(threat.unperturbed(x)["flow"], torch.zeros(2, 2, 8, 8))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ForgedStAdv(StAdv):
    """Forged stAdv results: ``mode`` says how they lie."""

    mode: str = "not-a-warp"

    def perturb_evidenced(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          target: torch.Tensor | None, generator: torch.Generator
                          ) -> Evidenced:
        flow = torch.full((x.shape[0], 2, *x.shape[-2:]), 0.5 * self.max_flow)
        if self.mode == "not-a-warp":
            return Evidenced((warp(x, flow) + 0.05).clamp(0, 1), {"flow": flow})
        if self.mode == "too-far":
            return Evidenced(warp(x, 3 * flow), {"flow": 3 * flow})
        return Evidenced(warp(x, flow))  # no evidence


@pytest.mark.parametrize(("mode", "match"), [
    ("not-a-warp", "not the warp of x by its flow"),
    ("too-far", "left its flow bound"),
    ("silent", "did not hand over the evidence"),
])
def test_a_forged_stadv_result_is_a_bug_not_a_number(mode: str, match: str) -> None:
    model, (x, y) = _tiny_model(), _tiny_batch()
    with pytest.raises(AttackVerificationError, match="stadv attack.*" + match):
        _ForgedStAdv(mode=mode)(model, x, y)


def test_stadv_returns_its_verified_flow(fmnist_model: nn.Module, fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:16], fmnist_batch[1][:16]
    attack = StAdv(steps=20, tau=0.005, max_flow=0.5, max_flow_loss=30.0)
    result = attack(fmnist_model, x, y, generator=torch.Generator().manual_seed(0))
    flow = result.evidence["flow"]
    assert flow.shape == (16, 2, 28, 28)
    assert float(flow.abs().max()) <= 0.5 + 1e-6 and float(flow_loss(flow).max()) <= 30.0 + 1e-4
    assert torch.allclose(warp(x, flow), result.adv, atol=1e-5)
    # examples the model already gets wrong are returned unchanged, with a zero flow
    wrong = fmnist_model(x).argmax(1) != y
    assert bool(wrong.any())
    assert float(flow[wrong].abs().max()) == 0.0  # the zero flow already fools it
    assert torch.allclose(result.adv[wrong], x[wrong], atol=1e-5)
    assert bool(result.success[wrong].all())


def test_stadv_targeted_moves_towards_the_target(fmnist_model: nn.Module,
                                                 fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:16], fmnist_batch[1][:16]
    target = fmnist_model(x).argsort(1)[:, -2]  # the runner-up class
    result = StAdv(steps=30, tau=0.005)(fmnist_model, x, y, target=target,
                                        generator=torch.Generator().manual_seed(0))
    hit = fmnist_model(result.adv).argmax(1) == target
    assert float(hit.float().mean()) >= 0.5 and torch.equal(result.success, hit)


# --------------------------------------------------------------------------- LocalSearch
class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a gradient was taken through a score-only model")


class _ScoresOnly(nn.Module):
    """The model's scores, with a trap for gradients; records whether autograd was on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.model(_NoBackward.apply(x))


def test_local_search_uses_scores_only(fmnist_model: nn.Module, fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:8], fmnist_batch[1][:8]
    trap = _ScoresOnly(fmnist_model)
    with pytest.raises(AssertionError, match="gradient was taken"):  # the trap works
        PGD(eps=0.1, steps=1)(trap, x, y)
    trap.grad_enabled.clear()
    result = LocalSearch(eps=1.0, t=30, round_ub=3)(trap, x, y,
                                                   generator=torch.Generator().manual_seed(0))
    assert len(trap.grad_enabled) >= 5 and not any(trap.grad_enabled)
    assert accuracy(fmnist_model, result.adv, y) <= accuracy(fmnist_model, x, y)


def test_local_search_counts_its_queries() -> None:
    """On a model it never fools, one round costs one query per probed location plus a check:
    1 (clean, by the base) + 1 (LS's check) + seeds + 1 + 1 (success, by the base)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(3, dtype=torch.long)
    result = LocalSearch(eps=1.0, round_ub=1, seed_ratio=0.25)(model, x, y)
    assert result.queries == 4 + 4 and result.iterations == 1
    two = LocalSearch(eps=1.0, round_ub=2, seed_ratio=0.25, t=1, d=0)(model, x, y)
    assert two.queries == 4 + 4 + 1 + 1  # round 2 probes the one location chosen in round 1


def test_one_local_search_round_matches_a_hand_computed_round() -> None:
    """Two classes, ``logit_0 − logit_1 = w·x + b``: probing pixel ``l`` moves it to the bound on
    its side of ½, so the lowest true-class probability comes from the most negative
    ``w_l·(probe_l − x_l)``; that pixel (t = 1) is then transformed ``z ← CYC(r·z)``."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(1, 1, 4, 4, generator=gen)
    w = torch.randn(16, generator=gen)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, torch.zeros(16)]))
        model[1].bias.copy_(torch.tensor([3.0 - float(w @ x.flatten()), 0.0]))  # margin 3
    result = LocalSearch(eps=1.0, t=1, r=1.5, round_ub=1, seed_ratio=1.0, max_candidates=None)(
        model, x, torch.zeros(1, dtype=torch.long))
    flat = x.flatten()
    probe = torch.where(flat > 0.5, 1.0, torch.where(flat < 0.5, 0.0, flat))
    chosen = int((w * (probe - flat)).argmin())
    expected = flat.clone()
    expected[chosen] = cyclic(1.5 * (flat[chosen] - 0.5)) + 0.5
    assert torch.allclose(result.adv.flatten(), expected, atol=1e-6)
    assert float(cyclic(torch.tensor(0.6))) == pytest.approx(-0.4)
    assert float(cyclic(torch.tensor(-0.75))) == pytest.approx(0.25)
    assert float(cyclic(torch.tensor(0.3))) == pytest.approx(0.3)


def test_local_search_stays_in_a_small_ball(fmnist_model: nn.Module, fmnist_batch: Batch) -> None:
    x, y = fmnist_batch[0][:8], fmnist_batch[1][:8]
    attack = LocalSearch(eps=0.05, t=30, round_ub=3, max_candidates=32)
    result = attack(fmnist_model, x, y, generator=torch.Generator().manual_seed(1))
    assert float((result.adv - x).abs().max()) <= 0.05 + 1e-6
    assert accuracy(fmnist_model, result.adv, y) <= accuracy(fmnist_model, x, y)
