"""Adapters to maintained attack libraries (pyautoattack 0.2.0, foolbox 3.3.4), table-driven over
every registered adapter (``ATTACKS`` entries whose ``source`` is one of those libraries), so that a
new adapter is picked up by these tests.

The model is a 2-layer MLP on 1×8×8 inputs: four fixed random prototypes in [0.2, 0.8] plus
Gaussian noise (σ = 0.1), trained for 200 steps in a session fixture (clean accuracy ≥ 0.95).
Budgets are tiny (a few steps/queries); "large" ε (L∞ 0.3, L2 3.0) exceeds half the distance
between prototypes, "mid" ε (L∞ 0.12, L2 1.2) leaves part of the points robust.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advguard.attacks import ATTACKS, Attack, AttackResult, make_attack
from advguard.defenses import GaussianNoise, Pipeline
from advguard.errors import ConfigError

SOURCES = {"pyautoattack", "foolbox"}
ADAPTERS = [n for n in ATTACKS.names() if ATTACKS.metadata(n).get("source") in SOURCES]
CASES = [pytest.param(n, norm, id=f"{n}-{norm}")
         for n in ADAPTERS for norm in ATTACKS.metadata(n)["norms"]]
TARGETABLE = [n for n in ADAPTERS if ATTACKS.metadata(n)["targets"] in ("optional", "required")]
NO_TARGET = [n for n in ADAPTERS if ATTACKS.metadata(n)["targets"] in ("own", "untargeted")]
DECISION = [pytest.param(n, norm, id=f"{n}-{norm}") for n in ADAPTERS
            if ATTACKS.metadata(n)["kind"] == "decision" for norm in ATTACKS.metadata(n)["norms"]]

NUM_CLASSES = 4
N = 16
LARGE_EPS = {"linf": 0.3, "l2": 3.0}
MID_EPS = {"linf": 0.12, "l2": 1.2}
# Tiny budgets, applied to whichever of these fields an adapter has; then per-attack overrides.
BUDGET: dict[str, Any] = {"steps": 10, "queries": 300, "binary_search_steps": 3,
                          "initial_gradient_eval_steps": 10, "max_gradient_eval_steps": 40}
OVERRIDES: dict[str, dict[str, Any]] = {
    "cw-l2": {"lr": 0.1, "initial_const": 1.0},
    "boundary": {"steps": 50},
    "genattack": {"steps": 30},
}


def build(name: str, norm: str, eps: float, **kwargs: Any) -> Attack:
    fields = {f.name for f in dataclasses.fields(ATTACKS.get(name))}
    params = {k: v for k, v in {**BUDGET, **OVERRIDES.get(name, {})}.items() if k in fields}
    return make_attack(name, eps=eps, norm=norm, **{**params, **kwargs})


def default_target(name: str) -> str | None:
    return "random" if ATTACKS.metadata(name)["targets"] == "required" else None


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- fixtures
@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Ops on these tiny tensors gain nothing from a second thread, and with two threads on a
    machine whose cores are busy with other jobs every op waits for a descheduled worker thread
    (measured: 1000× slower). Applied after conftest's thread setting, restored after each test."""
    with one_thread():
        yield


@dataclasses.dataclass
class Task:
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    clean_acc: float


def mlp(num_classes: int = NUM_CLASSES) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))


@pytest.fixture(scope="session")
def task() -> Task:
    g = torch.Generator().manual_seed(0)
    protos = 0.2 + 0.6 * torch.rand(NUM_CLASSES, 1, 8, 8, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        return (protos[y] + 0.1 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1), y

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with one_thread():
        for _ in range(200):
            xb, yb = sample(64)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    x, y = sample(N)
    with torch.no_grad():
        clean_acc = float((model(x).argmax(1) == y).float().mean())
    assert clean_acc >= 0.95
    return Task(model, x, y, clean_acc)


@dataclasses.dataclass
class Run:
    result: AttackResult
    eps: float
    norm: str
    torch_state_kept: bool
    numpy_state_kept: bool
    printed: str
    leaked_warnings: list[str]
    grads_touched: bool
    requires_grad_kept: bool
    mode_kept: bool


def run(task: Task, attack: Attack, *, target: Any = None, seed: int = 0) -> Run:
    for p in task.model.parameters():
        p.grad = None
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        warnings.simplefilter("always")
        result = attack(task.model, task.x, task.y, target=target, generator=gen(seed))
    np_after = np.random.get_state()
    return Run(
        result=result, eps=attack.eps, norm=attack.norm,
        torch_state_kept=torch.equal(torch_state, torch.get_rng_state()),
        numpy_state_kept=np_state[0] == np_after[0] and np.array_equal(np_state[1], np_after[1])
        and np_state[2:] == np_after[2:],
        printed=out.getvalue(), leaked_warnings=[str(w.message) for w in caught],
        grads_touched=any(p.grad is not None for p in task.model.parameters()),
        requires_grad_kept=all(p.requires_grad for p in task.model.parameters()),
        mode_kept=not any(m.training for m in task.model.modules()),
    )


@pytest.fixture(scope="module")
def runs(task: Task) -> Any:
    """Lazily computed runs, shared by the tests: ``runs(name, norm, "large" | "mid" | "mid2")``."""
    cache: dict[tuple[str, str, str], Run] = {}

    def get(name: str, norm: str, which: str) -> Run:
        key = (name, norm, which)
        if key not in cache:
            eps = (LARGE_EPS if which == "large" else MID_EPS)[norm]
            cache[key] = run(task, build(name, norm, eps), target=default_target(name))
        return cache[key]

    return get


def robust_accuracy(task: Task, adv: torch.Tensor) -> float:
    with torch.no_grad():
        return float((task.model(adv).argmax(1) == task.y).float().mean())


# --------------------------------------------------------------------------- registry
def test_adapters_are_registered() -> None:
    assert {"autoattack", "apgd", "apgd-t", "fab", "square"} <= set(ADAPTERS)
    assert {"cw-l2", "ddn", "hsj", "boundary", "genattack"} <= set(ADAPTERS)


@pytest.mark.parametrize("name", ADAPTERS)
def test_metadata_and_docstring(name: str) -> None:
    meta = ATTACKS.metadata(name)
    assert meta["kind"] in {"gradient", "score", "decision"}
    assert meta["norms"] and set(meta["norms"]) <= {"linf", "l2"}
    assert meta["targets"] in {"own", "untargeted", "optional", "required"}
    assert meta["paper"]
    doc = ATTACKS.get(name).__doc__ or ""
    version = {"pyautoattack": "pyautoattack 0.2.0", "foolbox": "foolbox 3.3.4"}[meta["source"]]
    assert version in doc and "Example::" in doc and "Paper" in doc


# --------------------------------------------------------------------------- the table
@pytest.mark.parametrize(("name", "norm"), CASES)
def test_result_in_ball_and_bounds(runs: Any, task: Task, name: str, norm: str) -> None:
    r = runs(name, norm, "large")
    adv = r.result.adv
    assert adv.shape == task.x.shape and adv.dtype == task.x.dtype
    assert bool(torch.isfinite(adv).all())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    delta = (adv - task.x).flatten(1)
    dist = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(dist.max()) <= r.eps * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_robust_accuracy_at_most_clean(runs: Any, task: Task, name: str, norm: str) -> None:
    r = runs(name, norm, "mid")
    assert robust_accuracy(task, r.result.adv) <= task.clean_acc
    assert 1 - r.result.success_rate <= task.clean_acc
    assert r.result.queries > 1  # the library queried the model (through the counter)


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_accuracy_drops_at_large_eps(runs: Any, task: Task, name: str, norm: str) -> None:
    r = runs(name, norm, "large")
    assert robust_accuracy(task, r.result.adv) <= 0.25 < task.clean_acc
    if r.result.target is None:
        assert r.result.success_rate >= 0.75


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_fixed_generator_gives_identical_output(runs: Any, name: str, norm: str) -> None:
    first, second = runs(name, norm, "mid"), runs(name, norm, "mid2")
    assert torch.equal(first.result.adv, second.result.adv)
    assert torch.equal(first.result.success, second.result.success)


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_callers_global_rng_untouched(runs: Any, name: str, norm: str) -> None:
    for which in ("mid", "large"):
        r = runs(name, norm, which)
        assert r.torch_state_kept, "torch.get_rng_state() changed"
        assert r.numpy_state_kept, "numpy's global RNG state changed"


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_quiet_and_model_untouched(runs: Any, name: str, norm: str) -> None:
    for which in ("mid", "large"):
        r = runs(name, norm, which)
        assert r.printed == ""
        assert r.leaked_warnings == []
        assert not r.grads_touched, "parameter .grad populated"
        assert r.requires_grad_kept and r.mode_kept


@pytest.mark.parametrize("name", TARGETABLE)
def test_targeted_hits_targets(task: Task, name: str) -> None:
    norm = ATTACKS.metadata(name)["norms"][0]
    r = run(task, build(name, norm, LARGE_EPS[norm]), target="random")
    assert r.result.target is not None and bool((r.result.target != task.y).all())
    with torch.no_grad():
        hit = task.model(r.result.adv).argmax(1) == r.result.target
    assert float(hit.float().mean()) >= 0.75
    assert torch.equal(hit, r.result.success)


@pytest.mark.parametrize("name", NO_TARGET)
def test_target_argument_rejected(task: Task, name: str) -> None:
    attack = build(name, ATTACKS.metadata(name)["norms"][0], 0.1)
    with pytest.raises(ConfigError, match="target"):
        attack(task.model, task.x, task.y, target=(task.y + 1) % NUM_CLASSES, generator=gen())


def test_autoattack_rejects_target(task: Task) -> None:
    with pytest.raises(ConfigError, match="own targets"):
        make_attack("autoattack", eps=0.1)(task.model, task.x, task.y, target="random")


def test_genattack_requires_target(task: Task) -> None:
    with pytest.raises(ConfigError, match="targeted only"):
        make_attack("genattack", eps=0.1, steps=2)(task.model, task.x, task.y, generator=gen())


# --------------------------------------------------------------------------- randomized models
@pytest.mark.parametrize(("name", "norm"), DECISION)
def test_decision_attacks_vote_on_randomized_model(task: Task, name: str, norm: str) -> None:
    # The Gaussian noise flips the decision near the boundary between identical queries;
    # without the vote (and the remembered answers) HopSkipJump fails its own assertions.
    defense = Pipeline([GaussianNoise(sigma=0.1)], task.model, seed=0)
    attack = build(name, norm, LARGE_EPS[norm], vote_samples=7)
    for seed in range(3):
        result = attack(defense, task.x, task.y, generator=gen(seed))
        attack.threat.verify(result.adv, task.x)
        # every query went through a 7-draw vote: clean and final checks (N each) + 7·k
        examples = round(result.queries * N)
        assert examples > 2 * N and (examples - 2 * N) % 7 == 0
        assert not torch.equal(result.adv, task.x)


def test_decision_attack_without_starting_point_returns_clean(
        task: Task, caplog: pytest.LogCaptureFixture) -> None:
    # A constant model has no adversarial inputs: foolbox's init search fails (foolbox itself
    # would raise ValueError for the whole batch); the adapter returns the clean inputs.
    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, NUM_CLASSES)).eval()
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    y = torch.zeros(4, dtype=torch.int64)
    caplog.set_level(logging.INFO, logger="advguard")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # foolbox's warning must not escape
        result = make_attack("hsj", eps=1.0, steps=2)(constant, task.x[:4], y, generator=gen())
    assert torch.equal(result.adv, task.x[:4])
    assert not bool(result.success.any())
    assert "failed to draw sufficient random inputs" in caplog.text


class _NearPrototype(nn.Module):
    """Class 1 within L2 distance 1 of a prototype (0.5 everywhere), class 0 elsewhere: uniform
    noise in [0, 1] (at distance ~2.3 on 8×8) is always class 0, so for inputs of class 0
    foolbox's noise start finds nothing, while images near the prototype are adversarial."""

    def __init__(self, proto: torch.Tensor) -> None:
        super().__init__()
        self.proto = proto

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = (x - self.proto).flatten(1).norm(dim=1)
        logits = torch.full((len(x), NUM_CLASSES), -10.0, device=x.device)
        logits[:, 0] = 0.0
        logits[:, 1] = 1.0 - dist
        return logits


def _near_prototype_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor,
                                    tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    proto = torch.full((1, 8, 8), 0.5)
    model = _NearPrototype(proto).eval()
    x = torch.rand(6, 1, 8, 8, generator=g).round()  # binary images: far from the prototype
    y = torch.zeros(6, dtype=torch.int64)
    near = (proto + 0.05 * torch.randn(10, 1, 8, 8, generator=g)).clamp(0, 1)
    far = torch.rand(10, 1, 8, 8, generator=g).round()
    pool = (torch.cat([near, far]), torch.cat([torch.ones(10), torch.zeros(10)]).long())
    with torch.no_grad():
        assert bool((model(x).argmax(1) == 0).all()) and bool((model(near).argmax(1) == 1).all())
    return model, x, y, pool


@pytest.mark.parametrize(("name", "norm"), DECISION)
def test_decision_attack_starts_from_pool_where_noise_fails(name: str, norm: str) -> None:
    from advguard.data import ImageDataset

    model, x, y, (images, labels) = _near_prototype_case()
    pool = ImageDataset(images, labels, tuple("abcd"), "toy", "train")
    eps = 1.0 if norm == "linf" else 8.0  # every start is inside the ball
    noise = build(name, norm, eps)(model, x, y, generator=gen())
    assert not bool(noise.success.any()) and torch.equal(noise.adv, x)
    data = build(name, norm, eps, start_from=pool, start_candidates=5)(model, x, y,
                                                                      generator=gen())
    assert bool(data.success.all())
    data_attack = build(name, norm, eps, start_from=pool, start_candidates=5)
    data_attack.threat.verify(data.adv, x)
    # clean check + 5 candidates per input, before the attack's own queries
    assert data.queries > 1 + 5


def test_pool_starts_skip_inputs_already_misclassified() -> None:
    from advguard.data import ImageDataset

    model, _, _, (images, labels) = _near_prototype_case()
    pool = ImageDataset(images, labels, tuple("abcd"), "toy", "train")
    wrong = images[:2]                                   # class-1 images labelled 0
    result = make_attack("hsj", eps=0.3, norm="linf", steps=1, start_from=pool,
                         start_candidates=20)(model, wrong, torch.zeros(2, dtype=torch.int64),
                                              generator=gen())
    assert bool(result.success.all()) and torch.equal(result.adv, wrong)
    assert result.queries <= 5  # clean checks (the base's, the start search's, the final one)


def test_data_starts_pick_the_nearest_adversarial_candidate() -> None:
    from advguard.attacks.foolbox_attacks import _data_starts

    model, x, y, (images, labels) = _near_prototype_case()
    # two adversarial (class 1) pool images: the prototype, at L∞ distance 0.5 from every
    # binary input, and the prototype + 0.1 (distance 0.6; L2 0.8 from the prototype, still
    # class 1); 40 draws from the 2 miss one of them with probability 2·2⁻⁴⁰ per input
    a, b = torch.full((1, 8, 8), 0.5), torch.full((1, 8, 8), 0.6)
    pool = (torch.stack([a, b, *images[10:]]), torch.tensor([1, 1, *labels[10:].tolist()]))
    torch.manual_seed(0)
    starts, found = _data_starts(model, x, y, False, pool, 40, "linf")
    assert bool(found.all())
    assert torch.equal(starts, a.expand_as(x))
    # targeted at class 1: the candidates are the pool's class-1 images, all hits
    starts_t, found_t = _data_starts(model, x, torch.ones_like(y), True, pool, 4, "l2")
    assert bool(found_t.all())
    with torch.no_grad():
        assert bool((model(starts_t).argmax(1) == 1).all())
    # a target class without pool images: a clear error
    with pytest.raises(ConfigError, match="no image of class 2"):
        _data_starts(model, x, torch.full_like(y, 2), True, pool, 4, "l2")


def test_start_pool_errors(task: Task) -> None:
    _, _, _, (images, labels) = _near_prototype_case()
    with pytest.raises(ConfigError, match="start_from must be a pool spec"):
        make_attack("hsj", eps=0.1, start_from=3)
    with pytest.raises(ConfigError, match="never 'test'"):
        make_attack("hsj", eps=0.1, start_from={"dataset": "fashion-mnist", "split": "test"})
    with pytest.raises(ConfigError, match="start_candidates must be >= 1"):
        make_attack("hsj", eps=0.1, start_candidates=0)
    from advguard.data import ImageDataset

    wrong = ImageDataset(images[:, :, :4, :4].contiguous(), labels, tuple("abcd"), "toy", "train")
    attack = make_attack("hsj", eps=0.1, steps=1, start_from=wrong)
    with pytest.raises(ConfigError, match="must come from the inputs' dataset"):
        attack(task.model, task.x, task.y, generator=gen())
    one_class = ImageDataset(images[10:], labels[10:], tuple("abcd"), "toy", "train")
    with pytest.raises(ConfigError, match="no image of a class other than 0"):
        make_attack("hsj", eps=0.1, steps=1, start_from=one_class)(
            task.model, task.x[task.y == 0][:2], task.y[task.y == 0][:2], generator=gen())


def test_autoattack_checks_are_logged_not_printed(
        task: Task, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    defense = Pipeline([GaussianNoise(sigma=0.1)], task.model, seed=0)
    caplog.set_level(logging.INFO, logger="advguard")
    result = make_attack("autoattack", eps=0.3)(defense, task.x[:8], task.y[:8], generator=gen())
    assert result.success_rate >= 0.75
    assert "randomized defense" in caplog.text  # AutoAttack's check, relayed at INFO
    assert all(r.levelno <= logging.INFO for r in caplog.records)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_autoattack_dynamic_flag_is_per_run(
        task: Task, caplog: pytest.LogCaptureFixture) -> None:
    # pyautoattack counts gradient calls inside forward in a module-level dict it never resets.
    class Dynamic(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            probe = x.detach().requires_grad_(True)
            with torch.enable_grad():
                torch.autograd.grad(probe.sum(), probe)
            return task.model(x)

    caplog.set_level(logging.INFO, logger="advguard")
    x, y = task.x[:4], task.y[:4]
    make_attack("autoattack", eps=0.3)(Dynamic(), x, y, generator=gen())
    assert "dynamic defense" in caplog.text
    caplog.clear()
    make_attack("autoattack", eps=0.3)(task.model, x, y, generator=gen())
    assert "dynamic defense" not in caplog.text


def test_autoattack_rand_uses_eot_iter(task: Task) -> None:
    defense = Pipeline([GaussianNoise(sigma=0.05)], task.model, seed=0)
    x, y = task.x[:4], task.y[:4]
    queries = [make_attack("autoattack", eps=0.005, version="rand", eot_iter=k)(
        defense, x, y, generator=gen()).queries for k in (1, 3)]
    assert queries[1] > 2 * queries[0]


def test_autoattack_restores_trace_function(task: Task) -> None:
    # AutoAttack's dynamic-defense check ends with sys.settrace(None), which would switch off a
    # caller's coverage tool or debugger.
    def tracer(frame: Any, event: str, arg: Any) -> None:
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        make_attack("autoattack", eps=0.3)(task.model, task.x[:4], task.y[:4], generator=gen())
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)


# --------------------------------------------------------------------------- errors, imports
@pytest.mark.parametrize("name", ADAPTERS)
def test_missing_library_raises_config_error(
        task: Task, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in list(sys.modules):
        if module.split(".")[0] in SOURCES | {"eagerpy"}:
            monkeypatch.setitem(sys.modules, module, None)
    for module in ("pyautoattack", "foolbox"):
        monkeypatch.setitem(sys.modules, module, None)
    attack = build(name, ATTACKS.metadata(name)["norms"][0], 0.1)
    with pytest.raises(ConfigError, match=r"pip install 'advguard\[eval\]'") as info:
        attack(task.model, task.x[:2], task.y[:2], target=default_target(name), generator=gen())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ADAPTERS)
def test_library_errors_propagate(task: Task, name: str) -> None:
    class Breaks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.calls = task.model, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 2:
                raise RuntimeError("model broke")
            return self.model(x)

    attack = build(name, ATTACKS.metadata(name)["norms"][0], 0.1)
    with pytest.raises(RuntimeError, match="model broke"):
        attack(Breaks(), task.x[:4], task.y[:4], target=default_target(name), generator=gen())


def test_importing_advguard_does_not_import_the_libraries() -> None:
    code = ("import sys, advguard, advguard.attacks; "
            "print(sorted({'pyautoattack', 'foolbox', 'eagerpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("name", "kwargs"), [
    ("autoattack", {"version": "fast"}),
    ("autoattack", {"batch_size": 0}),
    ("apgd", {"loss": "cw"}),
    ("apgd", {"rho": 1.5}),
    ("square", {"p_init": 0.0}),
    ("cw-l2", {"norm": "linf"}),
    ("boundary", {"norm": "linf"}),
    ("genattack", {"norm": "l2"}),
    ("hsj", {"vote_samples": 0}),
])
def test_bad_config_raises(name: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make_attack(name, eps=0.1, **kwargs)


@pytest.mark.parametrize("name", ["autoattack", "apgd-t"])
def test_too_few_classes_for_targeted_dlr(name: str) -> None:
    model = mlp(num_classes=3).eval()
    x = torch.rand(2, 1, 8, 8, generator=gen())
    y = torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="at least 4 classes"):
        make_attack(name, eps=0.1)(model, x, y, generator=gen())
