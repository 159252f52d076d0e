"""Experiments: grid expansion, running, and tables/plots generated from records."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from torch import nn

from advguard.checkpoint import save_checkpoint
from advguard.errors import ConfigError
from advguard.evaluation import RecordStore, summarize
from advguard.experiments import (
    ExperimentSpec,
    expand,
    experiment_report,
    load_experiment,
    merge,
    run_experiment,
)


def test_merge_is_deep_and_supports_dotted_keys() -> None:
    base = {"defense": {"name": "cap", "n_labels": 9, "alpha": 1}, "steps": [1, 2], "eps": 0.1}
    out = merge(base, {"defense": {"n_labels": 5}, "steps": [3], "defense.alpha": 2})
    assert out == {"defense": {"name": "cap", "n_labels": 5, "alpha": 2}, "steps": [3],
                   "eps": 0.1}
    assert base["defense"]["n_labels"] == 9  # the base is not modified


def _spec(tmp_path: Path, model_path: Path) -> ExperimentSpec:
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
                    "paper": {"none/0.1": 12.5}},
                   {"title": "clean", "rows": ["defense", "eps"], "metric": "clean"}],
        "plots": [{"title": "eps curve", "x": "eps", "series": "defense", "file": "eps.png"}],
        "summary": True,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_experiment(path)


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
    empty = experiment_report(spec)
    assert "0/3 cells evaluated" in empty and "—" in empty
    summaries = run_experiment(spec, progress=False)
    assert len(summaries) == 3
    report = experiment_report(spec, plots_dir=tmp_path / "plots")
    assert "3/3 cells evaluated" in report
    by_name = {s.name: s for s in summaries}
    none_01 = by_name["tiny:none/0.1"]
    assert f"| none | {100 * by_name['tiny:none/0.05'].robust_acc:.1f} | " \
           f"{100 * none_01.robust_acc:.1f} (12.5) |" in report
    assert f"| none/0.05 | {100 * by_name['tiny:none/0.05'].clean_acc:.1f} |" in report
    assert (tmp_path / "plots" / "eps.png").stat().st_size > 1000
    bits = by_name["tiny:bits2/0.1"]  # the per-cell summary names the strongest step
    assert (f"| bits2 / 0.1 | 30 × 1 | {100 * bits.clean_acc:.1f} | "
            f"{100 * bits.robust_acc:.1f} | {bits.strongest or '—'} |") in report
    with RecordStore(spec.store) as store:
        assert summarize(store, none_01.eval_id).robust_acc == none_01.robust_acc


def test_bad_experiment_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown axis"):
        ExperimentSpec.from_dict({"experiment": "x", "axes": {"a": {"1": {}}},
                                  "tables": [{"title": "t", "rows": ["b"]}]})
    with pytest.raises(ConfigError, match="unknown metric"):
        ExperimentSpec.from_dict({"experiment": "x", "axes": {"a": {"1": {}}},
                                  "tables": [{"title": "t", "rows": ["a"], "metric": "auc"}]})
    with pytest.raises(ConfigError, match="unknown experiment key"):
        ExperimentSpec.from_dict({"experiment": "x", "axis": {}})
