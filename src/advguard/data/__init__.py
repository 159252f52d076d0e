"""Datasets for advguard: a registry of readers of the official on-disk formats, an embedded
Fashion-MNIST sample, deterministic subsets and a fast in-memory loader.

Everything is held in memory as float32 ``(N, C, H, W)`` images in ``[0, 1]`` and int64 labels
(:class:`ImageDataset`); models carry their own normalization. Data are never downloaded: the
data root is ``root=``, else ``$ADVGUARD_DATA``, else ``~/.cache/advguard/data``
(see :mod:`advguard.data.datasets`).

Example::

    from advguard.data import load_dataset, train_val_split, InMemoryLoader
    train, val = train_val_split(load_dataset("fashion-mnist-sample"), 500, seed=0)
    for x, y in InMemoryLoader(val, batch_size=256):
        ...
"""

from __future__ import annotations

from advguard.data.augment import Augmentation, Compose, HorizontalFlip, RandomCrop
from advguard.data.base import DatasetInfo, ImageDataset
from advguard.data.datasets import (
    DATASETS,
    DEFAULT_ROOT,
    ENV_VAR,
    dataset_info,
    find_dataset_dir,
    list_datasets,
    load_dataset,
    resolve_root,
    standard_augmentation,
)
from advguard.data.loader import InMemoryLoader
from advguard.data.readers import (
    CifarReader,
    DatasetReader,
    IdxReader,
    SvhnReader,
    TinyImageNetReader,
)
from advguard.data.subsets import balanced_subset, first_n, train_val_split

__all__ = [
    "DATASETS",
    "DEFAULT_ROOT",
    "ENV_VAR",
    "Augmentation",
    "CifarReader",
    "Compose",
    "DatasetInfo",
    "DatasetReader",
    "HorizontalFlip",
    "IdxReader",
    "ImageDataset",
    "InMemoryLoader",
    "RandomCrop",
    "SvhnReader",
    "TinyImageNetReader",
    "balanced_subset",
    "dataset_info",
    "find_dataset_dir",
    "first_n",
    "list_datasets",
    "load_dataset",
    "resolve_root",
    "standard_augmentation",
    "train_val_split",
]
