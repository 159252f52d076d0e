"""Small shared helpers: device resolution, train/eval mode context, provenance (versions, git
commit, hardware) and input validation."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advguard.errors import ConfigError, InputValidationError


def available_devices() -> list[str]:
    """The device strings :func:`resolve_device` accepts on this machine, ``'auto'`` last."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return [*names, "auto"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``'auto'`` → CUDA when available, else CPU; otherwise ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps`` if this machine has it. Anything else is a :class:`ConfigError` naming
    the device and listing the available ones. Only runners and the CLI call this; library code
    follows ``x.device``.

    Example::

        resolve_device("cuda")  # ConfigError on a machine without CUDA
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = ", ".join(available_devices())
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, ValueError, TypeError):
        hint = " (did you mean 'cuda'?)" if str(device).strip().lower() in ("gpu", "nvidia") \
            and torch.cuda.is_available() else ""
        raise ConfigError(f"unknown device {str(device)!r}{hint}; available here: {available}"
                          ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} requested but CUDA is not available on "
                              f"this machine; available here: {available}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r} does not exist: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s); available here: "
                              f"{available}")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise ConfigError(f"device {str(device)!r} is not one advguard runs on; available here: "
                      f"{available}")


@contextlib.contextmanager
def eval_mode(module: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Put ``module`` (and every submodule) in eval (or train) mode and restore each submodule's
    previous mode on exit, so that callers' models are never left changed behind their back."""
    modes = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        for m, was_training in modes:
            m.training = was_training


@contextlib.contextmanager
def frozen_params(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``requires_grad=False`` on every parameter (restored on exit): used when an
    attack or defense needs input gradients only."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _archived_commit() -> str | None:
    """The commit ``git archive`` wrote into ``advguard/COMMIT`` (``export-subst`` in
    ``.gitattributes``): a source tree exported from a commit still says which one it is."""
    try:
        text = (Path(__file__).resolve().parent / "COMMIT").read_text().strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{40}", text) else None


def git_commit(path: str | Path | None = None) -> str | None:
    """The git commit of the advguard source tree (or ``path``), with ``-dirty`` when the tree has
    uncommitted changes. Outside a checkout: for advguard's own tree, the commit that ``git
    archive`` stamped into ``advguard/COMMIT`` when the tree was exported; otherwise ``None``."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return _archived_commit() if path is None else None
    return f"{out}-dirty" if dirty else out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "\
        f"{torch.get_num_threads()} torch threads)"


def environment_info(device: torch.device | None = None) -> dict[str, Any]:
    """Versions, hardware and commit, stored with every training and evaluation record."""
    from advguard import __version__

    dev = device if device is not None else torch.device("cpu")
    return {
        "advguard": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": device_name(dev),
    }


def check_images(x: torch.Tensor, *, name: str = "inputs", allow_empty: bool = False) -> None:
    """Raise :class:`InputValidationError` unless ``x`` is a floating NCHW batch, finite, in
    [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InputValidationError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputValidationError(
            f"{name} must be a floating-point tensor in [0, 1], got {x.dtype}")
    if x.dim() != 4:
        raise InputValidationError(
            f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0 and not allow_empty:
        raise InputValidationError(f"{name} is an empty batch")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise InputValidationError(f"{name} contain NaN or inf")
    if x.numel() and (bool((x < 0).any()) or bool((x > 1).any())):
        lo, hi = float(x.min()), float(x.max())
        raise InputValidationError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None, *,
                 name: str = "labels") -> None:
    """Raise :class:`InputValidationError` unless ``y`` is an int64 vector of length ``n`` with
    values in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor):
        raise InputValidationError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype != torch.int64:
        raise InputValidationError(f"{name} must be int64, got {y.dtype}")
    if y.shape != (n,):
        raise InputValidationError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if y.numel() and bool((y < 0).any()):
        raise InputValidationError(f"{name} must be >= 0, got {int(y.min())}")
    if num_classes is not None and y.numel() and bool((y >= num_classes).any()):
        raise InputValidationError(
            f"{name} must be < {num_classes} (number of classes), got {int(y.max())}")
