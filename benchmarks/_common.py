"""Shared by the benchmark scripts (run as ``python benchmarks/bench_*.py``, so this directory is
on ``sys.path``): device-synchronized timing and writing the markdown result."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one ``fn()`` call, synchronized before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def write_report(lines: list[str], output: str | Path) -> int:
    """Print the markdown ``lines`` and write them to ``output``; returns the exit status 0."""
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0
