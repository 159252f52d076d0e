"""The evaluation harness: worst-case cascade, runs, records, resume after kill -9, flags,
reports, CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from advguard.checkpoint import save_checkpoint
from advguard.data import ImageDataset, first_n
from advguard.errors import ConfigError
from advguard.evaluation import EvalConfig, RecordStore, StepSpec, evaluate, summarize
from advguard.reports import html_report, markdown_report

PGD = {"setting": "adaptive", "attack": "pgd", "steps": 10, "alpha": 0.01}


def _data(fmnist_sample_test: ImageDataset, n: int) -> ImageDataset:
    return first_n(fmnist_sample_test, n)


def _fired(summary, step: int | None = None) -> set[str]:  # type: ignore[no-untyped-def]
    return {f.flag for f in summary.fired_flags if step is None or f.step == step}


def test_plain_model_cascade_and_quiet_flags(tmp_path: Path, fmnist_model: nn.Module,
                                            fmnist_sample_test: ImageDataset) -> None:
    data = _data(fmnist_sample_test, 120)
    config = EvalConfig(name="plain", eps=0.1, batch_size=60, device="cpu", check_examples=40,
                        steps=[{"setting": "adaptive", "attack": "fgsm"}, PGD])
    summary = evaluate(config, store=tmp_path / "r.sqlite", model=fmnist_model, data=data,
                       progress=False)
    with torch.no_grad():
        clean = float((fmnist_model(data.images).argmax(1) == data.labels).float().mean())
    assert summary.clean_acc == pytest.approx(clean)
    assert summary.runs == 1 and summary.n == 120 and summary.complete
    accs = [s.robust_acc for s in summary.steps]
    assert accs[0] <= clean and accs[1] <= accs[0]  # cumulative worst case never rises
    assert summary.robust_acc == accs[-1] < 0.3
    assert _fired(summary) == set()  # a plain differentiable model raises no flag


def test_flags_fire_on_bit_depth_without_bpda(tmp_path: Path, fmnist_model: nn.Module,
                                              fmnist_sample_test: ImageDataset) -> None:
    data = _data(fmnist_sample_test, 80)
    config = EvalConfig(name="bitdepth", eps=0.1, batch_size=80, device="cpu", check_examples=40,
                        defense={"name": "bit_depth", "bits": 2},
                        steps=[{**PGD, "bpda": False}, {"setting": "oblivious", "attack": "pgd",
                                                        "steps": 10, "alpha": 0.01}, PGD])
    summary = evaluate(config, store=tmp_path / "r.sqlite", model=fmnist_model, data=data,
                       progress=False)
    assert {"zero_gradients", "eps_insensitive"} <= _fired(summary, step=0)
    assert "zero_gradients" not in _fired(summary, step=2)  # with BPDA the gradients are fine
    assert "blackbox_beats_whitebox" in _fired(summary)
    no_bpda, oblivious, _ = summary.steps
    assert no_bpda.robust_acc > summary.clean_acc - 0.1  # plain PGD is stopped
    assert oblivious.fooled > 0
    assert summary.strongest == oblivious.label


def test_randomized_defense_runs_and_worst_case(tmp_path: Path, fmnist_model: nn.Module,
                                                fmnist_sample_test: ImageDataset) -> None:
    data = _data(fmnist_sample_test, 60)
    config = EvalConfig(name="noise", eps=0.05, batch_size=60, device="cpu", runs=5, checks=False,
                        defense={"name": "gaussian_noise", "sigma": 0.2},
                        steps=[{**PGD, "eot": 4}])
    path = tmp_path / "r.sqlite"
    summary = evaluate(config, store=path, model=fmnist_model, data=data, progress=False)
    assert summary.runs == 5 and summary.traits["randomized"]
    with RecordStore(path) as store:
        outcomes = store.outcomes(summary.eval_id)
        examples = store.examples(summary.eval_id)
    assert {o.run for o in outcomes} == set(range(5))
    # An example counts as robust only if it survived every run.
    fooled = {o.example for o in outcomes if not o.correct}
    robust = {e.example for e in examples if e.fooled_by is None}
    assert robust.isdisjoint(fooled)
    assert all(e.clean_correct_runs == 5 for e in examples if e.example in robust)
    assert summary.clean_worst <= summary.clean_acc


_KILL_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
from advguard.evaluation import EvalConfig, evaluate

def kill_after_chunk_1(chunk):  # chunks 0 and 1 are committed: die before chunk 2 starts
    if chunk == 1:
        os.kill(os.getpid(), signal.SIGKILL)

evaluate(EvalConfig.from_file(sys.argv[1]), store=sys.argv[2], progress=False,
         on_chunk=kill_after_chunk_1)
"""


def _records(path: Path, eval_id: str) -> tuple[list[tuple], list[tuple]]:
    db = sqlite3.connect(str(path))
    ex = db.execute("SELECT example, label, clean_correct_runs, fooled_by FROM examples WHERE "
                    "eval_id=? ORDER BY example", (eval_id,)).fetchall()
    out = db.execute("SELECT example, step, run, correct, distance FROM outcomes WHERE eval_id=? "
                     "ORDER BY example, step, run", (eval_id,)).fetchall()
    db.close()
    return ex, out


def test_kill_9_after_a_committed_chunk_and_resume_gives_identical_records(
        tmp_path: Path, fmnist_model: nn.Module) -> None:
    """The evaluation kills itself (SIGKILL, no cleanup) right after its 2nd chunk commits."""
    ckpt = save_checkpoint(tmp_path / "m.safetensors", fmnist_model)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"model: {ckpt}\nn: 60\nbatch_size: 20\neps: 0.05\nruns: 2\nchecks: false\n"
        "device: cpu\ndefense: {name: gaussian_noise, sigma: 0.1}\n"
        "steps:\n  - {setting: adaptive, attack: pgd, steps: 5, alpha: 0.02, eot: 2}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    killed, fresh_path = tmp_path / "killed.sqlite", tmp_path / "fresh.sqlite"
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(cfg), str(killed)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    config = EvalConfig.from_file(cfg)
    fresh = evaluate(config, store=fresh_path, progress=False)
    # The killed store holds exactly the two committed chunks, as the uninterrupted run has them.
    db = sqlite3.connect(str(killed))
    chunks = {r[0] for r in db.execute("SELECT chunk FROM chunks WHERE eval_id=?",
                                       (fresh.eval_id,))}
    example_chunks = {r[0] for r in db.execute("SELECT chunk FROM examples WHERE eval_id=?",
                                               (fresh.eval_id,))}
    (status,) = db.execute("SELECT status FROM evaluations WHERE id=?",
                           (fresh.eval_id,)).fetchone()
    db.close()
    assert chunks == example_chunks == {0, 1} and status != "complete"
    ex_killed, out_killed = _records(killed, fresh.eval_id)
    ex_fresh, out_fresh = _records(fresh_path, fresh.eval_id)
    kept = {e[0] for e in ex_killed}
    assert len(kept) == 40
    assert ex_killed == [e for e in ex_fresh if e[0] in kept]
    assert out_killed == [o for o in out_fresh if o[0] in kept] != []
    # A re-run computes only the missing chunk and ends with the uninterrupted run's records.
    computed: list[int] = []
    resumed = evaluate(config, store=killed, progress=False, on_chunk=computed.append)
    assert computed == [2]
    assert resumed.eval_id == fresh.eval_id
    assert _records(killed, resumed.eval_id) == (ex_fresh, out_fresh)
    assert resumed.robust_acc == fresh.robust_acc and resumed.complete


def test_rerun_of_a_finished_evaluation_recomputes_nothing(
        tmp_path: Path, fmnist_model: nn.Module, fmnist_sample_test: ImageDataset,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(fmnist_sample_test, 40)
    config = EvalConfig(eps=0.05, batch_size=20, device="cpu", checks=False, steps=[PGD])
    first = evaluate(config, store=tmp_path / "r.sqlite", model=fmnist_model, data=data,
                     progress=False)
    import advguard.evaluation.harness as harness

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished chunk was recomputed")

    monkeypatch.setattr(harness, "_run_chunk", boom)
    real_env = harness.environment_info
    monkeypatch.setattr(harness, "environment_info",
                        lambda device: {**real_env(device), "git_commit": "a-later-commit"})
    second = evaluate(config, store=tmp_path / "r.sqlite", model=fmnist_model, data=data,
                      progress=False)
    assert second.to_dict() == first.to_dict()
    # the record keeps the environment that computed it, not the one that re-read it
    assert second.environment["git_commit"] == first.environment["git_commit"] != "a-later-commit"


def test_reports_are_generated_from_records(tmp_path: Path, fmnist_model: nn.Module,
                                            fmnist_sample_test: ImageDataset) -> None:
    data = _data(fmnist_sample_test, 40)
    path = tmp_path / "r.sqlite"
    config = EvalConfig(name="report-test", eps=0.05, batch_size=40, device="cpu", checks=False,
                        defense={"name": "bit_depth", "bits": 3}, steps=[PGD])
    summary = evaluate(config, store=path, model=fmnist_model, data=data, progress=False)
    md = markdown_report([summary])
    assert "| report-test | bit_depth(bits=3) |" in md
    assert f"{100 * summary.robust_acc:.1f}" in md
    assert f"{100 * summary.clean_acc:.1f}" in md
    page = html_report([summary])
    assert page.startswith("<!doctype html>") and "report-test" in page
    with RecordStore(path) as store:
        again = summarize(store, summary.eval_id)
    assert again.to_dict() == summary.to_dict()


def test_eval_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eps must be"):
        EvalConfig(eps=-1)
    with pytest.raises(ConfigError, match="evaluation config: unknown key"):
        EvalConfig.from_dict({"epsilon": 0.1})
    with pytest.raises(ConfigError, match="'setting' and 'attack'"):
        StepSpec.from_dict({"attack": "pgd"})
    with pytest.raises(ConfigError, match="step target"):
        StepSpec.from_dict({"setting": "adaptive", "attack": "pgd", "target": "most_likely"})
    # a targeted-only attack without a target fails when the config is read, not mid-experiment
    with pytest.raises(ConfigError, match="genattack is targeted only"):
        StepSpec.from_dict({"setting": "query", "attack": "genattack", "steps": 10})
    assert StepSpec.from_dict({"setting": "query", "attack": "genattack",
                               "target": "random"}).target == "random"
    step = StepSpec.from_dict({"setting": "adaptive", "attack": "pgd", "steps": 7})
    assert step.params == {"steps": 7} and step.display == "adaptive:pgd(steps=7)"
    path = tmp_path / "e.yaml"
    path.write_text("eval:\n  eps: 0.1\n  steps:\n    - {setting: oblivious, attack: fgsm}\n")
    assert EvalConfig.from_file(path).steps[0].setting == "oblivious"


def test_settings_reject_misuse(tmp_path: Path, fmnist_model: nn.Module,
                                fmnist_sample_test: ImageDataset) -> None:
    data = _data(fmnist_sample_test, 10)
    store = tmp_path / "r.sqlite"
    for steps, match in [([{"setting": "transfer", "attack": "pgd"}], "needs a 'source'"),
                         ([{"setting": "adaptive", "attack": "pgd", "eps": 0.3}],
                          "set by the evaluation"),
                         ([{"setting": "query", "attack": "pgd"}], "score- or decision-based"),
                         ([{"setting": "clean", "attack": "pgd"}], "always evaluated first")]:
        with pytest.raises(ConfigError, match=match):
            evaluate(EvalConfig(eps=0.1, device="cpu", steps=steps), store=store,
                     model=fmnist_model, data=data, progress=False)


def test_eval_and_report_commands(tmp_path: Path, fmnist_model: nn.Module,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from advguard.cli import main

    ckpt = save_checkpoint(tmp_path / "m.safetensors", fmnist_model)
    store = tmp_path / "r.sqlite"
    argv = ["eval", "--model", str(ckpt), "--defense", "bit_depth", "--eps", "0.1", "--n", "30",
            "--attack", "adaptive:pgd:steps=5,alpha=0.02", "--attack", "oblivious:fgsm",
            "--no-checks", "--store", str(store), "--quiet", "--device", "cpu", "--name", "cli"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| cli | bit_depth |" in out and "adaptive:pgd(alpha=0.02,steps=5)" in out
    html_path = tmp_path / "report.html"
    assert main(["report", "--store", str(store), "--format", "html", "-o", str(html_path)]) == 0
    assert "cli" in html_path.read_text()
    assert main(["report", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert main(["eval", "--model", str(ckpt), "--attack", "adaptive", "--store",
                 str(store)]) == 2
    assert "SETTING:ATTACK" in capsys.readouterr().err


def test_fingerprint_covers_zero_dim_parameters() -> None:
    """PNI's layer-wise noise scale is a 0-dim parameter: the fingerprint must read it (and
    change with it), not fail."""
    from advguard.evaluation.harness import model_fingerprint
    from advguard.models import create_model

    model = create_model("lenet5", num_classes=10, in_channels=1, seed=0,
                         noise={"kind": "pni", "granularity": "layer"})
    scales = [p for n, p in model.named_parameters() if p.dim() == 0]
    assert scales, "a layer-wise PNI model has 0-dim scales"
    before = model_fingerprint(model)
    with torch.no_grad():
        scales[0].add_(0.5)
    assert model_fingerprint(model) != before


def test_summaries_say_what_a_number_is_worth(tmp_path: Path, fmnist_model: nn.Module) -> None:
    """Every summary carries the 95% Clopper–Pearson interval of its robust accuracy, and for a
    randomized defense the counts of draw-dependent outcomes, computed from the stored records."""
    from advguard.reports import markdown_report
    from advguard.stats import accuracy_interval

    config = EvalConfig(n=40, batch_size=40, eps=0.05, runs=3, checks=False, device="cpu",
                        defense={"name": "gaussian_noise", "sigma": 0.3},
                        steps=({"setting": "adaptive", "attack": "pgd", "steps": 3,
                                "eot": 2},))  # type: ignore[arg-type]
    store = tmp_path / "s.sqlite"
    s = evaluate(config, store=store, model=fmnist_model, progress=False)
    with RecordStore(store) as db:
        examples, outcomes = db.examples(s.eval_id), db.outcomes(s.eval_id)
    robust = sum(e.fooled_by is None for e in examples)
    assert s.robust_ci == accuracy_interval(robust, 40)
    assert s.robust_ci[0] <= s.robust_acc <= s.robust_ci[1]
    assert s.clean_flips == sum(0 < e.clean_correct_runs < 3 for e in examples)
    late = {o.example for o in outcomes if not o.correct and o.run > 0} - {
        o.example for o in outcomes if not o.correct and o.run == 0}
    assert s.late_fooled == len(late)
    assert s.clean_flips + s.late_fooled > 0  # σ = 0.3 noise: some outcomes depend on draws
    lo, hi = s.robust_ci
    assert (f"{100 * lo:.1f}–{100 * hi:.1f} (flips: {s.clean_flips} clean, "
            f"{s.late_fooled} late)") in markdown_report([s])


def test_clopper_pearson_against_closed_forms() -> None:
    from advguard.stats import accuracy_interval

    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)
    assert accuracy_interval(0, 200) == (0.0, pytest.approx(1 - 0.025 ** (1 / 200)))
    assert accuracy_interval(200, 200) == (pytest.approx(0.025 ** (1 / 200)), 1.0)
    lo, hi = accuracy_interval(140, 200)  # the defining tail probabilities of the binomial
    from scipy.stats import binom

    assert binom.sf(139, 200, lo) == pytest.approx(0.025, abs=1e-6)
    assert binom.cdf(140, 200, hi) == pytest.approx(0.025, abs=1e-6)
    assert accuracy_interval(0, 0) != accuracy_interval(0, 0)  # NaN for no examples


def test_mcnemar_exact_against_hand_values_and_binomtest() -> None:
    from scipy.stats import binomtest

    from advguard.stats import mcnemar_exact

    assert mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)  # 2 · (1 + 10) / 2^10
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1)  # two-sided: symmetric
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    for lost, gained in [(31, 6), (3, 0), (40, 25)]:  # the exact binomial test on discordant pairs
        expected = binomtest(gained, lost + gained, 0.5).pvalue
        assert mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 3)


def test_the_val_split_is_the_training_runs_held_out_split() -> None:
    """Defenses are tuned on the validation split a training config holds out (never the test
    set): split "val" selects exactly those images; the ids of other splits ignore val_*."""
    from advguard.evaluation.harness import load_eval_data
    from advguard.training import TrainConfig
    from advguard.training.loop import prepare_data

    config = EvalConfig(dataset="fashion-mnist-sample", split="val", val_size=500, val_seed=3,
                        n=120)
    data = load_eval_data(config)
    held = prepare_data(TrainConfig(dataset="fashion-mnist-sample", val_size=500, seed=3)).val
    assert held is not None and data.split == "val" and len(data) == 120
    assert torch.equal(data.images, held.images[:120])
    assert torch.equal(data.labels, held.labels[:120])
    other = EvalConfig(dataset="fashion-mnist-sample", split="val", val_size=500, val_seed=4,
                       n=120)
    assert config.identity("m") != other.identity("m")
    test = EvalConfig(dataset="fashion-mnist-sample", n=120)
    assert test.identity("m") == EvalConfig(dataset="fashion-mnist-sample", n=120,
                                            val_size=7, val_seed=9).identity("m")
    with pytest.raises(ConfigError, match="val_size must be >= 1"):
        EvalConfig(split="val", val_size=0)


def test_query_setting_votes_consistently_on_a_randomized_defense(
        tmp_path: Path, fmnist_model: nn.Module, fmnist_sample_test: ImageDataset) -> None:
    """A decision-based attack on a randomized defense sees the step's vote, and a repeated query
    gets the same answer: HopSkipJump re-queries its starting points and raised 'starting_points
    are not adversarial' when each query drew a fresh vote."""
    from advguard.attacks.foolbox_attacks import HopSkipJump
    from advguard.defenses import build_defense
    from advguard.evaluation.settings import prepare_step

    defense = build_defense({"name": "gaussian_noise", "sigma": 0.3}, fmnist_model)
    spec = StepSpec.from_dict({"setting": "query", "attack": "hsj", "steps": 1, "vote": 3})
    prepared = prepare_step(spec, defense, norm="linf", eps=0.1, load_model=lambda p: fmnist_model)
    assert isinstance(prepared.attack, HopSkipJump) and prepared.attack.vote_samples == 3
    assert prepared.model is defense  # the attack votes (and remembers) itself
    explicit = prepare_step(StepSpec.from_dict({"setting": "query", "attack": "hsj",
                                                "vote_samples": 1, "vote": 7}),
                            defense, norm="linf", eps=0.1, load_model=lambda p: fmnist_model)
    assert explicit.attack.vote_samples == 1 and explicit.model is defense
    summary = evaluate(EvalConfig(eps=0.1, device="cpu", runs=1, checks=False, preset="none",
                                  defense={"name": "gaussian_noise", "sigma": 0.3},
                                  steps=[spec.to_dict()]),
                       store=tmp_path / "r.sqlite", model=fmnist_model,
                       data=_data(fmnist_sample_test, 20), progress=False)
    assert summary.robust_acc <= summary.clean_acc and summary.steps[-1].seconds > 0
