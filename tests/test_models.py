"""Tests for advguard.models: every registered architecture (parametrized over the registry), the
Normalized wrapper, ModelSpec round-trips, registry errors and MAC counting. CPU, offline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.errors import ConfigError, UnknownNameError
from advguard.models import (
    MODELS,
    FlopCount,
    ModelSpec,
    Normalized,
    count_flops,
    create_model,
    create_model_from_spec,
    list_models,
    model_flops,
    model_info,
)

#: the classifiers (every test below); image-to-image networks are tested at the end
ALL = [name for name in list_models() if model_info(name).output == "logits"]
IMAGE_MODELS = [name for name in list_models() if model_info(name).output == "image"]
#: Smaller configurations of the generic entries, so that the tests stay fast.
TEST_KWARGS: dict[str, dict[str, Any]] = {
    "cifar_resnet": {"depth": 8},
    "wide_resnet": {"depth": 10, "widen_factor": 2},
}
#: Models large enough on CPU to be run with a batch of 1.
BIG = {"wrn34_10", "wrn28_10", "resnet110", "resnet50", "resnet34"}
NUM_CLASSES = 7


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """Every test draws weights and inputs from a fixed seed without leaking RNG state."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def build(name: str, **kwargs: Any) -> Normalized:
    return create_model(name, **{**TEST_KWARGS.get(name, {}), **kwargs})


def batch(name: str) -> int:
    return 1 if name in BIG else 2


def images(name: str, channels: int = 3, size: int | None = None) -> torch.Tensor:
    side = size if size is not None else model_info(name).default_input_size
    return torch.rand(batch(name), channels, side, side)


def break_zero_init(model: nn.Module) -> None:
    """Re-initialize all-zero weights (SmallCNN zero-inits its last layer, which would make every
    output identical and every comparison below vacuous)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.detach().any():
            m.reset_parameters()


def channel_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(0.3 + 0.1 * c for c in range(channels))
    std = tuple(0.2 + 0.05 * c for c in range(channels))
    return mean, std


# --------------------------------------------------------------------------- every architecture


def test_registry_is_populated() -> None:
    expected = {"lenet5", "smallcnn", "vgg_small", "resnet18", "resnet34", "resnet50",
                "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "cifar_resnet",
                "preact_resnet18", "wrn34_10", "wrn28_10", "wide_resnet"}
    assert expected <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_info(name: str) -> None:
    info = model_info(name)
    assert info.name == name
    assert info.paper
    assert info.description
    assert info.dataset
    assert info.default_input_size == (28 if name in {"lenet5", "smallcnn"} else 32)


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name: str) -> None:
    model = build(name, num_classes=NUM_CLASSES).train()
    x = images(name)
    logits = model(x)
    assert logits.shape == (x.shape[0], NUM_CLASSES)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.arange(x.shape[0]) % NUM_CLASSES).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", ALL)
def test_params_live_in_replaceable_layers(name: str) -> None:
    """Every parameter lives in an nn.Conv2d, nn.Linear or nn.BatchNorm2d (so noise-injection
    layers can replace convs/linears), and no activation runs in place."""
    model = build(name)
    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            assert type(m) in (nn.Conv2d, nn.Linear, nn.BatchNorm2d), type(m)
        assert not getattr(m, "inplace", False), f"{type(m).__name__} is in-place"


@pytest.mark.parametrize("name", ALL)
def test_normalization_happens_inside(name: str) -> None:
    channels = 3
    mean, std = channel_stats(channels)
    model = build(name, mean=mean, std=std).eval()
    break_zero_init(model)
    assert model.mean.shape == model.std.shape == (1, channels, 1, 1)
    assert {"mean", "std"} <= set(model.state_dict())
    x = images(name, channels)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, model.model((x - m) / s), rtol=0, atol=0)
        identity = build(name).eval()
        identity.model.load_state_dict(model.model.state_dict())
        assert identity.spec is not None
        assert identity.spec.mean == (0.0,) * channels
        assert not torch.allclose(identity(x), out)


@pytest.mark.parametrize("name", ALL)
def test_spec_round_trip(name: str) -> None:
    mean, std = channel_stats(3)
    model = build(name, num_classes=NUM_CLASSES, mean=mean, std=std).eval()
    break_zero_init(model)
    assert model.spec is not None
    stored = json.loads(json.dumps(model.spec.to_dict()))  # what a checkpoint keeps
    assert ModelSpec.from_dict(stored) == model.spec
    for clone in (create_model_from_spec(stored), create_model_from_spec(model.spec),
                  create_model(**stored)):
        assert clone.spec == model.spec
        want = {k: v.shape for k, v in model.state_dict().items()}
        assert {k: v.shape for k, v in clone.state_dict().items()} == want
    clone.load_state_dict(model.state_dict())
    clone.eval()
    x = images(name)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 36)])
def test_other_channels_and_sizes(name: str, channels: int, size: int) -> None:
    model = build(name, in_channels=channels, input_size=size).eval()
    assert model.spec is not None
    assert model.spec.kwargs["input_size"] == size
    with torch.no_grad():
        out = model(images(name, channels, size))
    assert out.shape == (batch(name), 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_channels_last_and_autocast(name: str) -> None:
    model = build(name).eval()
    break_zero_init(model)
    x = images(name)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.contiguous(memory_format=torch.channels_last))
    assert low.shape == ref.shape
    assert torch.isfinite(low).all()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("smallcnn", {"zero_init_last": False}), ("resnet20", {}), ("preact_resnet18", {}),
     ("wide_resnet", {"depth": 10, "widen_factor": 2, "dropout": 0.3}), ("vgg_small", {})],
)
def test_double_backprop(name: str, kwargs: dict[str, Any]) -> None:
    """Gradient-penalty style: differentiate the input gradient's norm w.r.t. the weights."""
    channels = 1 if name == "smallcnn" else 3
    model = build(name, in_channels=channels, **kwargs).train()
    x = images(name, channels).requires_grad_(True)
    loss = F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long))
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    grad.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# --------------------------------------------------------------------------- registry behaviour


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="did you mean") as info:
        create_model("resnet2")
    assert "'resnet20'" in str(info.value)
    with pytest.raises(UnknownNameError, match="preact_resnet18"):
        model_info("preact_resnet")
    assert isinstance(info.value, KeyError)  # callers may catch KeyError


def test_unknown_kwarg_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) 'widen'.*accepts:.*dropout"):
        create_model("wrn34_10", widen=4)
    with pytest.raises(ConfigError, match="depth"):
        create_model("resnet20", depth=32)  # depth is fixed by the name


def test_generic_entries_take_arch_args() -> None:
    assert model_info("wide_resnet").arch_args == ("depth", "widen_factor", "dropout")
    model = create_model("cifar_resnet", depth=14, shortcut="B")
    assert model.spec is not None
    assert model.spec.kwargs == {"num_classes": 10, "in_channels": 3, "input_size": 32,
                                 "depth": 14, "shortcut": "B"}


def test_list_models_pattern() -> None:
    assert list_models() == sorted(ALL + IMAGE_MODELS)
    assert list_models("wrn*") == ["wrn28_10", "wrn34_10"]
    resnets = list_models("resnet*")
    assert {"resnet18", "resnet20", "resnet110", "resnet50"} <= set(resnets)
    assert "preact_resnet18" not in resnets
    assert list_models("no_such_model*") == []
    assert set(list_models()) == set(MODELS.names())


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet20", {"mean": (0.5, 0.5)}, "one entry per input channel"),
        ("resnet20", {"mean": 0.5}, "sequence of floats"),
        ("resnet20", {"std": (1.0, 0.0, 1.0)}, "std must be > 0"),
        ("resnet20", {"num_classes": 0}, "num_classes"),
        ("resnet20", {"input_size": 2.5}, "input_size"),
        ("cifar_resnet", {"depth": 21}, "6n\\+2"),
        ("cifar_resnet", {"depth": 20, "shortcut": "C"}, "shortcut"),
        ("wide_resnet", {"depth": 30, "widen_factor": 2}, "6n\\+4"),
        ("smallcnn", {"dropout": 1.5}, "dropout"),
        ("lenet5", {"input_size": 11}, "input_size >= 12"),
        ("smallcnn", {"input_size": 15}, "input_size >= 16"),
        ("vgg_small", {"input_size": 8}, "input_size >= 16"),
    ],
)
def test_invalid_arguments(name: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model(name, **kwargs)


def test_smallest_supported_sizes_work() -> None:
    for name, size in (("lenet5", 12), ("smallcnn", 16), ("vgg_small", 16)):
        model = create_model(name, input_size=size).eval()
        break_zero_init(model)
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = model(x)
        assert out.shape == (2, 10) and bool(torch.isfinite(out).all()), name
        assert not torch.allclose(out[0], out[1]), name  # the input still reaches the logits


def test_model_spec_validation() -> None:
    with pytest.raises(ConfigError, match="missing"):
        ModelSpec.from_dict({"name": "resnet20", "num_classes": 10})
    with pytest.raises(ConfigError, match="JSON"):
        ModelSpec("resnet20", {"depth": object()}, (0.0,), (1.0,))
    with pytest.raises(ConfigError, match="differ in length"):
        ModelSpec("resnet20", {}, (0.0, 0.0), (1.0,))
    spec = ModelSpec("resnet20", {"num_classes": 10}, [0, 0, 0], [1, 1, 1])  # type: ignore[arg-type]
    assert spec.mean == (0.0, 0.0, 0.0)
    assert spec.to_dict()["mean"] == [0.0, 0.0, 0.0]


def test_normalized_wraps_any_module() -> None:
    inner = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    model = Normalized(inner, mean=(0.5, 0.25), std=(0.5, 2.0))
    assert model.model is inner
    assert model.spec is None
    x = torch.rand(2, 2, 4, 4)
    expected = inner((x - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1))
                     / torch.tensor([0.5, 2.0]).view(1, 2, 1, 1))
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model.double()(x.double()), expected.double())
    with pytest.raises(ConfigError, match="differ in length"):
        Normalized(inner, mean=(0.5,), std=(0.5, 0.5))
    with pytest.raises(ConfigError, match="> 0"):
        Normalized(inner, mean=(0.5, 0.5), std=(0.5, -1.0))
    with pytest.raises(ConfigError, match="finite"):
        Normalized(inner, mean=(0.5, float("nan")), std=(0.5, 0.5))
    spec = ModelSpec("custom", {}, (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(ConfigError, match="differs"):
        Normalized(inner, mean=(0.5, 0.5), std=(1.0, 1.0), spec=spec)


def test_seed_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = create_model("resnet20", seed=3), create_model("resnet20", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = create_model("resnet20", seed=4)
    assert not torch.equal(a.model.conv_1_3x3.weight, c.model.conv_1_3x3.weight)


def test_state_dict_loads_into_spec_built_model() -> None:
    model = create_model("resnet20", mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    fresh = create_model("resnet20")  # identity normalization...
    fresh.load_state_dict(model.state_dict())  # ...replaced by the checkpoint's buffers
    assert torch.equal(fresh.mean, model.mean)
    assert torch.equal(fresh.std, model.std)


# --------------------------------------------------------------------------- MAC counting


def test_count_flops_tiny_model_exact() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),         # 8·8 · 4 · 3·9        = 6912
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, groups=2),  # 3·3 · 6 · (4/2)·9  = 972
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 5),               # 54 · 5               = 270
    )
    cost = count_flops(net, (3, 8, 8))
    assert cost == FlopCount(macs=8154, params=112 + 114 + 275,
                             by_type={"Conv2d": 7884, "Linear": 270}, input_shape=(3, 8, 8))
    assert cost.flops == 2 * 8154


def test_count_flops_counts_transposed_convolutions() -> None:
    """A transposed conv scatters every input pixel through a kh x kw kernel to every output
    channel: H_in*W_in*C_in*C_out*kh*kw MACs (here 8*8*3*5*16), beside a conv counted as before."""
    net = nn.Sequential(nn.ConvTranspose2d(3, 5, 4, stride=2, padding=1),
                        nn.Conv2d(5, 2, 3, padding=1))
    cost = count_flops(net, (3, 8, 8))
    assert cost.by_type == {"Conv2d": 16 * 16 * 2 * 5 * 9, "Linear": 0,
                            "ConvTranspose2d": 8 * 8 * 3 * 5 * 16}
    assert cost.macs == sum(cost.by_type.values())


def test_count_flops_changes_nothing() -> None:
    model = create_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model, (3, 32, 32))
    assert model.training
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        count_flops(model, (1, 3, 32, 32))


def _conv(side: int, c_out: int, c_in: int, k: int) -> int:
    return side * side * c_out * c_in * k * k


def _hand_cifar_resnet(depth: int, classes: int = 10) -> int:
    """He et al. CIFAR ResNet with option-A shortcuts (no shortcut convs), 32×32 input."""
    n = (depth - 2) // 6
    macs = _conv(32, 16, 3, 3)
    c_in = 16
    for side, width in ((32, 16), (16, 32), (8, 64)):
        for _ in range(n):
            macs += _conv(side, width, c_in, 3) + _conv(side, width, width, 3)
            c_in = width
    return macs + 64 * classes


def _hand_resnet18(classes: int = 10) -> int:
    """kuangliu ResNet-18 (and PreAct ResNet-18: same convs), 32×32 input."""
    macs = _conv(32, 64, 3, 3)
    c_in = 64
    for side, width in ((32, 64), (16, 128), (8, 256), (4, 512)):
        for _ in range(2):
            macs += _conv(side, width, c_in, 3) + _conv(side, width, width, 3)
            if c_in != width:
                macs += _conv(side, width, c_in, 1)
            c_in = width
    return macs + 512 * classes


def _hand_wrn(depth: int, k: int, classes: int = 10) -> int:
    n = (depth - 4) // 6
    macs = _conv(32, 16, 3, 3)
    c_in = 16
    for side, width in ((32, 16 * k), (16, 32 * k), (8, 64 * k)):
        for _ in range(n):
            macs += _conv(side, width, c_in, 3) + _conv(side, width, width, 3)
            if c_in != width:
                macs += _conv(side, width, c_in, 1)
            c_in = width
    return macs + 64 * k * classes


def test_flops_of_known_architectures_hand_computed() -> None:
    assert _hand_cifar_resnet(20) == 40_551_040
    assert model_flops("resnet20").macs == _hand_cifar_resnet(20)
    assert model_flops("resnet56").macs == _hand_cifar_resnet(56)
    assert model_flops("resnet18").macs == _hand_resnet18() == 555_422_720
    assert model_flops("preact_resnet18").macs == _hand_resnet18()
    assert model_flops("wrn34_10").macs == _hand_wrn(34, 10) == 6_658_906_368
    # LeNet-5 on 1×28×28: convs 28²·6·25 + 10²·16·6·25, FCs 400·120 + 120·84 + 84·10.
    assert model_flops("lenet5", in_channels=1).macs == 117_600 + 240_000 + 48_000 + 10_080 + 840


@pytest.mark.parametrize(
    ("name", "published_macs", "published_params"),
    [
        # Commonly quoted numbers (thop / ptflops on CIFAR-10 models): ResNet-20 41M MACs,
        # 0.27M params; ResNet-56 125M, 0.85M; ResNet-110 253M, 1.7M; ResNet-18 0.56G, 11.2M;
        # ResNet-50 1.30G, 23.5M; WRN-28-10 5.25G, 36.5M; WRN-34-10 6.66G, 46.2M.
        ("resnet20", 41e6, 0.27e6),
        ("resnet56", 125e6, 0.85e6),
        ("resnet110", 253e6, 1.7e6),
        ("resnet18", 0.56e9, 11.2e6),
        ("resnet50", 1.30e9, 23.5e6),
        ("wrn28_10", 5.25e9, 36.5e6),
        ("wrn34_10", 6.66e9, 46.2e6),
    ],
)
def test_flops_match_published_numbers(name: str, published_macs: float,
                                       published_params: float) -> None:
    cost = model_flops(name)
    assert cost.macs == pytest.approx(published_macs, rel=0.02)
    assert cost.params == pytest.approx(published_params, rel=0.02)
    assert cost.flops == 2 * cost.macs
    assert cost.by_type["Conv2d"] + cost.by_type["Linear"] == cost.macs


def test_model_flops_follows_input_size() -> None:
    small, large = model_flops("resnet20", input_size=16), model_flops("resnet20")
    conv = large.by_type["Conv2d"]
    assert small.by_type["Conv2d"] == conv // 4  # every map is half as wide
    assert small.params == large.params


# --------------------------------------------------------------------------- GPU (run with -m gpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_bf16_channels_last_on_gpu(name: str) -> None:
    device = torch.device("cuda")
    model = build(name).to(device).to(memory_format=torch.channels_last).train()
    x = images(name).to(device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), torch.zeros(x.shape[0], dtype=torch.long,
                                                       device=device))
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    (loss + grad.pow(2).sum()).backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_map_images_to_images_with_gradients(name: str) -> None:
    info = model_info(name)
    assert info.paper and info.description and info.output == "image"
    model = create_model(name, num_classes=NUM_CLASSES, in_channels=1, input_size=28, seed=0)
    x = torch.rand(3, 1, 28, 28)
    out = model(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    out.sum().backward()
    # parts used only in training (a purifier's discriminators) declare themselves
    skip = tuple(f"model.{part}." for part in getattr(model.model, "training_only", ()))
    used = [n for n, p in model.named_parameters() if not n.startswith(skip)]
    assert used and all(p.grad is not None for n, p in model.named_parameters() if n in used)
    clone = create_model_from_spec(model.spec)
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone(x), model(x))
