"""``advguard quickstart``: a short, complete tour on the Fashion-MNIST sample shipped inside the
package — no download, CPU only, about a minute on two cores.

1. train the small CNN of ``configs/train/quickstart.yaml`` on the sample's training split;
2. attack it with the default attack preset (APGD-CE and APGD-T, no defense);
3. put each reference defense in front of it — bit-depth reduction (deterministic, not
   differentiable) and Gaussian input noise (randomized) — and evaluate each under the
   *oblivious* protocol (attack the undefended model, as many papers do) and then under the
   *adaptive* one (BPDA through the quantizer, EOT over the noise), as one worst-case cascade
   (the presets of :mod:`advguard.evaluation.presets`; the randomized and dynamic rows at the
   reduced ``quick`` budget, with the command for the full-strength evaluation printed);
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
from advguard.errors import ConfigError, OutputError
from advguard.evaluation import EvalConfig, StepSpec, evaluate
from advguard.evaluation.presets import PRESETS
from advguard.files import check_creatable, file_kind
from advguard.reports import pct
from advguard.reports.render import render_table
from advguard.training import TrainConfig, train
from advguard.training.loop import check_run_dir

QUICKSTART_CONFIG = "train/quickstart"
EPS = 0.1
N_EXAMPLES = 200
STORE_FILE = "records.sqlite"


@dataclass
class QuickstartReport:
    """Rows of the printed table plus free-text notes."""

    header: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        return "\n".join([render_table(self.header, self.rows), "", *self.notes])


@dataclass(frozen=True)
class Row:
    """One quickstart evaluation: a label, a defense spec, explicit steps and a preset."""

    label: str
    defense: dict[str, Any]
    steps: tuple[dict[str, Any], ...] = ()
    preset: str = "standard"


def _evaluations() -> list[Row]:
    """The rows: the undefended model at the full ``standard`` preset, the defenses at the
    reduced ``quick`` preset (a gradient through CAP or SMOOTH costs 8 to 20 forward passes)."""
    return [
        Row("no defense", {"name": "none"}),
        Row("bit depth (2 bits)", {"name": "bit_depth", "bits": 2}, preset="quick"),
        Row("Gaussian noise (σ=0.2)", {"name": "gaussian_noise", "sigma": 0.2}, preset="quick"),
        Row("bit depth, naive attack (no BPDA)", {"name": "bit_depth", "bits": 2},
            ({"setting": "adaptive", "attack": "auto-pgd", "steps": 20, "bpda": False,
              "label": "naive APGD-CE-20 (no BPDA)"},), preset="none"),
        Row("CAP (N=9, α=0.05, μ=0.1)", {"name": "cap", "n_labels": 9, "alpha": 0.05, "mu": 0.1},
            preset="quick"),
        Row("SMOOTH (m=8, σ=0.2, prediction vote)",
            {"name": "smoothing", "m": 8, "sigma": 0.2, "vote": "prediction"}, preset="quick"),
    ]


def full_strength_command(row: Row, checkpoint: str, n: int) -> str:
    """The ``advguard eval`` command that runs ``row`` with the default (full-strength) preset."""
    import json

    spec = json.dumps(row.defense, ensure_ascii=False).replace('"', "")
    return (f"advguard eval --model {checkpoint} --dataset fashion-mnist-sample --n {n} "
            f"--eps {EPS} --defense \"{spec}\" --preset auto")


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
                   progress: bool = True, device: str = "cpu",
                   n_examples: int = N_EXAMPLES) -> QuickstartReport:
    """Train the small CNN on the embedded sample, attack it with and without the reference and
    paper defenses, and return the table. Checkpoint and records land in ``output_dir`` (a
    temporary directory when None); ``n_examples``: test images attacked (200)."""
    if not 1 <= n_examples <= 1000:
        raise ConfigError(f"the number of test images (--n) must be in [1, 1000] (the "
                          f"sample's test split), got {n_examples}")
    config = TrainConfig.from_file(config_path(QUICKSTART_CONFIG), device=device, epochs=epochs)
    if output_dir is not None:
        check_output_dir(Path(output_dir))
    with tempfile.TemporaryDirectory(prefix="advguard-quickstart-") as tmp:
        out = Path(output_dir) if output_dir is not None else Path(tmp)
        started = time.perf_counter()
        result = train(config, output_dir=out / "model", progress=progress,
                       resume=output_dir is not None)
        trained = time.perf_counter() - started
        data = first_n(load_dataset("fashion-mnist-sample", "test"), n_examples)
        report = QuickstartReport(header=["defense", "clean %", "oblivious %",
                                          "adaptive worst case %", "attacks", "flags"])
        reduced: list[Row] = []
        for row in _evaluations():
            eval_config = EvalConfig(
                name=f"quickstart: {row.label}", dataset="fashion-mnist-sample", n=n_examples,
                defense=row.defense, eps=EPS,
                steps=tuple(StepSpec.from_dict(s) for s in row.steps), preset=row.preset,
                runs=5, seed=0, device=device, batch_size=n_examples, checks=True,
                check_examples=16)
            summary = evaluate(eval_config, store=out / STORE_FILE, model=result.model,
                               data=data, progress=False)
            oblivious = next((s for s in summary.steps if s.setting == "oblivious"), None)
            flags = ", ".join(sorted({f.flag for f in summary.fired_flags})) or "none"
            preset = PRESETS.get(row.preset) if row.preset in PRESETS else None
            if preset is not None and preset.reduced:
                reduced.append(row)
            budget = "one naive step" if preset is None else \
                f"{row.preset}{' (reduced)' if preset.reduced else ''}"
            report.rows.append([row.label, pct(summary.clean_acc),
                                pct(oblivious.robust_acc) if oblivious else "—",
                                pct(summary.robust_acc), budget, flags])
        total = time.perf_counter() - started
        checkpoint = str(out / "model" / "model.safetensors") if output_dir is not None \
            else "runs/quick/model/model.safetensors"
        report.notes += [
            f"SmallCNN trained {config.epochs} epochs on the F-MNIST sample "
            f"({100 * result.record.final['test_acc']:.1f}% on its 1,000 test images) in "
            f"{trained:.0f} s; attacks on the first {n_examples} test images, L∞ ε = {EPS}; "
            f"{total:.0f} s in all on {device}.",
            "Attacks: advguard's attack presets, composed from each defense's declared traits "
            "(`advguard eval --help`): 'standard' = APGD-CE-100 and APGD-T-100 over 9 target "
            "classes (the gradient attacks of AutoAttack standard); 'quick' = APGD-CE-20 and "
            "APGD-T-20 over 1 target, EOT over 4 draws. Through the defense: BPDA for bit depth, "
            "EOT on the expected softmax for the noise, CAP's exact gradient and its soft-sign "
            "surrogate, SMOOTH's soft vote over the same 8 draws.",
            "Oblivious: APGD crafted on the undefended model, then classified by the defense (the "
            "protocol of many defense papers). Adaptive worst case: robust only if the example "
            "survives every attack, in every one of 5 runs for the randomized defenses (CAP with "
            "all 9 non-predicted labels is deterministic).",
            "The naive row attacks bit depth without BPDA: its gradients are zero, the attack "
            "cannot move, and the reliability flags (zero_gradients, eps_insensitive) say the "
            "number is not to be trusted; randomized_output says the noise defense needs EOT and "
            "repeated runs. Flags are explained in reports: see `advguard report --help`.",
        ]
        if reduced:
            report.notes.append(
                "Reduced budget (to keep the quickstart short on a CPU): "
                + ", ".join(r.label for r in reduced) + ". Their full-strength numbers (the "
                "default preset 'auto': 'standard' = 100 iterations and 9 targets for the "
                "deterministic ones, 'rand' = 100 iterations, 3 targets and EOT over 20 draws for "
                "the randomized ones) are expected to be lower or equal; run"
                + ("" if output_dir is not None else
                   " `advguard quickstart --output runs/quick` to keep the checkpoint, then")
                + ":")
            report.notes += [f"  {full_strength_command(r, checkpoint, n_examples)}"
                             for r in reduced]
        if output_dir is not None:
            report.notes.append(f"checkpoint: {result.checkpoint}; records: "
                                f"{out / STORE_FILE}")
    return report
