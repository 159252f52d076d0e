"""Every mistake in a defense spec given on the command line is one line on stderr and exit
status 2 — never a traceback — and is reported before any data is loaded or model evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest

from advguard.checkpoint import save_checkpoint
from advguard.cli import main
from advguard.models import create_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    return save_checkpoint(path, create_model("lenet5", in_channels=1),
                           metadata={"dataset": "fashion-mnist-sample"})


@pytest.mark.parametrize(("spec", "message"), [
    ("{name: cap, n_labels: 0}", "defense 'cap': n_labels must be >= 1, got 0"),
    ("{name: cap, n_label: 3}", "unknown parameter 'n_label' for defense 'cap'; did you mean "
                                "'n_labels'?"),
    ("{name: cap, n_labels: abc}", "defense 'cap': 'n_labels' must be an int, got 'abc'"),
    ("{name: smoothing, vote: majority}", "defense 'smoothing': 'vote' must be one of "
                                          "'prediction', 'weighted', 'soft', got 'majority'; "
                                          "did you mean 'prediction'?"),
    ("{name: xie, size: [20]}", "defense 'xie': size must be [low, high], got [20]"),
    ("{name: guo, size: [5, 3]}", "defense 'guo': size range [5, 3] must satisfy 1 <= low <= "
                                  "high"),
    ("{name: averaged, n: 0, defense: xie}", "defense 'averaged': n must be an int >= 1"),
    ("{name: pipeline, steps: []}", "'pipeline' defense needs a non-empty 'steps' list"),
    ("{name: smoothng}", "unknown defense 'smoothng'; did you mean 'smoothing'"),
    ("{n_labels: 3}", "defense spec needs a 'name'"),
])
def test_bad_defense_specs_are_one_line_errors(
        spec: str, message: str, checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.sqlite"
    code = main(["eval", "--model", str(checkpoint), "--dataset", "fashion-mnist-sample",
                 "--n", "4", "--defense", spec, "--store", str(store), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("advguard: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not store.exists()  # failed before any evaluation was recorded
