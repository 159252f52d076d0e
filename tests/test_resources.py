"""Trained parts and data referenced by a defense spec: loaded, frozen and checked against the
protected model before any work starts (advguard.defenses.resources)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from advguard.checkpoint import save_checkpoint
from advguard.defenses import Defense, Traits, load_checkpoint_part, load_data_part
from advguard.defenses.resources import InputFacts, input_facts
from advguard.errors import ConfigError
from advguard.models import create_model


def _model(**kw: Any) -> nn.Module:
    torch.manual_seed(0)
    return create_model("lenet5", in_channels=kw.pop("in_channels", 1), **kw).eval()


def _saved(tmp_path: Path, name: str, dataset: str | None = "fashion-mnist", **kw: Any) -> Path:
    meta = {"dataset": dataset} if dataset else {}
    return save_checkpoint(tmp_path / f"{name}.safetensors", _model(**kw), metadata=meta)


def test_a_matching_part_is_loaded_frozen_in_eval_mode_with_its_weights(tmp_path: Path) -> None:
    path = _saved(tmp_path, "f_b")
    part = load_checkpoint_part(path, like=_model(), role="f_b")
    assert not part.training and not any(p.requires_grad for p in part.parameters())
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(part(x), _model()(x))  # the saved weights, not a fresh init
    assert input_facts(part) == InputFacts(
        dataset="fashion-mnist", num_classes=10, channels=1, size=28)


@pytest.mark.parametrize(("kw", "dataset", "message"), [
    ({"num_classes": 5}, "fashion-mnist", "num_classes 5 vs 10"),
    ({"in_channels": 3}, "fashion-mnist", "channels 3 vs 1"),
    ({"input_size": 32}, "fashion-mnist", "size 32 vs 28"),
    ({}, "mnist", "dataset 'mnist' vs 'fashion-mnist'"),
])
def test_a_part_built_for_other_inputs_is_refused_naming_the_mismatch(
        tmp_path: Path, kw: dict[str, Any], dataset: str, message: str) -> None:
    like = load_checkpoint_part(_saved(tmp_path, "model"), like=None, role="model")
    with pytest.raises(ConfigError, match=f"f_b was built for other inputs.*{message}"):
        load_checkpoint_part(_saved(tmp_path, "f_b", dataset=dataset, **kw), like=like,
                             role="f_b")


def test_same_task_datasets_and_purifiers_are_accepted(tmp_path: Path) -> None:
    like = load_checkpoint_part(_saved(tmp_path, "model"), like=None, role="model")
    sample = _saved(tmp_path, "sample", dataset="fashion-mnist-sample")
    assert load_checkpoint_part(sample, like=like, role="f_b") is not None  # same classes/shape
    other = _saved(tmp_path, "purifier", num_classes=3)
    load_checkpoint_part(other, like=like, role="purifier", same_classes=False)
    with pytest.raises(ConfigError, match="num_classes 3 vs 10"):
        load_checkpoint_part(other, like=like, role="purifier")


def test_missing_or_foreign_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^f_b: checkpoint '.*nope.safetensors' not found$"):
        load_checkpoint_part(tmp_path / "nope.safetensors", like=None, role="f_b")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"^f_b: "):
        load_checkpoint_part(junk, like=None, role="f_b")
    with pytest.raises(ConfigError, match="expected a checkpoint path or a module, got int"):
        load_checkpoint_part(3, like=None, role="f_b")  # type: ignore[arg-type]


def test_data_parts_must_fit_the_model() -> None:
    data = load_data_part("fashion-mnist-sample", split="test", like=_model(), role="post data")
    assert data.images.shape[1:] == (1, 28, 28) and len(data) == 1000
    with pytest.raises(ConfigError, match=r"post data: dataset 'fashion-mnist-sample' does not "
                                          "fit.*channels 1 vs 3"):
        load_data_part("fashion-mnist-sample", like=_model(in_channels=3), role="post data")
    with pytest.raises(ConfigError, match="post data: unknown dataset 'fashion-mnst'"):
        load_data_part("fashion-mnst", like=None, role="post data")


class _WithPart(Defense):
    """A defense with a trained part, as AdvT/ADD will be: the part resolves in the constructor."""

    traits = Traits(randomized=False, differentiable=True)

    def __init__(self, model: nn.Module, *, f_b: str) -> None:
        super().__init__()
        self.model = model
        self.f_b = load_checkpoint_part(f_b, like=model, role="f_b")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 0 * self.f_b(x)


def test_a_spec_with_a_bad_part_fails_at_build_time(tmp_path: Path) -> None:
    model = load_checkpoint_part(_saved(tmp_path, "model"), like=None, role="model")
    good = _WithPart.from_spec(model, {"f_b": str(_saved(tmp_path, "f_b"))})
    assert good(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="num_classes 5 vs 10"):
        _WithPart.from_spec(model, {"f_b": str(_saved(tmp_path, "bad", num_classes=5))})
