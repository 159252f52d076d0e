"""Shared fixtures: tiny models and data so unit tests stay fast and offline."""

from __future__ import annotations

import pytest
import torch

from advguard.data import ImageDataset, load_dataset


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
