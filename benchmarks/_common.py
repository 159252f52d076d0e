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


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, *,
                per: int = 1, warmup: bool = True
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Median and half range of ``repeats`` interleaved timings of each function (seconds per
    call divided by ``per``), after one untimed warm-up call of each."""
    import statistics

    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(timed(fn, device) / per)
    return ({k: statistics.median(v) for k, v in times.items()},
            {k: (max(v) - min(v)) / 2 for k, v in times.items()})
