"""The :class:`Normalized` wrapper, and the :class:`ModelSpec` that rebuilds a model from a
checkpoint.

Every advguard model takes images in [0, 1] and carries its input normalization inside (as in
RobustBench), so that attacks and defenses never have to know a dataset's mean and std.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from advguard.errors import ConfigError

__all__ = ["ModelSpec", "Normalized"]

_RESERVED = ("name", "mean", "std")


def as_float_tuple(values: Sequence[float], what: str) -> tuple[float, ...]:
    """``values`` as a non-empty tuple of finite floats, else :class:`ConfigError`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{what} must be a sequence of floats, got {values!r}")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a sequence of floats, got {values!r}") from None
    if not out:
        raise ConfigError(f"{what} must not be empty")
    if not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{what} must be finite, got {out}")
    return out


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a registered model: its registry name, its constructor
    arguments and its input normalization.

    ``kwargs`` holds *all* constructor arguments, defaults resolved (``num_classes``,
    ``in_channels``, ``input_size`` and the architecture's own arguments such as ``depth`` or
    ``dropout``), so a checkpoint stays loadable even if a default changes later. Everything is
    JSON-serializable.

    :meth:`to_dict` gives a *flat* dict, ``{"name": ..., **kwargs, "mean": [...], "std": [...]}``,
    which is exactly the keyword arguments of :func:`~advguard.models.create_model`.

    Example::

        model = create_model("resnet20", mean=CIFAR10_MEAN, std=CIFAR10_STD)
        torch.save({"spec": model.spec.to_dict(), "state_dict": model.state_dict()}, path)
        ckpt = torch.load(path)
        same = create_model(**ckpt["spec"])          # or create_model_from_spec(ckpt["spec"])
        same.load_state_dict(ckpt["state_dict"])
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"model name must be a non-empty string, got {self.name!r}")
        kwargs = dict(self.kwargs)
        clash = sorted(set(kwargs) & set(_RESERVED))
        if clash:
            raise ConfigError(f"ModelSpec kwargs must not contain {clash}")
        try:
            json.dumps(kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"ModelSpec kwargs must be JSON-serializable: {exc}") from None
        mean = as_float_tuple(self.mean, "mean")
        std = as_float_tuple(self.std, "std")
        if len(mean) != len(std):
            raise ConfigError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-serializable dict: ``{"name", **kwargs, "mean", "std"}``."""
        return {"name": self.name, **self.kwargs, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`. ``name``, ``mean`` and ``std`` are required."""
        missing = [k for k in _RESERVED if k not in data]
        if missing:
            raise ConfigError(f"model spec is missing {missing}; got keys {sorted(data)}")
        kwargs = {k: v for k, v in data.items() if k not in _RESERVED}
        return cls(name=data["name"], kwargs=kwargs, mean=data["mean"], std=data["std"])


class Normalized(nn.Module):
    """A classifier that takes images in [0, 1] and normalizes them itself.

    ``forward(x) = model((x - mean) / std)``, with ``mean`` and ``std`` stored as persistent
    buffers of shape ``(1, C, 1, 1)`` (they are part of the ``state_dict``, so a checkpoint
    carries its normalization). The convention follows RobustBench (Croce et al., 2021):
    attacks and defenses only ever see [0, 1] images.

    Args:
        model: the network, mapping normalized ``(N, C, H, W)`` images to logits
            ``(N, num_classes)``. Available as ``.model``.
        mean, std: per-channel statistics, length ``C``; every ``std`` must be > 0.
        spec: the :class:`ModelSpec` that rebuilds this module (set by
            :func:`~advguard.models.create_model`; ``None`` for hand-built models).

    Inputs are not range-checked here (that would synchronize the GPU on every call);
    evaluation code validates inputs once. Buffers are cast to the input's dtype, so the wrapper
    works under ``torch.autocast`` and with ``channels_last`` inputs.

    Example::

        net = Normalized(my_cifar_net, mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
        logits = net(torch.rand(8, 3, 32, 32))       # inputs in [0, 1]
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], *,
                 spec: ModelSpec | None = None) -> None:
        super().__init__()
        mean_t = as_float_tuple(mean, "mean")
        std_t = as_float_tuple(std, "std")
        if len(mean_t) != len(std_t):
            raise ConfigError(f"mean and std differ in length: {len(mean_t)} vs {len(std_t)}")
        if not all(s > 0 for s in std_t):
            raise ConfigError(f"std must be > 0, got {std_t}")
        if spec is not None and (spec.mean != mean_t or spec.std != std_t):
            raise ConfigError(
                f"spec normalization (mean={spec.mean}, std={spec.std}) differs from the one "
                f"given (mean={mean_t}, std={std_t})")
        self.model = model
        self.spec = spec
        channels = len(mean_t)
        self.register_buffer("mean", torch.tensor(mean_t).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std_t).view(1, channels, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``: what the wrapped network sees (recipes that call parts of a
        multi-part network, such as a purifier's encoder, normalize with this)."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def extra_repr(self) -> str:
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        name = f"name={self.spec.name!r}, " if self.spec is not None else ""
        return f"{name}mean={mean}, std={std}"
