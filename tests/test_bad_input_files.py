"""Bad files, paths and devices: one clear error every time, and never a clobbered file.

Each case runs the real command line in-process and expects exit status 2, exactly one line
``advguard: error: ...`` on stderr naming the offending value, and every file that existed before
byte-identical afterwards (nothing added either). The API cases expect one typed exception.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from advguard.checkpoint import save_checkpoint
from advguard.cli import main
from advguard.errors import ConfigError, OutputError, StoreError
from advguard.evaluation import RecordStore
from advguard.files import REPORT_MARKER, is_generated_report, write_generated
from advguard.models import create_model
from advguard.quickstart import check_output_dir
from advguard.training import TrainConfig, train
from advguard.training.loop import CONFIG_HEADER, check_run_dir
from advguard.utils import resolve_device

DOCS = Path(__file__).parents[1] / "docs" / "results"
# The tests run as root, for whom no directory is read-only; /proc refuses new files to anyone.
UNWRITABLE = "/proc/advguard-test"
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

EVAL = ("eval", "--model", "{w}/ckpt.safetensors", "--dataset", "fashion-mnist-sample", "--n",
        "4", "--attack", "adaptive:fgsm", "--no-checks", "--quiet", "--device", "cpu")
TRAIN = ("train", "--model", "lenet5", "--epochs", "1", "--train-size", "200", "--test-size",
         "50", "--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--quiet")
REPORT = ("report", "--store", "{w}/store.sqlite")
QUICKSTART = ("quickstart", "--quiet", "--epochs", "1")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of things a user might point advguard at by mistake."""
    w = tmp_path_factory.mktemp("world")
    save_checkpoint(w / "ckpt.safetensors", create_model("lenet5", in_channels=1),
                    metadata={"dataset": "fashion-mnist-sample"})
    assert main([a.format(w=w) for a in EVAL] + ["--store", str(w / "store.sqlite")]) == 0
    shutil.copy(w / "store.sqlite", w / "other.sqlite")
    with sqlite3.connect(w / "foreign.db") as db:
        db.execute("CREATE TABLE songs (title TEXT)")
    (w / "notes.md").write_text("# My notes\n\nWritten by hand.\n")
    (w / "adir").mkdir()
    (w / "cfgdir").mkdir()
    (w / "cfgdir" / "config.yaml").write_text("lr: 5  # my own config, not a run's\n")
    (w / "otherdir").mkdir()
    (w / "otherdir" / "notes.txt").write_text("mine\n")
    (w / "ckptdir").mkdir()
    shutil.copy(w / "ckpt.safetensors", w / "ckptdir" / "model.safetensors")
    (w / "qs_model" / "model").mkdir(parents=True)
    (w / "qs_model" / "model" / "config.yaml").write_text("epochs: 3\n")
    (w / "qs_store").mkdir()
    (w / "qs_store" / "records.sqlite").write_text("not a database\n")
    return w


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and directory under ``root`` with its bytes (None for directories)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    names: tuple[str, ...]  # what the one-line message must contain ({w}: the world directory)


def case(id_: str, argv: tuple[str, ...], *names: str,
         marks: pytest.MarkDecorator | tuple[()] = ()) -> object:
    return pytest.param(Case(argv, names), id=id_, marks=marks)


CASES = [
    # 1. data loss: a report never replaces the store, a database, a checkpoint or a user's file
    case("report-onto-its-store", (*REPORT, "-o", "{w}/store.sqlite"), "{w}/store.sqlite",
         "record store"),
    case("report-onto-its-store-force", (*REPORT, "-o", "{w}/store.sqlite", "--force"),
         "{w}/store.sqlite", "record store"),
    case("report-onto-its-store-other-spelling", (*REPORT, "-o", "{w}/adir/../store.sqlite"),
         "{w}/adir/../store.sqlite", "record store"),
    case("report-onto-another-store-force", (*REPORT, "-o", "{w}/other.sqlite", "--force"),
         "{w}/other.sqlite", "SQLite"),
    case("report-onto-checkpoint", (*REPORT, "-o", "{w}/ckpt.safetensors"),
         "{w}/ckpt.safetensors", "checkpoint"),
    case("report-onto-checkpoint-force", (*REPORT, "-o", "{w}/ckpt.safetensors", "--force"),
         "{w}/ckpt.safetensors", "checkpoint"),
    case("report-onto-hand-written-file", (*REPORT, "-o", "{w}/notes.md"), "{w}/notes.md",
         "--force"),
    case("html-report-onto-hand-written-file", (*REPORT, "--format", "html", "-o",
                                                "{w}/notes.md"), "{w}/notes.md"),
    # 1. data loss: training never writes into a directory holding files it did not write
    case("train-into-dir-with-foreign-config", (*TRAIN, "--output", "{w}/cfgdir"), "{w}/cfgdir",
         "config.yaml"),
    case("train-into-dir-with-foreign-config-overwrite",
         (*TRAIN, "--output", "{w}/cfgdir", "--overwrite"), "{w}/cfgdir", "config.yaml"),
    case("train-into-dir-with-other-files", (*TRAIN, "--output", "{w}/otherdir"),
         "{w}/otherdir", "notes.txt"),
    case("train-into-dir-with-foreign-model", (*TRAIN, "--output", "{w}/ckptdir"),
         "{w}/ckptdir", "model.safetensors"),
    case("quickstart-into-dir-with-foreign-run", (*QUICKSTART, "--output", "{w}/qs_model"),
         "{w}/qs_model/model", "config.yaml"),
    case("quickstart-into-dir-with-foreign-store", (*QUICKSTART, "--output", "{w}/qs_store"),
         "{w}/qs_store", "records.sqlite"),
    case("quickstart-into-dir-with-other-files", (*QUICKSTART, "--output", "{w}/otherdir"),
         "{w}/otherdir", "notes.txt"),
    # 2. the record store
    case("report-store-is-text", ("report", "--store", "{w}/notes.md"), "{w}/notes.md",
         "not a record store"),
    case("report-store-is-checkpoint", ("report", "--store", "{w}/ckpt.safetensors"),
         "{w}/ckpt.safetensors", "not a record store"),
    case("report-store-is-directory", ("report", "--store", "{w}/adir"), "{w}/adir",
         "directory"),
    case("report-store-is-foreign-sqlite", ("report", "--store", "{w}/foreign.db"),
         "{w}/foreign.db", "not an advguard record store"),
    case("report-store-missing", ("report", "--store", "{w}/missing.sqlite"),
         "{w}/missing.sqlite", "not found"),
    case("eval-store-is-text", (*EVAL, "--store", "{w}/notes.md"), "{w}/notes.md",
         "not a record store"),
    case("eval-store-is-checkpoint", (*EVAL, "--store", "{w}/ckpt.safetensors"),
         "{w}/ckpt.safetensors", "not a record store"),
    case("eval-store-is-directory", (*EVAL, "--store", "{w}/adir"), "{w}/adir", "directory"),
    case("eval-store-is-foreign-sqlite", (*EVAL, "--store", "{w}/foreign.db"), "{w}/foreign.db",
         "not an advguard record store"),
    case("eval-store-parent-is-file", (*EVAL, "--store", "{w}/notes.md/s.sqlite"),
         "{w}/notes.md/s.sqlite", "not a directory"),
    case("eval-store-unwritable", (*EVAL, "--store", f"{UNWRITABLE}/s.sqlite"),
         f"{UNWRITABLE}/s.sqlite", marks=needs_proc),
    # 3. outputs
    case("report-onto-directory", (*REPORT, "-o", "{w}/adir"), "{w}/adir", "directory"),
    case("report-parent-is-file", (*REPORT, "-o", "{w}/notes.md/r.md"), "{w}/notes.md/r.md",
         "not a directory"),
    case("report-unwritable", (*REPORT, "-o", f"{UNWRITABLE}/r.md"), f"{UNWRITABLE}/r.md",
         marks=needs_proc),
    case("train-onto-existing-file", (*TRAIN, "--output", "{w}/notes.md"), "{w}/notes.md",
         "existing file"),
    case("train-parent-is-file", (*TRAIN, "--output", "{w}/notes.md/run"), "{w}/notes.md/run",
         "not a directory"),
    case("train-unwritable", (*TRAIN, "--output", f"{UNWRITABLE}/run"), f"{UNWRITABLE}/run",
         marks=needs_proc),
    case("quickstart-onto-existing-file", (*QUICKSTART, "--output", "{w}/notes.md"),
         "{w}/notes.md", "existing file"),
    case("quickstart-parent-is-file", (*QUICKSTART, "--output", "{w}/notes.md/q"),
         "{w}/notes.md/q", "not a directory"),
    case("quickstart-unwritable", (*QUICKSTART, "--output", f"{UNWRITABLE}/q"), f"{UNWRITABLE}/q",
         marks=needs_proc),
    # 4. devices
    case("train-device-gpu", (*TRAIN, "--device", "gpu", "--output", "{w}/run-gpu"), "'gpu'",
         "available here: cpu", "auto"),
    case("eval-device-gpu", (*EVAL, "--device", "gpu", "--store", "{w}/store.sqlite"), "'gpu'",
         "available here: cpu", "auto"),
    case("quickstart-device-gpu", (*QUICKSTART, "--device", "gpu"), "'gpu'",
         "available here: cpu", "auto"),
    case("train-device-cuda-without-cuda", (*TRAIN, "--device", "cuda", "--output",
                                            "{w}/run-cuda"), "'cuda'", "not available",
         "available here: cpu, auto", marks=needs_no_cuda),
    case("eval-device-cuda-without-cuda", (*EVAL, "--device", "cuda", "--store",
                                           "{w}/store.sqlite"), "'cuda'", "not available",
         "available here: cpu, auto", marks=needs_no_cuda),
]


@pytest.mark.parametrize("bad", CASES)
def test_one_line_error_and_nothing_touched(bad: Case, world: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(world)
    capsys.readouterr()
    assert main([a.format(w=world) for a in bad.argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advguard: error: "), err
    assert "Traceback" not in err
    for name in bad.names:
        assert name.format(w=world) in lines[0], (name, lines[0])
    assert snapshot(world) == before  # every file byte-identical, nothing added or removed


# --------------------------------------------------------------------------- the Python API
@pytest.mark.parametrize(("path", "needle"), [
    pytest.param("{w}/notes.md", "not a record store", id="text"),
    pytest.param("{w}/ckpt.safetensors", "not a record store", id="checkpoint"),
    pytest.param("{w}/adir", "directory", id="directory"),
    pytest.param("{w}/foreign.db", "not an advguard record store", id="foreign-sqlite"),
    pytest.param("{w}/notes.md/s.sqlite", "not a directory", id="parent-is-file"),
    pytest.param(f"{UNWRITABLE}/s.sqlite", "cannot", id="unwritable", marks=needs_proc),
])
def test_record_store_api_raises_store_error(path: str, needle: str, world: Path) -> None:
    before = snapshot(world)
    with pytest.raises(StoreError, match=needle) as exc:
        RecordStore(path.format(w=world))
    assert path.format(w=world) in str(exc.value) and "\n" not in str(exc.value)
    assert snapshot(world) == before


@pytest.mark.parametrize("device", ["gpu", "", "cuda:x", "meta",
                                    pytest.param("cuda", marks=needs_no_cuda),
                                    pytest.param("cuda:1", marks=needs_no_cuda)])
def test_resolve_device_names_the_device_and_what_is_available(device: str) -> None:
    with pytest.raises(ConfigError, match="available here: cpu") as exc:
        resolve_device(device)
    assert repr(device) in str(exc.value) and "auto" in str(exc.value)


def test_resolve_device_accepts_what_it_lists() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(torch.device("cpu")).type == "cpu"


@pytest.mark.parametrize("where", ["cfgdir", "otherdir", "ckptdir", "notes.md", "notes.md/run"])
def test_train_api_refuses_output_dir(where: str, world: Path) -> None:
    before = snapshot(world)
    config = TrainConfig(model="lenet5", epochs=1, train_size=200, test_size=0, device="cpu")
    with pytest.raises(OutputError, match=re.escape(str(world / where))):
        train(config, output_dir=world / where, progress=False)
    assert snapshot(world) == before


def test_report_and_its_files_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    """A refused file beside a report (e.g. a sweep's selection JSON) means nothing is written."""
    (tmp_path / "mine.json").write_text('{"my": "data"}\n')
    files = {tmp_path / "r.md": "# report\n", tmp_path / "mine.json": '{"sweep": "x"}\n'}
    with pytest.raises(OutputError, match=re.escape(str(tmp_path / "mine.json"))):
        write_generated(files)
    assert not (tmp_path / "r.md").exists()
    assert (tmp_path / "mine.json").read_text() == '{"my": "data"}\n'
    # JSON written by advguard before (same keys) is replaced; JSON gets no marker
    (tmp_path / "mine.json").write_text('{"sweep": "old"}\n')
    assert write_generated(files) == list(files)
    assert (tmp_path / "mine.json").read_text() == '{"sweep": "x"}\n'
    assert (tmp_path / "r.md").read_text().rstrip().endswith(REPORT_MARKER)


# --------------------------------------------------------------------------- what must still work
def test_report_regenerates_its_own_output(world: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    store = str(world / "store.sqlite")
    for fmt in ("md", "html"):
        out = tmp_path / f"report.{fmt}"
        for _ in range(2):  # the second run replaces the first run's report
            assert main(["report", "--store", store, "--format", fmt, "-o", str(out)]) == 0
        text = out.read_text()
        assert text.rstrip().endswith(REPORT_MARKER) and text.count(REPORT_MARKER) == 1
        assert is_generated_report(out)
    forced = tmp_path / "notes.md"
    shutil.copy(world / "notes.md", forced)
    assert main(["report", "--store", store, "-o", str(forced), "--force"]) == 0
    assert "Written by hand" not in forced.read_text() and is_generated_report(forced)
    assert f"wrote {forced}" in capsys.readouterr().out


GENERATED = ["cap/adaptive_fmnist.md", "cap/fig2_fmnist.md", "cap/fig3_fmnist.md",
             "cap/table1_fmnist.md", "cap/table3_fmnist.md", "cap/table4_fmnist.md",
             "recipes/records.md", "smooth/adaptive_fmnist.md", "smooth/adaptive_fmnist_n60.md",
             "smooth/blackbox_fmnist.md", "smooth_scale_s_sweep.md"]
HAND_WRITTEN = ["cap_scale_s.md", "foundation.md", "recipes_scale_s.md", "smooth_scale_s.md"]


@pytest.mark.parametrize("name", GENERATED)
def test_committed_generated_reports_can_be_regenerated_in_place(name: str) -> None:
    assert is_generated_report(DOCS / name)


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_committed_hand_written_results_are_never_replaced(name: str) -> None:
    assert not is_generated_report(DOCS / name)


def test_committed_sweep_selection_is_recognised_beside_its_report() -> None:
    path = DOCS / "smooth_scale_s_sweep_selection.json"
    same_keys = json.dumps(dict.fromkeys(json.loads(path.read_text())), indent=2)
    assert is_generated_report(path, same_keys)
    assert not is_generated_report(path, '{"other": 1}')


def test_train_resumes_in_its_own_output_dir(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = [*TRAIN, "--output", str(out)]
    assert main(argv) == 0
    config = (out / "config.yaml").read_text()
    assert config.startswith(CONFIG_HEADER)
    check_run_dir(out)  # recognised as a run
    assert main(argv) == 0  # resumes: the run is complete, nothing is retrained
    assert json.loads((out / "record.json").read_text())["resumed_from"] == {"epoch": 1,
                                                                            "step": 0}
    # a run directory from before the header (config.yaml as yaml.safe_dump wrote it) resumes too
    (out / "config.yaml").write_text(config.removeprefix(CONFIG_HEADER).lstrip("\n"))
    assert main(argv) == 0
    assert (out / "config.yaml").read_text() == config
    assert "advguard: error" not in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*TRAIN, "--output", str(empty)]) == 0  # an existing empty directory is fine


def test_quickstart_output_dir_of_a_previous_quickstart_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    check_output_dir(out)  # new
    train(TrainConfig(model="lenet5", epochs=1, train_size=200, test_size=0, device="cpu"),
          output_dir=out / "model", progress=False)
    RecordStore(out / "records.sqlite").close()
    check_output_dir(out)  # what a quickstart leaves behind
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputError, match=r"notes\.txt"):
        check_output_dir(out)
