"""Shared by the result scripts (run as ``python scripts/NAME.py``, so this directory is on
``sys.path``): the provenance line of a result and writing the markdown."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from advguard.utils import environment_info


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
