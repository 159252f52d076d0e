"""POST (Yan & Ng, Adaptive Modeling Against Adversarial Attacks): the neighbour search, the
batched post-training against a per-input loop, and what it must never touch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.data import load_dataset
from advguard.defenses import PostTrain, build_defense
from advguard.defenses.post_training import (
    _T_FIRST,
    _T_SECOND,
    _T_START,
    _draw_from_class,
    _Functional,
    _Pool,
    find_neighbours,
    post_train_params,
)
from advguard.errors import ConfigError
from advguard.rng import combine, example_draws, keyed_uniform

CLASSES = 10


def _net(seed: int = 0, bn: bool = False) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, stride=2)]
        if bn:
            layers.append(nn.BatchNorm2d(4))
        layers += [nn.Softplus(), nn.Flatten(), nn.Linear(4 * 13 * 13, CLASSES)]
        net = nn.Sequential(*layers).eval()
        if bn:  # non-trivial running statistics, to see that they stay put
            net[1].running_mean.uniform_(-0.1, 0.1)
            net[1].running_var.uniform_(0.5, 1.5)
        return net


def _pool(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    train = load_dataset("fashion-mnist-sample", "train")
    return train.images[:n], train.labels[:n]


def _x(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    test = load_dataset("fashion-mnist-sample", "test")
    return test.images[:n], test.labels[:n]


def _reference_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                   steps: int, target: torch.Tensor | None = None,
                   early_stop: bool = False) -> torch.Tensor:
    """Algorithm 1 written out, one example at a time; ``early_stop``: stop once it has left
    ``y`` (reached ``target``), as the reference code."""
    out = []
    for i in range(x.shape[0]):
        xi, adv = x[i:i + 1], x[i:i + 1].clone()
        yi = y[i:i + 1] if target is None else target[i:i + 1]
        for _ in range(steps):
            adv.requires_grad_(True)
            logits = model(adv)
            pred = int(logits.argmax(1))
            if early_stop and ((target is None and pred != int(yi)) or
                               (target is not None and pred == int(yi))):
                break
            (g,) = torch.autograd.grad(F.cross_entropy(logits, yi), adv)
            step = alpha * g.sign() * (1 if target is None else -1)
            adv = torch.min(torch.max(adv.detach() + step, xi - eps), xi + eps).clamp(0, 1)
        out.append(adv.detach())
    return torch.cat(out)


@pytest.mark.parametrize("early_stop", [False, True])
def test_untargeted_neighbour_search_is_algorithm_1(early_stop: bool) -> None:
    model, (x, _) = _net(), _x(8)
    with torch.no_grad():
        y1 = model(x).argmax(1)
    y2, delta = find_neighbours(model, x, y1, eps=0.1, alpha=0.02, steps=8,
                                early_stop=early_stop)
    adv = _reference_pgd(model, x, y1, 0.1, 0.02, 8, early_stop=early_stop)
    assert torch.allclose(delta, adv - x, atol=1e-6)
    assert torch.equal(y2, model(adv).argmax(1))
    assert delta.abs().max() <= 0.1 + 1e-6 and (x + delta).min() >= 0


def test_targeted_neighbour_search_keeps_the_most_confident_target() -> None:
    model, (x, _) = _net(), _x(3)
    with torch.no_grad():
        y1 = model(x).argmax(1)
    y2, delta = find_neighbours(model, x, y1, eps=0.1, alpha=0.05, steps=3, search="targeted",
                                num_classes=CLASSES, early_stop=False)
    for i in range(3):
        best, best_loss = None, float("inf")
        for t in range(CLASSES):
            if t == int(y1[i]):
                continue
            tt = torch.tensor([t])
            adv = _reference_pgd(model, x[i:i + 1], y1[i:i + 1], 0.1, 0.05, 3, target=tt)
            with torch.no_grad():
                loss = float(F.cross_entropy(model(adv), tt))
            if loss < best_loss:
                best, best_loss = adv, loss
        assert best is not None
        assert torch.allclose(x[i:i + 1] + delta[i:i + 1], best, atol=1e-6)
        assert int(y2[i]) == int(model(best).argmax(1))


def _draws(keys: torch.Tensor, it: int, pool: _Pool, y1: torch.Tensor, y2: torch.Tensor,
           per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    k_it = combine(keys, it)
    return torch.cat([_draw_from_class(pool, combine(k_it, _T_FIRST), y1, per_class),
                      _draw_from_class(pool, combine(k_it, _T_SECOND), y2, per_class)], 1), k_it


@pytest.mark.parametrize("method", ["fixed", "fast", "normal"])
def test_functional_post_training_equals_a_deepcopied_model_with_torch_sgd(method: str) -> None:
    """One input at a time, as the reference code: deep copy, torch.optim.SGD(nesterov), the same
    training batches and starts — the stacked functional path gives the same parameters."""
    model, (x, _) = _net(bn=True), _x(3)
    pool = _Pool(*_pool())
    y1, y2 = torch.tensor([0, 3, 7]), torch.tensor([2, 5, 1])
    delta = 0.05 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    keys = torch.tensor([11, 22, 33])
    kw = dict(method=method, composition="neighbour", iterations=3, per_class=4, lr=0.05,
              momentum=0.9, nesterov=True, train_eps=0.1, train_alpha=0.125, train_steps=1,
              num_classes=CLASSES)
    params = post_train_params(model, pool, keys, y1, y2, delta, **kw)  # type: ignore[arg-type]
    for b in range(3):
        copy_ = copy.deepcopy(model)
        opt = torch.optim.SGD(copy_.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        for it in range(3):
            idx, k_it = _draws(keys[b:b + 1], it, pool, y1[b:b + 1], y2[b:b + 1], 4)
            data, labels = pool.images[idx[0]], pool.labels[idx[0]]
            if method == "fixed":
                data = data + delta[b]
            elif method == "fast":
                u = keyed_uniform(combine(k_it, _T_START), tuple(data.shape))[0]
                d = (data + (2 * u - 1) * 0.1).clamp(0, 1) - data
                xin = (data + d).requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(copy_(xin), labels), xin)
                d = (d + 0.125 * g.sign()).clamp(-0.1, 0.1)
                data = ((data + d).clamp(0, 1)).detach()
            opt.zero_grad()
            F.cross_entropy(copy_(data), labels).backward()
            opt.step()
        for name, p in copy_.named_parameters():
            assert torch.allclose(params[name][b], p, atol=1e-5), (method, b, name)
    moved = sum(float((params[n][0] - p).detach().abs().sum()) for n, p in model.named_parameters())
    assert moved > 0  # it trained


def test_fixed_adds_exactly_delta_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    model, pool = _net(), _Pool(*_pool())
    seen: list[torch.Tensor] = []
    original = _Functional.param_grads

    def spy(self: _Functional, params: dict[str, torch.Tensor], x: torch.Tensor,
            y: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(x.clone())
        return original(self, params, x, y)

    monkeypatch.setattr(_Functional, "param_grads", spy)
    y1, y2, keys = torch.tensor([1, 4]), torch.tensor([6, 9]), torch.tensor([5, 8])
    delta = torch.rand(2, 1, 28, 28) * 0.2 - 0.1
    post_train_params(model, pool, keys, y1, y2, delta, method="fixed", composition="neighbour",
                      iterations=2, per_class=3, lr=0.01, momentum=0.9, nesterov=True,
                      train_eps=0.1, train_alpha=0.1, train_steps=1, num_classes=CLASSES)
    for it, batch in enumerate(seen):
        idx, _ = _draws(keys, it, pool, y1, y2, 3)
        assert torch.equal(batch, pool.images[idx] + delta[:, None])  # unclipped, as Eq. 7
        labels = pool.labels[idx]
        assert (labels[:, :3] == y1[:, None]).all() and (labels[:, 3:] == y2[:, None]).all()


def _defense(model: nn.Module, **kw: object) -> PostTrain:
    spec = {"name": "post_train", "data": {"dataset": "fashion-mnist-sample", "n": 300},
            "eps": 0.1, "neighbour_alpha": 0.125, "neighbour_steps": 5, "iterations": 3,
            "per_class": 4, "lr": 0.05, **kw}
    d = build_defense(spec, model, seed=3)
    assert isinstance(d, PostTrain)
    return d


def test_batched_post_training_gives_the_per_input_loops_predictions() -> None:
    """Inside the harness's per-example draws, chunks of 8 and one input at a time agree."""
    model, (x, _) = _net(), _x(10)
    out = {}
    for chunk in (8, 1):
        d = _defense(model, chunk=chunk, vectorize=True)
        with example_draws(x, list(range(10)), seed=4, modules=d):
            out[chunk] = d(x)
        with example_draws(x, list(range(10)), seed=4, modules=d):  # the rows in another order
            perm = torch.tensor([3, 1, 9, 0, 2, 8, 7, 5, 4, 6])
            out[f"perm{chunk}"] = d(x[perm])[perm.argsort()]
    assert torch.allclose(out[8], out[1], atol=1e-4)
    assert torch.equal(out[8].argmax(1), out[1].argmax(1))
    assert torch.allclose(out["perm8"], out[8], atol=1e-4)
    d = _defense(model, chunk=8)  # the default on CPU: one input at a time, the same draws
    assert not d.vectorized(torch.device("cpu")) and d.vectorized(torch.device("cuda"))
    with example_draws(x, list(range(10)), seed=4, modules=d):
        assert torch.allclose(d(x), out[8], atol=1e-4)


def test_worker_threads_give_the_loops_parameters_bit_for_bit() -> None:
    """The CPU path: the chunk shared out over worker threads, each with its own model copy and
    one intra-op thread, equals one input at a time on one thread, whatever the row order; the
    caller's thread count comes back and its model is untouched."""
    model, (x, _) = _net(bn=True), _x(10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for workers in (1, 3):
            d = _defense(model, chunk=8, workers=workers, composition="random_class")  # all train
            assert not d.vectorized(torch.device("cpu"))
            with example_draws(x, list(range(10)), seed=4, modules=d):
                _, _, active, params = d.adapt(x)
            out[workers] = (active, params)
            assert torch.get_num_threads() == 1
        assert int(out[1][0].sum()) >= 4, "the test needs inputs that are post-trained"
        assert torch.equal(out[1][0], out[3][0])
        for name, value in out[1][1].items():
            assert torch.equal(value, out[3][1][name]), name
    finally:
        torch.set_num_threads(threads)
    # a lone row on a two-thread caller still trains on one thread: the same parameters
    torch.set_num_threads(2)
    try:
        d = _defense(model, chunk=8, workers=2, composition="random_class")
        with example_draws(x, list(range(10)), seed=4, modules=d):
            _, _, _, lone = d.adapt(x[:1])
        assert torch.get_num_threads() == 2
        for name, value in lone.items():
            assert torch.equal(value[0], out[1][1][name][0]), name
    finally:
        torch.set_num_threads(threads)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ConfigError, match="workers must be an int >= 1"):
        _defense(model, workers=0)


def test_the_callers_model_and_batchnorm_statistics_are_never_touched() -> None:
    model, (x, _) = _net(bn=True), _x(6)
    model.train()  # the caller's mode must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = _defense(model)
    y = d(x)
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    y1, y2, active, params = d.adapt(x)
    assert active.any(), "the test needs inputs that are post-trained"
    with torch.no_grad():
        base = model.eval()(x)
    assert torch.equal(y[~active], base[~active])  # y'' = y': the base prediction stands
    assert torch.equal(active, y2 != y1) and params["0.weight"].shape[0] == int(active.sum())


def test_inputs_without_a_neighbour_keep_the_base_prediction() -> None:
    model, (x, _) = _net(), _x(6)
    d = _defense(model, eps=1e-4, neighbour_alpha=1e-4)  # too small to cross any boundary
    _, _, active, _ = d.adapt(x)
    assert not active.any()
    with torch.no_grad():
        assert torch.equal(d(x), model(x))


def test_post_training_data_is_training_data_that_fits_the_model() -> None:
    model = _net()
    with pytest.raises(ConfigError, match="must come from training or validation data"):
        build_defense({"name": "post_train", "data": {"dataset": "fashion-mnist-sample",
                                                      "split": "test"}}, model)
    test = load_dataset("fashion-mnist-sample", "test")
    with pytest.raises(ConfigError, match="must not come from the test split"):
        PostTrain(model, data=test)
    from advguard.models import create_model
    rgb_model = create_model("lenet5", num_classes=10, in_channels=3)
    with pytest.raises(ConfigError, match=r"does not fit the model.*channels 1 vs 3"):
        build_defense({"name": "post_train", "data": {"dataset": "fashion-mnist-sample"}},
                      rgb_model)
    images, labels = _pool(100)
    with pytest.raises(ConfigError, match=r"no images of class\(es\) \[9\]"):
        PostTrain(create_model("lenet5", num_classes=10, in_channels=1),
                  data=(images[labels != 9], labels[labels != 9]))
    with pytest.raises(ConfigError, match="defense 'post_train' needs 'data'"):
        build_defense({"name": "post_train"}, model)
    with pytest.raises(ConfigError, match="no-such-data"):
        build_defense({"name": "post_train", "data": {"dataset": "no-such-data"}}, model)
    with pytest.raises(ConfigError, match="needs a 'dataset'"):
        build_defense({"name": "post_train", "data": {"n": 10}}, model)
    for bad_data in (5, [1, 2], "no-such-data"):
        with pytest.raises(ConfigError, match=r"must be a dataset spec|no-such-data"):
            build_defense({"name": "post_train", "data": bad_data}, model)
    by_name = build_defense({"name": "post_train", "data": "fashion-mnist-sample"}, model)
    assert len(by_name.pool.labels) == len(load_dataset("fashion-mnist-sample", "train").labels)
    with pytest.raises(ConfigError, match="iterations must be an int >= 0"):
        _defense(model, iterations=-1)
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ConfigError, match=f"lr must be a finite number > 0, got {bad}"):
            _defense(model, lr=bad)


def test_adapt_then_attack_re_adapts_every_round_and_stays_in_the_ball(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from advguard.attacks import AdaptThenAttack
    from advguard.attacks.wrappers import BPDA

    model, (x, y) = _net(), _x(8)
    d = _defense(model)
    calls: list[torch.Tensor] = []
    original = PostTrain.adapt

    def spy(self: PostTrain, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        calls.append(z.clone())
        return original(self, z)

    monkeypatch.setattr(PostTrain, "adapt", spy)
    attack = AdaptThenAttack(eps=0.1, rounds=3, steps=4, loss="margin2")
    result = attack(BPDA(d), x, y, generator=torch.Generator().manual_seed(0))
    adapt_calls = len(calls)
    assert adapt_calls >= 3  # each round adapts to the current candidate (+ the result checks)
    assert not torch.equal(calls[0], calls[1])  # ... which moved in between
    assert (result.adv - x).abs().max() <= 0.1 + 1e-6
    assert result.adv.min() >= 0 and result.adv.max() <= 1
    with torch.no_grad():
        clean = (d(x).argmax(1) == y).float().mean()
        robust = (d(result.adv).argmax(1) == y).float().mean()
    assert robust <= clean
    with pytest.raises(ConfigError, match="needs a test-time-adapted defense"):
        AdaptThenAttack(eps=0.1, rounds=1, steps=1)(model, x, y)


def test_a_class_smaller_than_the_batch_is_cycled_through() -> None:
    images, labels = _pool(300)
    small = (labels != 3) | (torch.arange(len(labels)) < 40)  # class 3 keeps only a few images
    pool = _Pool(images[small], labels[small])
    n3 = int(pool.count[3])
    assert 0 < n3 < 8
    idx = _draw_from_class(pool, torch.tensor([5, 6]), torch.tensor([3, 0]), 8)
    assert (pool.labels[idx[0]] == 3).all() and (pool.labels[idx[1]] == 0).all()
    assert len(set(idx[0].tolist())) == n3  # every image of the small class, then again
    assert len(set(idx[1].tolist())) == 8   # distinct images from the large one
