"""Robust training recipes: each recipe's defining behaviour against a hand computation (written
here independently of advguard's attacks), the BatchNorm mode while crafting, exact resume for
every recipe (noise-injected models included), the CLI and the shipped configs. CPU, tiny models."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.configs import config_path, list_configs, read_yaml
from advguard.errors import ConfigError
from advguard.models.noise import NoiseSpec
from advguard.rng import rng_states
from advguard.training import (
    RECIPES,
    STATE_FILE,
    TrainConfig,
    make_recipe,
    make_schedule,
    train,
)
from advguard.training.recipes import IAT, PGDAT, TRADES, FastAT, NoiseInjection
from advguard.training.recipes._adversarial import craft
from advguard.training.recipes.mixup import mix_batch, sample_beta

NEW = ("pgd_at", "fast_at", "trades", "iat", "noise_injection")
EPS = 0.1


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


class TinyBN(nn.Module):
    """conv 1→4 (3×3) → BatchNorm → ReLU → global average → linear 4→5, on (N, 1, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
        self.modes: list[bool] = []  # BatchNorm's mode at every forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.bn.training)
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(h.mean((2, 3)))


def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, 1, 8, 8), torch.arange(n) % 5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def project(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)


def uniform_start(x: torch.Tensor, eps: float, g: torch.Generator) -> torch.Tensor:
    return project(x + (2 * torch.rand(x.shape, generator=g) - 1) * eps, x, eps)


def sign_ascent(objective: Any, start: torch.Tensor, x: torch.Tensor, eps: float, alpha: float,
                steps: int) -> torch.Tensor:
    """Hand-written L∞ PGD: ``steps`` sign steps of ``alpha`` on ``objective(adv).sum()``."""
    adv = start
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(adv).sum(), adv)
        adv = project(adv + alpha * grad.sign(), x, eps)
    return adv.detach()


# --------------------------------------------------------------------------- registry, fields
def test_recipes_are_registered_with_papers_and_validate_fields() -> None:
    for name in NEW:
        assert name in RECIPES.names()
        assert RECIPES.metadata(name)["paper"]
        assert make_recipe(name).to_dict()["name"] == name
    for bad in ({"eps": -0.1}, {"attack_bn": "frozen"}, {"adv_weight": 1.5}, {"steps": 0},
                {"alpha": 0.0}):
        with pytest.raises(ConfigError):
            make_recipe("pgd_at", **bad)
    with pytest.raises(ConfigError, match="beta"):
        make_recipe("trades", beta=-1)
    with pytest.raises(ConfigError, match="mixup_alpha"):
        make_recipe("iat", mixup_alpha=0)
    with pytest.raises(ConfigError, match="noise spec"):
        make_recipe("noise_injection", noise={"kind": "dropout"})
    with pytest.raises(ConfigError, match="bad arguments"):
        make_recipe("noise_injection", base_kwargs={"beta": 1.0})  # pgd_at has no beta
    with pytest.raises(ConfigError, match="itself"):
        make_recipe("noise_injection", base="noise_injection")


# --------------------------------------------------------------------------- BatchNorm handling
@pytest.mark.parametrize("attack_bn", ["eval", "train"])
def test_crafting_uses_the_declared_bn_mode_and_restores_every_module(attack_bn: str) -> None:
    model = TinyBN().train()
    model.fc.eval()  # a mixed state must come back exactly as it was
    x, y = batch()
    before = model.bn.running_mean.clone()
    adv = craft(PGDAT(eps=EPS, steps=3, alpha=0.03).inner_attack, model, x, y, attack_bn=attack_bn,
                generator=gen())
    assert set(model.modes) == {attack_bn == "train"}
    assert len(model.modes) == 3  # one forward per PGD step
    assert model.training and model.bn.training and model.conv.training and not model.fc.training
    stats_moved = not torch.equal(model.bn.running_mean, before)
    assert stats_moved == (attack_bn == "train")  # train mode: the reference's running-stat updates
    assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_bn_defaults_follow_the_reference_code() -> None:
    assert PGDAT().attack_bn == "train" and FastAT().attack_bn == "train"
    assert IAT().attack_bn == "train" and TRADES().attack_bn == "eval"


def test_trades_crafts_in_eval_mode_and_trains_in_train_mode() -> None:
    model = TinyBN().train()
    x, y = batch()
    TRADES(eps=EPS, alpha=0.03, steps=2).loss(model, x, y, generator=gen())
    # 1 clean forward for the KL target + 2 attack steps in eval mode, then 2 train forwards
    assert model.modes == [False, False, False, True, True]
    assert model.training


# --------------------------------------------------------------------------- pgd_at
@pytest.mark.parametrize("adv_weight", [1.0, 0.5])
def test_pgd_at_loss_matches_hand_computation(adv_weight: float) -> None:
    model = TinyBN().train()
    reference = copy.deepcopy(model)
    x, y = batch()
    recipe = PGDAT(eps=EPS, alpha=0.02, steps=4, adv_weight=adv_weight)
    out = recipe.loss(model, x, y, generator=gen(3))

    g = gen(3)
    adv = sign_ascent(lambda v: F.cross_entropy(reference(v), y, reduction="none"),
                      uniform_start(x, EPS, g), x, EPS, 0.02, 4)
    expected = F.cross_entropy(reference(adv), y)
    if adv_weight < 1:
        expected = 0.5 * F.cross_entropy(reference(x), y) + 0.5 * expected
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["adv_loss"] > F.cross_entropy(reference(x), y)  # the attack did ascend
    assert ("clean_loss" in out.metrics) == (adv_weight < 1)


def test_pgd_at_crafts_with_epgd_or_smoothadv_when_asked() -> None:
    """SMOOTH's fine-tuning: adversarial training whose examples come from EPGD (loss averaged
    over k draws) or SmoothAdv (loss of the soft-smoothed classifier); with k = 1 EPGD is PGD, so
    the step's loss is exactly the plain recipe's; bad settings fail at construction."""
    from advguard.attacks import EPGD, SmoothAdv

    x, y = batch()
    plain = PGDAT(eps=EPS, alpha=0.02, steps=3)
    one = PGDAT(eps=EPS, alpha=0.02, steps=3, attack="epgd", attack_kwargs={"k": 1})
    assert isinstance(one.inner_attack, EPGD) and one.inner_attack.k == 1
    model = TinyBN().train()
    ref = plain.loss(copy.deepcopy(model), x, y, generator=gen(5)).loss
    assert one.loss(copy.deepcopy(model), x, y, generator=gen(5)).loss.item() == \
        pytest.approx(ref.item(), rel=1e-6)
    smooth = PGDAT(eps=EPS, alpha=0.02, steps=3, attack="smoothadv",
                   attack_kwargs={"m": 4, "sigma": 0.1})
    attack = smooth.inner_attack
    assert isinstance(attack, SmoothAdv) and (attack.m, attack.sigma, attack.eps) == (4, 0.1, EPS)
    out = smooth.loss(copy.deepcopy(model), x, y, generator=gen(5))
    assert torch.isfinite(out.loss) and out.loss.item() != pytest.approx(ref.item(), rel=1e-6)
    assert smooth.to_dict()["attack"] == "smoothadv"
    with pytest.raises(ConfigError, match="attack must be a PGD variant"):
        PGDAT(attack="fgsm")
    with pytest.raises(ConfigError, match="as recipe fields"):
        PGDAT(attack="epgd", attack_kwargs={"eps": 0.3})
    with pytest.raises(ConfigError, match="bad arguments for attack 'epgd'"):
        PGDAT(attack="epgd", attack_kwargs={"kk": 3})


# --------------------------------------------------------------------------- fast_at
def test_fast_at_uses_random_start_fgsm_with_step_one_and_a_quarter_eps() -> None:
    assert FastAT(eps=8 / 255).step_size == pytest.approx(10 / 255)
    assert FastAT(eps=EPS, alpha=0.2).step_size == 0.2
    assert FastAT(eps=EPS).attack.random_start and FastAT(eps=EPS).attack.alpha == 1.25 * EPS
    model = TinyBN().train()
    reference = copy.deepcopy(model)
    x, y = batch()
    out = FastAT(eps=EPS).loss(model, x, y, generator=gen(5))
    # Wong et al.: δ ~ U(-ε, ε) (clipped to the image), one step of α·sign(∇), clipped again
    g = gen(5)
    adv = sign_ascent(lambda v: F.cross_entropy(reference(v), y, reduction="none"),
                      uniform_start(x, EPS, g), x, EPS, 1.25 * EPS, 1)
    assert out.loss.item() == pytest.approx(F.cross_entropy(reference(adv), y).item(), rel=1e-5)
    wrong_step = sign_ascent(lambda v: F.cross_entropy(reference(v), y, reduction="none"),
                             uniform_start(x, EPS, gen(5)), x, EPS, EPS, 1)
    assert F.cross_entropy(reference(wrong_step), y).item() != pytest.approx(out.loss.item())


def test_fast_at_paper_config_and_one_cycle_learning_rate_per_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig.from_file(config_path("train/post_cifar10_preact_resnet18_fast_at"))
    assert (cfg.model, cfg.recipe, cfg.epochs, cfg.lr) == ("preact_resnet18", "fast_at", 15, 0.2)
    assert (cfg.schedule, cfg.schedule_kwargs) == ("onecycle", {"peak": 0.4})
    assert make_recipe(cfg.recipe, **cfg.recipe_kwargs).step_size == pytest.approx(10 / 255)

    seen: list[float] = []
    original = torch.optim.SGD.step

    def spy(self: torch.optim.SGD, *args: Any, **kwargs: Any) -> Any:
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    tiny = TrainConfig(dataset="fashion-mnist-sample", model="lenet5", recipe="fast_at",
                       recipe_kwargs={"eps": EPS}, epochs=2, batch_size=32, train_size=128,
                       test_size=0, lr=0.2, schedule="onecycle", schedule_kwargs={"peak": 0.4},
                       device="cpu", augment="none")
    train(tiny, progress=False)
    one = make_schedule("onecycle", 2, peak=0.4)
    assert seen == pytest.approx([0.2 * one.factor(i / 4) for i in range(8)])
    assert max(seen) == pytest.approx(0.2 * one.factor(0.75)) and seen[0] == 0.0


# --------------------------------------------------------------------------- trades
def test_trades_loss_terms_match_hand_computation() -> None:
    model = TinyBN().train()
    reference = copy.deepcopy(model)
    x, y = batch()
    recipe = TRADES(beta=6.0, eps=EPS, alpha=0.02, steps=3)
    out = recipe.loss(model, x, y, generator=gen(2))

    g = gen(2)
    reference.eval()
    with torch.no_grad():
        log_p = reference(x).log_softmax(1)

    def kl(v: torch.Tensor) -> torch.Tensor:
        return (log_p.exp() * (log_p - reference(v).log_softmax(1))).sum(1)

    adv = sign_ascent(kl, uniform_start(x, EPS, g), x, EPS, 0.02, 3)
    reference.train()
    logits, logits_adv = reference(x), reference(adv)
    natural = F.cross_entropy(logits, y)
    p_train = logits.softmax(1)
    robust = (p_train * (p_train.log() - logits_adv.log_softmax(1))).sum() / x.shape[0]
    assert out.metrics["natural_loss"].item() == pytest.approx(natural.item(), rel=1e-5)
    assert out.metrics["kl"].item() == pytest.approx(robust.item(), rel=1e-4)
    assert out.loss.item() == pytest.approx((natural + 6.0 * robust).item(), rel=1e-5)
    assert out.metrics["kl"] > 0
    # the KL term back-propagates into f(x) too (the reference does not detach it)
    out.loss.backward()
    (natural + 6.0 * robust).backward()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert a.grad is not None and b.grad is not None
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- iat
def test_iat_mixes_clean_and_adversarial_pairs_one_to_one() -> None:
    model = TinyBN().train()
    reference = copy.deepcopy(model)
    x, y = batch()
    recipe = IAT(eps=EPS, alpha=0.02, steps=2, mixup_alpha=1.0)
    assert recipe.adv_weight == 0.5  # 1:1 clean:adversarial
    out = recipe.loss(model, x, y, generator=gen(4))

    g = gen(4)
    adv = sign_ascent(lambda v: F.cross_entropy(reference(v), y, reduction="none"),
                      uniform_start(x, EPS, g), x, EPS, 0.02, 2)
    lam1 = sample_beta(1.0, g)
    mixed, ya, yb = mix_batch(x, y, lam1, g)
    lam2 = sample_beta(1.0, g)
    mixed_adv, ya2, yb2 = mix_batch(adv, y, lam2, g)
    assert torch.equal(ya2, y) and not torch.equal(yb, yb2)  # independent partners
    z, z_adv = reference(mixed), reference(mixed_adv)
    clean = lam1 * F.cross_entropy(z, ya) + (1 - lam1) * F.cross_entropy(z, yb)
    adversarial = lam2 * F.cross_entropy(z_adv, ya2) + (1 - lam2) * F.cross_entropy(z_adv, yb2)
    assert out.metrics["lambda_clean"].item() == pytest.approx(lam1)
    assert out.metrics["lambda_adv"].item() == pytest.approx(lam2)
    assert lam1 != pytest.approx(lam2)
    assert out.metrics["clean_loss"].item() == pytest.approx(clean.item(), rel=1e-5)
    assert out.metrics["adv_loss"].item() == pytest.approx(adversarial.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((0.5 * clean + 0.5 * adversarial).item(), rel=1e-5)
    assert 0 <= out.correct.item() <= x.shape[0]


# --------------------------------------------------------------------------- noise_injection
def test_noise_injection_converts_the_model_and_wraps_input_noise() -> None:
    from advguard.models import create_model

    recipe = NoiseInjection(noise={"kind": "pni"}, base="standard", base_kwargs={},
                            input_sigma=0.1)
    model = recipe.prepare_model(create_model("lenet5", in_channels=1, seed=0))
    assert model.spec is not None and model.spec.kwargs["noise"]["kind"] == "pni"
    with pytest.raises(ConfigError, match="already"):
        recipe.prepare_model(model)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    states = rng_states(model)
    out = recipe.loss(model, x, y, generator=gen(1))
    from advguard.rng import set_rng_states

    set_rng_states(model, states)  # replay the same weight noise
    eta = 0.1 * torch.randn(x.shape, generator=gen(1))
    expected = F.cross_entropy(model(x + eta), y)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.metrics["noise_scale"].item() == pytest.approx(0.25)
    assert NoiseInjection().inner.to_dict() == {**PGDAT(adv_weight=0.5).to_dict()}
    assert NoiseInjection().to_dict()["noise"] == NoiseSpec().to_dict()


# --------------------------------------------------------------------------- resume, every recipe
ArmLoss = Callable[..., Callable[[], None]]  # the conftest fixture arm_recipe_loss

TINY = TrainConfig(dataset="fashion-mnist-sample", model="lenet5", epochs=2, batch_size=32,
                   lr=0.05, train_size=64, test_size=0, schedule="onecycle", device="cpu",
                   augment="none", seed=1, checkpoint_every_steps=1)
SMALL_ATTACK = {"eps": EPS, "alpha": 0.05, "steps": 2}
RESUME_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "pgd_at": ("pgd_at", {**SMALL_ATTACK, "adv_weight": 0.5}, {}),
    "fast_at": ("fast_at", {"eps": EPS}, {}),
    "trades": ("trades", SMALL_ATTACK, {}),
    "iat": ("iat", SMALL_ATTACK, {}),
    "pni": ("noise_injection", {"noise": {"kind": "pni", "granularity": "channel"},
                                "base_kwargs": SMALL_ATTACK}, {}),
    "cni+input": ("noise_injection", {"noise": {"kind": "cni", "rank": 2}, "input_sigma": 0.1,
                                      "base": "trades", "base_kwargs": SMALL_ATTACK}, {}),
    "pgd_at+model-noise": ("pgd_at", SMALL_ATTACK, {"noise": {"kind": "pni"}}),
}

NOISY_CASES = {"pni", "cni+input", "pgd_at+model-noise"}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_after_crash_gives_identical_weights(
        case: str, tmp_path: Path, arm_recipe_loss: ArmLoss) -> None:
    recipe, kwargs, model_kwargs = RESUME_CASES[case]
    config = TINY.replace(recipe=recipe, recipe_kwargs=kwargs, model_kwargs=model_kwargs)
    reference = train(config, progress=False)

    disarm = arm_recipe_loss(recipe, 4)  # crash at step 2 of epoch 2 (2 steps per epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, output_dir=tmp_path, progress=False)
    assert (tmp_path / STATE_FILE).exists()
    disarm()
    resumed = train(config, output_dir=tmp_path, progress=False)
    assert resumed.record.resumed_from == {"epoch": 1, "step": 1}
    a, b = _weights(resumed.model), _weights(reference.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = rng_states(resumed.model), rng_states(reference.model)
    assert ra.keys() == rb.keys()
    for name in ra:  # noise generators continue exactly where the uninterrupted run was
        ga, gb = ra[name]["generators"], rb[name]["generators"]
        assert isinstance(ga, dict) and isinstance(gb, dict)
        assert all(torch.equal(ga[k], gb[k]) for k in ga)
    if case in NOISY_CASES:
        assert ra, "a noise-injected model has randomized submodules"
        from advguard.checkpoint import load_checkpoint

        loaded, meta = load_checkpoint(tmp_path / "model.safetensors")
        assert meta["model"]["noise"]["kind"] in ("pni", "cni")
        assert _weights(loaded).keys() == a.keys()


# --------------------------------------------------------------------------- CLI and configs
@pytest.mark.parametrize("recipe", NEW)
def test_cli_train_works_for_each_recipe(recipe: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from advguard.cli import main

    kwargs = "{eps: 0.1}" if recipe == "fast_at" else \
        "{base_kwargs: {eps: 0.1, steps: 1}}" if recipe == "noise_injection" else \
        "{eps: 0.1, steps: 1}"
    code = main(["train", "--dataset", "fashion-mnist-sample", "--model", "lenet5", "--recipe",
                 recipe, "--epochs", "1", "--train-size", "64", "--test-size", "0", "--device",
                 "cpu", "--batch-size", "32", "--set", f"recipe_kwargs={kwargs}", "--quiet",
                 "--output", str(tmp_path / recipe)])
    assert code == 0
    assert f"with {recipe}" in capsys.readouterr().out
    assert (tmp_path / recipe / "model.safetensors").exists()


def test_fine_tuning_starts_from_the_checkpoint(tmp_path: Path) -> None:
    """``init_from``: a CNI-W model fine-tuned into CNI-I+W with EPGD examples starts from the
    checkpoint's weights (with a negligible learning rate it stays there; a fresh start does
    not); an architecture the checkpoint does not fit is refused with the keys that differ."""
    from advguard.checkpoint import load_state_dict_file

    base = TrainConfig(dataset="fashion-mnist-sample", model="lenet5", recipe="noise_injection",
                       recipe_kwargs={"noise": {"kind": "cni", "rank": 2},
                                      "base_kwargs": {"eps": EPS, "steps": 1}},
                       epochs=1, train_size=64, test_size=0, batch_size=32, device="cpu",
                       seed=0)
    first = train(base, output_dir=tmp_path / "cni_w", progress=False).checkpoint
    assert first is not None
    tuned_kwargs = {**base.recipe_kwargs, "input_sigma": 0.05,
                    "base_kwargs": {"eps": EPS, "steps": 1, "attack": "epgd",
                                    "attack_kwargs": {"k": 2}}}
    tiny = base.replace(recipe_kwargs=tuned_kwargs, lr=1e-9, seed=1)
    tuned = train(tiny.replace(init_from=str(first)), output_dir=tmp_path / "tuned",
                  progress=False)
    start = load_state_dict_file(first)
    after = tuned.model.state_dict()
    assert all(torch.allclose(after[k].float(), v.float(), atol=1e-6) for k, v in start.items())
    fresh = train(tiny, progress=False).model.state_dict()
    assert not all(torch.allclose(fresh[k].float(), v.float(), atol=1e-6)
                   for k, v in start.items())
    assert tuned.record.config["init_from"] == str(first)
    with pytest.raises(ConfigError, match="does not fit the model"):
        train(base.replace(recipe="standard", recipe_kwargs={}, init_from=str(first)),
              progress=False)


TRAIN_CONFIGS = list_configs("train")


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_shipped_train_configs_are_valid_and_documented(name: str) -> None:
    path = config_path(name)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("advguard train --config" in line for line in header), "command in the header"
    config = TrainConfig.from_file(path)
    make_recipe(config.recipe, **config.recipe_kwargs)
    if "noise" in config.model_kwargs:
        NoiseSpec.from_dict(config.model_kwargs["noise"])
    assert read_yaml(path)["train"]


def test_paper_base_model_configs_exist() -> None:
    wanted = {
        "train/cap_cifar10_resnet50_mixup": ("resnet50", "mixup"),
        "train/cap_cifar10_resnet50_iat": ("resnet50", "iat"),
        "train/cap_fmnist_smallcnn_mixup": ("smallcnn", "mixup"),
        "train/cap_fmnist_smallcnn_iat": ("smallcnn", "iat"),
        "train/advt_cifar10_vgg_small_pgd_at": ("vgg_small", "pgd_at"),
        "train/smooth_cifar10_resnet20_pni_w": ("resnet20", "noise_injection"),
        "train/smooth_cifar10_resnet20_cni_w": ("resnet20", "noise_injection"),
        "train/smooth_fmnist_smallcnn_pni_w": ("smallcnn", "noise_injection"),
        "train/smooth_fmnist_smallcnn_cni_w": ("smallcnn", "noise_injection"),
        "train/post_cifar10_preact_resnet18_fast_at": ("preact_resnet18", "fast_at"),
        "train/post_cifar10_preact_resnet18_pgd_at": ("preact_resnet18", "pgd_at"),
        "train/scale_s/standard": ("smallcnn", "standard"),
        "train/scale_s/pgd_at": ("smallcnn", "pgd_at"),
        "train/scale_s/fast_at": ("smallcnn", "fast_at"),
        "train/scale_s/trades": ("smallcnn", "trades"),
    }
    for name, (model, recipe) in wanted.items():
        config = TrainConfig.from_file(config_path(name))
        assert (config.model, config.recipe) == (model, recipe), name
    cni = TrainConfig.from_file(config_path("train/smooth_cifar10_resnet20_cni_w"))
    assert cni.recipe_kwargs["noise"]["kind"] == "cni"
    for name in ("standard", "pgd_at", "fast_at", "trades"):
        config = TrainConfig.from_file(config_path(f"train/scale_s/{name}"))
        assert config.dataset == "fashion-mnist"
        assert config.recipe_kwargs.get("eps", EPS) == EPS


# --------------------------------------------------------------------------- GPU (not run on CPU)
@pytest.mark.gpu
@pytest.mark.parametrize("case", ["pgd_at", "fast_at", "trades", "pni", "cni+input"])
def test_gpu_step_runs_in_bf16_channels_last_without_host_sync(case: str) -> None:
    """On CUDA: one training step per recipe under bf16 autocast with channels_last inputs raises
    no error under ``torch.cuda.set_sync_debug_mode("error")`` (no host synchronization inside the
    step; ``iat``/``mixup`` draw λ on the host and are excluded), and a short run through the loop
    trains. Needs a GPU: ``pytest -m gpu``."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from advguard.models import create_model

    recipe_name, kwargs, _ = RESUME_CASES[case]
    recipe = make_recipe(recipe_name, **kwargs)
    device = torch.device("cuda")
    model = recipe.prepare_model(create_model("smallcnn", in_channels=1, seed=0))
    model = model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.rand(64, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    recipe.loss(model.train(), x, y, generator=generator)  # warm-up (lazy generator creation)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = recipe.loss(model, x, y, generator=generator)
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss).item()
    config = TINY.replace(recipe=recipe_name, recipe_kwargs=kwargs, device="cuda",
                          checkpoint_every_steps=None)
    result = train(config, progress=False)
    assert result.record.history[-1]["train_loss"] < 10


def test_config_overrides_with_dotted_keys_change_one_nested_value() -> None:
    """``set: {recipe_kwargs.use_prior: false}`` (an experiment's train entry, ``--set``) changes
    one recipe argument and keeps the file's others; a dotted key through a scalar is an error."""
    from advguard.errors import ConfigError

    base = TrainConfig.from_file("train/scale_s/add")
    cfg = TrainConfig.from_file("train/scale_s/add", **{"recipe_kwargs.use_prior": False,
                                                        "model_kwargs.width": 0.5})
    assert cfg.recipe_kwargs == {**base.recipe_kwargs, "use_prior": False}
    assert cfg.model_kwargs == {**base.model_kwargs, "width": 0.5}
    assert base.recipe_kwargs.get("use_prior", True) is True  # the file is not changed
    with pytest.raises(ConfigError, match="'epochs' is not a mapping"):
        TrainConfig.from_file("train/scale_s/add", **{"epochs.x": 1})
