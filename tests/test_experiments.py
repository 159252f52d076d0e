"""Experiments: grid expansion, running, and tables/plots generated from records."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from advguard.checkpoint import save_checkpoint
from advguard.errors import ConfigError
from advguard.evaluation import RecordStore, evaluate, summarize
from advguard.experiments import (
    EXPERIMENT_KINDS,
    GridExperiment,
    SweepExperiment,
    expand,
    list_experiments,
    load_experiment,
    merge,
)


def test_merge_is_deep_and_supports_dotted_keys() -> None:
    base = {"defense": {"name": "cap", "n_labels": 9, "alpha": 1}, "steps": [1, 2], "eps": 0.1}
    out = merge(base, {"defense": {"n_labels": 5}, "steps": [3], "defense.alpha": 2})
    assert out == {"defense": {"name": "cap", "n_labels": 5, "alpha": 2}, "steps": [3],
                   "eps": 0.1}
    assert base["defense"]["n_labels"] == 9  # the base is not modified


def _spec(tmp_path: Path, model_path: Path) -> GridExperiment:
    data = {
        "experiment": "tiny",
        "store": str(tmp_path / "tiny.sqlite"),
        "base": {"dataset": "fashion-mnist-sample", "n": 30, "batch_size": 30, "device": "cpu",
                 "checks": False, "model": str(model_path),
                 "steps": [{"setting": "adaptive", "attack": "pgd", "steps": 5}]},
        "axes": {
            "defense": {"none": {"defense": {"name": "none"}},
                        "bits2": {"defense": {"name": "bit_depth", "bits": 2}}},
            "eps": {"0.05": {"eps": 0.05}, "0.1": {"eps": 0.1}},
        },
        "exclude": [{"defense": "bits2", "eps": "0.05"}],
        "tables": [{"title": "robust", "rows": ["defense"], "cols": ["eps"], "metric": "robust",
                    "paper": {"none/0.1": 12.5}, "paired": "none"},
                   {"title": "clean", "rows": ["defense", "eps"], "metric": "clean"}],
        "plots": [{"title": "eps curve", "x": "eps", "series": "defense", "file": "eps.png"}],
        "summary": True,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_experiment(path)
    assert isinstance(spec, GridExperiment)
    return spec


def test_grid_expansion(tmp_path: Path) -> None:
    spec = _spec(tmp_path, tmp_path / "missing.safetensors")
    cells = expand(spec)
    assert [c.labels for c in cells] == [{"defense": "none", "eps": "0.05"},
                                         {"defense": "none", "eps": "0.1"},
                                         {"defense": "bits2", "eps": "0.1"}]
    assert cells[2].config.defense == {"name": "bit_depth", "bits": 2}
    assert cells[2].config.eps == 0.1 and cells[2].config.name == "tiny:bits2/0.1"


def test_run_and_report_from_records(tmp_path: Path, fmnist_model: nn.Module) -> None:
    ckpt = save_checkpoint(tmp_path / "m.safetensors", fmnist_model)
    spec = _spec(tmp_path, ckpt)
    empty = spec.report()
    assert "0/3 cells evaluated" in empty and "—" in empty
    summaries = spec.evaluate(progress=False)
    assert len(summaries) == 3
    report = spec.report(plots_dir=tmp_path / "plots")
    assert "3/3 cells evaluated" in report
    by_name = {s.name: s for s in summaries}
    none_01 = by_name["tiny:none/0.1"]
    assert f"| none | {100 * by_name['tiny:none/0.05'].robust_acc:.1f} | " \
           f"{100 * none_01.robust_acc:.1f} (12.5) |" in report
    assert f"| none/0.05 | {100 * by_name['tiny:none/0.05'].clean_acc:.1f} |" in report
    assert (tmp_path / "plots" / "eps.png").stat().st_size > 1000
    from advguard.evaluation import model_fingerprint

    assert f"`{ckpt}`: {model_fingerprint(fmnist_model)}" in report  # which weights were measured
    assert "Defense weights" not in report  # no defense here loads a checkpoint of its own
    bits = by_name["tiny:bits2/0.1"]  # the per-cell summary names the strongest step
    from advguard.stats import accuracy_interval

    lo, hi = accuracy_interval(round(bits.robust_acc * 30), 30)
    assert bits.robust_ci == (lo, hi) and lo < bits.robust_acc < hi
    assert (f"| bits2 / 0.1 | 30 × 1 | {100 * bits.clean_acc:.1f} | "
            f"{100 * bits.robust_acc:.1f} | {100 * lo:.1f}–{100 * hi:.1f} | "
            f"{bits.strongest or '—'} |") in report
    with RecordStore(spec.store) as store:
        assert summarize(store, none_01.eval_id).robust_acc == none_01.robust_acc
        robust = {name: {e.example: e.fooled_by is None for e in store.examples(s.eval_id)}
                  for name, s in by_name.items()}
    # paired with 'none' on the same 30 examples: the difference is that of the accuracies, and
    # lost / gained are the discordant examples
    a, b = robust["tiny:none/0.1"], robust["tiny:bits2/0.1"]
    lost = sum(a[i] and not b[i] for i in a)
    gained = sum(b[i] and not a[i] for i in a)
    assert gained - lost == round(30 * (bits.robust_acc - none_01.robust_acc))
    from advguard.stats import mcnemar_exact

    assert (f"| bits2 | — | {100 * (gained - lost) / 30:+.1f} ({lost} / {gained}, "
            f"p {mcnemar_exact(lost, gained):.2g}) |") in report  # bits2/0.05 is excluded: —
    assert "Paired with **none**" in report


def test_a_device_this_machine_lacks_is_refused_before_any_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path, tmp_path / "missing.safetensors")
    trained: list[str] = []
    monkeypatch.setattr(type(spec), "train_models",
                        lambda self, **kw: trained.append("x") or [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        spec.run(progress=False, device="cuda")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        spec.run(progress=False, device="tpu")
    assert trained == [] and not Path(spec.store).exists()


def test_grid_cells_run_on_the_given_executor(tmp_path: Path, fmnist_model: nn.Module) -> None:
    from advguard.evaluation.executors import LocalExecutor

    class Counting(LocalExecutor):
        def __init__(self) -> None:
            self.chunks: list[int] = []

        def map(self, job: Any, tasks: Any) -> Any:
            for result in super().map(job, tasks):
                self.chunks.append(result.chunk)
                yield result

    spec = _spec(tmp_path, save_checkpoint(tmp_path / "m.safetensors", fmnist_model))
    executor = Counting()
    spec.run(only="tiny:none/*", progress=False, executor=executor)
    assert executor.chunks == [0, 0]  # two cells of one chunk each, computed by the executor
    assert "2/3 cells evaluated." in spec.report()

    class Stop(Exception):
        pass

    def stop(chunk: int) -> None:
        raise Stop

    # an interrupted cell is counted apart, not as evaluated (its table entries are dashes)
    with pytest.raises(Stop):
        evaluate(expand(spec)[2].config, store=spec.store, progress=False, on_chunk=stop)
    report = spec.report()
    assert "2/3 cells evaluated (1 unfinished)." in report and "| unfinished |" in report
    # its partial number is marked and says over how many examples it was taken
    n = expand(spec)[2].config.n
    assert f"(bits2/0.1: {n} of {n}); the run command resumes it." in report
    assert report.count(" † |") == 2  # its entry in the robust and in the clean table


def test_bad_experiment_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown axis"):
        GridExperiment.from_dict({"experiment": "x", "axes": {"a": {"1": {}}},
                                  "tables": [{"title": "t", "rows": ["b"]}]})
    with pytest.raises(ConfigError, match="unknown metric"):
        GridExperiment.from_dict({"experiment": "x", "axes": {"a": {"1": {}}},
                                  "tables": [{"title": "t", "rows": ["a"], "metric": "auc"}]})
    with pytest.raises(ConfigError, match="'axis' \\(did you mean 'axes'\\?\\)"):
        GridExperiment.from_dict({"experiment": "x", "axis": {}})
    with pytest.raises(ConfigError, match="needs an 'experiment' name"):
        GridExperiment.from_dict({"axes": {}})
    with pytest.raises(ConfigError,
                       match=r"experiment 'x', table: unknown key.*'row' \(did you mean 'rows'"):
        GridExperiment.from_dict({"experiment": "x", "tables": [{"title": "t", "row": ["a"]}]})
    path = tmp_path / "kind.yaml"
    path.write_text("experiment: x\nkind: swep\n")
    with pytest.raises(ConfigError, match="unknown experiment kind 'swep'; did you mean 'sweep'"):
        load_experiment(path)
    path.write_text("experiment: x\nkind: sweep\nmodels: {a: m.safetensors}\nsigmas: [0.1]\n"
                    "votes: [majority]\n")
    with pytest.raises(ConfigError, match="votes must be in"):
        load_experiment(path)


# --------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("name", list_experiments())
def test_every_shipped_experiment_loads_and_its_paper_numbers_name_cells(name: str) -> None:
    spec = load_experiment(name)
    assert spec.kind in EXPERIMENT_KINDS.names()
    assert isinstance(spec, EXPERIMENT_KINDS.get(spec.kind))
    cells = spec.cells()
    assert cells and len(set(cells)) == len(cells)  # cell names are unique: --only can pick one
    assert spec.paper_keys() == {}, "paper numbers that name no cell of their table"
    assert spec.command.endswith(spec.path_name())  # the written command runs this very file
    if isinstance(spec, GridExperiment):  # every step's attack builds from its parameters
        from advguard.attacks import make_attack

        for cell in spec.expand():
            for step in cell.config.steps:
                make_attack(step.attack, eps=cell.config.eps, norm=cell.config.norm,
                            **step.params)


def test_paper_keys_flag_numbers_for_missing_cells(tmp_path: Path) -> None:
    spec = GridExperiment.from_dict({
        "experiment": "x", "base": {"model": "m.safetensors", "dataset": "fashion-mnist-sample"},
        "axes": {"a": {"1": {}, "2": {}}, "b": {"u": {}, "v": {}}},
        "exclude": [{"a": "2", "b": "v"}],
        "tables": [{"title": "t", "rows": ["a"], "cols": ["b"],
                    "paper": {"1/u": 1.0, "2/v": 2.0, "3/u": 3.0}}]})
    assert spec.paper_keys() == {"t": ["2/v", "3/u"]}


def test_shipped_smooth_experiments_compose_with_the_harness() -> None:
    from advguard.defenses import Smoothed, build_defense
    from advguard.evaluation.settings import prepare_step
    from advguard.models import create_model

    names = [n for n in list_experiments() if n.startswith("experiments/smooth")]
    grids = [s for s in map(load_experiment, names) if isinstance(s, GridExperiment)]
    assert len(grids) >= 2
    model = create_model("lenet5", in_channels=1).eval()
    for spec in grids:
        for cell in expand(spec):
            cfg = cell.config
            defense = build_defense(cfg.defense, model)
            assert isinstance(defense, Smoothed)
            assert (defense.m, defense.sigma) == (cfg.defense["m"], cfg.defense["sigma"])
            for step in cfg.steps:
                prepare_step(step, defense, norm=cfg.norm, eps=cfg.eps, load_model=lambda _: model)


SELECTION = Path(__file__).parents[1] / "docs/results/smooth_scale_s_sweep_selection.json"


def _chosen() -> dict[tuple[str, str], tuple[float, int]]:
    import json

    return {(c["model"], c["vote"]): (c["sigma"], c["m"])
            for c in json.loads(SELECTION.read_text())["choices"]}


def test_scale_s_experiment_uses_the_validation_choice() -> None:
    """The committed Scale S evaluation evaluates, for every (base, vote), the setting the sweep
    chose on validation data (docs/results/smooth_scale_s_sweep_selection.json)."""
    chosen = _chosen()
    sweep = load_experiment("experiments/smooth_fmnist_sweep")
    assert isinstance(sweep, SweepExperiment)
    assert {m for m, _ in chosen} == set(sweep.models) and {v for _, v in chosen} == set(
        sweep.votes)
    covered = set()
    for cell in expand(load_experiment("experiments/smooth_fmnist")):
        model, _, votes = cell.labels["config"].partition(" ")
        spec = cell.config.defense
        if spec.get("m", 1) == 1 and spec.get("sigma", 0.0) == 0.0:
            continue  # the base without smoothing
        for vote in votes.split(" (")[0].split("/"):  # "prediction/soft (m = 1: ...)": merged
            if vote == "all votes":
                matching = [k for k in chosen if k[0] == model]
            else:
                matching = [(model, vote)]
            for key in matching:
                assert (spec["sigma"], spec["m"]) == chosen[key], (cell.labels, key)
                covered.add(key)
    assert covered == set(chosen)


def test_blackbox_experiment_uses_the_validation_choice() -> None:
    chosen = _chosen()
    cells = expand(load_experiment("experiments/smooth_fmnist_blackbox"))
    assert cells
    for cell in cells:
        model, _, votes = cell.labels["config"].partition(" ")
        spec = cell.config.defense
        for vote in votes.split(" (")[0].split("/"):  # merged when m = 1: one classifier
            assert (spec["sigma"], spec["m"]) == chosen[(model, vote)]


# --------------------------------------------------------------------------- sweeps
def _sweep_file(tmp_path: Path, model: Path, **changes: object) -> Path:
    data = {"experiment": "tiny-sweep", "kind": "sweep", "models": {"lenet": str(model)},
            "sigmas": [0.0, 0.1], "ms": [1, 4], "dataset": "fashion-mnist-sample",
            "val_size": 500, "n_val": 20, "n_test": 30, "attack": {"name": "pgd", "steps": 2},
            "store": str(tmp_path / "sweep.sqlite"), "device": "cpu", **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_sweep_runs_resumes_and_reports_through_the_store_and_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from advguard.cli import main
    from advguard.experiments.sweep import load_points, selection_dict
    from advguard.training import TrainConfig, train

    out = tmp_path / "model"
    train(TrainConfig(dataset="fashion-mnist-sample", model="lenet5", epochs=1, lr=0.05,
                      schedule="onecycle", augment="none", device="cpu", val_size=500,
                      test_size=0, seed=0), output_dir=out, progress=False)
    path = _sweep_file(tmp_path, out / "model.safetensors")
    spec = load_experiment(path)
    assert isinstance(spec, SweepExperiment)
    assert spec.cells() == ["val/lenet/sigma=0", "val/lenet/sigma=0.1", "test/lenet/sigma=0",
                            "test/lenet/sigma=0.1"]
    spec.run(only="val/*", progress=False)
    with RecordStore(spec.store) as store:
        assert [u.unit for u in store.units("tiny-sweep")] == ["val/lenet/sigma=0",
                                                               "val/lenet/sigma=0.1"]
    assert main(["experiment", "run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    with RecordStore(spec.store) as store:
        units = store.units("tiny-sweep")
    assert len(units) == 4 and all(u.seconds > 0 for u in units)
    first = {u.unit: u.result for u in units}
    spec.run(progress=False)  # resumes: nothing left to do, nothing recomputed
    with RecordStore(spec.store) as store:
        assert {u.unit: u.result for u in store.units("tiny-sweep")} == first
    points = load_points(spec)
    # 2 splits x 2 sigmas x 2 kinds x 3 votes x 2 ms
    assert len(points) == 48 and all(0.0 <= p.acc <= 1.0 for p in points)
    assert {c["vote"] for c in selection_dict(spec)["choices"]} == set(spec.votes)
    report = tmp_path / "doc" / "sweep.md"
    assert main(["experiment", "report", str(path), "--output", str(report)]) == 0
    text = report.read_text()
    assert "Validation-chosen setting" in text and "advguard experiment run" in text
    assert (tmp_path / "doc" / "tiny-sweep_m.png").stat().st_size > 1000
    written = json.loads((tmp_path / "doc" / "sweep_selection.json").read_text())
    assert written == selection_dict(spec)
    # the m=1, sigma=0 test accuracy in the report is the stored one
    base = next(p for p in points if (p.split, p.sigma, p.m, p.kind, p.vote)
                == ("test", 0.0, 1, "clean", "prediction"))
    assert f"| {100 * base.acc:.1f} |" in text


def test_sweep_refuses_models_trained_on_its_validation_split(tmp_path: Path) -> None:
    from advguard.training import TrainConfig, train

    out = tmp_path / "model"
    train(TrainConfig(dataset="fashion-mnist-sample", model="lenet5", epochs=1, lr=0.05,
                      augment="none", device="cpu", val_size=400, test_size=0, seed=0),
          output_dir=out, progress=False)
    spec = load_experiment(_sweep_file(tmp_path, out / "model.safetensors"))
    with pytest.raises(ConfigError, match="not trained with val_size=500"):
        spec.run(only="val/*", progress=False)
    spec.run(only="test/*", progress=False)  # the test split does not need held-out data


@pytest.mark.parametrize("name", ["experiments/smooth_fmnist_sweep",
                                  "experiments/smooth_cifar10_sweep"])
def test_shipped_sweeps_choose_on_validation_only(name: str) -> None:
    spec = load_experiment(name)
    assert isinstance(spec, SweepExperiment)
    assert max(spec.ms) == 512 and spec.val_ms is not None and set(spec.val_ms) <= set(spec.ms)
    assert spec.train and {t.output + "/model.safetensors" for t in spec.train} == set(
        spec.models.values())


def test_run_only_trains_the_models_the_selected_cells_read(tmp_path: Path) -> None:
    """`experiment run --only CELL` trains just the listed models that CELL reads (here: one of
    two untrained models, epochs 0), not every model of the experiment."""
    cfg = tmp_path / "init.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"dataset": "fashion-mnist-sample", "model": "lenet5",
                                             "epochs": 0, "device": "cpu", "test_size": 0}}))
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "ab"  # one path a prefix of the other
    data = {
        "experiment": "only", "store": str(tmp_path / "only.sqlite"),
        "train": [{"config": str(cfg), "output": str(a)}, {"config": str(cfg), "output": str(b)}],
        "base": {"dataset": "fashion-mnist-sample", "n": 4, "batch_size": 4, "device": "cpu",
                 "checks": False, "eps": 0.1, "preset": "none"},
        "axes": {"model": {"A": {"model": str(a / "model.safetensors")},
                           "B": {"model": str(b / "model.safetensors")}}},
    }
    path = tmp_path / "only.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_experiment(path)
    spec.run(only="only:A", progress=False)
    assert (a / "model.safetensors").exists() and not b.exists()
    spec.run(progress=False)
    assert (b / "model.safetensors").exists()


def test_a_table_cell_shows_an_evaluated_cell_whatever_the_order() -> None:
    """A clean-accuracy table whose rows leave out the attack axis collects several cells in one
    table cell: one not yet evaluated (summary None) must not hide one that is."""
    from types import SimpleNamespace

    from advguard.experiments.grid import Cell, TableSpec
    from advguard.reports.experiment import grid_table

    table = TableSpec(title="clean", rows=("defense",), metric="clean")
    done = SimpleNamespace(clean_acc=0.905, complete=True, n=200)
    cells = [Cell(labels={"defense": "ADD", "attack": a}, config=None)  # type: ignore[arg-type]
             for a in ("PGD", "C&W")]
    for results in ([(cells[0], done), (cells[1], None)], [(cells[0], None), (cells[1], done)]):
        assert "| ADD | 90.5 |" in grid_table(table, results)  # type: ignore[arg-type]
    assert "| ADD | — |" in grid_table(table, [(cells[0], None), (cells[1], None)])


def test_report_names_the_checkpoints_a_defense_loads() -> None:
    from advguard.reports.experiment import _defense_label

    assert _defense_label({"name": "bit_depth", "bits": 2}) == ""
    assert _defense_label({"name": "add", "purifier": "runs/a/model.safetensors"}) == \
        "`add` with `runs/a/model.safetensors`"
    nested = {"name": "chain", "steps": [{"name": "advt", "f_b": "fb.safetensors"},
                                         {"name": "x", "inner": {"f_a": "fa.safetensors"}}]}
    assert _defense_label(nested) == "`chain` with `fb.safetensors`, `fa.safetensors`"


def test_paired_table_needs_a_per_example_metric_and_one_of_its_rows(
        tmp_path: Path, fmnist_model: nn.Module) -> None:
    from advguard.experiments.grid import TableSpec

    with pytest.raises(ConfigError, match="'paired' compares per-example outcomes"):
        TableSpec(title="t", rows=("defense",), metric="after:0", paired="none")
    ckpt = save_checkpoint(tmp_path / "m.safetensors", fmnist_model)
    spec = _spec(tmp_path, ckpt)
    bad = dataclasses.replace(spec, tables=(TableSpec(title="robust", rows=("defense",),
                                                      paired="nope"),))
    with pytest.raises(ConfigError, match=r"'paired' names row 'nope'.*none, bits2"):
        bad.report()
