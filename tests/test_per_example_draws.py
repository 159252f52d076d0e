"""Per-example randomness: a randomized defense's and an attack's draws for an example depend on
(seed, stage, step, run, example index) alone, so an evaluation's per-example outcomes do not
depend on how its examples are batched (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from advguard.data import ImageDataset
from advguard.defenses import GaussianNoise, Pipeline
from advguard.evaluation import EvalConfig, RecordStore, evaluate
from advguard.rng import example_draws, keyed_normal, keyed_uniform, mix64, rand_rows, randn_rows

EPS = 0.1
N = 24


def _outcomes(tmp_path: Path, name: str, model: nn.Module, data: ImageDataset,
              defense: dict[str, object], steps: list[dict[str, object]], batch: int,
              runs: int = 2) -> tuple[list[tuple[int, int, int | None]], list[tuple[object, ...]]]:
    config = EvalConfig(name=name, dataset="fashion-mnist-sample", n=N, defense=defense,
                        eps=EPS, steps=tuple(steps), runs=runs, batch_size=batch, checks=False,
                        device="cpu")
    store = tmp_path / f"{name}-{batch}.sqlite"
    evaluate(config, store=store, model=model, data=data, progress=False)
    with RecordStore(store) as db:
        (eval_id,) = db.evaluation_ids()
        examples = sorted((e.example, e.clean_correct_runs, e.fooled_by)
                          for e in db.examples(eval_id))
        outcomes = sorted((o.example, o.step, o.run, o.correct, round(o.distance, 6))
                          for o in db.outcomes(eval_id))
    return examples, outcomes


CASES = {
    "smooth": ({"name": "smoothing", "m": 8, "sigma": 0.2, "vote": "prediction"},
               [{"setting": "adaptive", "attack": "pgd", "steps": 3, "alpha": 0.04, "eot": 2}]),
    "gaussian": ({"name": "gaussian_noise", "sigma": 0.2},
                 [{"setting": "adaptive", "attack": "pgd", "steps": 3, "alpha": 0.04,
                   "eot": 4}]),
    "cap": ({"name": "cap", "n_labels": 4, "alpha": 0.05, "mu": 0.1},  # N < K - 1: random labels
            [{"setting": "adaptive", "attack": "pgd", "steps": 2, "alpha": 0.05}]),
    "xie-eot": ({"name": "averaged", "n": 3, "defense": {"name": "xie", "size": [22, 27]}},
                [{"setting": "adaptive", "attack": "pgd", "steps": 2, "alpha": 0.05,
                  "eot": 3}]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_outcomes_do_not_depend_on_the_batch_size(tmp_path: Path, fmnist_model: nn.Module,
                                                   fmnist_sample_test: ImageDataset,
                                                   case: str) -> None:
    from advguard.data import first_n

    data = first_n(fmnist_sample_test, N)
    defense, steps = CASES[case]
    whole = _outcomes(tmp_path, case, fmnist_model, data, defense, steps, batch=N)
    single = _outcomes(tmp_path, case, fmnist_model, data, defense, steps, batch=1)
    halves = _outcomes(tmp_path, case, fmnist_model, data, defense, steps, batch=7)
    assert whole[0] == single[0] == halves[0]
    assert whole[1] == single[1] == halves[1]
    # the runs are independent draws: some example's clean vote or an attack outcome differs
    # between runs somewhere, or the defense draws nothing per run (the test would be vacuous)
    assert any(0 < c < 2 for _, c, _ in whole[0]) or len({o[2] for o in whole[1]}) == 2


def test_draws_change_with_the_seed_and_the_run(tmp_path: Path, fmnist_model: nn.Module,
                                                fmnist_sample_test: ImageDataset) -> None:
    x = fmnist_sample_test.images[:6]
    defense = Pipeline([GaussianNoise(sigma=0.3)], fmnist_model)
    gen = torch.Generator().manual_seed(0)
    with example_draws(x, [10, 11, 12, 13, 14, 15], seed=1, modules=defense):
        a = randn_rows(x, generator=gen, stream="s")
        b = randn_rows(x, generator=gen, stream="s")          # the examples' second draw
        sub = randn_rows(x[[4, 1]], generator=gen, stream="t")
    with example_draws(x[[4, 1]], [14, 11], seed=1, modules=defense):
        a_sub = randn_rows(x[[4, 1]], generator=gen, stream="s")
        sub_alone = randn_rows(x[[4, 1]], generator=gen, stream="t")
    with example_draws(x, [10, 11, 12, 13, 14, 15], seed=2, modules=defense):
        c = randn_rows(x, generator=gen, stream="s")
    assert torch.equal(a[[4, 1]], a_sub)          # a row's draw: its example, not its batch
    assert torch.equal(sub, sub_alone)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    # rows moved inside a small ball are still matched to their example
    with example_draws(x, [10, 11, 12, 13, 14, 15], seed=1, modules=defense):
        moved = randn_rows((x + 0.05 * torch.rand_like(x)).clamp(0, 1), generator=gen,
                           stream="s")
    assert torch.equal(moved, a)
    # stacked copies of a row get independent draws
    with example_draws(x, [10, 11, 12, 13, 14, 15], seed=1, modules=defense):
        twice = rand_rows(x.repeat(2, 1, 1, 1), generator=gen, stream="s")
    assert not torch.equal(twice[:6], twice[6:])


def test_keyed_generator_statistics() -> None:
    keys = mix64(torch.arange(4000, dtype=torch.int64))
    u = keyed_uniform(keys, (64,))
    z = keyed_normal(keys, (64,), dtype=torch.float64)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1.0) < 0.01
    # 4th moment of a normal is 3 (Box-Muller, not a uniform rescaled)
    assert abs(float((z ** 4).mean()) - 3.0) < 0.1
    # rows are uncorrelated with their neighbours
    corr = torch.corrcoef(torch.stack([z[:-1].flatten(), z[1:].flatten()]))[0, 1]
    assert abs(float(corr)) < 0.01
    # a row depends on its key alone
    assert torch.equal(keyed_uniform(keys[7:9], (64,)), u[7:9])


def test_outside_the_harness_draws_come_from_the_generator() -> None:
    x = torch.rand(3, 1, 4, 4)
    a = rand_rows(x, generator=torch.Generator().manual_seed(5))
    b = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="one id per row"), example_draws(x, [1, 2], seed=0):
        pass
