"""Adversarial examples are checked against copies the attack never saw: an attack that moves
its input tensor in place is caught, and the harness re-checks every example it classifies
(ε-ball, bounds, finite, shape) against its own untouched inputs before recording anything."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from advguard.attacks import PGD
from advguard.attacks.base import Attack, AttackResult
from advguard.checkpoint import save_checkpoint
from advguard.errors import AttackVerificationError
from advguard.evaluation import EvalConfig, evaluate
from advguard.evaluation import harness as harness_module


@dataclasses.dataclass(frozen=True, kw_only=True)
class _InPlace(Attack):
    """Moves the caller's tensor by 2ε in place, then returns a copy inside the moved tensor's
    ε-ball: a check against the (moved) input would pass it."""

    name = "in-place"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        x.add_(2 * self.eps).clamp_(0, 1)
        return x.clone()


def test_an_attack_that_modifies_its_input_in_place_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    with pytest.raises(AttackVerificationError, match="modified its input tensor in place"):
        _InPlace(eps=0.1)(model, x, torch.tensor([0, 1, 2, 0]))
    honest = x.clone()
    PGD(eps=0.1, steps=2)(model, honest, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(honest, x)  # a verified attack leaves the caller's tensor alone


def test_an_attack_cannot_override_the_verifying_call() -> None:
    with pytest.raises(TypeError, match=r"overrides Attack\.__call__, which is final"):
        type("Rogue", (PGD,), {"__call__": lambda self, *a, **k: None})


class _Escaping:
    """Stands in for an attack that escaped its own verification: returns examples 3ε away."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": "escaping"}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: Any
                 ) -> AttackResult:
        adv = (x + 0.3).clamp(0, 1)
        return AttackResult(adv=adv, success=torch.ones(x.shape[0], dtype=torch.bool),
                            target=None, queries=1.0, iterations=1, info={})


def test_the_harness_refuses_to_record_an_example_outside_the_ball(
        tmp_path: Path, fmnist_model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    real = harness_module.prepare_step

    def rogue(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(real(*args, **kwargs), attack=_Escaping())

    monkeypatch.setattr(harness_module, "prepare_step", rogue)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", fmnist_model)
    config = EvalConfig(model=str(ckpt), n=20, batch_size=10, eps=0.1, checks=False,
                        device="cpu", steps=({"setting": "adaptive", "attack": "pgd",
                                              "steps": 1},))  # type: ignore[arg-type]
    store = tmp_path / "s.sqlite"
    with pytest.raises(AttackVerificationError, match=r"step 0 .* left its linf ε-ball: "
                                                      r"distance 0\.3"):
        evaluate(config, store=store, progress=False)
    db = sqlite3.connect(str(store))
    assert db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0
