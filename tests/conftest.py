"""Shared fixtures: tiny models and data so unit tests stay fast and offline."""

from __future__ import annotations

import pytest
import torch

from advguard.data import ImageDataset, load_dataset


@pytest.fixture(scope="session")
def fmnist_sample_test() -> ImageDataset:
    """The embedded Fashion-MNIST sample's test split (1,000 images, shipped with the package)."""
    return load_dataset("fashion-mnist-sample", "test")


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(2)
