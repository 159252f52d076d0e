"""A fast in-memory batch loader: the whole dataset lives on one device and batches are index
operations on it (the airbench approach, Keller Jordan 2024), with no worker processes.

Example::

    g = torch.Generator().manual_seed(0)
    loader = InMemoryLoader(train, batch_size=512, shuffle=True, drop_last=True, generator=g,
                            augment=standard_augmentation("cifar10"), device="cuda")
    for epoch in range(epochs):
        state = g.get_state()        # save with the checkpoint; g.set_state(state) replays epoch
        for x, y in loader:          # x: float32 (B, C, H, W) in [0, 1] on cuda, y: int64 (B,)
            ...
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from advguard.data.augment import (
    Augmentation,
    Compose,
    HorizontalFlip,
    RandomCrop,
    check_cpu_generator,
)
from advguard.data.base import ImageDataset
from advguard.errors import ConfigError

# the augmentations live in advguard.data.augment and are re-exported here, beside their loader
__all__ = ["Augmentation", "Compose", "HorizontalFlip", "InMemoryLoader", "RandomCrop"]


class InMemoryLoader:
    """Iterate over ``dataset`` in ``(x, y)`` batches held on one device.

    The dataset is moved to ``device`` once at construction (default: where it already is).
    Each iteration (epoch) draws, in this order, a permutation (if ``shuffle``) and then one set of
    augmentation draws per batch (if ``augment``), all from ``generator``: a CPU
    ``torch.Generator``; the draws are small CPU tensors moved to ``device``. The global RNG is
    never used, so restoring the generator's state before an epoch (``generator.set_state``)
    reproduces that epoch's batches exactly, on any device. Without a generator, a loader that
    needs randomness makes its own, seeded non-deterministically (available as
    :attr:`generator`); pass one to make runs reproducible.

    Arguments (keyword-only after ``dataset``): ``batch_size`` (> 0); ``shuffle`` (default
    ``False``: dataset order); ``drop_last`` (default ``False``: keep the last, smaller batch);
    ``augment`` (an :class:`~advguard.data.augment.Augmentation` or ``None``); ``device``;
    ``generator``.

    ``len(loader)`` is the number of batches per epoch. Without shuffling or augmentation the
    batches are views of the stored tensors: do not modify them in place.
    """

    def __init__(self, dataset: ImageDataset, *, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, augment: Augmentation | None = None,
                 device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        if augment is not None and not isinstance(augment, Augmentation):
            raise ConfigError(f"augment must be an Augmentation or None, got {augment!r}")
        if generator is None and (shuffle or augment is not None):
            generator = torch.Generator()
            generator.seed()  # non-deterministic seed from the OS, global RNG untouched
        if generator is not None:
            check_cpu_generator(generator)
        self.dataset = dataset if device is None else dataset.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.generator = generator

    @property
    def device(self) -> torch.device:
        return self.dataset.device

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.dataset.images, self.dataset.labels
        bs = self.batch_size
        order: torch.Tensor | None = None
        if self.shuffle:
            assert self.generator is not None
            order = torch.randperm(len(self.dataset), generator=self.generator).to(self.device)
        for b in range(len(self)):
            if order is None:
                x, y = images[b * bs:(b + 1) * bs], labels[b * bs:(b + 1) * bs]
            else:
                idx = order[b * bs:(b + 1) * bs]
                x, y = images.index_select(0, idx), labels.index_select(0, idx)
            if self.augment is not None:
                assert self.generator is not None
                x = self.augment(x, self.generator)
            yield x, y

    def __repr__(self) -> str:
        return (f"InMemoryLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, augment={self.augment!r})")
