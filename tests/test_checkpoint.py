"""Checkpoints: exact round trips, no pickles, clear errors."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from advguard.checkpoint import (
    load_checkpoint,
    load_state,
    load_state_dict_file,
    read_metadata,
    save_checkpoint,
    save_state,
)
from advguard.errors import CheckpointError
from advguard.models import create_model


def _model() -> torch.nn.Module:
    return create_model("lenet5", num_classes=10, in_channels=1, mean=[0.3], std=[0.2], seed=1)


def test_checkpoint_round_trip_reproduces_outputs_and_metadata(tmp_path: Path) -> None:
    model = _model().eval()
    x = torch.rand(4, 1, 28, 28)
    meta = {"dataset": "fashion-mnist", "seed": 3, "metrics": {"test_acc": 0.9},
            "history": [{"epoch": 1, "lr": 0.1}]}
    path = save_checkpoint(tmp_path / "m.safetensors", model, metadata=meta)
    loaded, record = load_checkpoint(path)
    assert torch.equal(loaded(x), model(x))
    assert record["dataset"] == "fashion-mnist" and record["metrics"] == {"test_acc": 0.9}
    assert record["model"]["name"] == "lenet5"
    assert record["model"]["mean"] == [0.3]
    assert "git_commit" in record["environment"] and "advguard" in record["environment"]
    assert read_metadata(path)["seed"] == 3
    assert not loaded.training


def test_checkpoint_refuses_foreign_or_corrupt_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw.safetensors"
    save_file({"w": torch.zeros(2)}, str(raw))
    with pytest.raises(CheckpointError, match="not an advguard checkpoint"):
        load_checkpoint(raw)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_checkpoint_with_mismatched_weights_is_rejected(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("touch /tmp/advguard_pwned_marker",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/advguard_pwned_marker")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"weight": _Exploit()}, f, protocol=2)  # torch.save's protocol
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_state_dict_file(evil)
    assert not marker.exists()


def test_plain_pt_weights_load_with_weights_only(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "w.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    weights = load_state_dict_file(path)
    assert set(weights) == set(model.state_dict())


def test_state_round_trip_keeps_structure(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(5)
    state = {
        "optimizer": {"state": {0: {"momentum_buffer": torch.randn(3)}},
                      "param_groups": [{"lr": 0.1, "params": [0]}]},
        "tuple": (1, 2.5, "x"), "inf": math.inf, "none": None, "gen": gen.get_state(),
        "nested": [[torch.arange(4)], {"__weird": 1}],
    }
    path = save_state(tmp_path / "s.safetensors", state)
    back = load_state(path)
    assert back["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert torch.equal(back["optimizer"]["state"][0]["momentum_buffer"],
                       state["optimizer"]["state"][0]["momentum_buffer"])
    assert back["tuple"] == (1, 2.5, "x") and back["inf"] == math.inf and back["none"] is None
    assert torch.equal(back["nested"][0][0], torch.arange(4))
    assert back["nested"][1] == {"__weird": 1}
    restored = torch.Generator()
    restored.set_state(back["gen"])
    assert torch.equal(torch.rand(3, generator=restored), torch.rand(3, generator=gen))


def test_metadata_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "m.safetensors", _model(), metadata={"t": torch.ones(1)})


def test_git_commit_outside_a_checkout_reads_the_archived_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source tree exported with ``git archive`` (outside any checkout) still records the commit
    it came from: ``export-subst`` stamps it into ``advguard/COMMIT``."""
    import subprocess

    from advguard import utils

    def no_git(*args: object, **kwargs: object) -> None:
        raise OSError("git: not a repository")

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setattr(utils, "__file__", str(tmp_path / "utils.py"))
    assert utils.git_commit() is None  # no COMMIT file
    (tmp_path / "COMMIT").write_text("$Format:%H$\n")  # a checkout's copy: not substituted
    assert utils.git_commit() is None
    (tmp_path / "COMMIT").write_text("0123456789abcdef0123456789abcdef01234567\n")
    assert utils.git_commit() == "0123456789abcdef0123456789abcdef01234567"
    assert utils.git_commit(tmp_path) is None  # another tree: no stamp of ours applies
