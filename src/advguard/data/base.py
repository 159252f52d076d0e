"""The two data types every other part of advguard sees: :class:`ImageDataset` (a whole split held
in memory as tensors) and :class:`DatasetInfo` (static facts about a registered dataset).

Images are always float32 ``(N, C, H, W)`` in ``[0, 1]`` and labels int64 ``(N,)``; models carry
their own normalization (RobustBench convention), so :attr:`DatasetInfo.mean` and
:attr:`DatasetInfo.std` are reference values for building such models, never applied here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from advguard.errors import DatasetFormatError

IndexLike = torch.Tensor | np.ndarray | Sequence[int] | range


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """One split of an image-classification dataset, held in memory as tensors.

    Produced by :func:`advguard.data.load_dataset` (readers of the official formats) and by the
    deterministic subset functions; consumed by :class:`advguard.data.InMemoryLoader`, training
    and evaluation.

    Shapes and ranges:
        * ``images``: float32 ``(N, C, H, W)`` in ``[0, 1]`` (pixel byte ``v`` is stored as
          ``v / 255`` exactly as float32 division rounds it);
        * ``labels``: int64 ``(N,)`` in ``[0, len(classes))``, on the same device as ``images``;
        * ``classes``: class names, index = label;
        * ``name`` / ``split``: registry name (``'cifar10'``) and split (``'train'``,
          ``'test'``...);
        * ``indices``: int64 ``(N,)`` CPU tensor of each example's position in the original split
          (the order of the official files), kept through :meth:`subset` so per-example records
          can name the example; ``None`` means "the whole split, in its original order".

    Construction validates dtypes, shapes, the label range and the pixel range and raises
    :class:`~advguard.errors.DatasetFormatError` on any violation. Instances are immutable
    (tensors are shared, never copied, by :meth:`subset` of a contiguous range and by :meth:`to`
    when the device does not change; do not modify them in place).

    Example::

        ds = load_dataset("fashion-mnist-sample", "test")
        len(ds), ds.image_shape, ds.num_classes        # 1000, (1, 28, 28), 10
        few = ds.subset([3, 1, 4])
        few.indices                                     # tensor([3, 1, 4])
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    split: str
    indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r} split {self.split!r}"
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DatasetFormatError(f"{where}: images and labels must be torch tensors")
        if x.dtype != torch.float32 or x.dim() != 4:
            raise DatasetFormatError(
                f"{where}: images must be float32 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise DatasetFormatError(
                f"{where}: labels must be int64 ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        if y.device != x.device:
            raise DatasetFormatError(
                f"{where}: images on {x.device} but labels on {y.device}")
        if not isinstance(self.classes, tuple):
            object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise DatasetFormatError(f"{where}: classes must be a non-empty tuple of str")
        if x.numel():
            lo, hi = torch.aminmax(x)
            if not (float(lo) >= 0.0 and float(hi) <= 1.0):  # also false for NaN
                raise DatasetFormatError(
                    f"{where}: pixel values must lie in [0, 1], got [{float(lo)}, {float(hi)}]")
        if y.numel():
            ylo, yhi = int(y.min()), int(y.max())
            if ylo < 0 or yhi >= len(self.classes):
                raise DatasetFormatError(
                    f"{where}: labels must lie in [0, {len(self.classes)}), got [{ylo}, {yhi}]")
        if self.indices is not None:
            idx = self.indices
            if (not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64
                    or idx.shape != (x.shape[0],)):
                raise DatasetFormatError(
                    f"{where}: indices must be an int64 ({x.shape[0]},) tensor")
            if idx.device.type != "cpu":
                object.__setattr__(self, "indices", idx.cpu())

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"image_shape={self.image_shape}, num_classes={self.num_classes}, "
                f"device={self.images.device}, subset={self.indices is not None})")

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``), not the number of distinct labels present."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def original_indices(self) -> torch.Tensor:
        """int64 CPU tensor of positions in the original split (``arange(N)`` for a whole split)."""
        if self.indices is None:
            return torch.arange(len(self), dtype=torch.int64)
        return self.indices

    def subset(self, indices: IndexLike) -> ImageDataset:
        """The examples at ``indices`` (positions in *this* dataset, any order, repeats allowed;
        an int sequence, an int64 tensor or a bool mask of length N). The result's
        :attr:`indices` still point into the original split. Out-of-range positions raise
        ``IndexError``."""
        idx = torch.as_tensor(indices) if not isinstance(indices, torch.Tensor) else indices
        idx = idx.detach().cpu()
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise IndexError(
                    f"bool mask must have shape ({len(self)},), got {tuple(idx.shape)}")
            idx = idx.nonzero().flatten()
        if idx.numel() == 0:
            idx = idx.reshape(0).to(torch.int64)
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise IndexError(f"subset indices must be integers or a bool mask, got {idx.dtype}")
        idx = idx.to(torch.int64).flatten()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(
                f"subset indices must lie in [0, {len(self)}), got [{int(idx.min())}, "
                f"{int(idx.max())}]")
        dev_idx = idx.to(self.images.device)
        return dataclasses.replace(
            self,
            images=self.images.index_select(0, dev_idx),
            labels=self.labels.index_select(0, dev_idx),
            indices=self.original_indices.index_select(0, idx),
        )

    def to(self, device: torch.device | str) -> ImageDataset:
        """A copy with images and labels on ``device`` (``self`` if already there); ``indices``
        stay on the CPU."""
        dev = torch.device(device)
        if dev == self.images.device:
            return self
        return dataclasses.replace(self, images=self.images.to(dev), labels=self.labels.to(dev))


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a registered dataset, available without its files
    (:func:`advguard.data.dataset_info`).

    Fields:
        * ``name``: registry name; ``num_classes``; ``image_shape``: ``(C, H, W)``;
        * ``mean`` / ``std``: per-channel normalization constants of the training split (pixel
          values in [0, 1]; standard published values), for models that normalize internally;
        * ``classes``: class names in label order (empty when they are read from the files, as for
          Tiny ImageNet's WordNet ids);
        * ``splits``: the splits :func:`load_dataset` accepts;
        * ``folder``: the dataset's subfolder under the data root (``cifar-10-batches-py``), or,
          for ``bundled`` datasets, under the ``advguard.data`` package;
        * ``how_to_obtain``: one-line instruction; ``license``; ``source``: paper / homepage;
          ``description``; ``bundled``: shipped inside the package (no download).

    Example::

        info = dataset_info("cifar10")
        info.mean, info.std, info.folder   # (0.4914, ...), (0.2470, ...), 'cifar-10-batches-py'
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    folder: str
    how_to_obtain: str
    license: str
    description: str
    source: str = ""
    bundled: bool = False

    def __post_init__(self) -> None:
        c = self.image_shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"{self.name}: mean/std need {c} channel values")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for "
                             f"{self.num_classes} classes")
