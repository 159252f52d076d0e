"""``advguard quickstart``: a short, complete tour on the Fashion-MNIST sample shipped inside the
package — no download, CPU only, about two minutes on two cores."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from advguard.configs import config_path
from advguard.training import TrainConfig, train

QUICKSTART_CONFIG = "train/quickstart"


@dataclass
class QuickstartReport:
    """Rows of the printed table plus free-text notes."""

    header: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        cells = [list(self.header), *self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([*lines, "", *self.notes])


def run_quickstart(*, output_dir: str | Path | None = None, epochs: int | None = None,
                   progress: bool = True, device: str = "cpu") -> QuickstartReport:
    """Train the small CNN on the embedded sample and report its accuracy.

    Returns a :class:`QuickstartReport`; the checkpoint lands in ``output_dir`` (a temporary
    directory when None)."""
    config = TrainConfig.from_file(config_path(QUICKSTART_CONFIG), device=device, epochs=epochs)
    with tempfile.TemporaryDirectory(prefix="advguard-quickstart-") as tmp:
        out = Path(output_dir) if output_dir is not None else Path(tmp)
        started = time.perf_counter()
        result = train(config, output_dir=out, progress=progress, resume=output_dir is not None)
        seconds = time.perf_counter() - started
        final = result.record.final
        report = QuickstartReport(header=["model", "data", "setting", "accuracy"])
        report.rows.append([config.model, "F-MNIST sample test (1,000)", "clean",
                            f"{100 * final['test_acc']:.1f}%"])
        report.notes.append(
            f"trained {config.epochs} epochs on {config.dataset} (train split) in {seconds:.0f} s "
            f"on {config.device}")
        if output_dir is not None:
            report.notes.append(f"checkpoint: {result.checkpoint}")
    return report
