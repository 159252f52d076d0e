"""Deterministic subsets of an :class:`~advguard.data.ImageDataset`: the first ``n`` examples, a
class-balanced random subset, and a stratified train/validation split.

All randomness comes from a local ``torch.Generator`` seeded with ``seed``; the global RNG is never
touched, so the same ``(dataset, arguments, seed)`` gives the same subset on every machine and
torch version that keeps ``torch.randperm``'s CPU stream. Results keep the original order of the
examples (ascending position) and their :attr:`~advguard.data.ImageDataset.indices` point into the
original split, so records can name the examples.

Example::

    train, val = train_val_split(load_dataset("cifar10", "train"), 5000, seed=0)
    eval_set = balanced_subset(load_dataset("cifar10", "test"), n=1000, seed=0)
"""

from __future__ import annotations

import torch

from advguard.data.base import ImageDataset
from advguard.errors import ConfigError

__all__ = ["balanced_subset", "first_n", "train_val_split"]


def _permutation(n: int, seed: int) -> torch.Tensor:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _per_class_in_order(labels: torch.Tensor, order: torch.Tensor,
                        num_classes: int) -> list[torch.Tensor]:
    """For each class, the positions of its examples in the order given by ``order``."""
    ordered = labels[order]
    return [order[ordered == c] for c in range(num_classes)]


def first_n(ds: ImageDataset, n: int) -> ImageDataset:
    """The first ``n`` examples in dataset order (the conventional "first 1,000 test images").
    ``n`` must lie in ``[0, len(ds)]``, else :class:`~advguard.errors.ConfigError`.
    Not class-balanced; see :func:`balanced_subset`."""
    if not isinstance(n, int) or not 0 <= n <= len(ds):
        raise ConfigError(f"first_n: n must be an int in [0, {len(ds)}], got {n!r}")
    return ds.subset(torch.arange(n))


def balanced_subset(ds: ImageDataset, n_per_class: int | None = None, *, n: int | None = None,
                    seed: int) -> ImageDataset:
    """A class-balanced random subset: ``n_per_class`` examples of every class, or ``n`` examples
    in total (``n // K`` per class and one more for the first ``n % K`` classes in label order;
    ``K = ds.num_classes``). Give exactly one of ``n_per_class`` and ``n``.

    Examples are drawn without replacement from one random permutation of the dataset made with
    ``seed``: each class contributes its first examples in that permutation, so for one seed a
    smaller subset is contained in a larger one. The result is in dataset order.

    If a class has fewer examples than requested, raises :class:`~advguard.errors.ConfigError`
    naming the classes and their counts (a silently unbalanced subset would bias results).

    Example: ``balanced_subset(test, n_per_class=100, seed=0)`` → 1,000 CIFAR-10 test images.
    """
    k = ds.num_classes
    if (n_per_class is None) == (n is None):
        raise ConfigError("balanced_subset: give exactly one of n_per_class and n")
    if n_per_class is not None:
        if not isinstance(n_per_class, int) or n_per_class < 0:
            raise ConfigError(f"n_per_class must be an int >= 0, got {n_per_class!r}")
        wanted = [n_per_class] * k
    else:
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"n must be an int >= 0, got {n!r}")
        wanted = [n // k + (1 if c < n % k else 0) for c in range(k)]
    labels = ds.labels.cpu()
    groups = _per_class_in_order(labels, _permutation(len(ds), seed), k)
    short = [f"{ds.classes[c]!r}: {len(g)} < {w}" for c, (g, w) in enumerate(zip(groups, wanted))
             if len(g) < w]
    if short:
        raise ConfigError(f"balanced_subset: {ds.name} {ds.split} has too few examples of "
                          f"some classes ({'; '.join(short)})")
    chosen = torch.cat([g[:w] for g, w in zip(groups, wanted)])
    return ds.subset(chosen.sort().values)


def _stratified_counts(class_sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over classes proportionally to ``class_sizes`` (largest remainders,
    ties to the lower class index), never exceeding a class's size."""
    n = sum(class_sizes)
    quotas = [total * s for s in class_sizes]
    counts = [q // n for q in quotas]
    by_remainder = sorted(range(len(class_sizes)), key=lambda c: (-(quotas[c] % n), c))
    for c in by_remainder[: total - sum(counts)]:
        counts[c] += 1
    return counts


def train_val_split(ds: ImageDataset, val_size: int | float, *,
                    seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Split ``ds`` (normally a ``train`` split) into disjoint ``(train, val)`` parts, stratified
    by class, deterministic given ``seed``.

    Defenses with hyper-parameters (noise levels, purification steps, thresholds...) are tuned on
    such validation data carved out of the training split, never on test data: tuning on the
    test set makes the reported robustness optimistic.

    ``val_size`` is a number of examples (int, ``1 <= val_size < len(ds)``) or a fraction
    (float in ``(0, 1)``, rounded to the nearest count). Each class gives a share of the
    validation set proportional to its size (largest-remainder rounding), its first examples in a
    random permutation made with ``seed``. Both parts keep dataset order and their ``indices``
    point into the original split.

    Example: ``train, val = train_val_split(load_dataset("cifar10"), 5000, seed=0)`` →
    45,000 / 5,000 images, 500 validation images per class.
    """
    n_total = len(ds)
    if isinstance(val_size, bool) or not isinstance(val_size, int | float):
        raise ConfigError(f"val_size must be an int or a float, got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise ConfigError(f"a fractional val_size must lie in (0, 1), got {val_size}")
        n_val = round(val_size * n_total)
    else:
        n_val = val_size
    if not 1 <= n_val < n_total:
        raise ConfigError(f"train_val_split: val_size={val_size!r} gives {n_val} validation "
                          f"examples; need between 1 and {n_total - 1} for {n_total} examples")
    labels = ds.labels.cpu()
    groups = _per_class_in_order(labels, _permutation(n_total, seed), ds.num_classes)
    counts = _stratified_counts([len(g) for g in groups], n_val)
    val_idx = torch.cat([g[:m] for g, m in zip(groups, counts)]).sort().values
    is_val = torch.zeros(n_total, dtype=torch.bool)
    is_val[val_idx] = True
    return ds.subset(~is_val), ds.subset(is_val)
