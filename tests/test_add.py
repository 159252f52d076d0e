"""ADD-Defense and APE-GAN: the purifier networks, their recipes (losses, min-max gradient
isolation, ablations, bad input) and the ``add`` / ``ape_gan`` defenses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advguard.checkpoint import save_checkpoint
from advguard.defenses import build_defense
from advguard.errors import AdvguardError, ConfigError
from advguard.models import create_model
from advguard.training import TrainConfig, train
from advguard.training.recipes import make_recipe
from advguard.training.recipes.purifier import confusion_loss, gaussian_kl, mmd2, multi_domain_mmd

FAST_ATTACKS = [{"attack": "pgd", "eps": 0.15, "steps": 2},
                {"attack": "pgd", "eps": 0.15, "steps": 2, "target": "random"}]


@pytest.fixture(scope="module")
def target_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = create_model("lenet5", num_classes=10, in_channels=1, input_size=28, seed=0)
    path = tmp_path_factory.mktemp("mt") / "model.safetensors"
    save_checkpoint(path, model, metadata={"dataset": "fashion-mnist-sample"})
    return path


def _purifier(width: float = 0.0625, domains: int = 3, size: int = 28, c: int = 1
              ) -> torch.nn.Module:
    return create_model("add_purifier", num_classes=10, in_channels=c, input_size=size,
                        width=width, domains=domains, seed=0)


# ------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize(("size", "c", "latent_side"), [(28, 1, 1), (32, 3, 1), (40, 1, 2)])
def test_purifier_shapes_and_range(size: int, c: int, latent_side: int) -> None:
    net = _purifier(size=size, c=c)
    x = torch.rand(3, c, size, size)
    with torch.no_grad():
        out = net(x)
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    mu, logvar = net.model.encode(net.normalize(x))
    assert mu.shape == logvar.shape == (3, net.model.latent_channels, latent_side, latent_side)
    assert net.model.discriminate_image(x).shape == (3,)
    assert net.model.perturbation_discriminator(mu.flatten(1)).shape == (3, 3)
    assert net.model.classifier(mu.flatten(1)).shape == (3, 10)


def test_purifier_paper_width_matches_table_4() -> None:
    net = create_model("add_purifier", num_classes=10, in_channels=3, input_size=32).model
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [128, 256, 512, 1024, 2048]
    deconvs = [m for m in net.generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.out_channels for m in deconvs] == [1024, 512, 256, 128, 3]
    fcs = [m for m in net.perturbation_discriminator.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in fcs] == [1024, 256, 64, 3]


@pytest.mark.parametrize("kwargs", [{"width": 0.0}, {"width": -1.0}, {"domains": 1}])
def test_purifier_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        create_model("add_purifier", num_classes=10, in_channels=1, input_size=28, **kwargs)


def test_ape_gan_shapes_and_bad_size() -> None:
    net = create_model("ape_gan", num_classes=10, in_channels=1, input_size=28, width=0.25)
    x = torch.rand(2, 1, 28, 28)
    assert net(x).shape == x.shape
    with pytest.raises(ConfigError, match="divisible by 4"):
        create_model("ape_gan", num_classes=10, in_channels=1, input_size=30)


# ------------------------------------------------------------------------------------ MMD
def test_mmd_matches_explicit_sum() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, generator=g)
    b = torch.randn(6, 4, generator=g) + 1.0
    sig = torch.tensor([0.7, 2.0])

    def k(u: torch.Tensor, v: torch.Tensor) -> float:
        return sum(float(torch.exp(-((u - v) ** 2).sum() / (2 * s * s))) for s in sig)

    def mean_k(p: torch.Tensor, q: torch.Tensor) -> float:
        return sum(k(u, v) for u in p for v in q) / (len(p) * len(q))

    expected = mean_k(a, a) + mean_k(b, b) - 2 * mean_k(a, b)
    assert float(mmd2(a, b, sig)) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_multi_domain_mmd_zero_for_equal_domains_and_grows_with_shift() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 8, generator=g)
    assert float(multi_domain_mmd([z, z.clone(), z.clone()], (1.0,))) == pytest.approx(0, abs=1e-6)
    near = float(multi_domain_mmd([z, z + 0.1, z], (1.0,)))
    far = float(multi_domain_mmd([z, z + 2.0, z], (1.0,)))
    assert 0 < near < far


def test_prior_kl_matches_the_closed_form_of_torch_distributions() -> None:
    g = torch.Generator().manual_seed(2)
    mu, logvar = torch.randn(4, 3, 1, 1, generator=g), torch.randn(4, 3, 1, 1, generator=g)
    q = torch.distributions.Normal(mu.flatten(1), (0.5 * logvar).exp().flatten(1))
    p = torch.distributions.Normal(torch.zeros(4, 3), torch.ones(4, 3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected, rtol=1e-5, atol=1e-6)
    assert float(gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)).abs().max()) == 0.0


def test_confusion_target_is_uniform() -> None:
    """The encoder's loss against D_P is log K exactly at a uniform prediction, and larger for
    any confident one (whichever domain it names)."""
    k = 3
    assert float(confusion_loss(torch.zeros(5, k))) == pytest.approx(torch.log(torch.tensor(3.)))
    for d in range(k):
        confident = torch.zeros(1, k)
        confident[0, d] = 4.0
        assert float(confusion_loss(confident)) > float(torch.log(torch.tensor(3.0))) + 0.5


# ------------------------------------------------------------------------------------ recipes
def _add_recipe(target: Path, **kw: object) -> object:
    recipe = make_recipe("add", target=str(target), known_attacks=FAST_ATTACKS, **kw)
    return recipe


def test_add_loss_min_max_gradients_are_isolated(target_path: Path) -> None:
    """One backward pass: D_P gets only its own classification gradient (the encoder's
    confusion term does not reach it), D_I only its own real/fake gradient."""
    model = _purifier()
    recipe = _add_recipe(target_path)
    recipe.prepare_model(model)  # type: ignore[attr-defined]
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def grads(recipe: object) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        out = recipe.loss(model, x, y, generator=torch.Generator().manual_seed(0))  # type: ignore
        out.loss.backward()
        return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for n, p in model.named_parameters()}

    full = grads(recipe)
    ablated = _add_recipe(target_path, lambda_perturbation=0.0)
    ablated.prepare_model(model)  # type: ignore[attr-defined]
    no_confusion = grads(ablated)
    dp = [n for n in full if "perturbation_discriminator" in n]
    enc = [n for n in full if ".encoder." in n]
    assert dp and enc
    for n in dp:  # the confusion term never changes D_P's gradient
        torch.testing.assert_close(full[n], no_confusion[n], rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(full[n], no_confusion[n]) for n in enc)
    assert all(bool(torch.isfinite(v).all()) for v in full.values())


def test_add_discriminator_terms_do_not_train_the_other_side(target_path: Path) -> None:
    """The image discriminator's own loss gives the generator no gradient, and the generator's
    fooling term gives D_I none (checked with autograd on each term)."""
    from advguard.training.recipes.purifier import _frozen

    net = _purifier().model
    x = torch.rand(4, 1, 28, 28)
    restored = net.decode(net.encode(x)[0])
    fooled = _frozen(net.image_discriminator, net._pad(restored)).sum()
    d_params = list(net.image_discriminator.parameters())
    g_params = list(net.generator.parameters())
    grads = torch.autograd.grad(fooled, d_params + g_params, allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0 for g in grads[:len(d_params)])
    assert any(g is not None and float(g.abs().max()) > 0 for g in grads[len(d_params):])
    own = net.discriminate_image(restored.detach()).sum()
    grads = torch.autograd.grad(own, d_params + g_params, allow_unused=True)
    assert all(g is None for g in grads[len(d_params):])


@pytest.mark.parametrize(("flag", "metric"), [("use_mmd", "mmd"), ("use_prior", "prior_kl"),
                                              ("use_perturbation_discriminator", "dp_loss"),
                                              ("use_classifier", "class_loss")])
def test_add_ablations_drop_their_term(target_path: Path, flag: str, metric: str) -> None:
    model = _purifier()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    outs = {}
    for on in (True, False):
        recipe = _add_recipe(target_path, lambda_prior=1.0, lambda_class=1.0, **{flag: on})
        recipe.prepare_model(model)  # type: ignore[attr-defined]
        outs[on] = recipe.loss(model, x, y, generator=torch.Generator().manual_seed(0))  # type: ignore
    assert metric in outs[True].metrics and metric not in outs[False].metrics
    assert float(outs[True].loss.detach()) != pytest.approx(float(outs[False].loss.detach()))


def test_add_known_attacks_stay_in_their_ball(target_path: Path) -> None:
    recipe = _add_recipe(target_path)
    model = _purifier()
    recipe.prepare_model(model)  # type: ignore[attr-defined]
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    _, domains = recipe.domains_of(x, y, torch.Generator().manual_seed(0))  # type: ignore
    assert len(domains) == 3 and domains[0] is x
    for adv in domains[1:]:
        assert float((adv - x).abs().max()) <= 0.15 + 1e-6
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1
        assert not torch.equal(adv, x)


def test_add_recipe_bad_input(target_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs 'target'"):
        make_recipe("add")
    with pytest.raises(ConfigError, match="at least one known attack"):
        make_recipe("add", target=str(target_path), known_attacks=[])
    with pytest.raises(ConfigError, match="'attack' name"):
        make_recipe("add", target=str(target_path), known_attacks=[{"eps": 0.1}])
    with pytest.raises(ConfigError, match=r"no_such_attack|unknown"):
        make_recipe("add", target=str(target_path), known_attacks=[{"attack": "no_such_attack"}])
    with pytest.raises(ConfigError, match="target must be"):
        make_recipe("add", target=str(target_path),
                    known_attacks=[{"attack": "pgd", "eps": 0.1, "target": "everyone"}])
    with pytest.raises(ConfigError, match="theta"):
        make_recipe("add", target=str(target_path), theta=-1.0)
    recipe = make_recipe("add", target=str(target_path), known_attacks=FAST_ATTACKS[:1])
    with pytest.raises(ConfigError, match="domains"):
        recipe.prepare_model(_purifier(domains=3))
    with pytest.raises(ConfigError, match="add_purifier"):
        recipe.prepare_model(create_model("lenet5", num_classes=10, in_channels=1))
    missing = make_recipe("add", target=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match="not found"):
        missing.prepare_model(_purifier())
    with pytest.raises(ConfigError, match=r"other inputs|size"):
        make_recipe("add", target=str(target_path)).prepare_model(_purifier(size=32, c=3))


def test_ape_gan_loss_trains_generator_on_attacks_only(target_path: Path) -> None:
    model = create_model("ape_gan", num_classes=10, in_channels=1, input_size=28, width=0.125,
                         seed=0)
    recipe = make_recipe("ape_gan", target=str(target_path), known_attacks=FAST_ATTACKS[:1])
    recipe.prepare_model(model)  # type: ignore[attr-defined]
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    out = recipe.loss(model, x, y, generator=torch.Generator().manual_seed(0))  # type: ignore
    assert torch.isfinite(out.loss) and 0 <= float(out.correct) <= 4
    with pytest.raises(ConfigError, match="ape_gan"):
        recipe.prepare_model(_purifier())


# ------------------------------------------------------------------------------------ defenses
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, target_path: Path) -> dict[str, Path]:
    """A tiny ADD purifier and APE-GAN trained for one short epoch through the real loop."""
    root = tmp_path_factory.mktemp("purifiers")
    common = dict(dataset="fashion-mnist-sample", optimizer="adam", lr=1e-3, schedule="constant",
                  epochs=1, train_size=64, test_size=20, batch_size=32, device="cpu",
                  augment="none")
    add = TrainConfig(model="add_purifier", model_kwargs={"width": 0.0625}, recipe="add",
                      recipe_kwargs={"target": str(target_path), "known_attacks": FAST_ATTACKS},
                      **common)  # type: ignore[arg-type]
    ape = TrainConfig(model="ape_gan", model_kwargs={"width": 0.125}, recipe="ape_gan",
                      recipe_kwargs={"target": str(target_path), "known_attacks": FAST_ATTACKS},
                      **common)  # type: ignore[arg-type]
    train(add, output_dir=root / "add", progress=False)
    train(ape, output_dir=root / "ape", progress=False)
    return {"add": root / "add" / "model.safetensors",
            "ape_gan": root / "ape" / "model.safetensors"}


def test_defenses_load_from_a_training_run(trained: dict[str, Path], target_path: Path) -> None:
    from advguard.checkpoint import load_checkpoint

    target, _ = load_checkpoint(target_path)
    x = torch.rand(5, 1, 28, 28)
    for name, path in trained.items():
        defense = build_defense({"name": name, "purifier": str(path)}, target)
        assert defense.traits.differentiable and not defense.traits.randomized
        purifier = defense.steps[0].purifier  # type: ignore[index,union-attr]
        with torch.no_grad():
            torch.testing.assert_close(defense(x), target(purifier(x)))
        _, meta = load_checkpoint(path)
        recipe = meta["train_config"]["recipe_kwargs"]
        assert recipe["target"] == str(target_path) and recipe["known_attacks"] == FAST_ATTACKS


def test_add_gradients_flow_through_the_purifier(trained: dict[str, Path],
                                                 target_path: Path) -> None:
    from advguard.checkpoint import load_checkpoint

    target, _ = load_checkpoint(target_path)
    defense = build_defense({"name": "add", "purifier": str(trained["add"])}, target)
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    (g,) = torch.autograd.grad(defense(x).logsumexp(1).sum(), x)
    assert bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0


def test_add_sampled_latent_is_randomized_and_seeded(trained: dict[str, Path],
                                                     target_path: Path) -> None:
    from advguard.checkpoint import load_checkpoint

    target, _ = load_checkpoint(target_path)
    spec = {"name": "add", "purifier": str(trained["add"]), "sample": True}
    a, b = build_defense(spec, target, seed=3), build_defense(spec, target, seed=3)
    assert a.traits.randomized
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        first, again = a(x), b(x)
        second = a(x)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, second)


def test_purifier_defense_bad_input(trained: dict[str, Path], target_path: Path,
                                   tmp_path: Path) -> None:
    from advguard.checkpoint import load_checkpoint

    target, _ = load_checkpoint(target_path)
    with pytest.raises(ConfigError, match="needs 'purifier'"):
        build_defense({"name": "add"}, target)
    with pytest.raises(ConfigError, match="not found"):
        build_defense({"name": "add", "purifier": str(tmp_path / "x.safetensors")}, target)
    # every message names the defense first, also when it already mentions the name elsewhere
    with pytest.raises(ConfigError, match=r"^defense 'ape_gan': purifier: .*'add_purifier'"):
        build_defense({"name": "ape_gan", "purifier": str(trained["add"])}, target)
    with pytest.raises(ConfigError, match="sample"):
        build_defense({"name": "add", "purifier": str(trained["add"]), "sample": "yes"}, target)
    cifar = create_model("lenet5", num_classes=10, in_channels=3, input_size=32)
    with pytest.raises(AdvguardError, match="other inputs"):
        build_defense({"name": "add", "purifier": str(trained["add"])}, cifar)


def test_records_are_not_mixed_across_a_replaced_purifier(tmp_path: Path,
                                                          target_path: Path) -> None:
    """The evaluation id covers the config and the base model's weights, not the checkpoints a
    defense loads by path: a purifier retrained under the same path must not resume (or be
    reported as) the records of the old one; its fingerprint is recorded and reported."""
    from advguard.checkpoint import load_checkpoint
    from advguard.errors import ConfigError
    from advguard.evaluation import EvalConfig, evaluate, model_fingerprint
    from advguard.evaluation.store import RecordStore

    purifier = tmp_path / "ape" / "model.safetensors"

    def save_purifier(seed: int) -> None:
        save_checkpoint(purifier, create_model("ape_gan", num_classes=10, in_channels=1,
                                               input_size=28, width=0.125, seed=seed),
                        metadata={"dataset": "fashion-mnist-sample"})

    spec = {"name": "ape_gan", "purifier": str(purifier)}
    config = EvalConfig(model=str(target_path), dataset="fashion-mnist-sample", n=8,
                        batch_size=4, eps=0.1, device="cpu", checks=False, defense=spec,
                        steps=[{"setting": "adaptive", "attack": "fgsm"}])  # type: ignore[list-item]
    store = tmp_path / "r.sqlite"

    def stop_after_first_chunk(chunk: int) -> None:
        raise KeyboardInterrupt

    save_purifier(seed=0)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, store=store, progress=False, on_chunk=stop_after_first_chunk)
    save_purifier(seed=1)  # retrained under the same path
    with pytest.raises(ConfigError, match=r"other defense weights.*replaced under the same path"):
        evaluate(config, store=store, progress=False)
    with RecordStore(store) as db:  # refused before anything was written
        (eval_id,) = db.evaluation_ids()
        assert db.finished_chunks(eval_id) == {0}

    save_purifier(seed=0)  # the checkpoint the records were made with: resumes
    summary = evaluate(config, store=store, progress=False)
    target, _ = load_checkpoint(target_path)
    expected = model_fingerprint(build_defense(spec, target))
    assert summary.environment["defense_fingerprint"] == expected
    assert {env["defense_fingerprint"] for env in summary.computed_in} == {expected}
    save_purifier(seed=1)  # a finished evaluation is not re-read with other weights either
    with pytest.raises(ConfigError, match="other defense weights"):
        evaluate(config, store=store, progress=False)
