"""AdvT (Xiao & Zheng, CVPR 2020): the adversarial transformation g, its BPDA surrogates, EOT
through it, the `advt` recipe and the bad-input paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks.wrappers import BPDA, EOT
from advguard.checkpoint import load_checkpoint, save_checkpoint
from advguard.defenses import AdvTransform, Pipeline, build_defense
from advguard.defenses.adv_transform import smooth_clip, smooth_sign
from advguard.errors import ConfigError
from advguard.models import create_model

CLASSES = 10


def _net(seed: int, width: int = 4) -> nn.Module:
    """A tiny smooth CNN (softplus: non-zero second derivatives, so double backprop matters)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, width, 3, stride=2), nn.Softplus(), nn.Flatten(),
                             nn.Linear(width * 13 * 13, CLASSES)).eval()


def _x(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _reference_ll_pgd(f_b: nn.Module, x: torch.Tensor, delta: float, steps: int, alpha: float,
                      start: torch.Tensor | None, untargeted: bool = False) -> torch.Tensor:
    """Eq. 3 written out independently: per-example loop, mean-reduced loss (the sign does not
    see the scale), clip to the Δ-ball and to [0, 1]."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        with torch.no_grad():
            logits = f_b(xi)
        y = logits.argmax(1) if untargeted else logits.argmin(1)
        adv = xi.clone() if start is None else torch.clamp(xi + start[i:i + 1], 0, 1)
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            loss = F.cross_entropy(f_b(adv), y)
            loss.backward()
            assert adv.grad is not None
            direction = 1.0 if untargeted else -1.0
            moved = adv.detach() + direction * alpha * adv.grad.sign()
            adv = torch.min(torch.max(moved, xi - delta), xi + delta).clamp(0, 1)
        out.append(adv.detach())
    return torch.cat(out)


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("targeting", ["least_likely", "untargeted"])
def test_g_equals_a_hand_written_ll_pgd(random_start: bool, targeting: str) -> None:
    f_b, x = _net(0), _x()
    t = AdvTransform(f_b=f_b, delta=0.3, steps=5, random_start=random_start,
                     targeting=targeting, seed=3)  # type: ignore[arg-type]
    start = t.start(x, t.generator(x.device))
    assert (start is None) == (not random_start)
    if start is not None:
        assert start.abs().max() <= 0.3 and start.abs().max() > 0.25  # uniform over [-Δ, Δ]
    got = t.apply_start(x, start)
    want = _reference_ll_pgd(f_b, x, 0.3, 5, 0.05, start, untargeted=targeting == "untargeted")
    assert torch.allclose(got, want, atol=1e-6)
    # and the batch does not matter: one example alone gives the same rows
    alone = t.apply_start(x[2:3], None if start is None else start[2:3])
    assert torch.allclose(alone, got[2:3], atol=1e-6)


def test_g_stays_in_the_delta_ball_and_the_image_domain_and_moves_f_b() -> None:
    f_b, x = _net(0), _x(20)
    x[:5] = 0.0  # saturated inputs: the random start and steps would leave [0, 1] without the clip
    t = AdvTransform(f_b=f_b, delta=0.25, steps=13, seed=0)
    g = t(x)
    assert (g - x).abs().max() <= 0.25 + 1e-6 and g.min() >= 0 and g.max() <= 1
    assert (g - x).abs().flatten(1).amax(1).min() > 0.2  # a large perturbation, as intended
    with torch.no_grad():
        ll = f_b(x).argmin(1)
        before = F.cross_entropy(f_b(x), ll, reduction="none")
        after = F.cross_entropy(f_b(g), ll, reduction="none")
    assert (after < before).float().mean() >= 0.9  # towards the least-likely class


def test_the_generator_makes_g_reproducible_and_the_global_rng_is_untouched() -> None:
    f_b, x = _net(0), _x()
    state = torch.get_rng_state()
    a = AdvTransform(f_b=f_b, delta=0.3, steps=3, seed=7)
    first, second = a(x), a(x)
    assert not torch.equal(first, second)  # a fresh random start per call
    a.reseed(7)
    assert torch.equal(a(x), first)
    assert torch.equal(AdvTransform(f_b=f_b, delta=0.3, steps=3, seed=7)(x), first)
    assert not torch.equal(AdvTransform(f_b=f_b, delta=0.3, steps=3, seed=8)(x), first)
    assert torch.equal(torch.get_rng_state(), state)


def test_smooth_sign_and_projection_have_the_documented_derivatives() -> None:
    v = torch.tensor([-3.0, -0.5, -1e-3, 0.2, 2.0], requires_grad=True)
    for kind, deriv in (("softsign", lambda z: 1 / (1 + z.abs()) ** 2),
                        ("tanh", lambda z: 1 - torch.tanh(z) ** 2)):
        out = smooth_sign(v, kind)  # type: ignore[arg-type]
        assert torch.equal(out, v.detach().sign())  # the forward value is exact
        (grad,) = torch.autograd.grad(out.sum(), v)
        assert torch.allclose(grad, deriv(v.detach()))
        out = smooth_sign(v, kind, tau=0.5)  # type: ignore[arg-type]
        (grad,) = torch.autograd.grad(out.sum(), v)
        assert torch.allclose(grad, deriv(v.detach() / 0.5) / 0.5)
    d = torch.tensor([-0.5, -0.2, 0.0, 0.1, 0.45], requires_grad=True)
    out = smooth_clip(d, -0.3, 0.3)
    assert torch.equal(out, d.detach().clamp(-0.3, 0.3))
    (grad,) = torch.autograd.grad(out.sum(), d)
    # Eq. 5: 1 inside the ball, 1/(1+|x|)^2 outside — here |x| is the distance past the bound
    expected = torch.tensor([1 / 1.2 ** 2, 1.0, 1.0, 1.0, 1 / 1.15 ** 2])
    assert torch.allclose(grad, expected)


@pytest.mark.parametrize("kind", ["softsign", "tanh"])
def test_smooth_bpda_is_the_chain_rule_through_one_unrolled_step(kind: str) -> None:
    """One LL-PGD step, no random start, no clipping active: g(x) = x − α·sgn(v(x)) with
    v = ∇ℓ(f_b(x), y_L), so uᵀ∂g/∂x = u − α·H(a′(v) ⊙ u), H the Hessian of the summed loss."""
    f_b = _net(0)
    x = 0.3 + 0.4 * _x(3)  # away from 0 and 1
    t = AdvTransform(f_b=f_b, delta=0.3, steps=1, random_start=False, bpda=kind)  # type: ignore[arg-type]
    xr = x.clone().requires_grad_(True)
    g = t.forward_bpda(xr)
    assert torch.allclose(g, t(x), atol=1e-7)  # the value is the exact g
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    (vjp,) = torch.autograd.grad(g, xr, grad_outputs=u)
    with torch.no_grad():
        y = f_b(x).argmin(1)

    def grad_v(z: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(F.cross_entropy(f_b(z), y, reduction="sum"), z,
                                   create_graph=True)[0]

    z = x.clone().requires_grad_(True)
    v = grad_v(z)
    a_prime = 1 / (1 + v.abs()) ** 2 if kind == "softsign" else 1 - torch.tanh(v) ** 2
    (hvp,) = torch.autograd.grad(v, z, grad_outputs=(a_prime * u).detach())
    # g = x + step·(−sgn v): the step's derivative is −α·a′(v)·∂v/∂x
    want = u - t.step_size * hvp
    assert torch.allclose(vjp, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(vjp, u, atol=1e-5)  # the second-order term is really there


def test_ad_through_g_is_the_almost_everywhere_gradient() -> None:
    """Without BPDA, the exact forward carries g's a.e. gradient. sgn contributes nothing, and
    g(x) − x is piecewise constant (start and steps move relative to x; the Δ-projection pins
    relative to x), so the Jacobian is the identity — except on pixels the [0, 1] clip holds."""
    f_b = _net(0)
    x = 0.3 + 0.4 * _x(2)  # the Δ-ball never reaches 0 or 1
    t = AdvTransform(f_b=f_b, delta=0.1, steps=6, step_size=0.05, seed=1)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(t(xr).sum(), xr)
    assert torch.equal(grad, torch.ones_like(grad))
    x[:, :, :10] = 0.0  # now the clip to [0, 1] holds some pixels: derivative 0 there
    xr = x.clone().requires_grad_(True)
    g = t(xr)
    (grad,) = torch.autograd.grad(g.sum(), xr)
    assert set(grad.unique().tolist()) == {0.0, 1.0}
    assert (grad[g.detach() == 0] == 0).all() and (grad[:, :, 10:] == 1).all()


def test_eot_gradient_is_the_mean_of_per_draw_gradients() -> None:
    f_b, f_a, x = _net(0), _net(1, width=6), _x(4)
    y = torch.arange(4)
    spec = {"name": "advt", "f_b": f_b, "delta": 0.3, "steps": 3}
    k = 5
    eot = EOT(BPDA(build_defense(spec, f_a, seed=11)), samples=k, chunk=k)
    xr = x.clone().requires_grad_(True)
    loss = eot.expected_loss(xr, y, None, lambda logits, yy, _t: F.cross_entropy(
        logits, yy, reduction="none"))
    (eot_grad,) = torch.autograd.grad(loss.sum(), xr)
    # The same draws by hand: the twin defense's k stacked random starts, one draw at a time.
    twin = build_defense(spec, f_a, seed=11)
    assert isinstance(twin, Pipeline)
    g_t = twin.steps[0]
    assert isinstance(g_t, AdvTransform)
    starts = g_t.start(x.repeat(k, 1, 1, 1), g_t.generator(x.device))
    assert starts is not None
    grads = []
    for j in range(k):
        gx = g_t.apply_start(x, starts[j * 4:(j + 1) * 4]).requires_grad_(True)
        (gj,) = torch.autograd.grad(F.cross_entropy(f_a(gx), y, reduction="sum"), gx)
        grads.append(gj)  # BPDA-I: the identity's Jacobian passes ∇f_a at g(x) through
    assert torch.allclose(eot_grad, torch.stack(grads).mean(0), atol=1e-6)


def _save(tmp_path: Path, name: str, model: nn.Module, dataset: str = "fashion-mnist") -> Path:
    return save_checkpoint(tmp_path / f"{name}.safetensors", model, metadata={"dataset": dataset})


def test_spec_by_path_and_clear_errors_for_bad_f_b(tmp_path: Path) -> None:
    f_a = create_model("smallcnn", num_classes=10, in_channels=1, input_size=28)
    good = _save(tmp_path, "f_b", create_model("lenet5", num_classes=10, in_channels=1))
    defense = build_defense({"name": "advt", "f_b": str(good), "delta": 0.3, "steps": 2}, f_a)
    assert defense(_x(2)).shape == (2, 10)
    cases = {
        str(tmp_path / "missing.safetensors"): "not found",
        str(_save(tmp_path, "classes", create_model("lenet5", num_classes=5, in_channels=1))):
            "num_classes 5 vs 10",
        str(_save(tmp_path, "channels", create_model("lenet5", num_classes=10, in_channels=3))):
            "channels 3 vs 1",
        str(_save(tmp_path, "cifar", create_model("lenet5", num_classes=10, in_channels=1),
                  dataset="mnist")): "dataset 'mnist' vs",
    }
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    cases[str(corrupt)] = "f_b"
    f_a.dataset_name = "fashion-mnist"  # as load_checkpoint sets it
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            build_defense({"name": "advt", "f_b": path}, f_a)
        assert "\n" not in str(info.value) and "f_b" in str(info.value)
    for bad, message in (({"delta": 0.0}, "delta must be in"), ({"steps": 0}, "steps must be"),
                         ({"targeting": "most_likely"}, "'targeting' must be one of"),
                         ({"bpda": "sigmoid"}, "'bpda' must be one of"),
                         ({"bpda": "learned"}, "needs a surrogate_model")):
        with pytest.raises(ConfigError, match=message):
            build_defense({"name": "advt", "f_b": str(good), **bad}, f_a)


def test_advt_recipe_trains_f_a_on_g_with_f_b_frozen(tmp_path: Path) -> None:
    from advguard.training import TrainConfig, train

    f_b = create_model("vgg_small", num_classes=10, in_channels=1, input_size=28)
    f_b.eval()
    path = _save(tmp_path, "f_b", f_b, dataset="fashion-mnist-sample")
    before = {k: v.clone() for k, v in load_checkpoint(path).model.state_dict().items()}
    config = TrainConfig(dataset="fashion-mnist-sample", model="lenet5", recipe="advt",
                         recipe_kwargs={"f_b": str(path), "delta": 0.3, "steps": 2},
                         epochs=1, batch_size=64, train_size=256, test_size=100, lr=0.05,
                         augment="none", device="cpu", seed=0)
    result = train(config, output_dir=tmp_path / "f_a", progress=False)
    from advguard.training.recipes import make_recipe
    recipe = make_recipe("advt", **config.recipe_kwargs)
    model = result.model
    recipe.prepare_model(model)
    # f_b: untouched on disk and in the recipe (BatchNorm statistics included), never trainable
    g_t = recipe.transform
    assert not any(p.requires_grad for p in g_t.f_b.parameters()) and not g_t.f_b.training
    for key, value in g_t.f_b.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(k.startswith("f_b") for k in model.state_dict())  # not part of f_a
    # the logged test accuracy is that of the defended model f_a(g(x)), not of f_a alone
    from advguard.data import load_dataset
    test = load_dataset("fashion-mnist-sample", "test")
    defended = Pipeline([g_t], model.eval())
    with torch.no_grad():
        acc = (defended(test.images[:100]).argmax(1) == test.labels[:100]).float().mean()
    assert abs(result.record.final["test_acc"] - float(acc)) < 0.1  # other random starts
    meta = load_checkpoint(tmp_path / "f_a" / "model.safetensors").metadata
    assert meta["recipe"]["f_b"] == str(path) and meta["recipe"]["delta"] == 0.3


def test_advt_recipe_refuses_a_mismatched_f_b_before_training(tmp_path: Path) -> None:
    from advguard.training import TrainConfig, train

    path = _save(tmp_path, "f_b", create_model("lenet5", num_classes=5, in_channels=1))
    config = TrainConfig(dataset="fashion-mnist-sample", model="lenet5", recipe="advt",
                         recipe_kwargs={"f_b": str(path)}, epochs=1, train_size=64,
                         device="cpu")
    with pytest.raises(ConfigError, match=r"recipe 'advt': f_b was built for other inputs.*"
                                          r"num_classes 5 vs 10"):
        train(config, output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    from advguard.training.recipes import make_recipe
    with pytest.raises(ConfigError, match="needs 'f_b'"):
        make_recipe("advt")


def test_imitation_network_trains_and_serves_as_the_learned_surrogate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from advguard.training import TrainConfig, train

    f_b = _save(tmp_path, "f_b", create_model("lenet5", num_classes=10, in_channels=1, seed=0),
                dataset="fashion-mnist-sample")
    f_a_model = create_model("lenet5", num_classes=10, in_channels=1, seed=1)
    f_a = _save(tmp_path, "f_a", f_a_model, dataset="fashion-mnist-sample")
    config = TrainConfig(dataset="fashion-mnist-sample", model="image_fcn",
                         model_kwargs={"width": 8}, recipe="advt_imitate",
                         recipe_kwargs={"f_b": str(f_b), "f_a": str(f_a), "delta": 0.3,
                                        "steps": 2, "random_start": False},
                         epochs=2, batch_size=64, train_size=256, test_size=64, lr=0.01,
                         optimizer="adam", weight_decay=0.0, schedule="constant",
                         augment="none", device="cpu", seed=0)
    result = train(config, output_dir=tmp_path / "h", progress=True)
    # the progress bar of a recipe with no class prediction shows its loss and no accuracy
    # (it once raised KeyError 'correct' at the bar's first update)
    err = capsys.readouterr().err
    assert "loss=" in err and ", acc=" not in err
    history = result.record.history
    assert history[-1]["mse"] < history[0]["mse"]  # it learns something of g
    assert 0 <= result.record.final["test_acc"] <= 1  # f_a(h(x)) was measured
    assert "train_acc" not in history[-1]  # h classifies nothing: no training accuracy
    h_path = tmp_path / "h" / "model.safetensors"
    defense = build_defense({"name": "advt", "f_b": str(f_b), "delta": 0.3, "steps": 2,
                             "random_start": False, "bpda": "learned",
                             "surrogate_model": str(h_path)}, f_a_model)
    x = _x(3)
    xr = x.clone().requires_grad_(True)
    out = BPDA(defense)(xr)
    assert torch.allclose(out, defense(x), atol=1e-6)  # the forward value is the exact f_a(g(x))
    (got,) = torch.autograd.grad(out[:, 0].sum(), xr)
    g_t = defense.steps[0]  # type: ignore[index]
    assert isinstance(g_t, AdvTransform) and g_t.h is not None
    z = x.clone().requires_grad_(True)
    hz = g_t.h(z)
    gx = g_t(x)
    (want,) = torch.autograd.grad(f_a_model(hz + (gx - hz).detach())[:, 0].sum(), z)
    assert torch.allclose(got, want, atol=1e-6) and got.abs().sum() > 0
    from advguard.training.recipes import make_recipe
    with pytest.raises(ConfigError, match="needs 'f_a'"):
        make_recipe("advt_imitate", f_b=str(f_b))


def test_pgd_from_the_expected_transformation() -> None:
    from advguard.attacks import PGDExpectedStart
    from advguard.attacks.expected_start import expected_transform

    f_b, f_a, x = _net(0), _net(1, width=6), _x(8)
    with torch.no_grad():
        y = f_a(x).argmax(1)  # all clean-correct by construction
    defense = build_defense({"name": "advt", "f_b": f_b, "delta": 0.3, "steps": 3}, f_a)
    gen = torch.Generator().manual_seed(0)
    mean = expected_transform(BPDA(defense), x, 64, gen)
    g_t = defense.steps[0]  # type: ignore[index]
    assert isinstance(g_t, AdvTransform)
    draws = torch.stack([g_t(x) for _ in range(64)])
    assert (mean - draws.mean(0)).abs().mean() < 0.03  # two Monte-Carlo estimates of E g(x)
    attack = PGDExpectedStart(eps=0.1, steps=0, samples=16)  # zero steps: just the start
    start = attack(BPDA(defense), x, y).adv
    projected = x + (draws.mean(0) - x).clamp(-0.1, 0.1)  # the projected E g(x), other draws
    assert (start - projected).abs().mean() < 0.03 and (start - x).abs().max() <= 0.1 + 1e-6
    assert (start - x).abs().mean() > 0.05  # really moved towards E g(x)
    result = PGDExpectedStart(eps=0.1, steps=5, samples=8)(BPDA(defense), x, y)
    assert (result.adv - x).abs().max() <= 0.1 + 1e-6
    assert result.adv.min() >= 0 and result.adv.max() <= 1
    with pytest.raises(ConfigError, match="needs a defense with a randomized transformation"):
        PGDExpectedStart(eps=0.1, steps=2)(f_a, x, y)


def test_a_cascade_step_can_name_the_bpda_surrogate() -> None:
    from advguard.evaluation import StepSpec
    from advguard.evaluation.settings import SETTINGS

    f_b, f_a, x = _net(0), _net(1, width=6), 0.3 + 0.4 * _x(3)
    defense = build_defense({"name": "advt", "f_b": f_b, "delta": 0.3, "steps": 2,
                             "random_start": False}, f_a)  # configured: identity

    def grad(model: nn.Module) -> torch.Tensor:
        xr = x.clone().requires_grad_(True)
        return torch.autograd.grad(model(xr)[:, 0].sum(), xr)[0]

    identity, tanh = grad(BPDA(defense)), grad(BPDA(defense, surrogate="tanh"))
    with torch.no_grad():
        gx = defense.steps[0](x)  # type: ignore[index]
    z = gx.clone().requires_grad_(True)
    (at_g,) = torch.autograd.grad(f_a(z)[:, 0].sum(), z)
    assert torch.allclose(identity, at_g, atol=1e-6)  # BPDA-I: ∇f_a at g(x), passed through
    assert not torch.allclose(tanh, identity, atol=1e-6)  # the unrolled surrogate differs
    spec = StepSpec(setting="adaptive", attack="pgd", params={"steps": 2}, bpda="softsign")
    assert spec.display == "adaptive:pgd(steps=2,bpda=softsign)"
    from advguard.attacks import make_attack
    prepared = SETTINGS.get("adaptive")().prepare(spec, defense, make_attack("pgd", eps=0.1),
                                                  lambda p: f_a)
    assert isinstance(prepared.model, BPDA) and prepared.model.surrogate == "softsign"
    with pytest.raises(ConfigError, match="surrogate 'sigmoid' is not offered by the defense "
                                          r"\(offered: identity, softsign, tanh\)"):
        SETTINGS.get("adaptive")().prepare(
            StepSpec(setting="adaptive", attack="pgd", bpda="sigmoid"), defense,
            make_attack("pgd", eps=0.1), lambda p: f_a)
    with pytest.raises(ConfigError, match=r"offered: identity\)"):  # every transform's
        BPDA(build_defense({"name": "bit_depth"}, f_a), surrogate="tanh")


def test_f_a_and_f_b_evaluate_from_one_model_and_one_defense_on_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from advguard.cli import main

    f_a = _save(tmp_path, "f_a", create_model("lenet5", num_classes=10, in_channels=1, seed=1),
                dataset="fashion-mnist-sample")
    f_b = _save(tmp_path, "f_b", create_model("lenet5", num_classes=10, in_channels=1, seed=0),
                dataset="fashion-mnist-sample")
    store = tmp_path / "r.sqlite"
    argv = ["eval", "--model", str(f_a), "--defense",
            f"{{name: advt, f_b: {f_b}, delta: 0.3, steps: 2}}", "--eps", "0.1", "--n", "8",
            "--runs", "2", "--attack", "adaptive:pgd:steps=2,eot=2", "--attack",
            "adaptive:pgd:steps=2,bpda=softsign", "--no-checks", "--store", str(store),
            "--quiet", "--device", "cpu", "--name", "advt-cli"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| advt-cli | advt(" in out and "bpda=softsign" in out
    bad = [*argv[:4], f"{{name: advt, f_b: {tmp_path / 'nope.safetensors'}}}", *argv[5:]]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "f_b: checkpoint" in err and "not found" in err and "Traceback" not in err


def test_parts_of_the_wrong_kind_are_refused_when_the_defense_is_built(tmp_path: Path) -> None:
    f_a = create_model("lenet5", num_classes=10, in_channels=1, seed=1)
    fcn = create_model("image_fcn", num_classes=10, in_channels=1, input_size=28, seed=0)
    classifier = _save(tmp_path, "f_b", create_model("lenet5", num_classes=10, in_channels=1))
    image_net = _save(tmp_path, "h", fcn)
    with pytest.raises(ConfigError, match="f_b must be a classifier"):
        build_defense({"name": "advt", "f_b": str(image_net)}, f_a)
    with pytest.raises(ConfigError, match="surrogate_model must map images to images"):
        build_defense({"name": "advt", "f_b": str(classifier), "bpda": "learned",
                       "surrogate_model": str(classifier)}, f_a)
    with pytest.raises(ConfigError, match="defense 'advt' needs 'f_b'"):
        build_defense({"name": "advt"}, f_a)
    defense = build_defense({"name": "advt", "f_b": str(classifier),
                             "surrogate_model": str(image_net)}, f_a)  # learned: on offer
    assert defense.steps[0].surrogates == ("identity", "softsign", "tanh", "learned")  # type: ignore[index]
