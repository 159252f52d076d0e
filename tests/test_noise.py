"""Noise-injection layers (PNI, CNI): the noise formula against a hand computation, noise active in
eval mode, owned and seeded randomness, CNI's low-rank covariance, learned scales excluded from
weight decay, conversion of registry models, checkpoints and FLOP counts, and stacked copies
(k weight draws in one forward == k forwards). CPU, tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.checkpoint import load_checkpoint, save_checkpoint
from advguard.errors import ConfigError
from advguard.models import count_flops, create_model
from advguard.models.noise import (
    CNINoise,
    NoiseSpec,
    NoisyConv2d,
    NoisyLinear,
    PNINoise,
    add_weight_noise,
    has_noise,
    inject_noise,
    noise_modules,
    weight_noise_copies,
)
from advguard.rng import derive_seed, rng_states, set_rng_states
from advguard.training import TrainConfig, make_recipe, train

X = torch.rand(4, 1, 28, 28)


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def lenet(**noise: object) -> nn.Module:
    return create_model("lenet5", in_channels=1, seed=0, noise=dict(noise) if noise else None)


# --------------------------------------------------------------------------- PNI
def test_pni_noise_is_alpha_times_weight_std_times_a_draw_from_the_layer_generator() -> None:
    layer = PNINoise((3, 2, 3, 3), init=0.25, seed=7)
    weight = torch.randn(3, 2, 3, 3)
    noisy = layer(weight)
    z = torch.randn(weight.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(noisy, weight + 0.25 * weight.std() * z, atol=1e-6)
    again = layer(weight)  # the generator moves on: a new draw
    assert not torch.allclose(again, noisy)


@pytest.mark.parametrize(("granularity", "shape"), [
    ("layer", ()), ("channel", (6, 1, 1, 1)), ("element", (6, 1, 5, 5))])
def test_pni_granularity_shapes(granularity: str, shape: tuple[int, ...]) -> None:
    model = lenet(kind="pni", granularity=granularity)
    conv1 = model.model.conv1
    assert isinstance(conv1, NoisyConv2d) and isinstance(conv1.noise, PNINoise)
    assert tuple(conv1.noise.alpha.shape) == shape
    assert isinstance(model.model.fc3, NoisyLinear)


def test_noise_is_on_in_eval_mode_unless_the_spec_says_otherwise() -> None:
    model = lenet(kind="pni").eval()
    with torch.no_grad():
        assert not torch.allclose(model(X), model(X))
    quiet = lenet(kind="pni", eval_noise=False).eval()
    with torch.no_grad():
        assert torch.equal(quiet(X), quiet(X))
        plain = lenet()
        plain.load_state_dict(quiet.state_dict(), strict=False)  # same weights, no noise
        assert torch.allclose(quiet(X), plain.eval()(X))
        quiet.train()
        assert not torch.allclose(quiet(X), quiet(X))


def test_noise_randomness_is_owned_seeded_and_resumable() -> None:
    before = torch.get_rng_state()
    a, b = lenet(kind="cni", rank=2), lenet(kind="cni", rank=2)
    with torch.no_grad():
        first = [a(X) for _ in range(3)]
        assert all(torch.equal(u, b(X)) for u in first)  # same seed → same noise stream
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never used
    seeds = {m.seed for m in noise_modules(a)}
    assert len(seeds) == len(noise_modules(a)) == 5  # one stream per layer
    conv1 = a.model.conv1
    assert isinstance(conv1, NoisyConv2d)
    assert conv1.noise.seed == derive_seed(0, "noise", "conv1")
    states = rng_states(a)
    with torch.no_grad():
        later = a(X)
        set_rng_states(a, states)
        assert torch.equal(a(X), later)  # restoring the generators replays the draw
    other = create_model("lenet5", in_channels=1, seed=1, noise={"kind": "cni", "rank": 2})
    other.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert not torch.equal(other(X), a(X))  # another seed, another stream


# --------------------------------------------------------------------------- CNI
def test_cni_noise_has_low_rank_plus_diagonal_covariance() -> None:
    layer = CNINoise((3, 4), rank=2, init=0.3, factor_init=0.5, seed=1)
    weight = torch.randn(3, 4)
    with torch.no_grad():
        samples = torch.stack([layer.sample(weight).flatten() for _ in range(20000)])
        empirical = samples.T.cov()
        expected = layer.covariance(weight)
        f, d = layer.factor, layer.diag
        assert torch.allclose(expected, weight.std() ** 2 * (f @ f.T + torch.diag(d**2)))
        assert torch.allclose(empirical, expected, atol=0.05 * float(expected.abs().max()))
        # without the diagonal the noise lives in the k-dimensional column space of F
        layer.diag.zero_()
        coloured = torch.stack([layer.sample(weight).flatten() for _ in range(50)])
        assert int(torch.linalg.matrix_rank(coloured)) == 2
        assert int(torch.linalg.matrix_rank(layer.covariance(weight))) == 2
        # and the noise is correlated across weights (off-diagonal covariance), unlike PNI's
        off = expected - torch.diag(torch.diagonal(expected))
        assert off.abs().max() > 0.1 * expected.diagonal().max()


def test_cni_noise_matches_hand_computation() -> None:
    layer = CNINoise((2, 3), rank=2, seed=5)
    weight = torch.randn(2, 3)
    noisy = layer(weight)
    z = torch.randn(6 + 2, generator=torch.Generator().manual_seed(5))
    eta = layer.diag * z[:6] + layer.factor @ z[6:]
    assert torch.allclose(noisy, weight + weight.std() * eta.view(2, 3), atol=1e-6)
    assert tuple(layer.factor.shape) == (6, 2) and tuple(layer.diag.shape) == (6,)


# --------------------------------------------------------------------------- learning the scales
def test_noise_scales_are_learned_and_excluded_from_weight_decay() -> None:
    model = lenet(kind="pni", granularity="channel")
    recipe = make_recipe("standard")
    groups = recipe.param_groups(model, 5e-4)
    alphas = {id(m.alpha) for m in noise_modules(model) if isinstance(m, PNINoise)}
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert {id(p) for p in groups[1]["params"]} == alphas
    assert not alphas & {id(p) for p in groups[0]["params"]}
    # a gradient reaches α (through σ(w)·z)
    out = model(X)
    F.cross_entropy(out, torch.arange(4)).backward()
    conv1 = model.model.conv1
    assert isinstance(conv1, NoisyConv2d) and isinstance(conv1.noise, PNINoise)
    assert conv1.noise.alpha.grad is not None and conv1.noise.alpha.grad.abs().sum() > 0
    # and training moves α away from its initial value, with no weight decay pulling it to 0
    config = TrainConfig(dataset="fashion-mnist-sample", model="lenet5", recipe="noise_injection",
                         recipe_kwargs={"noise": {"kind": "pni"}, "base": "standard",
                                        "base_kwargs": {}},
                         epochs=1, batch_size=32, lr=0.1, weight_decay=5.0, train_size=128,
                         test_size=0, device="cpu", augment="none")
    result = train(config, progress=False)
    trained = [float(m.alpha.detach()) for m in noise_modules(result.model)
               if isinstance(m, PNINoise)]
    assert len(trained) == 5
    assert any(abs(a - 0.25) > 1e-4 for a in trained)  # learned
    # this much weight decay on α would have driven it to about -0.11 in these 4 steps
    assert all(a > 0.2 for a in trained)
    assert result.record.history[-1]["noise_scale"] != pytest.approx(0.25, abs=1e-6)


# --------------------------------------------------------------------------- conversion
def test_inject_noise_keeps_weights_names_and_flops_and_leaves_the_input_alone() -> None:
    plain = create_model("smallcnn", in_channels=1, seed=0)
    plain_state = {k: v.clone() for k, v in plain.state_dict().items()}
    noisy = inject_noise(plain, {"kind": "pni"}, seed=3)
    assert not has_noise(plain) and has_noise(noisy)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in plain_state.items())
    state = noisy.state_dict()
    assert set(plain_state) < set(state)
    assert set(state) - set(plain_state) == {k for k in state if ".noise." in k}
    assert all(torch.equal(state[k], v) for k, v in plain_state.items())
    assert count_flops(noisy, (1, 28, 28)).macs == count_flops(plain, (1, 28, 28)).macs
    assert noisy.spec is not None and noisy.spec.kwargs["noise"] == NoiseSpec().to_dict()
    with pytest.raises(ConfigError, match="already"):
        inject_noise(noisy, {"kind": "cni"})
    with pytest.raises(ConfigError, match="already"):
        add_weight_noise(noisy, {"kind": "cni"})


def test_layer_selection_and_spec_validation() -> None:
    conv_only = lenet(kind="pni", layers="conv")
    assert isinstance(conv_only.model.conv1, NoisyConv2d)
    assert type(conv_only.model.fc1) is nn.Linear
    assert add_weight_noise(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), {"layers": "conv"}) == 0
    for bad in ({"kind": "gauss"}, {"granularity": "row"}, {"rank": -1}, {"init": -0.1},
                {"layers": "bn"}, {"sigma": 0.1}):
        with pytest.raises(ConfigError, match="noise spec"):
            NoiseSpec.from_dict(bad)
    with pytest.raises(ConfigError, match="unknown argument"):
        create_model("lenet5", noisy=True)


@pytest.mark.parametrize("kind", ["pni", "cni"])
def test_noisy_models_round_trip_through_checkpoints(kind: str, tmp_path: Path) -> None:
    model = lenet(kind=kind, rank=2)
    with torch.no_grad():  # change the learned scales so the round trip has to carry them
        for m in noise_modules(model):
            for p in m.parameters():
                p.mul_(1.5)
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    loaded, meta = load_checkpoint(path)
    assert meta["model"]["noise"]["kind"] == kind
    assert loaded.spec == model.spec
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model.eval()
    with torch.no_grad():  # same weights and same noise streams → same outputs
        assert torch.equal(loaded(X), model(X))
    # a recipe-converted model (inject_noise) saves and loads the same way
    converted = inject_noise(create_model("lenet5", in_channels=1, seed=0), {"kind": kind},
                             seed=11)
    loaded2, _ = load_checkpoint(save_checkpoint(tmp_path / "c.safetensors", converted))
    assert loaded2.state_dict().keys() == converted.state_dict().keys()


# --------------------------------------------------------------------------- stacked copies
SPECS = {
    "pni-layer": {"kind": "pni"},
    "pni-channel": {"kind": "pni", "granularity": "channel"},
    "pni-element": {"kind": "pni", "granularity": "element"},
    "cni-rank0": {"kind": "cni", "rank": 0},
    "cni-rank3": {"kind": "cni", "rank": 3},
}
LAYERS = {  # (layer, input shape of one copy)
    "conv-stride-pad": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (3, 4, 9, 9)),
    "conv-groups-dilation-reflect": (
        lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode="reflect",
                          bias=False), (3, 4, 8, 8)),
    "linear": (lambda: nn.Linear(5, 7), (3, 5)),
    "linear-3d-no-bias": (lambda: nn.Linear(5, 7, bias=False), (2, 4, 5)),
}


def _noisy_layer(layer: str, spec: str) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(LAYERS[layer][0]())
    assert add_weight_noise(net, SPECS[spec], seed=2) == 1
    return net


def _generator_states(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: state["generators"]["cpu"]  # type: ignore[index]
            for name, state in rng_states(model).items()}


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("layer", LAYERS)
def test_stacked_copies_equal_sequential_forwards(layer: str, spec: str) -> None:
    k = 4
    batched, looped = _noisy_layer(layer, spec), _noisy_layer(layer, spec)
    x = torch.rand(LAYERS[layer][1], generator=torch.Generator().manual_seed(1))
    xb, xl = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with weight_noise_copies(batched, k):
        out = batched(xb.repeat(k, *([1] * (x.dim() - 1))))
    ref = torch.cat([looped(xl) for _ in range(k)])
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out[: len(x)], out[len(x): 2 * len(x)])  # a new draw per copy
    assert _generator_states(batched).keys() == _generator_states(looped).keys() != set()
    assert all(torch.equal(a, _generator_states(looped)[n])
               for n, a in _generator_states(batched).items())
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    (gb,) = torch.autograd.grad((out * weights).sum(), xb)
    (gl,) = torch.autograd.grad((ref * weights).sum(), xl)
    assert torch.allclose(gb, gl, atol=1e-5)
    assert all("copies" not in m.__dict__ for m in batched.modules())  # restored on exit
    with torch.no_grad():  # and the next ordinary forward continues both streams alike
        assert torch.allclose(batched(x), looped(x), atol=1e-6)


def test_one_copy_and_nested_copies() -> None:
    model, ref = lenet(kind="cni", rank=2), lenet(kind="cni", rank=2)
    with torch.no_grad():
        with weight_noise_copies(model, 1):  # k = 1: the ordinary forward, bitwise
            assert torch.equal(model(X), ref(X))
        with weight_noise_copies(model, 2), weight_noise_copies(model, 3):
            out = model(X.repeat(6, 1, 1, 1))  # 3 copies of 2 copies: 6 draws
        expected = torch.cat([ref(X) for _ in range(6)])
    assert torch.allclose(out, expected, atol=1e-5)
    conv1 = model.model.conv1
    assert isinstance(conv1, NoisyConv2d) and conv1.copies == 1


def test_copies_without_noise_use_the_plain_weights_and_draw_nothing() -> None:
    quiet = lenet(kind="pni", eval_noise=False).eval()
    with torch.no_grad():
        plain = quiet(X)
        with weight_noise_copies(quiet, 3):
            out = quiet(X.repeat(3, 1, 1, 1))
    assert torch.allclose(out, plain.repeat(3, 1), atol=1e-5)
    assert all(not m.rng_state()["generators"] for m in noise_modules(quiet))  # nothing drawn


def test_copies_need_a_batch_divisible_by_their_number() -> None:
    model = lenet(kind="pni")
    with weight_noise_copies(model, 3), pytest.raises(ValueError, match="multiple of the number"):
        model(X)  # 4 rows, 3 copies
    with pytest.raises(ValueError, match="copies must be"), weight_noise_copies(model, 0):
        pass
