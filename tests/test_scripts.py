"""The result scripts (scripts/*.py): a bad argument or a missing file is one line on stderr
with exit 2, never a traceback (checked in process: their ``main`` under ``_common.run``, as
``python scripts/NAME.py`` runs it); a small run, as a real command, writes its table."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from advguard.checkpoint import save_checkpoint
from advguard.models import create_model

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True,
                          text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})


def _module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return importlib.import_module(name)


def _main(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run a script's main in this process as ``python scripts/NAME.py ARGS`` would."""
    module = _module(name, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    try:
        return int(_module("_common", monkeypatch).run(module.main))
    except SystemExit as exc:  # argparse's usage error
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def f_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = create_model("lenet5", num_classes=10, in_channels=1, seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("scripts") / "f_b.safetensors", model,
                           metadata={"dataset": "fashion-mnist-sample"})


def test_expected_distance_writes_its_table(f_b: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    res = _run("advt_expected_distance.py", "--f_b", f"Untrained={f_b}", "--dataset",
               "fashion-mnist-sample", "--n", "3", "--samples", "2", "--delta", "0.3",
               "--output", str(out))
    assert res.returncode == 0, res.stderr
    row = [line for line in out.read_text().splitlines() if line.startswith("| Untrained |")]
    assert len(row) == 1
    distance = float(row[0].split("|")[3])
    assert 0.0 < distance <= 0.3 + 1e-6  # E g(x) stays in the Delta-ball


@pytest.mark.parametrize(("args", "message"), [
    (["--f_b", "no-equals-sign"], "expected LABEL=PATH"),
    (["--f_b", "=path"], "expected LABEL=PATH"),
    (["--f_b", "x={f_b}", "--n", "0"], "--n: must be >= 1"),
    (["--f_b", "x={f_b}", "--samples", "many"], "expected an integer"),
    (["--f_b", "x={f_b}", "--delta", "nan"], "finite number > 0"),
    (["--f_b", "x={f_b}", "--delta", "2", "--n", "1", "--samples", "1", "--dataset",
      "fashion-mnist-sample"], "delta must be in (0, 1]"),
    (["--f_b", "x=/no/such/f_b.safetensors", "--dataset", "fashion-mnist-sample"],
     "checkpoint not found"),
    (["--f_b", "x={f_b}", "--dataset", "no-such-set"], "unknown dataset"),
    (["--f_b", "x={f_b}", "--dataset", "fashion-mnist-sample", "--n", "1", "--samples", "1",
      "--output", "/proc/no/such/dir/table.md"], "error:"),
])
def test_expected_distance_bad_input_is_one_line(
        f_b: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = _main("advt_expected_distance", [a.format(f_b=f_b) for a in args], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err.strip().splitlines()[-1]


@pytest.mark.parametrize("script", ["post_neighbour_accuracy", "post_gradient_consistency"])
def test_post_scripts_refuse_bad_numbers_and_missing_models(
        script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    missing = ["--model", "/no/such/model.safetensors"]
    assert _main(script, [*missing, "--eps", "-0.1"], monkeypatch) == 2
    assert "--eps: must be a finite number > 0" in capsys.readouterr().err
    assert _main(script, [*missing, "--dataset", "fashion-mnist-sample", "--n", "2"],
                 monkeypatch) == 2
    assert "not found" in capsys.readouterr().err.strip().splitlines()[-1]
