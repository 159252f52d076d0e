"""Records moved between stores: `RecordStore.dump` / `load` and `advguard records`. A dump taken
midway through an evaluation, loaded on another machine, resumes there without redoing a chunk."""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from torch import nn

from advguard.cli import main
from advguard.data import ImageDataset, first_n
from advguard.errors import OutputError, StoreError
from advguard.evaluation import EvalConfig, RecordStore, evaluate

PGD = {"setting": "adaptive", "attack": "pgd", "steps": 3, "alpha": 0.02, "eot": 2}


def _config() -> EvalConfig:
    return EvalConfig(name="noise", eps=0.05, batch_size=10, device="cpu", runs=2, checks=False,
                      defense={"name": "gaussian_noise", "sigma": 0.1}, steps=[PGD])


class _Stop(Exception):
    pass


def _stop_after(last: int):  # type: ignore[no-untyped-def]
    def hook(chunk: int) -> None:
        if chunk == last:
            raise _Stop
    return hook


def _rows(path: Path) -> dict[str, list[tuple]]:
    """Every row of every record table, ignoring the evaluation's bookkeeping times."""
    db = sqlite3.connect(str(path))
    out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
           for t in ("steps", "examples", "outcomes", "flags", "units")}
    out["chunks"] = sorted(db.execute("SELECT eval_id, chunk, n FROM chunks").fetchall())
    out["evaluations"] = db.execute("SELECT id, name, config, n, runs, status "
                                    "FROM evaluations").fetchall()
    db.close()
    return out


@pytest.fixture
def data(fmnist_sample_test: ImageDataset) -> ImageDataset:
    return first_n(fmnist_sample_test, 30)


def test_dump_then_load_reproduces_every_record(tmp_path: Path, fmnist_model: nn.Module,
                                                data: ImageDataset) -> None:
    a, b, file = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "r.jsonl"
    evaluate(_config(), store=a, model=fmnist_model, data=data, progress=False)
    with RecordStore(a) as store:
        counts = store.dump(file)
    assert counts["chunks"] == 3 and counts["examples"] == 30 and counts["outcomes"] > 0
    with RecordStore(b) as store:
        added = store.load(file)
    assert added["examples"] == 30 and added["evaluations"] == 1
    assert _rows(b) == _rows(a)
    # The dump is deterministic: a second dump of the loaded store is the same text.
    with RecordStore(b) as store:
        store.dump(tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == file.read_text()
    # Loading again adds nothing.
    with RecordStore(b) as store:
        assert sum(store.load(file).values()) == 0
    assert _rows(b) == _rows(a)


def _stop_after_chunk_0_and_move(first: Path, second: Path, model: nn.Module,
                                 data: ImageDataset) -> None:
    """The first machine stops after chunk 0 is committed; its dump is loaded on the second."""
    with pytest.raises(_Stop):
        evaluate(_config(), store=first, model=model, data=data, progress=False,
                 on_chunk=_stop_after(0))
    with RecordStore(first) as store:
        store.dump(first.with_suffix(".jsonl"))
    with RecordStore(second) as store:
        store.load(first.with_suffix(".jsonl"))


def test_a_dump_taken_midway_resumes_on_another_store(tmp_path: Path, fmnist_model: nn.Module,
                                                      data: ImageDataset) -> None:
    first, second, fresh = (tmp_path / f"{n}.sqlite" for n in ("first", "second", "fresh"))
    _stop_after_chunk_0_and_move(first, second, fmnist_model, data)
    computed: list[int] = []
    resumed = evaluate(_config(), store=second, model=fmnist_model, data=data, progress=False,
                       on_chunk=computed.append)
    assert computed == [1, 2]  # chunk 0 came with the file
    whole = evaluate(_config(), store=fresh, model=fmnist_model, data=data, progress=False)
    assert resumed.eval_id == whole.eval_id and resumed.complete
    assert resumed.robust_acc == whole.robust_acc
    got, want = _rows(second), _rows(fresh)
    for table in ("examples", "outcomes", "chunks", "steps", "evaluations"):
        assert got[table] == want[table], table


def test_each_chunk_names_the_commit_and_machine_that_computed_it(
        tmp_path: Path, fmnist_model: nn.Module, data: ImageDataset,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk 0 computed at commit A on one machine, moved by a dump, chunks 1-2 at commit B on
    another: the records keep both, and the reports name both (once one sitting's commit stood
    for every chunk)."""
    import advguard.evaluation.harness as harness
    from advguard.evaluation import summarize
    from advguard.reports.tables import markdown_report

    real_env = harness.environment_info

    def sitting(commit: str) -> None:
        monkeypatch.setattr(harness, "environment_info",
                            lambda device: {**real_env(device), "git_commit": commit})

    first, second = tmp_path / "first.sqlite", tmp_path / "second.sqlite"
    sitting("commit-A")
    _stop_after_chunk_0_and_move(first, second, fmnist_model, data)
    sitting("commit-B")
    done = evaluate(_config(), store=second, model=fmnist_model, data=data, progress=False)
    with RecordStore(second) as store:
        envs = store.chunk_environments(done.eval_id)
        assert {c: e["git_commit"] for c, e in envs.items()} == \
            {0: "commit-A", 1: "commit-B", 2: "commit-B"}
        # the evaluation keeps the environment of the sitting that created it
        assert store.evaluation(done.eval_id)["environment"]["git_commit"] == "commit-A"
        summary = summarize(store, done.eval_id)
        store.dump(tmp_path / "whole.jsonl")
    assert [e["git_commit"] for e in summary.computed_in] == ["commit-A", "commit-B"]
    report = markdown_report([summary])
    assert "(commit commit-A)" in report and "(commit commit-B)" in report
    # the per-chunk environments travel with a dump
    with RecordStore(tmp_path / "third.sqlite") as store:
        store.load(tmp_path / "whole.jsonl")
        assert store.chunk_environments(done.eval_id) == envs


def test_records_without_chunk_environments_still_load(
        tmp_path: Path, fmnist_model: nn.Module, data: ImageDataset) -> None:
    """A records file written before chunks kept their environment loads; its evaluation's
    environment stands for its chunks."""
    whole = evaluate(_config(), store=tmp_path / "a.sqlite", model=fmnist_model, data=data,
                     progress=False)
    with RecordStore(tmp_path / "a.sqlite") as store:
        store.dump(tmp_path / "new.jsonl")
    lines = (tmp_path / "new.jsonl").read_text().splitlines()
    old = [line for line in lines if '"table": "chunk_environments"' not in line]
    assert len(old) < len(lines)
    (tmp_path / "old.jsonl").write_text("\n".join(old) + "\n")
    from advguard.evaluation import summarize

    with RecordStore(tmp_path / "b.sqlite") as store:
        store.load(tmp_path / "old.jsonl")
        assert store.chunk_environments(whole.eval_id) == {}
        summary = summarize(store, whole.eval_id)
    assert summary.computed_in == [summary.environment]
    assert summary.robust_acc == whole.robust_acc


def test_load_keeps_finished_work_and_finishes_unfinished(tmp_path: Path, fmnist_model: nn.Module,
                                                          data: ImageDataset) -> None:
    partial, whole = tmp_path / "partial.sqlite", tmp_path / "whole.sqlite"
    with pytest.raises(_Stop):
        evaluate(_config(), store=partial, model=fmnist_model, data=data, progress=False,
                 on_chunk=_stop_after(1))
    summary = evaluate(_config(), store=whole, model=fmnist_model, data=data, progress=False)
    with RecordStore(partial) as store:
        store.dump(tmp_path / "partial.jsonl")
    with RecordStore(whole) as store:
        store.dump(tmp_path / "whole.jsonl")
    before = _rows(whole)
    with RecordStore(whole) as store:  # a stale partial dump changes nothing in a finished store
        assert sum(store.load(tmp_path / "partial.jsonl").values()) == 0
    assert _rows(whole) == before
    with RecordStore(partial) as store:  # the finished dump completes the partial store
        added = store.load(tmp_path / "whole.jsonl")
        assert added["chunks"] == 1 and added["examples"] == 10 and added["evaluations"] == 1
        assert store.evaluation(summary.eval_id)["status"] == "complete"
    assert _rows(partial) == before


def test_bad_records_files_are_refused_and_change_nothing(tmp_path: Path, fmnist_model: nn.Module,
                                                          data: ImageDataset) -> None:
    store_path, good = tmp_path / "s.sqlite", tmp_path / "good.jsonl"
    evaluate(_config(), store=store_path, model=fmnist_model, data=data, progress=False)
    with RecordStore(store_path) as store:
        store.dump(good)
    lines = good.read_text().splitlines()
    target = tmp_path / "target.sqlite"
    cases = {
        "missing.jsonl": (None, "records file not found"),
        "text.jsonl": ("hello\n", "not an advguard records file"),
        "empty.jsonl": ("", "not a records file"),
        "version.jsonl": (json.dumps({"format": "advguard-records", "schema_version": 99}) + "\n",
                          "schema version 99"),
        "row.jsonl": ("\n".join([*lines[:5], '{"table": "outcomes", "row": {"eval_id": 1}}',
                                 *lines[5:]]) + "\n", "line 6: not a record row"),
        "json.jsonl": ("\n".join([*lines[:3], "{oops"]) + "\n", "line 4: not a record row"),
        "type.jsonl": ("\n".join([lines[0], lines[1].replace('"n": 30', '"n": "30"'),
                                  *lines[2:]]) + "\n",
                       'line 2: evaluations row has a bad n = "30"'),
        "nan.jsonl": ("\n".join([lines[0], re.sub(r'"seconds": [0-9.e+-]+', '"seconds": NaN',
                                                   lines[1]), *lines[2:]]) + "\n",
                      "line 2: evaluations row has a bad seconds = NaN"),
        "config.jsonl": ("\n".join([lines[0], lines[1].replace('"config": "{', '"config": "{{')])
                         + "\n", "line 2: evaluations row has a bad config"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with RecordStore(target) as store, pytest.raises(StoreError, match=message):
            store.load(path)
        with RecordStore(target) as store:
            assert store.evaluation_ids() == [], name  # nothing half-loaded
    with RecordStore(target) as store, pytest.raises(StoreError, match="not a records file"):
        store.load(store_path)  # the SQLite store itself


def test_dump_refuses_to_replace_what_it_did_not_write(tmp_path: Path) -> None:
    store_path = tmp_path / "s.sqlite"
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    with RecordStore(store_path) as store:
        for target, message in ((notes, "not a records file advguard wrote"),
                                (store_path, "it is the record store"),
                                (tmp_path, "it is a directory")):
            with pytest.raises(OutputError, match=message):
                store.dump(target)
        store.dump(tmp_path / "r.jsonl")
        store.dump(tmp_path / "r.jsonl")  # its own file is replaced
    assert notes.read_text() == "my notes\n"


def test_records_cli(tmp_path: Path, fmnist_model: nn.Module, data: ImageDataset,
                     capsys: pytest.CaptureFixture[str]) -> None:
    a, b, file = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "r.jsonl"
    evaluate(_config(), store=a, model=fmnist_model, data=data, progress=False)
    assert main(["records", "dump", "--store", str(a), "-o", str(file)]) == 0
    assert "30 examples" in capsys.readouterr().out
    assert main(["records", "load", str(file), "--store", str(b)]) == 0
    assert "added 1 evaluations" in capsys.readouterr().out
    assert _rows(b) == _rows(a)
    assert main(["records", "dump", "--store", str(tmp_path / "none.sqlite"), "-o",
                 str(tmp_path / "x.jsonl")]) == 2
    assert "record store not found" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("nope\n")
    assert main(["records", "load", str(tmp_path / "bad.jsonl"), "--store",
                 str(tmp_path / "c.sqlite")]) == 2
    assert "not an advguard records file" in capsys.readouterr().err
    assert not (tmp_path / "c.sqlite").exists()  # a bad file creates no store


def test_a_dump_is_one_snapshot_while_an_evaluation_writes(
        tmp_path: Path, fmnist_model: nn.Module, data: ImageDataset) -> None:
    """A chunk committed by another process between the dump's table reads is either wholly in
    the dump or wholly out of it (here: out), never examples without their chunk."""
    path = tmp_path / "s.sqlite"
    with pytest.raises(_Stop):
        evaluate(_config(), store=path, model=fmnist_model, data=data, progress=False,
                 on_chunk=_stop_after(0))
    with RecordStore(path) as donor:  # records of chunk 1, to be written mid-dump
        eval_id = donor.evaluation_ids()[0]
    done = tmp_path / "done.sqlite"
    evaluate(_config(), store=done, model=fmnist_model, data=data, progress=False)
    with RecordStore(done) as full:
        examples = [e for e in full.examples(eval_id) if 10 <= e.example < 20]
        outcomes = [o for o in full.outcomes(eval_id) if 10 <= o.example < 20]
        first_outcomes = len([o for o in full.outcomes(eval_id) if o.example < 10])

    class Proxy:  # the store's connection, with another writer striking after the chunks read
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db, self.struck = db, False

        def execute(self, sql: str, *args: object):  # type: ignore[no-untyped-def]
            result = self.db.execute(sql, *args)
            if "FROM chunks" in sql and not self.struck:
                self.struck = True
                with RecordStore(path) as writer:
                    writer.write_chunk(eval_id, 1, examples, outcomes, 1.0, {0: 1.0})
            return result

    with RecordStore(path) as store:
        db, proxy = store._db, Proxy(store._db)
        store._db = proxy  # type: ignore[assignment]
        try:
            counts = store.dump(tmp_path / "r.jsonl")
        finally:
            store._db = db
    assert proxy.struck
    assert counts["chunks"] == 1 and counts["examples"] == 10
    assert counts["outcomes"] == first_outcomes > 0 and outcomes
    with RecordStore(path) as store:  # the write itself went through
        assert store.finished_chunks(eval_id) == {0, 1}
