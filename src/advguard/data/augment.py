"""Batch-wise training augmentations for :class:`~advguard.data.InMemoryLoader`.

Each augmentation is a small frozen dataclass whose one hook is ``apply(x, generator)``; the base
class's ``__call__(x, generator)`` checks the batch. All random draws are small CPU tensors made
with the caller's CPU ``torch.Generator`` (never the global RNG) and then moved to ``x.device``,
so the same generator state gives the same augmented batch on any device. No per-image Python
loops: crops use one batched gather, flips one ``torch.where``.

Example::

    g = torch.Generator().manual_seed(0)
    aug = Compose([RandomCrop(padding=4), HorizontalFlip(p=0.5)])   # the standard CIFAR recipe
    x_aug = aug(x, g)                                               # x: (N, C, H, W)
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from advguard.errors import ConfigError

__all__ = ["Augmentation", "Compose", "HorizontalFlip", "RandomCrop", "check_cpu_generator"]


def check_cpu_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ConfigError("augmentations and shuffling draw from a CPU torch.Generator "
                          f"(got {generator!r}); create it with torch.Generator()")


class Augmentation(abc.ABC):
    """Base class: ``aug(x, generator) -> x'`` for a batch ``x`` of shape ``(N, C, H, W)``;
    returns a tensor of the same shape, dtype and device (``x`` is never modified in place)."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(f"augmentations take (N, C, H, W) batches, got {tuple(x.shape)}")
        check_cpu_generator(generator)
        return self.apply(x, generator)

    @abc.abstractmethod
    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The augmentation proper; ``x`` is a checked batch."""


@dataclass(frozen=True, kw_only=True)
class RandomCrop(Augmentation):
    """Zero-pad each image by ``padding`` pixels on every side and take an ``H×W`` window at a
    random offset ``(dy, dx) ∈ {0..2·padding}²`` drawn independently per image (the standard
    CIFAR augmentation of He et al. 2016, "Deep Residual Learning"). Default ``padding=4``.
    ``padding=0`` is the identity."""

    padding: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ConfigError(f"RandomCrop padding must be an int >= 0, got {self.padding!r}")

    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = self.padding
        n, c, h, w = x.shape
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator).to(x.device)
        if p == 0 or n == 0:
            return x.clone()
        padded = F.pad(x, (p, p, p, p))
        rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (N, H)
        cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (N, W)
        # gather rows, then columns: (N, C, H+2p, W+2p) → (N, C, H, W+2p) → (N, C, H, W)
        out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))
        return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


@dataclass(frozen=True, kw_only=True)
class HorizontalFlip(Augmentation):
    """Mirror each image left-right with probability ``p`` (default 0.5), independently per
    image."""

    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"HorizontalFlip p must lie in [0, 1], got {self.p!r}")

    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = (torch.rand(x.shape[0], generator=generator) < self.p).to(x.device)
        return torch.where(flip[:, None, None, None], x.flip(3), x)


@dataclass(frozen=True)
class Compose(Augmentation):
    """Apply ``augmentations`` in order, each drawing from the same generator.

    Example: ``Compose([RandomCrop(padding=4), HorizontalFlip()])``."""

    augmentations: tuple[Augmentation, ...] = field(default_factory=tuple)

    def __init__(self, augmentations: Sequence[Augmentation]) -> None:
        augs = tuple(augmentations)
        if not all(isinstance(a, Augmentation) for a in augs):
            raise ConfigError("Compose takes a sequence of Augmentation objects")
        object.__setattr__(self, "augmentations", augs)

    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for aug in self.augmentations:
            x = aug(x, generator)
        return x
