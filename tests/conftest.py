"""Shared fixtures: tiny models and data so unit tests stay fast and offline."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from advguard.data import ImageDataset, load_dataset

ArmLoss = Callable[..., Callable[[], None]]


@pytest.fixture(scope="session")
def fmnist_sample_test() -> ImageDataset:
    """The embedded Fashion-MNIST sample's test split (1,000 images, shipped with the package)."""
    return load_dataset("fashion-mnist-sample", "test")


@pytest.fixture(scope="session")
def fmnist_model() -> torch.nn.Module:
    """LeNet-5 trained for 3 epochs on the embedded sample (about 79% clean accuracy on its
    test split); eval mode, CPU. Tests must not modify it."""
    from advguard.training import TrainConfig, train

    config = TrainConfig(dataset="fashion-mnist-sample", model="lenet5", epochs=3, batch_size=64,
                         lr=0.05, schedule="onecycle", augment="none", device="cpu",
                         test_size=0, seed=0)
    model = train(config, progress=False).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def fmnist_batch(fmnist_sample_test: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 200 test images of the embedded sample and their labels."""
    return fmnist_sample_test.images[:200], fmnist_sample_test.labels[:200]


@pytest.fixture
def arm_recipe_loss(monkeypatch: pytest.MonkeyPatch) -> ArmLoss:
    """``arm(recipe, n, action=None)``: the registered training recipe's ``loss`` calls
    ``action`` (default: raise ``RuntimeError("simulated crash")``; e.g. send SIGINT) at its
    ``n``-th call in this test; returns the function that disarms it (the original ``loss``
    again, before a resumed run)."""
    from advguard.training import RECIPES

    def arm(recipe: str, n: int,
            action: Callable[[], None] | None = None) -> Callable[[], None]:
        cls = RECIPES.get(recipe)
        original = cls.loss
        calls = {"n": 0}

        def armed(self, model, x, y, *, generator):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == n:
                (action or _simulated_crash)()
            return original(self, model, x, y, generator=generator)

        monkeypatch.setattr(cls, "loss", armed)
        return lambda: monkeypatch.setattr(cls, "loss", original)

    return arm


def _simulated_crash() -> None:
    raise RuntimeError("simulated crash")
