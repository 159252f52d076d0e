"""Shared by the result scripts (run as ``python scripts/NAME.py``, so this directory is on
``sys.path``): the provenance line of a result and writing the markdown."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from advguard.errors import AdvguardError
from advguard.utils import environment_info


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a bad value is argparse's one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (accepts fractions such as ``8/255``)."""
    num, _, den = text.partition("/")
    try:
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def run(main: Callable[[], int]) -> int:
    """Run a script's ``main``: a library error, an unwritable ``--output`` or Ctrl-C is one line
    on stderr, not a traceback (exit 2 and 130, as the CLI)."""
    name = Path(sys.argv[0]).name
    try:
        return main()
    except AdvguardError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{name}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def provenance(extra: str = "") -> list[str]:
    """The command that was run and the machine, torch version and commit it ran on."""
    env = environment_info(torch.device("cpu"))
    script = f"scripts/{Path(sys.argv[0]).name}"
    return [f"Command: `python {' '.join([script, *sys.argv[1:]])}`",
            f"Machine: {env.get('device_name')}; torch {env.get('torch')}; commit "
            f"{env.get('git_commit')}{extra}."]


def write_report(lines: list[str], output: Path | None) -> int:
    """Print the markdown ``lines`` and write them to ``output`` when given; returns 0."""
    text = "\n".join(lines) + "\n"
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    print(text)
    return 0
