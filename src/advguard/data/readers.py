"""Readers: one small class per on-disk layout, turning a dataset directory and a split name into
an :class:`~advguard.data.ImageDataset`.

The base class :class:`DatasetReader` owns the protocol in ``__call__`` (split validation,
directory checks, the final conversion of uint8 pixels to float32 ``[0, 1]``); a subclass
implements one hook, :meth:`DatasetReader.read_arrays`. Readers are immutable after construction
and are registered in :data:`advguard.data.DATASETS` with their :class:`~advguard.data.DatasetInfo`.

A reader reads from the exact directory it is given (the folder holding the files, e.g.
``.../cifar-10-batches-py``); finding that directory under a data root is the job of
:func:`advguard.data.find_dataset_dir`.

Example::

    reader = DATASETS.get("cifar10")
    ds = reader(Path("/data/cifar-10-batches-py"), "test")   # ImageDataset, 10000 images
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from advguard.data.base import DatasetInfo, ImageDataset
from advguard.data.formats import (
    read_cifar_batch,
    read_cifar_meta,
    read_idx,
    read_rgb_image,
    read_svhn_mat,
)
from advguard.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

__all__ = [
    "CifarReader",
    "DatasetReader",
    "IdxReader",
    "SvhnReader",
    "TinyImageNetReader",
    "uint8_to_float",
]


def uint8_to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` array → float32 tensor ``images / 255`` (one multi-threaded pass)."""
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {images.dtype}")
    if not images.flags.writeable:
        images = images.copy()
    return torch.from_numpy(images).to(torch.float32).div_(255.0)


class DatasetReader(abc.ABC):
    """Base class of dataset readers: ``reader(directory, split) -> ImageDataset``.

    ``info`` holds the dataset's static facts; ``markers`` are file names of which at least one is
    present in a directory holding this dataset (used by :meth:`found_in`); ``unsupported`` maps
    split names that exist officially but cannot be loaded to the reason (Tiny ImageNet's
    unlabelled ``test``). Subclasses implement :meth:`read_arrays`.
    """

    def __init__(self, info: DatasetInfo, *, markers: Sequence[str],
                 unsupported: Mapping[str, str] | None = None) -> None:
        self.info = info
        self.markers = tuple(markers)
        self.unsupported = dict(unsupported or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r})"

    def found_in(self, directory: Path) -> bool:
        """Whether ``directory`` looks like this dataset's folder (holds one of ``markers``)."""
        return directory.is_dir() and any((directory / m).is_file() for m in self.markers)

    def __call__(self, directory: Path, split: str) -> ImageDataset:
        """Read ``split`` from ``directory``. Unknown or unsupported splits raise
        :class:`~advguard.errors.ConfigError`, missing files
        :class:`~advguard.errors.DatasetNotFoundError`, malformed files
        :class:`~advguard.errors.DatasetFormatError`."""
        info = self.info
        self.check_split(split)
        directory = Path(directory)
        if not directory.is_dir():
            raise DatasetNotFoundError(f"{info.name}: {directory} is not a directory; "
                                       f"to obtain it: {info.how_to_obtain}")
        images, labels, classes = self.read_arrays(directory, split)
        expected = info.image_shape
        if images.shape[1:] != expected:
            raise DatasetFormatError(f"{info.name} {split} in {directory}: images have shape "
                                     f"{images.shape[1:]}, expected {expected}")
        return ImageDataset(uint8_to_float(images), torch.from_numpy(labels), classes,
                            info.name, split)

    def check_split(self, split: str) -> None:
        """Raise :class:`~advguard.errors.ConfigError` unless ``split`` can be read."""
        info = self.info
        if split in self.unsupported:
            raise ConfigError(f"{info.name}: split {split!r} is not supported: "
                              f"{self.unsupported[split]}")
        if split not in info.splits:
            raise ConfigError(
                f"{info.name} has no split {split!r} (available: {', '.join(info.splits)}); "
                "for validation data use advguard.data.train_val_split on the train split")

    @abc.abstractmethod
    def read_arrays(self, directory: Path,
                    split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Return uint8 ``(N, C, H, W)`` images, int64 ``(N,)`` labels and the class names."""

    def require(self, directory: Path, split: str, *names: str) -> Path:
        """The first of ``names`` that exists in ``directory``; else DatasetNotFoundError."""
        for name in names:
            if (directory / name).is_file():
                return directory / name
        raise DatasetNotFoundError(
            f"{self.info.name}: split {split!r} needs {directory / names[0]}, which is missing "
            f"(also tried: {', '.join(names[1:]) or 'nothing else'}); to obtain it: "
            f"{self.info.how_to_obtain}")


class CifarReader(DatasetReader):
    """CIFAR-10 / CIFAR-100 python version (Krizhevsky 2009): pickled dicts with ``data`` uint8
    ``(N, 3072)`` and a label list; class names from the meta file.

    ``split_files`` maps a split to its pickle files in order (CIFAR-10 train =
    ``data_batch_1..5``); ``meta_file``/``names_key``/``label_key`` pick CIFAR-10's
    ``batches.meta``/``label_names``/``labels`` or CIFAR-100's ``meta``/``fine_label_names``/
    ``fine_labels`` (or the ``coarse_`` pair for the 20 super-classes). Official md5 sums are not
    checked; see :mod:`advguard.data.formats` for the restricted unpickler.
    """

    def __init__(self, info: DatasetInfo, *, split_files: Mapping[str, Sequence[str]],
                 meta_file: str, names_key: str, label_key: str) -> None:
        super().__init__(info, markers=[meta_file])
        self.split_files = {k: tuple(v) for k, v in split_files.items()}
        self.meta_file, self.names_key, self.label_key = meta_file, names_key, label_key

    def read_arrays(self, directory: Path,
                    split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        k = self.info.num_classes
        classes = read_cifar_meta(self.require(directory, split, self.meta_file),
                                  self.names_key, k)
        parts = [read_cifar_batch(self.require(directory, split, f), self.label_key, k)
                 for f in self.split_files[split]]
        data = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
        # each row is 1024 R, 1024 G, 1024 B values in row-major order: a plain reshape is NCHW
        return data.reshape(-1, 3, 32, 32), labels, classes


def _idx_names(stem: str) -> tuple[str, ...]:
    """Accepted file names for an IDX stem: official (``-idx3-ubyte``), the dotted variant some
    unpackers produce (``.idx3-ubyte``), each gzipped or not."""
    dotted = stem.replace("-idx", ".idx")
    return (f"{stem}.gz", stem, f"{dotted}.gz", dotted)


class IdxReader(DatasetReader):
    """MNIST-style IDX files (LeCun et al. 1998; Fashion-MNIST uses the same format):
    ``train-images-idx3-ubyte[.gz]`` + ``train-labels-idx1-ubyte[.gz]`` and ``t10k-...`` for
    test. Images uint8 ``(N, 28, 28)`` become ``(N, 1, 28, 28)``."""

    SPLIT_STEMS: Mapping[str, str] = {"train": "train", "test": "t10k"}

    def __init__(self, info: DatasetInfo) -> None:
        markers = [n for s in self.SPLIT_STEMS.values()
                   for n in _idx_names(f"{s}-images-idx3-ubyte")]
        super().__init__(info, markers=markers)

    def read_arrays(self, directory: Path,
                    split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        stem = self.SPLIT_STEMS[split]
        img_path = self.require(directory, split, *_idx_names(f"{stem}-images-idx3-ubyte"))
        lab_path = self.require(directory, split, *_idx_names(f"{stem}-labels-idx1-ubyte"))
        images = read_idx(img_path, ndim=3)
        labels = read_idx(lab_path, ndim=1).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise DatasetFormatError(f"{lab_path}: {labels.shape[0]} labels for "
                                     f"{images.shape[0]} images in {img_path.name}")
        k = self.info.num_classes
        if labels.size and int(labels.max()) >= k:
            raise DatasetFormatError(
                f"{lab_path}: labels must lie in [0, {k}), got maximum {int(labels.max())}")
        return images[:, None], labels, self.info.classes


class SvhnReader(DatasetReader):
    """SVHN cropped digits (Netzer et al. 2011): ``train_32x32.mat``, ``test_32x32.mat`` and
    ``extra_32x32.mat`` (split ``'extra'``, 531,131 easier images), MATLAB v5 files read with
    scipy. Label 10 (digit 0) becomes 0."""

    FILES: Mapping[str, str] = {"train": "train_32x32.mat", "test": "test_32x32.mat",
                                "extra": "extra_32x32.mat"}

    def __init__(self, info: DatasetInfo) -> None:
        super().__init__(info, markers=list(self.FILES.values()))

    def read_arrays(self, directory: Path,
                    split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        images, labels = read_svhn_mat(self.require(directory, split, self.FILES[split]))
        return images, labels, self.info.classes


def _natural_key(name: str) -> tuple[str | int, ...]:
    """``val_2`` < ``val_10``: digits compare as numbers."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


class TinyImageNetReader(DatasetReader):
    """Tiny ImageNet (Le & Yang 2015), official ``tiny-imagenet-200`` folder: ``wnids.txt``,
    ``words.txt``, ``train/<wnid>/images/*.JPEG`` (500 per class) and ``val/images/*.JPEG`` with
    labels in ``val/val_annotations.txt``. The ``test`` split has no public labels and is not
    supported (use ``val`` as the test set, as the literature does).

    Label ``i`` is the ``i``-th WordNet id in *sorted* order (the convention of
    ``torchvision.datasets.ImageFolder`` on ``train/``, hence of most released checkpoints).
    ``classes`` are the WordNet ids, or with ``class_names='words'`` the first name that
    ``words.txt`` gives each id. Images (some greyscale) are decoded with Pillow to RGB 64×64 in
    ``num_workers`` threads (default: up to 8); train order is sorted by class, then by file
    name in natural order (``n01443537_2`` before ``n01443537_10``); val order is natural file
    order (``val_0``, ``val_1``, ...). Decoding the 100,000 training JPEGs takes a while.
    """

    def __init__(self, info: DatasetInfo, *, class_names: Literal["wnid", "words"] = "wnid",
                 num_workers: int | None = None) -> None:
        super().__init__(info, markers=["wnids.txt"], unsupported={
            "test": "Tiny ImageNet's test images have no public labels; evaluate on 'val'"})
        if class_names not in ("wnid", "words"):
            raise ConfigError(f"class_names must be 'wnid' or 'words', got {class_names!r}")
        self.class_names = class_names
        self.num_workers = num_workers

    def _wnids(self, directory: Path, split: str) -> list[str]:
        path = self.require(directory, split, "wnids.txt")
        wnids = sorted({w.strip() for w in path.read_text().splitlines() if w.strip()})
        if len(wnids) != self.info.num_classes:
            raise DatasetFormatError(f"{path}: expected {self.info.num_classes} WordNet ids, "
                                     f"got {len(wnids)}")
        return wnids

    def _class_names(self, directory: Path, split: str, wnids: list[str]) -> tuple[str, ...]:
        if self.class_names == "wnid":
            return tuple(wnids)
        path = self.require(directory, split, "words.txt")
        words: dict[str, str] = {}
        for line in path.read_text().splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
        return tuple(words.get(w) or w for w in wnids)

    def read_arrays(self, directory: Path,
                    split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        wnids = self._wnids(directory, split)
        label_of = {w: i for i, w in enumerate(wnids)}
        files: list[Path] = []
        labels: list[int] = []
        if split == "train":
            for wnid in wnids:
                folder = directory / "train" / wnid / "images"
                if not folder.is_dir():
                    raise DatasetNotFoundError(f"{self.info.name}: {folder} is missing; to "
                                               f"obtain it: {self.info.how_to_obtain}")
                names = sorted((p.name for p in folder.iterdir()
                                if p.suffix.lower() in (".jpeg", ".jpg")), key=_natural_key)
                files += [folder / n for n in names]
                labels += [label_of[wnid]] * len(names)
        else:  # val
            ann = self.require(directory, split, "val/val_annotations.txt")
            annotated: dict[str, int] = {}
            for lineno, line in enumerate(ann.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 2 or fields[1].strip() not in label_of:
                    raise DatasetFormatError(f"{ann}: line {lineno} is not '<file>\\t<wnid>...' "
                                             f"with a wnid from wnids.txt: {line!r}")
                annotated[fields[0].strip()] = label_of[fields[1].strip()]
            for name in sorted(annotated, key=_natural_key):
                files.append(directory / "val" / "images" / name)
                labels.append(annotated[name])
        c, h, w = self.info.image_shape
        images = np.empty((len(files), h, w, c), dtype=np.uint8)

        def decode(i: int) -> None:
            try:
                images[i] = read_rgb_image(files[i], (w, h))
            except FileNotFoundError:
                raise DatasetNotFoundError(f"{self.info.name}: {files[i]} is missing") from None

        workers = self.num_workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(decode, range(len(files))))
        images_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        return images_nchw, np.asarray(labels, dtype=np.int64), \
            self._class_names(directory, split, wnids)
