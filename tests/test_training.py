"""The training loop: determinism, resume after interruption, recipes, schedules, config."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advguard.errors import ConfigError
from advguard.training import (
    STATE_FILE,
    TrainConfig,
    TrainingInterrupted,
    make_recipe,
    make_schedule,
    train,
)
from advguard.training.recipes.mixup import Mixup, mix_batch, sample_beta

ArmLoss = Callable[..., Callable[[], None]]  # the conftest fixture arm_recipe_loss

TINY = TrainConfig(dataset="fashion-mnist-sample", model="smallcnn", epochs=2, batch_size=32,
                   lr=0.05, train_size=160, test_size=64, schedule="cosine", device="cpu",
                   augment="crop", seed=3)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    before = torch.get_rng_state()
    first = train(TINY, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    second = train(TINY, progress=False)
    assert _same(_weights(first.model), _weights(second.model))
    other = train(TINY.replace(seed=4), progress=False)
    assert not _same(_weights(first.model), _weights(other.model))
    assert len(first.record.history) == 2
    assert 0.0 <= first.record.final["test_acc"] <= 1.0


@pytest.mark.parametrize("recipe", ["standard", "mixup"])
def test_resume_after_crash_mid_epoch_gives_identical_weights(
        tmp_path: Path, arm_recipe_loss: ArmLoss, recipe: str) -> None:
    config = TINY.replace(recipe=recipe, checkpoint_every_steps=2)
    reference = train(config, progress=False)

    disarm = arm_recipe_loss(recipe, 8)  # crash at step 3 of epoch 2 (5 steps per epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, output_dir=tmp_path, progress=False)
    assert (tmp_path / STATE_FILE).exists()
    disarm()
    resumed = train(config, output_dir=tmp_path, progress=False)
    assert resumed.record.resumed_from == {"epoch": 1, "step": 2}
    assert _same(_weights(resumed.model), _weights(reference.model))
    assert resumed.record.history[-1]["train_loss"] == pytest.approx(
        reference.record.history[-1]["train_loss"], rel=1e-6)


def test_ctrl_c_saves_state_and_resumes(tmp_path: Path, arm_recipe_loss: ArmLoss) -> None:
    reference = train(TINY, progress=False)
    disarm = arm_recipe_loss("standard", 3, lambda: os.kill(os.getpid(), signal.SIGINT))
    # a known handler to restore: a job started in the background (nohup, `&`) inherits SIG_IGN
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(TrainingInterrupted, match="resume"):
            train(TINY, output_dir=tmp_path, progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
    disarm()
    resumed = train(TINY, output_dir=tmp_path, progress=False)
    assert resumed.record.resumed_from == {"epoch": 0, "step": 3}
    assert _same(_weights(resumed.model), _weights(reference.model))


def test_output_dir_with_other_config_is_refused(tmp_path: Path) -> None:
    train(TINY.replace(epochs=1), output_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train(TINY.replace(epochs=1, lr=0.01), output_dir=tmp_path, progress=False)
    again = train(TINY.replace(epochs=1, lr=0.01), output_dir=tmp_path, progress=False,
                  overwrite=True, resume=False)
    assert again.checkpoint is not None and again.checkpoint.exists()


def test_checkpoint_written_by_training_loads(tmp_path: Path) -> None:
    from advguard.checkpoint import load_checkpoint

    result = train(TINY.replace(epochs=1), output_dir=tmp_path, progress=False)
    model, meta = load_checkpoint(tmp_path / "model.safetensors")
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x))
    assert meta["recipe"]["name"] == "standard"
    assert meta["train_config"]["seed"] == 3
    assert meta["history"][0]["epoch"] == 1
    assert meta["model"]["mean"] == pytest.approx([0.2860], abs=1e-3)


def test_standard_training_learns_the_sample() -> None:
    config = TINY.replace(epochs=3, train_size=1000, test_size=300, lr=0.05, augment="none",
                          schedule="onecycle")
    result = train(config, progress=False)
    assert result.record.final["test_acc"] > 0.6  # chance is 0.1
    assert result.record.history[-1]["train_loss"] < result.record.history[0]["train_loss"]


# --------------------------------------------------------------------------- schedules
def test_schedules_have_their_documented_shape() -> None:
    step = make_schedule("step", 10, milestones=[5, 8], gamma=0.1)
    assert [step.factor(e) for e in (0, 4.9, 5, 8.5)] == pytest.approx([1, 1, 0.1, 0.01])
    cos = make_schedule("cosine", 10, warmup_epochs=2)
    assert cos.factor(1) == pytest.approx(0.5, rel=1e-6)
    assert cos.factor(2) == pytest.approx(1.0)
    assert cos.factor(6) == pytest.approx(0.5)
    assert cos.factor(10) == pytest.approx(0.0, abs=1e-12)
    one = make_schedule("onecycle", 15, peak=0.4)
    assert one.factor(0) == 0 and one.factor(6) == pytest.approx(1) and one.factor(15) == 0
    assert one.factor(3) == pytest.approx(0.5) and one.factor(10.5) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="bad arguments"):
        make_schedule("cosine", 10, milestones=[1])


# --------------------------------------------------------------------------- mixup
def test_mixup_mixes_inputs_and_weights_the_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_beta(1.0, gen) for _ in range(2000)])
    assert draws.min() >= 0 and draws.max() <= 1
    assert draws.mean() == pytest.approx(0.5, abs=0.03)  # Beta(1,1) = U(0,1)
    assert draws.var() == pytest.approx(1 / 12, abs=0.01)
    x = torch.rand(8, 1, 4, 4)
    y = torch.arange(8)
    mixed, ya, yb = mix_batch(x, y, 0.3, torch.Generator().manual_seed(1))
    perm = yb  # labels are arange, so y[perm] is the permutation itself
    assert torch.allclose(mixed, 0.3 * x + 0.7 * x[perm])
    assert torch.equal(ya, y)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8))
    recipe = Mixup(alpha=0.5)
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    out = recipe.loss(model, x, y, generator=gen_a)
    lam = sample_beta(0.5, gen_b)
    mixed, ya, yb = mix_batch(x, y, lam, gen_b)
    logits = model(mixed)
    expected = lam * F.cross_entropy(logits, ya) + (1 - lam) * F.cross_entropy(logits, yb)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError):
        Mixup(alpha=0)


# --------------------------------------------------------------------------- config
def test_config_validation_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="epochs must be >= 0"):
        TrainConfig(epochs=-1)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="bad arguments for recipe"):
        make_recipe("mixup", beta=1)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  model: lenet5\n  epochs: 4\n  recipe_kwargs: {alpha: 0.2}\n")
    config = TrainConfig.from_file(path, epochs=2)
    assert (config.model, config.epochs, config.recipe_kwargs) == ("lenet5", 2, {"alpha": 0.2})
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_file(tmp_path / "bad.yaml")
    (tmp_path / "weights.yaml").write_bytes(b"\xc0\xff\x00binary")  # e.g. a checkpoint
    with pytest.raises(ConfigError, match="not a YAML file"):
        TrainConfig.from_file(tmp_path / "weights.yaml")


def test_zero_epochs_writes_the_initialized_model(tmp_path: Path) -> None:
    """An untrained model is a baseline too (AdvT's Table 1): epochs 0 saves the init."""
    from advguard.checkpoint import load_checkpoint
    from advguard.models import create_model

    config = TrainConfig(dataset="fashion-mnist-sample", model="lenet5", epochs=0, seed=4,
                         device="cpu", test_size=0)
    result = train(config, output_dir=tmp_path / "init", progress=False)
    saved = load_checkpoint(tmp_path / "init" / "model.safetensors").model
    from advguard.data import dataset_info
    info = dataset_info("fashion-mnist-sample")
    fresh = create_model("lenet5", num_classes=10, in_channels=1, input_size=28, seed=4,
                         mean=info.mean, std=info.std)
    for (k, a), b in zip(saved.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert result.record.history == []
