"""The record store: per-example evaluation outcomes in SQLite (stdlib ``sqlite3``).

Schema (one row per ...):

* ``evaluations`` — evaluation: id (hash of the config + model fingerprint), name, resolved
  config (JSON), defense traits, environment (versions, commit, device), status, timings;
* ``steps`` — cascade step of an evaluation: index (-1 = clean), label, setting, attack config;
* ``examples`` — evaluated example: dataset index, label, clean-correct runs, the step that first
  fooled it (NULL: robust to all; -1: misclassified clean);
* ``outcomes`` — (example, step, run) that was attacked: correct after the attack or not, the
  perturbation size, queries;
* ``chunks`` — finished chunk of examples with its wall time;
* ``chunk_environments`` — the environment (versions, commit, device) that computed a chunk
  (chunks recorded before this table existed have none; their evaluation's stands in);
* ``flags`` — reliability flag (fired or not, detail);
* ``units`` — a unit of an experiment that is not a harness evaluation (a sweep's shared draws
  for one split, model and σ): its key, the hash of what determines it, the model fingerprint,
  the environment, its seconds and its results as JSON.

Work is committed one chunk at a time in a single transaction, so an evaluation killed at any
point (even ``kill -9``) loses at most the chunk in progress; re-running the same config skips
the finished chunks. Results are written by the harness, and tables are generated from them.

:meth:`RecordStore.dump` writes every row as JSON lines (text, in primary-key order) and
:meth:`RecordStore.load` merges such a file into a store, so records move between machines and
into version control, and an evaluation dumped midway resumes where it was loaded.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advguard.errors import OutputError, StoreError
from advguard.files import check_creatable, file_kind

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, config TEXT NOT NULL, traits TEXT NOT NULL,
    environment TEXT NOT NULL, n INTEGER NOT NULL, runs INTEGER NOT NULL,
    status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    eval_id TEXT NOT NULL, step INTEGER NOT NULL, label TEXT NOT NULL, setting TEXT NOT NULL,
    white_box INTEGER NOT NULL, attack TEXT NOT NULL, PRIMARY KEY (eval_id, step)
);
CREATE TABLE IF NOT EXISTS chunks (
    eval_id TEXT NOT NULL, chunk INTEGER NOT NULL, n INTEGER NOT NULL, seconds REAL NOT NULL,
    step_seconds TEXT NOT NULL, PRIMARY KEY (eval_id, chunk)
);
CREATE TABLE IF NOT EXISTS chunk_environments (
    eval_id TEXT NOT NULL, chunk INTEGER NOT NULL, environment TEXT NOT NULL,
    PRIMARY KEY (eval_id, chunk)
);
CREATE TABLE IF NOT EXISTS examples (
    eval_id TEXT NOT NULL, example INTEGER NOT NULL, chunk INTEGER NOT NULL,
    label INTEGER NOT NULL, clean_correct_runs INTEGER NOT NULL, fooled_by INTEGER,
    PRIMARY KEY (eval_id, example)
);
CREATE TABLE IF NOT EXISTS outcomes (
    eval_id TEXT NOT NULL, example INTEGER NOT NULL, step INTEGER NOT NULL, run INTEGER NOT NULL,
    correct INTEGER NOT NULL, distance REAL NOT NULL, queries REAL NOT NULL,
    PRIMARY KEY (eval_id, example, step, run)
);
CREATE TABLE IF NOT EXISTS flags (
    eval_id TEXT NOT NULL, flag TEXT NOT NULL, step INTEGER NOT NULL, fired INTEGER NOT NULL,
    detail TEXT NOT NULL, PRIMARY KEY (eval_id, flag, step)
);
CREATE TABLE IF NOT EXISTS units (
    experiment TEXT NOT NULL, unit TEXT NOT NULL, config_hash TEXT NOT NULL,
    fingerprint TEXT NOT NULL, environment TEXT NOT NULL, seconds REAL NOT NULL,
    created REAL NOT NULL, result TEXT NOT NULL,
    PRIMARY KEY (experiment, unit, config_hash, fingerprint)
);
"""


def _check_store_path(path: Path) -> None:
    """Raise :class:`StoreError` when ``path`` cannot be a record store: a directory, an existing
    file that is not SQLite, or a path below a file."""
    kind = file_kind(path)
    if kind == "directory":
        raise StoreError(f"record store {path} is a directory; give the path of an SQLite file, "
                         f"e.g. {path / 'records.sqlite'}")
    if kind == "missing":
        try:
            check_creatable(path, "the record store")
        except OutputError as exc:
            raise StoreError(str(exc)) from None
        return
    if kind == "unreadable":
        raise StoreError(f"cannot read the record store {path}")
    if kind != "sqlite" and path.stat().st_size > 0:  # an empty file becomes a new store
        what = {"safetensors": "a safetensors file (a checkpoint?)", "text": "a text file",
                "special": "not a regular file"}.get(kind, "a binary file")
        raise StoreError(f"{path} is not a record store: it is {what}, not an SQLite database")


@dataclass(frozen=True)
class ExampleRecord:
    example: int
    label: int
    clean_correct_runs: int
    fooled_by: int | None


@dataclass(frozen=True)
class OutcomeRecord:
    example: int
    step: int
    run: int
    correct: bool
    distance: float
    queries: float


@dataclass(frozen=True)
class FlagRecord:
    flag: str
    step: int
    fired: bool
    detail: str


@dataclass(frozen=True)
class StepRecord:
    step: int
    label: str
    setting: str
    white_box: bool
    attack: dict[str, Any]


@dataclass(frozen=True)
class UnitRecord:
    """One finished unit of an experiment (see :meth:`RecordStore.write_unit`)."""

    experiment: str
    unit: str
    config_hash: str
    fingerprint: str
    environment: dict[str, Any]
    seconds: float
    result: dict[str, Any]


class RecordStore:
    """A SQLite file of evaluation records. Safe to open from several processes (WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        """Open the store at ``path``, creating it (and its directory) if missing. A path that is a
        directory, a file that is not an advguard record store (text, a checkpoint, another
        SQLite database), or a place that cannot be written is a :class:`StoreError` naming it;
        such a file is never modified."""
        self.path = Path(path)
        _check_store_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the record store {self.path}: "
                             f"{exc.strerror or exc}") from None
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the record store {self.path}: {exc}") from None
        try:
            self._check_schema()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot open the record store {self.path}: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _check_schema(self) -> None:
        """Refuse an SQLite database that is not an advguard record store of this schema (it
        would otherwise get our tables added), before anything is written to it."""
        tables = {r[0] for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return
        if "meta" not in tables:
            raise StoreError(f"{self.path} is an SQLite database but not an advguard record store "
                             f"(its tables: {', '.join(sorted(tables)[:5])})")
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and row[0] != str(SCHEMA_VERSION):
            raise StoreError(f"record store {self.path} has schema version {row[0]}; this "
                             f"advguard reads version {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ evaluations
    def begin_evaluation(self, eval_id: str, *, name: str, config: dict[str, Any],
                         traits: dict[str, Any], environment: dict[str, Any], n: int, runs: int,
                         steps: Sequence[StepRecord]) -> bool:
        """Create the evaluation unless it exists; returns True if it already existed (resume).
        The evaluation keeps the environment of the sitting that created it; each chunk records
        the environment that computed it (:meth:`write_chunk`), so an evaluation resumed at
        another commit or on another machine names both."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT status FROM evaluations WHERE id=?", (eval_id,)).fetchone()
            if row is not None:
                if row[0] != "complete":
                    db.execute("UPDATE evaluations SET updated=?, name=? WHERE id=?",
                               (now, name, eval_id))
                return True
            db.execute(
                "INSERT INTO evaluations VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (eval_id, name, json.dumps(config, sort_keys=True, default=str),
                 json.dumps(traits), json.dumps(environment), n, runs, "running", now, now, 0.0))
            db.executemany("INSERT INTO steps VALUES (?,?,?,?,?,?)", [
                (eval_id, s.step, s.label, s.setting, int(s.white_box),
                 json.dumps(s.attack, sort_keys=True, default=str)) for s in steps])
        return False

    def finished_chunks(self, eval_id: str) -> set[int]:
        rows = self._db.execute("SELECT chunk FROM chunks WHERE eval_id=?", (eval_id,))
        return {int(r[0]) for r in rows}

    def write_chunk(self, eval_id: str, chunk: int, examples: Sequence[ExampleRecord],
                    outcomes: Sequence[OutcomeRecord], seconds: float,
                    step_seconds: dict[int, float],
                    environment: dict[str, Any] | None = None) -> None:
        """Commit one chunk's records atomically, with the ``environment`` (versions, commit,
        device) that computed it when given."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO examples VALUES (?,?,?,?,?,?)", [
                (eval_id, e.example, chunk, e.label, e.clean_correct_runs, e.fooled_by)
                for e in examples])
            db.executemany("INSERT OR REPLACE INTO outcomes VALUES (?,?,?,?,?,?,?)", [
                (eval_id, o.example, o.step, o.run, int(o.correct), o.distance, o.queries)
                for o in outcomes])
            db.execute("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?)",
                       (eval_id, chunk, len(examples), seconds, json.dumps(step_seconds)))
            if environment is not None:
                db.execute("INSERT OR REPLACE INTO chunk_environments VALUES (?,?,?)",
                           (eval_id, chunk, json.dumps(environment, default=str)))
            db.execute("UPDATE evaluations SET seconds = seconds + ?, updated=? WHERE id=?",
                       (seconds, time.time(), eval_id))

    def write_flags(self, eval_id: str, flags: Sequence[FlagRecord]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO flags VALUES (?,?,?,?,?)", [
                (eval_id, f.flag, f.step, int(f.fired), f.detail) for f in flags])

    def add_seconds(self, eval_id: str, seconds: float) -> None:
        """Add wall time spent outside chunks (reliability probes) to the evaluation's total."""
        self._db.execute("UPDATE evaluations SET seconds = seconds + ?, updated=? WHERE id=?",
                         (seconds, time.time(), eval_id))

    def set_status(self, eval_id: str, status: str) -> None:
        self._db.execute("UPDATE evaluations SET status=?, updated=? WHERE id=?",
                         (status, time.time(), eval_id))

    def write_unit(self, unit: UnitRecord) -> None:
        """Commit one experiment unit atomically (a re-computed unit replaces the old one)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO units VALUES (?,?,?,?,?,?,?,?)",
                       (unit.experiment, unit.unit, unit.config_hash, unit.fingerprint,
                        json.dumps(unit.environment, default=str), unit.seconds, time.time(),
                        json.dumps(unit.result)))

    def units(self, experiment: str) -> list[UnitRecord]:
        """The finished units of ``experiment``, oldest first."""
        rows = self._db.execute("SELECT unit, config_hash, fingerprint, environment, seconds, "
                                "result FROM units WHERE experiment=? ORDER BY created",
                                (experiment,))
        return [UnitRecord(experiment, u, h, f, json.loads(e), float(s), json.loads(r))
                for u, h, f, e, s, r in rows]

    # ------------------------------------------------------------------ reading
    def evaluation_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM evaluations ORDER BY created")]

    def evaluation(self, eval_id: str) -> dict[str, Any]:
        row = self._db.execute(
            "SELECT id, name, config, traits, environment, n, runs, status, created, updated, "
            "seconds FROM evaluations WHERE id=?", (eval_id,)).fetchone()
        if row is None:
            from advguard.errors import AdvguardError

            raise AdvguardError(f"no evaluation {eval_id!r} in {self.path}")
        keys = ("id", "name", "config", "traits", "environment", "n", "runs", "status",
                "created", "updated", "seconds")
        out = dict(zip(keys, row))
        for k in ("config", "traits", "environment"):
            out[k] = json.loads(out[k])
        return out

    def steps(self, eval_id: str) -> list[StepRecord]:
        rows = self._db.execute("SELECT step, label, setting, white_box, attack FROM steps "
                                "WHERE eval_id=? ORDER BY step", (eval_id,))
        return [StepRecord(int(s), lbl, st, bool(w), json.loads(a)) for s, lbl, st, w, a in rows]

    def examples(self, eval_id: str, chunk: int | None = None) -> list[ExampleRecord]:
        """The evaluation's examples (those of one ``chunk`` when given)."""
        where, args = ("", (eval_id,)) if chunk is None else (" AND chunk=?", (eval_id, chunk))
        rows = self._db.execute("SELECT example, label, clean_correct_runs, fooled_by FROM "
                                f"examples WHERE eval_id=?{where} ORDER BY example", args)
        return [ExampleRecord(int(e), int(lbl), int(c), None if f is None else int(f))
                for e, lbl, c, f in rows]

    def outcomes(self, eval_id: str, chunk: int | None = None) -> list[OutcomeRecord]:
        """The evaluation's outcomes (those of one ``chunk``'s examples when given)."""
        where, args = ("", (eval_id,)) if chunk is None else (
            " AND example IN (SELECT example FROM examples WHERE eval_id=? AND chunk=?)",
            (eval_id, eval_id, chunk))
        rows = self._db.execute("SELECT example, step, run, correct, distance, queries FROM "
                                f"outcomes WHERE eval_id=?{where} ORDER BY example, step, run",
                                args)
        return [OutcomeRecord(int(e), int(s), int(r), bool(c), float(d), float(q))
                for e, s, r, c, d, q in rows]

    def flags(self, eval_id: str) -> list[FlagRecord]:
        rows = self._db.execute("SELECT flag, step, fired, detail FROM flags WHERE eval_id=? "
                                "ORDER BY step, flag", (eval_id,))
        return [FlagRecord(f, int(s), bool(x), d) for f, s, x, d in rows]

    def chunk_environments(self, eval_id: str) -> dict[int, dict[str, Any]]:
        """The environment that computed each chunk, for the chunks that recorded one (chunks
        written before advguard recorded it have none: the evaluation's environment stands in)."""
        rows = self._db.execute("SELECT chunk, environment FROM chunk_environments "
                                "WHERE eval_id=? ORDER BY chunk", (eval_id,))
        return {int(c): json.loads(e) for c, e in rows}

    def chunk_records(self, eval_id: str, chunk: int
                      ) -> tuple[list[ExampleRecord], list[OutcomeRecord], float,
                                 dict[int, float]]:
        """One finished chunk's records: its examples, their outcomes, its wall time and its
        per-step seconds."""
        row = self._db.execute("SELECT seconds, step_seconds FROM chunks WHERE eval_id=? AND "
                               "chunk=?", (eval_id, chunk)).fetchone()
        if row is None:
            from advguard.errors import AdvguardError

            raise AdvguardError(f"evaluation {eval_id!r} has no finished chunk {chunk}")
        return (self.examples(eval_id, chunk), self.outcomes(eval_id, chunk), float(row[0]),
                {int(k): float(v) for k, v in json.loads(row[1]).items()})

    def chunk_seconds(self, eval_id: str) -> dict[int, float]:
        """Total wall time per step (-1 = clean) summed over chunks."""
        totals: dict[int, float] = {}
        for (raw,) in self._db.execute("SELECT step_seconds FROM chunks WHERE eval_id=?",
                                       (eval_id,)):
            for k, v in json.loads(raw).items():
                totals[int(k)] = totals.get(int(k), 0.0) + float(v)
        return totals

    # ------------------------------------------------------------------ moving records
    def dump(self, path: str | Path) -> dict[str, int]:
        """Write every record of this store to ``path`` as JSON lines (a header, then one row per
        line, in primary-key order, so that two dumps of the same records are identical and a
        dump under version control diffs row by row). Returns the rows written per table.
        ``path`` is replaced only if it is a records file written before; see :meth:`load`."""
        out = Path(path)
        _check_records_target(out, self.path)
        counts: dict[str, int] = {}
        lines = [json.dumps({"format": RECORDS_FORMAT, "schema_version": SCHEMA_VERSION})]
        self._db.execute("BEGIN")  # one snapshot of every table, while evaluations keep writing
        try:
            for table, (columns, key, _) in _TABLES.items():
                rows = self._db.execute(f"SELECT {', '.join(columns)} FROM {table} "
                                        f"ORDER BY {', '.join(key)}").fetchall()
                counts[table] = len(rows)
                lines.extend(json.dumps({"table": table, "row": dict(zip(columns, row))},
                                        sort_keys=True) for row in rows)
        finally:
            self._db.execute("COMMIT")
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text("\n".join(lines) + "\n")
            tmp.replace(out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot write the records file {out}: "
                              f"{exc.strerror or exc}") from None
        return counts

    def load(self, path: str | Path) -> dict[str, int]:
        """Merge the records of a file written by :meth:`dump` into this store, in one
        transaction (a bad file changes nothing). Finished work is never redone or overwritten:
        a chunk already here keeps its examples and outcomes, and an evaluation here keeps its
        row unless the file finished it and this store did not. So an evaluation dumped midway
        on one machine resumes on another after ``load``. Returns the rows added per table."""
        return self.merge(read_records(Path(path)))

    def merge(self, tables: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
        """:meth:`load` for rows already read and checked by :func:`read_records`."""
        added = {t: 0 for t in _TABLES}
        with self.transaction() as db:
            for row in tables["evaluations"]:
                local = db.execute("SELECT status FROM evaluations WHERE id=?",
                                   (row["id"],)).fetchone()
                if local is not None and not (row["status"] == "complete"
                                              and local[0] != "complete"):
                    continue
                added["evaluations"] += 1
                _insert(db, "evaluations", row, replace=local is not None)
            done = {(e, c) for e, c in db.execute("SELECT eval_id, chunk FROM chunks")}
            new_chunks = {(r["eval_id"], r["chunk"]) for r in tables["chunks"]} - done
            new_examples = {(r["eval_id"], r["example"]) for r in tables["examples"]
                            if (r["eval_id"], r["chunk"]) in new_chunks}
            for table in ("steps", "flags", "units"):
                for row in tables[table]:
                    added[table] += _insert(db, table, row, replace=False)
            for table in ("chunks", "chunk_environments"):
                for row in tables[table]:
                    if (row["eval_id"], row["chunk"]) in new_chunks:
                        added[table] += _insert(db, table, row, replace=True)
            for table in ("examples", "outcomes"):
                for row in tables[table]:
                    if (row["eval_id"], row["example"]) in new_examples:
                        added[table] += _insert(db, table, row, replace=True)
        return added


RECORDS_FORMAT = "advguard-records"

# table -> (columns in schema order, primary key, column types: i integer, f real, t text,
# j JSON-encoded text, i? integer or null)
_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "evaluations": (("id", "name", "config", "traits", "environment", "n", "runs", "status",
                     "created", "updated", "seconds"), ("id",), "t t j j j i i t f f f"),
    "steps": (("eval_id", "step", "label", "setting", "white_box", "attack"),
              ("eval_id", "step"), "t i t t i j"),
    "chunks": (("eval_id", "chunk", "n", "seconds", "step_seconds"), ("eval_id", "chunk"),
               "t i i f j"),
    "chunk_environments": (("eval_id", "chunk", "environment"), ("eval_id", "chunk"), "t i j"),
    "examples": (("eval_id", "example", "chunk", "label", "clean_correct_runs", "fooled_by"),
                 ("eval_id", "example"), "t i i i i i?"),
    "outcomes": (("eval_id", "example", "step", "run", "correct", "distance", "queries"),
                 ("eval_id", "example", "step", "run"), "t i i i i f f"),
    "flags": (("eval_id", "flag", "step", "fired", "detail"), ("eval_id", "flag", "step"),
              "t t i i t"),
    "units": (("experiment", "unit", "config_hash", "fingerprint", "environment", "seconds",
               "created", "result"), ("experiment", "unit", "config_hash", "fingerprint"),
              "t t t t j f f j"),
}


def _bad_column(table: str, row: dict[str, Any]) -> str | None:
    """The first column of ``row`` whose value has the wrong type (``'n = "abc"'``), or None."""
    columns, _, types = _TABLES[table]
    for column, kind in zip(columns, types.split()):
        value = row[column]
        if kind == "i?" and value is None:
            continue
        if kind in ("i", "i?"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "f":  # JSON lets NaN and Infinity through; no record holds either
            ok = isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(value)
        else:
            ok = isinstance(value, str)
            if ok and kind == "j":
                try:
                    json.loads(value)
                except ValueError:
                    ok = False
        if not ok:
            return f"{column} = {json.dumps(value)[:60]}"
    return None


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any], *, replace: bool) -> int:
    columns = _TABLES[table][0]
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    cur = db.execute(f"{verb} INTO {table} ({', '.join(columns)}) VALUES "
                     f"({', '.join('?' * len(columns))})", [row[c] for c in columns])
    return int(cur.rowcount > 0)


def _check_records_target(out: Path, store: Path) -> None:
    """A dump goes to a new file or replaces a records file; never the store, a directory, a
    checkpoint or any other file."""
    kind = file_kind(out)
    if kind == "directory":
        raise OutputError(f"cannot write the records to {out}: it is a directory; give a file "
                          "name, e.g. records.jsonl")
    if kind == "missing":
        check_creatable(out, "the records file")
        return
    if out.resolve() == store.resolve():
        raise OutputError(f"refusing to write the records over {out}: it is the record store "
                          "they are read from")
    if kind == "text" and out.stat().st_size > 0:
        with out.open() as f:
            first = f.readline()
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if isinstance(header, dict) and header.get("format") == RECORDS_FORMAT:
            return
    if kind == "text" and out.stat().st_size == 0:
        return
    raise OutputError(f"refusing to replace {out}: it is not a records file advguard wrote; "
                      "choose another file name")


def read_records(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows of a records file, by table; a :class:`StoreError` naming the file and line for
    anything else (a missing file, another format, a schema this advguard does not read, a
    malformed or incomplete row)."""
    kind = file_kind(path)
    if kind == "missing":
        raise StoreError(f"records file not found: {path}")
    if kind != "text":
        raise StoreError(f"{path} is not a records file (advguard records dump writes JSON "
                         f"lines; this is {'a directory' if kind == 'directory' else kind})")
    tables: dict[str, list[dict[str, Any]]] = {t: [] for t in _TABLES}
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                item = None
            if number == 1:
                if not (isinstance(item, dict) and item.get("format") == RECORDS_FORMAT):
                    raise StoreError(f"{path} is not an advguard records file (its first line "
                                     "is not the header advguard records dump writes)")
                if item.get("schema_version") != SCHEMA_VERSION:
                    raise StoreError(f"records file {path} has schema version "
                                     f"{item.get('schema_version')}; this advguard reads "
                                     f"version {SCHEMA_VERSION}")
                continue
            table = item.get("table") if isinstance(item, dict) else None
            row = item.get("row") if isinstance(item, dict) else None
            if table not in _TABLES or not isinstance(row, dict) or \
                    any(c not in row for c in _TABLES[table][0]):
                raise StoreError(f"{path}, line {number}: not a record row (expected "
                                 "{\"table\": ..., \"row\": {...}} with every column)")
            bad = _bad_column(table, row)
            if bad:
                raise StoreError(f"{path}, line {number}: {table} row has a bad {bad}")
            tables[table].append(row)
    if not any(tables.values()) and path.stat().st_size == 0:
        raise StoreError(f"{path} is empty, not a records file")
    return tables
