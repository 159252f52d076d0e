"""Attack presets (issue 12): composed from a defense's traits, the default when an evaluation
names no attacks, recorded with their resolved steps."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from advguard.checkpoint import save_checkpoint
from advguard.data import ImageDataset, first_n
from advguard.defenses import build_defense
from advguard.errors import ConfigError
from advguard.evaluation import EvalConfig, RecordStore, evaluate
from advguard.evaluation.presets import PRESETS, preset_revision, resolve_preset
from advguard.evaluation.store import ExampleRecord, OutcomeRecord


def _steps(spec: dict[str, object], model: nn.Module, preset: str = "auto"
           ) -> tuple[str, list[tuple[str, str, dict[str, object], int, bool | None, str]]]:
    name, steps = resolve_preset(preset, build_defense(spec, model), 0.1)
    return name, [(s.setting, s.attack, s.params, s.eot, s.bpda, s.eot_objective) for s in steps]


def test_auto_composes_the_cascade_from_the_traits(fmnist_model: nn.Module) -> None:
    # deterministic and differentiable: no oblivious step (the base model is the model)
    name, steps = _steps({"name": "none"}, fmnist_model)
    assert name == "standard"
    assert [(s[0], s[2]) for s in steps] == [
        ("adaptive", {"steps": 100, "loss": "ce"}), ("adaptive", {"steps": 100, "targets": 9})]
    # not differentiable: BPDA is decided by the setting from the traits; an oblivious step first
    name, steps = _steps({"name": "bit_depth", "bits": 2}, fmnist_model)
    assert name == "standard" and [s[0] for s in steps] == ["oblivious", "adaptive", "adaptive"]
    # randomized: rand, EOT over 20 draws on the expected softmax
    name, steps = _steps({"name": "gaussian_noise", "sigma": 0.2}, fmnist_model)
    assert name == "rand"
    assert all(s[3] == 20 and s[5] == "expected_softmax" for s in steps if s[0] == "adaptive")
    assert steps[-1][2] == {"steps": 100, "targets": 3}
    # a vote over m = 8 draws per call: EOT sized in draws, ceil(20 / 8) = 3 calls
    _, steps = _steps({"name": "smoothing", "m": 8, "sigma": 0.2, "vote": "prediction"},
                      fmnist_model)
    assert {s[3] for s in steps if s[0] == "adaptive"} == {3}
    # dynamic and differentiable (CAP with all 9 non-predicted labels): the BPDA surrogate too
    name, steps = _steps({"name": "cap", "n_labels": 9, "alpha": 0.05, "mu": 0.1}, fmnist_model)
    assert name == "standard" and [s[4] for s in steps] == [None, None, True, None]
    # quick: the reduced budget
    _, steps = _steps({"name": "gaussian_noise", "sigma": 0.2}, fmnist_model, "quick")
    assert steps[1][2] == {"steps": 20, "loss": "ce"} and steps[1][3] == 4
    assert PRESETS.get("quick").reduced and not PRESETS.get("standard").reduced
    none = build_defense({"name": "none"}, fmnist_model)
    assert resolve_preset("none", none, 0.1) == ("none", [])


def test_randomized_dynamic_defenses_get_a_fixed_step_pgd_in_a_new_revision(
        fmnist_model: nn.Module) -> None:
    """Issue 12: on CAP + Xie, APGD with EOT missed an image that a fixed-step PGD with EOT
    fooled. Randomized dynamic defenses get that PGD as a last step, under revision 2 of the
    preset (a new evaluation id); every other defense keeps revision 1 and its steps."""
    cap_random = build_defense({"name": "cap", "n_labels": 3, "alpha": 0.05, "mu": 0.1},
                               fmnist_model)
    assert cap_random.traits.randomized and cap_random.traits.dynamic
    name, steps = resolve_preset("auto", cap_random, 0.2)
    assert name == "rand" and preset_revision("auto", cap_random) == 2
    last = steps[-1]
    assert (last.setting, last.attack, last.eot, last.eot_objective) == \
        ("adaptive", "pgd", 20, "mean_loss")
    assert last.params == {"steps": 100, "alpha": pytest.approx(0.02)}
    assert [s.attack for s in steps[:-1]] == ["auto-pgd"] * 4  # revision 1's steps, in order
    for spec in ({"name": "gaussian_noise", "sigma": 0.2}, {"name": "none"},
                 {"name": "cap", "n_labels": 9, "alpha": 0.05, "mu": 0.1}):
        defense = build_defense(spec, fmnist_model)
        assert preset_revision("auto", defense) == 1
        assert all(s.attack == "auto-pgd" for s in resolve_preset("auto", defense, 0.1)[1])
    config = EvalConfig(eps=0.1)
    assert config.identity("fp", 2) != config.identity("fp") == config.identity("fp", 1)
    assert config.replace(preset="none").identity("fp", 2) == \
        config.replace(preset="none").identity("fp")


def test_presets_are_the_default_and_are_recorded(tmp_path: Path, fmnist_model: nn.Module,
                                                  fmnist_sample_test: ImageDataset) -> None:
    data = first_n(fmnist_sample_test, 20)
    config = EvalConfig(name="default", dataset="fashion-mnist-sample", n=20, eps=0.1,
                        checks=False, device="cpu", preset=None)
    assert config.preset_name == "auto"
    explicit = config.replace(steps=({"setting": "adaptive", "attack": "pgd", "steps": 2},))
    assert explicit.preset_name == "none"          # explicit steps alone: no preset added
    store = tmp_path / "r.sqlite"
    summary = evaluate(config.replace(preset="quick"), store=store, model=fmnist_model,
                       data=data, progress=False)
    assert [s.label for s in summary.steps] == ["quick: adaptive APGD-CE-20 (exact gradient)",
                                                "quick: adaptive APGD-T-20×1 (exact gradient)"]
    with RecordStore(store) as db:
        recorded = db.evaluation(summary.eval_id)["config"]
    assert recorded["preset"] == "quick"
    assert [s["attack"] for s in recorded["steps"]] == ["auto-pgd", "auto-pgd"]
    assert recorded["steps"][1]["params"] == {"steps": 20, "targets": 1}
    # the same steps written out run the same attacks (a different id: the preset is hashed by
    # name), with the same per-example outcomes
    same = config.replace(preset="none", steps=tuple(recorded["steps"]))
    again = evaluate(same, store=store, model=fmnist_model, data=data, progress=False)
    assert again.eval_id != summary.eval_id
    assert again.robust_acc == summary.robust_acc <= summary.clean_acc
    # no steps and no preset is the auto preset: the same evaluation as naming it
    assert config.identity("fp") == config.replace(preset="auto").identity("fp")
    assert config.identity("fp") != config.replace(preset="quick").identity("fp")


def test_ids_of_configs_without_a_preset_are_unchanged() -> None:
    """Records made before presets existed resume under the same ids: an explicit cascade's id
    hashes exactly the fields it hashed before (no ``preset``, no ``eot_objective`` at its
    default)."""
    import hashlib
    import json

    config = EvalConfig(name="x", model="m.safetensors", eps=0.1, steps=(
        {"setting": "adaptive", "attack": "pgd", "steps": 10, "alpha": 0.01},))
    old = config.to_dict()                         # the payload of the earlier schema
    for key in ("device", "name", "preset", "val_size", "val_seed"):  # fields added later
        old.pop(key)
    for step in old["steps"]:
        step.pop("label")
        step.pop("eot_objective")
    old["model"] = "fp"
    expected = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()
                              ).hexdigest()[:16]
    assert config.identity("fp") == expected
    assert config.replace(preset="none").identity("fp") == expected
    assert config.replace(preset="rand").identity("fp") != expected
    changed = config.replace(steps=({"setting": "adaptive", "attack": "pgd", "steps": 10,
                                     "alpha": 0.01, "eot_objective": "expected_softmax"},))
    assert changed.identity("fp") != config.identity("fp")


def test_bad_presets_are_refused(tmp_path: Path, fmnist_model: nn.Module,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="unknown attack preset 'rnad'; did you mean 'rand'"):
        EvalConfig(eps=0.1, preset="rnad")
    from advguard.cli import main

    ckpt = save_checkpoint(tmp_path / "m.safetensors", fmnist_model)
    assert main(["eval", "--model", str(ckpt), "--preset", "strong", "--eps", "0.1",
                 "--store", str(tmp_path / "r.sqlite")]) == 2
    assert "unknown attack preset 'strong'" in capsys.readouterr().err


def test_cli_eval_without_attacks_runs_the_default_preset(
        tmp_path: Path, fmnist_model: nn.Module, capsys: pytest.CaptureFixture[str]) -> None:
    from advguard.cli import main

    ckpt = save_checkpoint(tmp_path / "m.safetensors", fmnist_model)
    assert main(["eval", "--model", str(ckpt), "--eps", "0.1", "--n", "12", "--no-checks",
                 "--quiet", "--device", "cpu", "--store", str(tmp_path / "r.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "standard: adaptive APGD-CE-100 (exact gradient)" in out
    assert "standard: adaptive APGD-T-100×9" in out


def _records(store: Path, eval_id: str) -> tuple[list[ExampleRecord], list[OutcomeRecord]]:
    with RecordStore(store) as db:
        return list(db.examples(eval_id)), list(db.outcomes(eval_id))


def test_an_added_step_extends_earlier_records_exactly(
        tmp_path: Path, fmnist_model: nn.Module, fmnist_sample_test: ImageDataset) -> None:
    """Appending a step to an explicit cascade reuses the records of the shorter one (only the
    new step runs, on the survivors) and gives exactly the records of computing it whole; an
    interrupted shorter evaluation is extended where it finished and computed whole elsewhere."""
    data = first_n(fmnist_sample_test, 15)
    first = {"setting": "adaptive", "attack": "pgd", "steps": 2, "alpha": 0.02, "eot": 2}
    added = {"setting": "adaptive", "attack": "pgd", "steps": 3, "alpha": 0.05, "eot": 2}
    base = EvalConfig(dataset="fashion-mnist-sample", n=15, eps=0.05, runs=2, batch_size=5,
                      checks=False, device="cpu", defense={"name": "gaussian_noise",
                                                           "sigma": 0.3})
    short, full = base.replace(steps=(first,)), base.replace(steps=(first, added))
    store = tmp_path / "a.sqlite"

    class Stop(Exception):
        pass

    def stop_after_two(chunk: int) -> None:
        if chunk == 1:
            raise Stop

    with pytest.raises(Stop):
        evaluate(short, store=store, model=fmnist_model, data=data, progress=False,
                 on_chunk=stop_after_two)
    extended = evaluate(full, store=store, model=fmnist_model, data=data, progress=False)
    whole = evaluate(full, store=tmp_path / "b.sqlite", model=fmnist_model, data=data,
                     progress=False)
    assert extended.eval_id == whole.eval_id
    assert _records(store, extended.eval_id) == _records(tmp_path / "b.sqlite", whole.eval_id)
    with RecordStore(store) as db:
        info = db.evaluation(extended.eval_id)
        parent = short.identity(info["environment"]["model_fingerprint"]
                                + "/fashion-mnist-sample/test/15")
        assert info["environment"]["extends"] == {"evaluation": parent, "steps": 1}
    from advguard.reports import markdown_report

    assert f"extends evaluation `{parent}`: the clean runs and step 0 of the chunks" in \
        markdown_report([extended])
    with RecordStore(store) as db:
        # chunk 0 was extended: its clean and step-0 records and timings are the shorter
        # evaluation's, copied (not recomputed); chunk 2 was computed whole
        _, out0, _, secs0 = db.chunk_records(parent, 0)
        _, out1, _, secs1 = db.chunk_records(extended.eval_id, 0)
        assert set(out0) <= set(out1) and {-1: secs0[-1], 0: secs0[0]} == \
            {-1: secs1[-1], 0: secs1[0]} and 1 in secs1
        assert 2 not in db.finished_chunks(parent)
        # the commits that computed the copied records are named with the extended evaluation's
        db._db.execute("UPDATE chunk_environments SET environment="
                       "json_set(environment, '$.git_commit', 'earlier') WHERE eval_id=?",
                       (parent,))
        db._db.commit()
        from advguard.evaluation.summary import summarize

        commits = [e.get("git_commit") for e in summarize(db, extended.eval_id).computed_in]
        assert commits[0] == "earlier" and len(commits) == 2


def test_a_new_preset_revision_extends_the_records_of_the_old_one(
        tmp_path: Path, fmnist_model: nn.Module, fmnist_sample_test: ImageDataset,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Records made under revision 1 of a preset (CAP with 3 random labels: randomized and
    dynamic) stay under their id; the revision-2 evaluation extends them with its added step and
    equals computing revision 2 whole."""
    from advguard.evaluation.presets import Preset

    data = first_n(fmnist_sample_test, 6)
    config = EvalConfig(dataset="fashion-mnist-sample", n=6, eps=0.1, runs=2, batch_size=3,
                        checks=False, device="cpu", preset="quick",
                        defense={"name": "cap", "n_labels": 3, "alpha": 0.05, "mu": 0.1})
    store = tmp_path / "a.sqlite"
    with monkeypatch.context() as patch:  # the composition as it was before revision 2
        patch.setattr(Preset, "revision", lambda self, defense: 1)
        old = evaluate(config, store=store, model=fmnist_model, data=data, progress=False)
    assert len(old.steps) == 4
    new = evaluate(config, store=store, model=fmnist_model, data=data, progress=False)
    assert new.eval_id != old.eval_id and len(new.steps) == 5
    assert new.steps[-1].label.startswith("quick: adaptive PGD-20, step ε/10")
    whole = evaluate(config, store=tmp_path / "b.sqlite", model=fmnist_model, data=data,
                     progress=False)
    assert _records(store, new.eval_id) == _records(tmp_path / "b.sqlite", whole.eval_id)
    old_outcomes = _records(store, old.eval_id)[1]
    assert [o for o in _records(store, new.eval_id)[1] if o.step < 4] == old_outcomes
    with RecordStore(store) as db:
        assert db.evaluation(new.eval_id)["environment"]["extends"] == {
            "evaluation": old.eval_id, "steps": 4}
