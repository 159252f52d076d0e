"""The dataset registry, :data:`DATASETS`, and the functions that find and load datasets.

Entries (value: a :class:`~advguard.data.readers.DatasetReader`; metadata: ``info`` (its
:class:`~advguard.data.DatasetInfo`), ``fallback_dirs`` and ``augmentation`` (see
:func:`advguard.data.standard_augmentation`)):

==========================  =========  ===========  =====================================
name                        classes    image        official files read
==========================  =========  ===========  =====================================
``cifar10``                 10         3×32×32      ``cifar-10-batches-py/`` pickles
``cifar100``                100 fine   3×32×32      ``cifar-100-python/`` pickles
``cifar100-coarse``         20 coarse  3×32×32      same files, coarse (super-class) labels
``mnist``                   10         1×28×28      IDX files in ``mnist/``
``fashion-mnist``           10         1×28×28      IDX files in ``fashion-mnist/``
``fashion-mnist-sample``    10         1×28×28      IDX files bundled in the package
``svhn``                    10         3×32×32      ``svhn/*_32x32.mat``
``tiny-imagenet``           200        3×64×64      ``tiny-imagenet-200/`` JPEG folders
==========================  =========  ===========  =====================================

Where data lives: the *data root* is the ``root`` argument if given, else the ``ADVGUARD_DATA``
environment variable, else ``~/.cache/advguard/data`` (:func:`resolve_root`). A dataset is read
from ``<root>/<folder>`` or, if that does not hold it, from ``<root>`` itself (so ``root`` may
point at the dataset folder directly); Fashion-MNIST also falls back to
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``). Nothing is
downloaded and nothing is cached between calls.

Example::

    ds = load_dataset("cifar10", "test", root="/data")   # /data/cifar-10-batches-py/test_batch
    list_datasets("cifar*")                              # ['cifar10', 'cifar100', ...]
    dataset_info("svhn").mean                            # (0.4377, 0.4438, 0.4728)
"""

from __future__ import annotations

import os
from pathlib import Path

from advguard.data.augment import Augmentation, Compose, HorizontalFlip, RandomCrop
from advguard.data.base import DatasetInfo, ImageDataset
from advguard.data.readers import (
    CifarReader,
    DatasetReader,
    IdxReader,
    SvhnReader,
    TinyImageNetReader,
)
from advguard.errors import DatasetNotFoundError
from advguard.registry import Registry

__all__ = [
    "DATASETS",
    "DEFAULT_ROOT",
    "ENV_VAR",
    "dataset_info",
    "find_dataset_dir",
    "list_datasets",
    "load_dataset",
    "resolve_root",
    "standard_augmentation",
]

ENV_VAR = "ADVGUARD_DATA"
"""Environment variable naming the data root."""

DEFAULT_ROOT = "~/.cache/advguard/data"
"""Data root used when neither ``root=`` nor ``$ADVGUARD_DATA`` is given (``~`` expanded)."""

PACKAGE_DIR = Path(__file__).resolve().parent
"""Folder of this package; bundled datasets live in its subfolders."""

DATASETS: Registry[DatasetReader] = Registry("dataset")
"""Dataset name → reader; metadata ``info``, ``fallback_dirs``, ``augmentation``."""

_DIGITS = tuple(str(d) for d in range(10))
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
            "Bag", "Ankle boot")
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
            "truck")
_CIFAR_LICENSE = "no explicit license; cite Krizhevsky (2009) when using the dataset"
_CIFAR_SOURCE = ("A. Krizhevsky, 'Learning Multiple Layers of Features from Tiny Images', tech. "
                 "report, 2009; https://www.cs.toronto.edu/~kriz/cifar.html")
_FMNIST_SOURCE = ("H. Xiao, K. Rasul, R. Vollgraf, 'Fashion-MNIST: a Novel Image Dataset for "
                  "Benchmarking Machine Learning Algorithms', arXiv:1708.07747, 2017; "
                  "https://github.com/zalandoresearch/fashion-mnist")
_FMNIST_MEAN, _FMNIST_STD = (0.2860,), (0.3530,)
# Crop + flip for natural 32×32 / 64×64 images; crop only for digits and clothing, whose
# left-right orientation is a property of the data (mirrored digits are not digits, and
# Fashion-MNIST shoes all face the same way); nothing for MNIST, conventionally trained without
# augmentation (Madry et al. 2018). 28×28 images use 2 pixels of padding.
_CROP_FLIP = Compose([RandomCrop(padding=4), HorizontalFlip(p=0.5)])


def _add(reader: DatasetReader, *, augmentation: Augmentation | None,
         fallback_dirs: tuple[Path, ...] = ()) -> None:
    DATASETS.add(reader.info.name, reader, info=reader.info, fallback_dirs=fallback_dirs,
                 augmentation=augmentation)


_add(CifarReader(
    DatasetInfo(
        name="cifar10", num_classes=10, image_shape=(3, 32, 32),
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), classes=_CIFAR10,
        splits=("train", "test"), folder="cifar-10-batches-py",
        how_to_obtain="run `python3 ../shared/data/cifar10/unpack.py DEST` (writes "
                      "DEST/cifar-10-batches-py) or extract the official "
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into DEST; "
                      "then use root=DEST",
        license=_CIFAR_LICENSE, source=_CIFAR_SOURCE,
        description="60,000 32×32 colour images in 10 classes (50,000 train, 10,000 test)"),
    split_files={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    meta_file="batches.meta", names_key="label_names", label_key="labels"),
    augmentation=_CROP_FLIP)

_CIFAR100_HOW = ("extract the official https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
                 "into DEST (gives DEST/cifar-100-python); then use root=DEST")
for _name, _k, _kind in (("cifar100", 100, "fine"), ("cifar100-coarse", 20, "coarse")):
    _add(CifarReader(
        DatasetInfo(
            name=_name, num_classes=_k, image_shape=(3, 32, 32),
            mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), classes=(),
            splits=("train", "test"), folder="cifar-100-python", how_to_obtain=_CIFAR100_HOW,
            license=_CIFAR_LICENSE, source=_CIFAR_SOURCE,
            description=f"60,000 32×32 colour images (50,000 train, 10,000 test) with {_k} "
                        f"{_kind} labels; class names read from the 'meta' file"),
        split_files={"train": ["train"], "test": ["test"]},
        meta_file="meta", names_key=f"{_kind}_label_names", label_key=f"{_kind}_labels"),
        augmentation=_CROP_FLIP)

_add(IdxReader(DatasetInfo(
    name="mnist", num_classes=10, image_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
    classes=_DIGITS, splits=("train", "test"), folder="mnist",
    how_to_obtain="put the four official files train-images-idx3-ubyte.gz, "
                  "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                  "t10k-labels-idx1-ubyte.gz (http://yann.lecun.com/exdb/mnist/ or a mirror) "
                  "into DEST/mnist; then use root=DEST",
    license="CC BY-SA 3.0 (Y. LeCun and C. Cortes)",
    source="Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, 'Gradient-based learning applied to "
           "document recognition', Proc. IEEE, 1998",
    description="70,000 28×28 greyscale handwritten digits (60,000 train, 10,000 test)")),
    augmentation=None)

_add(IdxReader(DatasetInfo(
    name="fashion-mnist", num_classes=10, image_shape=(1, 28, 28), mean=_FMNIST_MEAN,
    std=_FMNIST_STD, classes=_FASHION, splits=("train", "test"), folder="fashion-mnist",
    how_to_obtain="`apt-get install -y dataset-fashion-mnist` (installs "
                  "/usr/share/datasets/fashion-mnist), or put the four official .gz IDX files "
                  "from https://github.com/zalandoresearch/fashion-mnist into DEST/fashion-mnist "
                  "and use root=DEST",
    license="MIT (Copyright (c) 2017 Zalando SE)", source=_FMNIST_SOURCE,
    description="70,000 28×28 greyscale images of 10 clothing classes (60,000 train, 10,000 "
                "test); a drop-in replacement for MNIST")),
    augmentation=RandomCrop(padding=2),
    fallback_dirs=(Path("/usr/share/datasets/fashion-mnist"),))

_add(IdxReader(DatasetInfo(
    name="fashion-mnist-sample", num_classes=10, image_shape=(1, 28, 28), mean=_FMNIST_MEAN,
    std=_FMNIST_STD, classes=_FASHION, splits=("train", "test"), folder="sample",
    how_to_obtain="bundled with advguard (advguard/data/sample); regenerate it with "
                  "`python3 scripts/make_fmnist_sample.py`",
    license="MIT (Copyright (c) 2017 Zalando SE); see sample/LICENSE-fashion-mnist.txt",
    source=_FMNIST_SOURCE, bundled=True,
    description="a fixed class-balanced subset of Fashion-MNIST shipped with advguard for "
                "offline tests and examples: the first 500 training images of each class "
                "(5,000) and the first 100 test images of each class (1,000), in official "
                "order")),
    augmentation=RandomCrop(padding=2))

_add(SvhnReader(DatasetInfo(
    name="svhn", num_classes=10, image_shape=(3, 32, 32), mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970), classes=_DIGITS, splits=("train", "test", "extra"),
    folder="svhn",
    how_to_obtain="put train_32x32.mat and test_32x32.mat (optionally extra_32x32.mat) from "
                  "http://ufldl.stanford.edu/housenumbers/ into DEST/svhn; then use root=DEST",
    license="non-commercial use only (see the SVHN homepage)",
    source="Y. Netzer, T. Wang, A. Coates, A. Bissacco, B. Wu, A. Y. Ng, 'Reading Digits in "
           "Natural Images with Unsupervised Feature Learning', NIPS Workshop, 2011",
    description="cropped 32×32 house-number digits: 73,257 train, 26,032 test, 531,131 extra; "
                "label 10 of the files is mapped to digit 0")),
    augmentation=RandomCrop(padding=4))

_add(TinyImageNetReader(DatasetInfo(
    name="tiny-imagenet", num_classes=200, image_shape=(3, 64, 64),
    mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821), classes=(),
    splits=("train", "val"), folder="tiny-imagenet-200",
    how_to_obtain="unzip the official http://cs231n.stanford.edu/tiny-imagenet-200.zip into "
                  "DEST (gives DEST/tiny-imagenet-200); then use root=DEST",
    license="ImageNet terms of access (non-commercial research and education)",
    source="Y. Le, X. Yang, 'Tiny ImageNet Visual Recognition Challenge', CS231N, 2015",
    description="200 ImageNet classes at 64×64: 100,000 train (500/class) and 10,000 val "
                "(50/class) images; classes are WordNet ids in sorted order")),
    augmentation=_CROP_FLIP)


def _root_and_source(root: str | os.PathLike[str] | None) -> tuple[Path, str]:
    if root is not None:
        return Path(root).expanduser(), "the root argument"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser(), f"${ENV_VAR}"
    return Path(DEFAULT_ROOT).expanduser(), f"the default {DEFAULT_ROOT} (set ${ENV_VAR} or pass "\
        "root= to change it)"


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$ADVGUARD_DATA`` if set and non-empty, else
    ``~/.cache/advguard/data``; ``~`` is expanded. The folder need not exist.

    Example: ``resolve_root()`` → ``PosixPath('/home/me/.cache/advguard/data')``."""
    return _root_and_source(root)[0]


def find_dataset_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding dataset ``name``'s files.

    Looks, in order, at ``<root>/<folder>``, ``<root>`` itself and the dataset's fallback
    folders (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist``), where ``root`` is resolved by
    :func:`resolve_root`; bundled datasets are looked up inside the package only. A folder counts
    if it holds one of the reader's marker files (CIFAR-10: ``batches.meta``). If none does, raises
    one :class:`~advguard.errors.DatasetNotFoundError` listing every place looked and how to
    obtain the dataset. Unknown names raise :class:`~advguard.errors.UnknownNameError`.

    Example: ``find_dataset_dir("cifar10", "/data")`` → ``PosixPath('/data/cifar-10-batches-py')``.
    """
    entry = DATASETS.entry(name)
    reader, info = entry.value, entry.value.info
    if info.bundled:
        candidates, source = [PACKAGE_DIR / info.folder], "the advguard package"
    else:
        base, source = _root_and_source(root)
        candidates = [base / info.folder, base, *entry.metadata.get("fallback_dirs", ())]
    seen: list[Path] = []
    for folder in candidates:
        if folder in seen:
            continue
        seen.append(folder)
        if reader.found_in(folder):
            return folder
    looked = ", ".join(str(p) for p in seen)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found: looked in {looked} (data root from {source}) for any of "
        f"{', '.join(reader.markers[:4])}; to obtain it: {info.how_to_obtain}")


def load_dataset(name: str, split: str = "train", *,
                 root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Load one split of a registered dataset into memory as an :class:`ImageDataset`
    (float32 ``(N, C, H, W)`` in ``[0, 1]``, int64 labels, on the CPU).

    ``name`` is a key of :data:`DATASETS` (:func:`list_datasets`), ``split`` one of
    ``dataset_info(name).splits`` (``'train'``/``'test'``; SVHN also ``'extra'``; Tiny ImageNet
    ``'train'``/``'val'``); ``root`` overrides the data root (see :func:`find_dataset_dir`).
    Validation data are carved out of ``train`` with :func:`advguard.data.train_val_split`.

    Raises ``UnknownNameError`` (unknown name, with suggestions), ``ConfigError`` (unknown split),
    ``DatasetNotFoundError`` (files missing; says where it looked and how to get them) or
    ``DatasetFormatError`` (a file is corrupted; names it).

    Example::

        test = load_dataset("fashion-mnist-sample", "test")   # bundled, always available
        test.images.shape                                      # torch.Size([1000, 1, 28, 28])
    """
    reader = DATASETS.get(name)
    reader.check_split(split)  # fail on a bad split before searching for files
    return reader(find_dataset_dir(name, root), split)


def list_datasets(pattern: str | None = None) -> list[str]:
    """Sorted registered dataset names, optionally filtered by a shell pattern (``'cifar*'``)."""
    return DATASETS.names(pattern)


def dataset_info(name: str) -> DatasetInfo:
    """Static facts (classes, shapes, normalization, folder, license...) of dataset ``name``,
    available without its files."""
    return DATASETS.get(name).info


def standard_augmentation(name: str) -> Augmentation | None:
    """The usual training augmentation for dataset ``name`` (``None``: none).

    * CIFAR-10/100, Tiny ImageNet: ``Compose([RandomCrop(padding=4), HorizontalFlip(p=0.5)])``;
    * SVHN: ``RandomCrop(padding=4)`` (no flip: mirrored digits are not digits);
    * Fashion-MNIST (and the sample): ``RandomCrop(padding=2)`` (no flip: all shoes face the
      same way in the data);
    * MNIST: ``None`` (conventionally trained without augmentation, e.g. Madry et al. 2018).

    Augmentations are immutable, so the returned object may be shared.

    Example: ``InMemoryLoader(ds, batch_size=512, shuffle=True, generator=g,
    augment=standard_augmentation("cifar10"))``.
    """
    aug = DATASETS.metadata(name).get("augmentation")
    return aug if isinstance(aug, Augmentation) else None
