"""Trained parts and data that a defense spec references by path or name, loaded and checked
against the protected model **before any work starts**.

A defense with trained parts (AdvT's small adversarially trained model f_b, ADD's purifier) or
with training data (POST's per-input post-training) takes them as spec parameters — a checkpoint
path, a registered dataset name — and resolves them in its constructor with these helpers::

    class Transformed(Defense):
        def __init__(self, model, *, f_b: str | nn.Module, ...):
            super().__init__()
            self.f_b = load_checkpoint_part(f_b, like=model, role="f_b")

    build_defense({"name": "advt", "f_b": "runs/advt/f_b/model.safetensors"}, model)

A missing file, an unreadable checkpoint, or a part trained for other inputs (another dataset,
number of classes, channels or image size than ``model``) raises a one-line
:class:`~advguard.errors.ConfigError` naming the part, so an evaluation or an experiment fails
at build time, not an hour in. The model's facts come from the ``spec`` that every
:func:`advguard.models.create_model` model carries, and the dataset from checkpoint metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from advguard.errors import AdvguardError, ConfigError

__all__ = ["InputFacts", "input_facts", "load_checkpoint_part", "load_data_part"]


@dataclass(frozen=True)
class InputFacts:
    """What a model was built for (None: unknown): ``dataset`` (a registered name),
    ``num_classes``, ``channels``, ``size`` (height = width)."""

    dataset: str | None = None
    num_classes: int | None = None
    channels: int | None = None
    size: int | None = None

    def takes(self, shape: tuple[int, ...]) -> bool:
        """Whether images of ``shape`` (C, H, W) fit the known channels and size."""
        c, h, w = shape
        return (self.channels is None or self.channels == c) and (
            self.size is None or (self.size, self.size) == (h, w))

    def image_shape(self) -> str:
        return f"{self.channels}x{self.size}x{self.size}"

    def mismatches(self, other: InputFacts) -> list[str]:
        """Each fact both know and disagree on, as ``"name: mine vs theirs"``."""
        out = []
        for name in ("dataset", "num_classes", "channels", "size"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None or theirs is None or mine == theirs:
                continue
            if name == "dataset" and same_task(mine, theirs):
                continue
            out.append(f"{name} {mine!r} vs {theirs!r}")
        return out


def same_task(a: str, b: str) -> bool:
    """Two registered datasets with the same classes and image shape (e.g. Fashion-MNIST and
    the Fashion-MNIST sample shipped with advguard); unregistered names never match."""
    from advguard.data import dataset_info

    try:
        x, y = dataset_info(a), dataset_info(b)
    except AdvguardError:
        return False
    return x.classes == y.classes and x.num_classes == y.num_classes \
        and x.image_shape == y.image_shape


def input_facts(model: nn.Module, metadata: dict[str, Any] | None = None) -> InputFacts:
    """The facts a model carries: its ``spec`` (``num_classes``, ``in_channels``,
    ``input_size``), the ``dataset`` in its checkpoint ``metadata`` (or set as
    ``model.dataset_name`` by the caller); unknown facts are None. A wrapped model (a
    defense) reports the facts of its ``model`` attribute, or of its ``base_model`` (pipelines
    and composites)."""
    from advguard.models import ModelSpec

    inner: nn.Module = model
    while not isinstance(getattr(inner, "spec", None), ModelSpec):
        wrapped = getattr(inner, "model", None)
        if not isinstance(wrapped, nn.Module):  # a pipeline or composite: its base classifier
            try:
                wrapped = getattr(inner, "base_model", None)
            except NotImplementedError:
                wrapped = None
        if not isinstance(wrapped, nn.Module) or wrapped is inner:
            break
        inner = wrapped
    spec = getattr(inner, "spec", None)
    kwargs = spec.kwargs if isinstance(spec, ModelSpec) else {}
    size = kwargs.get("input_size")
    dataset = (metadata or {}).get("dataset") or getattr(inner, "dataset_name", None)
    return InputFacts(dataset=dataset, num_classes=kwargs.get("num_classes"),
                      channels=kwargs.get("in_channels"),
                      size=size if isinstance(size, int) else None)


def load_checkpoint_part(part: str | Path | nn.Module, *, like: nn.Module | None, role: str,
                         same_classes: bool = True) -> nn.Module:
    """A trained part of a defense: a checkpoint path (loaded with
    :func:`advguard.checkpoint.load_checkpoint`, never unpickled) or a module given directly.
    Returned in eval mode, frozen (no parameter requires grad), on ``like``'s device. With
    ``like``, the part must have been built for the same inputs (dataset, channels, size) and —
    unless ``same_classes`` is False (a purifier outputs images, not classes) — the same number
    of classes; otherwise a :class:`ConfigError` names ``role`` and the mismatch."""
    from advguard.checkpoint import load_checkpoint

    metadata: dict[str, Any] = {}
    if isinstance(part, nn.Module):
        module = part
    elif isinstance(part, (str, Path)):
        path = Path(part)
        if not path.is_file():
            raise ConfigError(f"{role}: checkpoint {str(path)!r} not found")
        try:
            module, metadata = load_checkpoint(path)
        except AdvguardError as exc:
            raise ConfigError(f"{role}: {exc}") from None
    else:
        raise ConfigError(f"{role}: expected a checkpoint path or a module, got "
                          f"{type(part).__name__}")
    if like is not None:
        mine = input_facts(module, metadata)
        theirs = input_facts(like)
        if not same_classes:
            mine = InputFacts(mine.dataset, None, mine.channels, mine.size)
        bad = mine.mismatches(theirs)
        if bad:
            raise ConfigError(f"{role} was built for other inputs than the model it defends: "
                              f"{'; '.join(bad)} ({role} vs model)")
        try:
            device = next(like.parameters()).device
        except StopIteration:
            device = None
        if device is not None:
            module = module.to(device)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_data_part(dataset: str, *, split: str = "train", root: str | None = None,
                   like: nn.Module | None, role: str) -> Any:
    """Data a defense needs (e.g. POST's training data): the registered ``dataset``'s ``split``,
    read from ``root`` (see :func:`advguard.data.load_dataset`). With ``like``, its classes,
    channels and image size must match the model's; otherwise a :class:`ConfigError` names
    ``role`` and the mismatch — raised before any work starts."""
    from advguard.data import dataset_info, load_dataset

    try:
        info = dataset_info(dataset)
    except AdvguardError as exc:
        raise ConfigError(f"{role}: {exc}") from None
    if like is not None:
        c, h, _ = info.image_shape
        facts = InputFacts(dataset=None, num_classes=info.num_classes, channels=c, size=h)
        bad = facts.mismatches(input_facts(like))
        if bad:
            raise ConfigError(f"{role}: dataset {dataset!r} does not fit the model it defends: "
                              f"{'; '.join(bad)} (dataset vs model)")
    try:
        return load_dataset(dataset, split, root=root)
    except AdvguardError as exc:
        raise ConfigError(f"{role}: {exc}") from None
