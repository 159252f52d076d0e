"""Learning-rate schedules as data: each maps training progress to a multiplier of the peak LR.

A schedule is a small frozen dataclass with one hook, ``factor(epoch)``, where ``epoch`` is the
fractional epoch (``step / steps_per_epoch``); the training loop evaluates it before every
optimizer step, so schedules are smooth per step and resume exactly from any step.

Registered names: ``constant``, ``step`` (multiply by ``gamma`` at each milestone epoch — the
Madry/TRADES/Mixup recipes), ``cosine`` (optional linear warm-up, then cosine to 0),
``onecycle`` (linear 0 → peak at ``peak`` fraction of training → 0, as in Wong et al. 2020's
cyclic schedule for Fast-FGSM, which peaks at 2/5 of training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from advguard.errors import ConfigError
from advguard.registry import Registry


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Base class: ``factor(epoch)`` → multiplier in [0, 1] of the configured (peak) LR."""

    epochs: float

    def factor(self, epoch: float) -> float:
        raise NotImplementedError


SCHEDULES: Registry[type[Schedule]] = Registry("lr schedule")


@SCHEDULES.register("constant")
@dataclass(frozen=True, kw_only=True)
class Constant(Schedule):
    def factor(self, epoch: float) -> float:
        return 1.0


@SCHEDULES.register("step")
@dataclass(frozen=True, kw_only=True)
class Step(Schedule):
    """Multiply by ``gamma`` at each epoch in ``milestones`` (default: 50% and 75% of training)."""

    milestones: tuple[float, ...] = ()
    gamma: float = 0.1

    def factor(self, epoch: float) -> float:
        milestones = self.milestones or (0.5 * self.epochs, 0.75 * self.epochs)
        return self.gamma ** sum(epoch >= m for m in milestones)


@SCHEDULES.register("cosine")
@dataclass(frozen=True, kw_only=True)
class Cosine(Schedule):
    """Linear warm-up over ``warmup_epochs`` then half-cosine decay to 0 at the last epoch."""

    warmup_epochs: float = 0.0

    def factor(self, epoch: float) -> float:
        if self.warmup_epochs > 0 and epoch < self.warmup_epochs:
            return (epoch + 1e-12) / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-12)
        t = min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t))


@SCHEDULES.register("onecycle")
@dataclass(frozen=True, kw_only=True)
class OneCycle(Schedule):
    """Piecewise linear: 0 → 1 at ``peak``·epochs → 0 at the end (Wong et al. 2020 use 0.4)."""

    peak: float = 0.4

    def factor(self, epoch: float) -> float:
        top = self.peak * self.epochs
        if epoch <= top:
            return epoch / top if top > 0 else 1.0
        return max(0.0, (self.epochs - epoch) / max(self.epochs - top, 1e-12))


def make_schedule(name: str, epochs: float, **kwargs: Any) -> Schedule:
    """Build a registered schedule; unknown keyword arguments are a :class:`ConfigError`."""
    cls = SCHEDULES.get(name)
    try:
        if "milestones" in kwargs:
            kwargs["milestones"] = tuple(float(m) for m in kwargs["milestones"])
        return cls(epochs=epochs, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for lr schedule {name!r}: {exc}") from None


__all__ = ["SCHEDULES", "Constant", "Cosine", "OneCycle", "Schedule", "Step", "make_schedule"]
