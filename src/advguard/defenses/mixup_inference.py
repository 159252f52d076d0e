"""Mixup inference with other-label mixing (MI-OL).

Paper: Pang, Xu, Zhu, "Mixup Inference: Better exploiting mixup to defend adversarial attacks",
ICLR 2020 (Algorithm 1, the "OL" variant), as in the authors' code (P2333/Mixup-Inference,
``attack_resnet_mixuptest_OL.py``): the base model predicts ``ŷ = argmax f(x)``; each of
``samples`` executions draws a class uniformly among the classes **other than** ``ŷ``, then a
clean image ``x_s`` of that class uniformly from a pool, and classifies the mixture
``λ_OL·x + (1 − λ_OL)·x_s``; the output is the average of the executions' softmax outputs
(returned as its log, i.e. valid logits).

The mixing pool is training (or validation) data, **never the test set**: a pool spec names a
dataset and a split ``"train"`` or ``"val"`` (the validation part carved out of ``train`` by
:func:`advguard.data.train_val_split`) and the pool is a class-balanced subset of it. (The
authors' code builds its pool from the CIFAR test split; advguard refuses to.)

Traits: randomized (class and image draws), differentiable a.e. (mixing is linear; ``ŷ`` is
piecewise constant), output logits.

Example::

    mi = MixupInference(model, lam=0.6, samples=30,
                        pool={"dataset": "fashion-mnist", "n": 2000, "seed": 0})
    mi = build_defense({"name": "mi_ol", "lam": 0.5, "pool": {"dataset": "cifar10",
                        "n": 5000}}, model)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from advguard.data import ImageDataset, balanced_subset, load_dataset, train_val_split
from advguard.defenses.base import Defense, Traits
from advguard.defenses.registry import DEFENSES
from advguard.errors import ConfigError
from advguard.rng import mean_probs, rand_rows

__all__ = ["MixupInference", "load_pool", "pool_tensors", "sort_by_class"]

POOL_SPLITS = ("train", "val")


@functools.lru_cache(maxsize=4)
def _load_pool_cached(dataset: str, split: str, n: int | None, seed: int,
                      val_size: int | float, root: str | None) -> ImageDataset:
    data = load_dataset(dataset, "train", root=root)
    if split == "val":
        _, data = train_val_split(data, val_size, seed=0)
    if n is not None and n < len(data):
        data = balanced_subset(data, n=n, seed=seed)
    return data


def load_pool(spec: Mapping[str, Any], *, role: str = "MI-OL pool") -> ImageDataset:
    """The mixing pool a spec names: ``dataset`` (required), ``split`` ("train", default, or
    "val": the validation part of ``train_val_split(train, val_size, seed=0)``, ``val_size``
    default 5000 — the held-out split of advguard's training configs), ``n`` (a class-balanced
    subset of that many images; None: all), ``seed`` (of the subset, 0), ``root``. A ``"test"``
    split is refused."""
    known = {"dataset", "split", "n", "seed", "val_size", "root"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"unknown {role} key(s): {', '.join(unknown)} (known: "
                          f"{', '.join(sorted(known))})")
    if "dataset" not in spec:
        raise ConfigError(f"a {role} spec needs a 'dataset'")
    split = str(spec.get("split", "train"))
    if split not in POOL_SPLITS:
        raise ConfigError(f"the {role} must come from training or validation data "
                          f"(split 'train' or 'val'), never {split!r}")
    n = spec.get("n")
    return _load_pool_cached(str(spec["dataset"]), split, None if n is None else int(n),
                             int(spec.get("seed", 0)), spec.get("val_size", 5000),
                             spec.get("root"))


def pool_tensors(pool: str | Mapping[str, Any] | ImageDataset | tuple[torch.Tensor, torch.Tensor],
                 *, role: str = "MI-OL pool") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (P, C, H, W) and labels (P,) of a pool given as a spec (:func:`load_pool`; a
    dataset name alone means its training split), a dataset (never the test split) or a pair
    of tensors."""
    if isinstance(pool, str):  # a dataset name: its training split
        pool = {"dataset": pool}
    if isinstance(pool, Mapping):
        pool = load_pool(pool, role=role)
    if isinstance(pool, ImageDataset):
        if pool.split == "test":
            raise ConfigError(f"the {role} must not come from the test split")
        images, labels = pool.images, pool.labels
    elif (isinstance(pool, (tuple, list)) and len(pool) == 2
          and all(isinstance(t, torch.Tensor) for t in pool)):
        images, labels = pool
    else:
        raise ConfigError(f"the {role} must be a dataset spec (e.g. {{dataset: fashion-mnist}}), "
                          f"a dataset or a pair of tensors (images, labels), got "
                          f"{type(pool).__name__} {pool!r:.60}")
    if images.dim() != 4 or labels.shape != (images.shape[0],) or len(labels) == 0:
        raise ConfigError(f"the {role} must be images (P, C, H, W) with labels (P,), P >= 1")
    return images, labels


def sort_by_class(images: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, count, start)``: the images grouped by class (stable order), float;
    class ``c`` occupies rows ``start[c] : start[c] + count[c]``."""
    order = labels.argsort(stable=True)
    labels = labels[order].long()
    count = torch.bincount(labels)
    return images[order].float(), labels, count, torch.cumsum(count, 0) - count


@DEFENSES.register("mi_ol", kind="defense",
                   paper="Pang, Xu, Zhu, ICLR 2020 (mixup inference, MI-OL)")
class MixupInference(Defense):
    """MI-OL: average the predictions on mixtures ``λ·x + (1 − λ)·x_s`` with pool images ``x_s``
    of classes other than the predicted one (see the module docstring).

    Args: ``model`` (images in [0, 1] → logits); ``lam`` λ_OL (0.5; the CAP paper uses 0.5 for
    Mixup-trained and 0.6 for IAT-trained models); ``samples`` executions averaged (30, the CAP
    paper's setting); ``pool`` (a spec for :func:`load_pool`, an :class:`ImageDataset`, or an
    ``(images, labels)`` pair; it must hold every class); ``chunk`` executions per batched
    forward (10); ``seed``.

    Example::

        defense = MixupInference(model, lam=0.5, samples=30,
                                 pool={"dataset": "fashion-mnist", "n": 2000, "seed": 0})
    """

    per_example_noise = True  # every row draws its own randomness (rng's draws protocol)

    traits = Traits(randomized=True)
    pool_images: torch.Tensor
    pool_labels: torch.Tensor
    class_count: torch.Tensor
    class_start: torch.Tensor

    def __init__(self, model: nn.Module, *, lam: float = 0.5, samples: int = 30,
                 pool: str | Mapping[str, Any] | ImageDataset | tuple[torch.Tensor, torch.Tensor],
                 chunk: int = 10, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        if samples < 1 or chunk < 1:
            raise ValueError("samples and chunk must be >= 1")
        images, labels, counts, starts = sort_by_class(*pool_tensors(pool))
        self.model = model
        self.lam = float(lam)
        self.samples = int(samples)
        self.chunk = int(chunk)
        self.register_buffer("pool_images", images, persistent=False)
        self.register_buffer("pool_labels", labels, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("class_start", starts, persistent=False)
        self.reseed(seed)

    def draw_partners(self, pred: torch.Tensor, num_classes: int, k: int,
                      generator: torch.Generator, *, x: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Pool indices (k, B) of ``k`` mixing partners per example: a class uniformly among the
        ``num_classes − 1`` classes other than ``pred``, then an image of it uniformly."""
        if self.class_count.numel() < num_classes or bool((self.class_count[:num_classes] == 0)
                                                          .any()):
            raise ConfigError(f"the MI-OL pool must hold images of all {num_classes} classes")
        dev = generator.device
        if x is not None:  # the rows' own draws (per example inside the harness)
            draws = rand_rows(x, (2, k), generator=generator, stream="partners", module=self,
                              dtype=torch.float64).permute(1, 2, 0).to(pred.device)
            offset = 1 + (draws[0] * (num_classes - 1)).floor().long().clamp_max(num_classes - 2)
            u = draws[1]
        else:
            offset = torch.randint(1, num_classes, (k, pred.shape[0]), generator=generator,
                                   device=dev).to(pred.device)
            u = torch.rand((k, pred.shape[0]), generator=generator, device=dev).to(pred.device)
        cls = (pred[None, :] + offset) % num_classes
        count = self.class_count[cls]
        within = (u.double() * count).floor().long().clamp_max(count - 1)
        return self.class_start[cls] + within

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(x)
        pred, num_classes = logits.argmax(1), logits.shape[1]
        gen = self.generator(x.device)

        def mixed(xr: torch.Tensor) -> torch.Tensor:
            k = xr.shape[0] // x.shape[0]
            partners = self.pool_images[self.draw_partners(pred, num_classes, k, gen, x=x)]
            mix = self.lam * xr + (1.0 - self.lam) * partners.flatten(0, 1).to(x.dtype)
            return self.model(mix)

        return mean_probs(mixed, x, self.samples, chunk=self.chunk, module=self.model)

    @property
    def base_model(self) -> nn.Module:
        return self.model

    @property
    def draws_per_call(self) -> int:
        return self.samples

    def extra_repr(self) -> str:
        return (f"lam={self.lam}, samples={self.samples}, "
                f"pool={self.pool_images.shape[0]} images")
