"""The CAP paper's baselines: Xie et al. (resize or crop, then zero padding), Guo et al. (crop,
then bilinear rescale), random rotation and MI-OL (mixup inference with other-label pool images):
each one's defining behaviour, owned randomness, and registration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.data import ImageDataset, load_dataset
from advguard.defenses import (
    DEFENSES,
    GaussianNoise,
    GuoCropRescale,
    MixupInference,
    Pipeline,
    RandomRotation,
    Traits,
    XiePadding,
    build_defense,
)
from advguard.defenses.mixup_inference import load_pool
from advguard.errors import ConfigError

NAMES = ["xie", "guo", "rotation", "mi_ol"]


def _images(n: int = 32, c: int = 2, side: int = 28) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1


@pytest.mark.parametrize("mode", ["crop", "resize"])
def test_xie_pastes_a_random_square_into_zeros_at_a_random_place(mode: str) -> None:
    x = _images()
    xie = XiePadding(size=(19, 26), mode=mode)
    p = xie.sample(x.shape, torch.Generator().manual_seed(1))
    out = xie.apply_draw(x, p)
    assert out.shape == x.shape
    assert int(p.size.min()) >= 19 and int(p.size.max()) <= 26 and len(p.size.unique()) > 3
    assert bool((p.pad_top + p.size <= 28).all() and (p.pad_left + p.size <= 28).all())
    assert len(p.pad_top.unique()) > 3  # the placement varies
    for i in range(x.shape[0]):
        s, t, left = int(p.size[i]), int(p.pad_top[i]), int(p.pad_left[i])
        inner = out[i, :, t:t + s, left:left + s]
        if mode == "crop":
            ct, cl = int(p.top[i]), int(p.left[i])
            assert torch.equal(inner, x[i, :, ct:ct + s, cl:cl + s])
        else:
            assert torch.equal(inner, F.interpolate(x[i:i + 1], size=(s, s), mode="nearest")[0])
        outside = out[i].clone()
        outside[:, t:t + s, left:left + s] = 0
        assert float(outside.abs().max()) == 0.0  # zero padding everywhere else
        assert float(inner.min()) > 0  # ...and the image inside (inputs are >= 0.1)


def test_xie_default_sizes_scale_with_the_input_and_bad_sizes_fail() -> None:
    x = _images(200, 1)
    p = XiePadding().sample(x.shape, torch.Generator().manual_seed(0))
    assert (int(p.size.min()), int(p.size.max())) == (19, 26)  # 22/32 and 30/32 of 28
    with pytest.raises(ValueError, match="size range"):
        XiePadding(size=(20, 30))(x)  # larger than the 28-pixel input
    with pytest.raises(ValueError, match="mode"):
        XiePadding(mode="enlarge")  # type: ignore[arg-type]


def test_guo_is_a_random_crop_rescaled_bilinearly() -> None:
    x = _images()
    guo = GuoCropRescale(size=(19, 26))
    p = guo.sample(x.shape, torch.Generator().manual_seed(2))
    out = guo.apply_draw(x, p)
    assert out.shape == x.shape and len(p.size.unique()) > 3
    for i in range(x.shape[0]):
        s, t, left = int(p.size[i]), int(p.top[i]), int(p.left[i])
        assert t + s <= 28 and left + s <= 28
        crop = x[i:i + 1, :, t:t + s, left:left + s]
        ref = F.interpolate(crop, size=(28, 28), mode="bilinear", align_corners=False)[0]
        assert torch.allclose(out[i], ref, atol=1e-5)
    identity = GuoCropRescale(size=(28, 28))(x)  # a full-size crop changes nothing
    assert torch.allclose(identity, x, atol=1e-5)


def test_rotation_angles_and_direction() -> None:
    rot = RandomRotation(degrees=15)
    angles = rot.sample(5000, torch.Generator().manual_seed(0))
    assert float(angles.abs().max()) <= 15 and float(angles.min()) < -14.5 \
        and float(angles.max()) > 14.5
    assert abs(float(angles.mean())) < 0.5  # symmetric
    x = _images(4)
    assert torch.allclose(rot.apply_draw(x, torch.zeros(4)), x, atol=1e-5)
    quarter = rot.apply_draw(x, torch.full((4,), 90.0))
    assert torch.allclose(quarter, torch.rot90(x, 1, (2, 3)), atol=1e-5)  # counter-clockwise
    with pytest.raises(ValueError, match="degrees"):
        RandomRotation(degrees=200)


class _Linear(nn.Module):
    """A fixed linear classifier on 2×2 single-channel images, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _pool() -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.tensor([2, 0, 1, 1, 0, 2, 2, 1, 0])
    images = labels.float().view(-1, 1, 1, 1).expand(9, 1, 2, 2) / 2  # class c → pixels c/2
    return images + torch.arange(9.0).view(-1, 1, 1, 1) * 1e-3, labels


def test_mi_ol_mixes_with_other_class_pool_images_and_averages() -> None:
    model = _Linear()
    images, labels = _pool()
    x = torch.rand(50, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    pred = model(x).argmax(1)
    mi = MixupInference(model, lam=0.6, samples=7, chunk=3, pool=(images, labels), seed=4)
    out = mi(x)
    # replay the draws: chunks of 3, 3, 1 from a generator seeded like the defense's
    gen = torch.Generator().manual_seed(4)
    idx = torch.cat([mi.draw_partners(pred, 3, k, gen, x=x) for k in (3, 3, 1)])  # (7, 50)
    partners = mi.pool_images[idx]
    mixed = 0.6 * x[None] + 0.4 * partners                                    # Eq. of MI-OL
    expected = model(mixed.flatten(0, 1)).softmax(1).view(7, 50, 3).mean(0).log()
    assert torch.allclose(out, expected, atol=1e-6)
    # partners are never of the predicted class, and both other classes occur
    partner_class = mi.pool_labels[idx]
    assert not bool((partner_class == pred[None]).any())
    many = mi.draw_partners(pred, 3, 400, gen)
    for i in range(50):
        seen = set(mi.pool_labels[many[:, i]].tolist())
        assert seen == {0, 1, 2} - {int(pred[i])}


def test_mi_ol_pool_comes_from_training_data_never_test() -> None:
    pool = load_pool({"dataset": "fashion-mnist-sample", "n": 100, "seed": 0})
    assert pool.split == "train" and len(pool) == 100
    assert torch.equal(torch.bincount(pool.labels), torch.full((10,), 10))  # class-balanced
    train = load_dataset("fashion-mnist-sample", "train")
    assert pool.indices is not None
    assert torch.equal(train.images[pool.indices], pool.images)  # they are training images
    val = load_pool({"dataset": "fashion-mnist-sample", "split": "val", "val_size": 500})
    assert val.split == "train" and len(val) == 500
    with pytest.raises(ConfigError, match="never 'test'"):
        load_pool({"dataset": "fashion-mnist-sample", "split": "test"})
    with pytest.raises(ConfigError, match="unknown MI-OL pool key"):
        load_pool({"dataset": "fashion-mnist-sample", "splitt": "train"})
    test = load_dataset("fashion-mnist-sample", "test")
    with pytest.raises(ConfigError, match="test split"):
        MixupInference(_Linear(), pool=test)
    with pytest.raises(ConfigError, match="must be a dataset spec"):
        MixupInference(_Linear(), pool=7)  # type: ignore[arg-type]
    by_name = MixupInference(_Linear(), pool="fashion-mnist-sample")  # a name: its train split
    assert len(by_name.pool_labels) == len(train.labels)
    small = ImageDataset(images=torch.rand(2, 1, 2, 2), labels=torch.tensor([0, 1]),
                         classes=("a", "b", "c"), name="toy", split="train")
    with pytest.raises(ConfigError, match="all 3 classes"):
        MixupInference(_Linear(), pool=small)(torch.rand(1, 1, 2, 2))


def _build(name: str, model: nn.Module, seed: int) -> nn.Module:
    specs = {"xie": {"name": "xie", "size": [19, 26], "mode": "crop"},
             "guo": {"name": "guo", "size": [19, 26]},
             "rotation": {"name": "rotation", "degrees": 10},
             "mi_ol": {"name": "mi_ol", "lam": 0.5, "samples": 3,
                       "pool": {"dataset": "fashion-mnist-sample", "n": 100}}}
    return build_defense(specs[name], model, seed=seed)


@pytest.mark.parametrize("name", NAMES)
def test_baselines_are_registered_randomized_and_use_their_own_generator(
        name: str, fmnist_model: nn.Module, fmnist_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    meta = DEFENSES.metadata(name)
    assert meta["kind"] == ("defense" if name == "mi_ol" else "transform")
    assert meta["paper"]
    x = fmnist_batch[0][:20]
    defense = _build(name, fmnist_model, seed=3)
    assert defense.traits.randomized and defense.traits.differentiable
    state = torch.get_rng_state()
    with torch.no_grad():
        first = defense(x)
        assert torch.equal(torch.get_rng_state(), state)
        assert not torch.equal(defense(x), first)
        torch.manual_seed(99)
        defense.reseed(3)  # type: ignore[operator]
        assert torch.equal(defense(x), first)
    # differentiable given the draw: attacks get non-zero input gradients
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(defense(xg).logsumexp(1).sum(), xg)
    assert float(g.abs().sum()) > 0


def test_paper_combinations_compose() -> None:
    model = _Linear()
    noise_guo = build_defense({"name": "averaged", "n": 5, "defense": {
        "name": "pipeline", "steps": [{"name": "gaussian_noise", "sigma": 0.05},
                                      {"name": "guo", "size": [1, 2]}]}}, model, seed=1)
    inner = noise_guo.defense
    assert isinstance(inner, Pipeline) and noise_guo.n == 5
    noise, guo = inner.transforms()
    assert (type(noise), noise.sigma) == (GaussianNoise, 0.05)
    assert (type(guo), guo.size) == (GuoCropRescale, (1, 2))
    assert noise_guo.traits == Traits(randomized=True)  # both differentiable given the draw
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = noise_guo(x)
        # log of the mean softmax of 5 executions of noise-then-Guo (one stacked forward)
        noise_guo.reseed(1)
        draws = inner(x.repeat(5, 1, 1, 1)).softmax(1).view(5, 3, 3)
    assert torch.allclose(out, draws.mean(0).log(), atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(draws[0], draws[1])  # the executions are independent draws
