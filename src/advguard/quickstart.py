"""``advguard quickstart``: a short, complete tour on the Fashion-MNIST sample shipped inside the
package — no download, CPU only, about a minute on two cores.

1. train the small CNN of ``configs/train/quickstart.yaml`` on the sample's training split;
2. attack it with PGD (no defense);
3. put each reference defense in front of it — bit-depth reduction (deterministic, not
   differentiable) and Gaussian input noise (randomized) — and evaluate each under the
   *oblivious* protocol (attack the undefended model, as many papers do) and then under the
   *adaptive* one (BPDA through the quantizer, EOT over the noise), as one worst-case cascade;
4. show what happens when bit-depth reduction is attacked naively (no BPDA): robustness looks
   high, and the reliability flags say why it should not be believed;
5. two of the papers' defenses in front of the same model: CAP (counteracting perturbations for
   the 9 non-predicted labels; attacked obliviously, through its exact a.e. gradient and through
   the BPDA soft-sign surrogate) and SMOOTH (a prediction vote over 8 draws of Gaussian input
   noise; attacked obliviously and through the soft-vote surrogate).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advguard.configs import config_path
from advguard.data import first_n, load_dataset
from advguard.errors import OutputError
from advguard.evaluation import EvalConfig, StepSpec, evaluate
from advguard.files import check_creatable, file_kind
from advguard.reports import pct
from advguard.reports.render import render_table
from advguard.training import TrainConfig, train
from advguard.training.loop import check_run_dir

QUICKSTART_CONFIG = "train/quickstart"
EPS = 0.1
N_EXAMPLES = 200
PGD = {"attack": "pgd", "steps": 10, "alpha": 0.025}
STORE_FILE = "records.sqlite"


@dataclass
class QuickstartReport:
    """Rows of the printed table plus free-text notes."""

    header: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        return "\n".join([render_table(self.header, self.rows), "", *self.notes])


def _evaluations() -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(row label, defense spec, cascade)."""
    oblivious = {"setting": "oblivious", **PGD}
    adaptive = {"setting": "adaptive", **PGD, "eot": 10}
    return [
        ("no defense", {"name": "none"}, [adaptive]),
        ("bit depth (2 bits)", {"name": "bit_depth", "bits": 2}, [oblivious, adaptive]),
        ("Gaussian noise (σ=0.2)", {"name": "gaussian_noise", "sigma": 0.2},
         [oblivious, adaptive]),
        ("bit depth, naive attack (no BPDA)", {"name": "bit_depth", "bits": 2},
         [{**adaptive, "bpda": False}]),
        ("CAP (N=9, α=0.05, μ=0.1)", {"name": "cap", "n_labels": 9, "alpha": 0.05, "mu": 0.1},
         [oblivious, {"setting": "adaptive", **PGD},
          {"setting": "adaptive", **PGD, "bpda": True}]),
        ("SMOOTH (m=8, σ=0.2, prediction vote)",
         {"name": "smoothing", "m": 8, "sigma": 0.2, "vote": "prediction"},
         [oblivious, {"setting": "adaptive", **PGD, "eot": 1}]),
    ]


def check_output_dir(out: Path) -> None:
    """Raise :class:`~advguard.errors.OutputError` unless ``out`` is new or holds only what a
    previous quickstart wrote there: the run directory ``model/`` (checked by
    :func:`~advguard.training.loop.check_run_dir`) and the record store ``records.sqlite``."""
    if not out.exists():
        check_creatable(out, "the output directory")
        return
    if not out.is_dir():
        raise OutputError(f"output directory {out} is an existing file; give a directory")
    ours = {"model", STORE_FILE} | {f"{STORE_FILE}-{s}" for s in ("wal", "shm", "journal")}
    foreign = sorted(e.name for e in out.iterdir()
                     if e.name not in ours or (e.name == "model") != e.is_dir()
                     or (e.name == STORE_FILE and file_kind(e) != "sqlite"))
    if foreign:
        raise OutputError(f"output directory {out} holds files advguard quickstart did not "
                          f"write ({', '.join(foreign[:4])}{' ...' if len(foreign) > 4 else ''})"
                          "; choose a new or empty directory")
    check_run_dir(out / "model")


def run_quickstart(*, output_dir: str | Path | None = None, epochs: int | None = None,
                   progress: bool = True, device: str = "cpu") -> QuickstartReport:
    """Train the small CNN on the embedded sample, attack it with and without the two reference
    defenses, and return the table. Checkpoint and records land in ``output_dir`` (a temporary
    directory when None)."""
    config = TrainConfig.from_file(config_path(QUICKSTART_CONFIG), device=device, epochs=epochs)
    if output_dir is not None:
        check_output_dir(Path(output_dir))
    with tempfile.TemporaryDirectory(prefix="advguard-quickstart-") as tmp:
        out = Path(output_dir) if output_dir is not None else Path(tmp)
        started = time.perf_counter()
        result = train(config, output_dir=out / "model", progress=progress,
                       resume=output_dir is not None)
        trained = time.perf_counter() - started
        data = first_n(load_dataset("fashion-mnist-sample", "test"), N_EXAMPLES)
        report = QuickstartReport(header=["defense", "clean %", "oblivious PGD %",
                                          "adaptive worst case %", "flags"])
        for label, defense, steps in _evaluations():
            eval_config = EvalConfig(
                name=f"quickstart: {label}", dataset="fashion-mnist-sample", n=N_EXAMPLES,
                defense=defense, eps=EPS, steps=tuple(StepSpec.from_dict(s) for s in steps),
                runs=5, seed=0, device=device,
                batch_size=N_EXAMPLES, checks=True, check_examples=32)
            summary = evaluate(eval_config, store=out / STORE_FILE, model=result.model,
                               data=data, progress=False)
            oblivious = next((s for s in summary.steps if s.setting == "oblivious"), None)
            flags = ", ".join(sorted({f.flag for f in summary.fired_flags})) or "none"
            report.rows.append([label, pct(summary.clean_acc),
                                pct(oblivious.robust_acc) if oblivious else "—",
                                pct(summary.robust_acc), flags])
        total = time.perf_counter() - started
        report.notes += [
            f"SmallCNN trained {config.epochs} epochs on the F-MNIST sample "
            f"({100 * result.record.final['test_acc']:.1f}% on its 1,000 test images) in "
            f"{trained:.0f} s; attacks on the first {N_EXAMPLES} test images, L∞ ε = {EPS}, "
            f"PGD-10; {total:.0f} s in all on {device}.",
            "Oblivious: PGD crafted on the undefended model, then classified by the defense "
            "(the protocol of many defense papers).",
            "Adaptive worst case: an example counts as robust only if it survives the oblivious "
            "attack and PGD through the defense (BPDA for bit depth, EOT-10 for noise; for CAP "
            "both its exact gradient and the BPDA soft-sign surrogate; for SMOOTH the soft vote "
            "over the same 8 draws as surrogate), in every one of 5 runs for the randomized "
            "defenses (CAP with all 9 non-predicted labels is deterministic).",
            "The last row attacks bit depth without BPDA: its gradients are zero, PGD cannot move,"
            " and the reliability flags (zero_gradients, eps_insensitive) say the number is not "
            "to be trusted; randomized_output says the noise defense needs EOT and repeated runs."
            " Flags are explained in reports: see `advguard eval --help`, `advguard report "
            "--help`.",
        ]
        if output_dir is not None:
            report.notes.append(f"checkpoint: {result.checkpoint}; records: "
                                f"{out / STORE_FILE}")
    return report
