"""What every experiment kind shares: the header fields, the models to train first, the record
store, and three hooks — :meth:`Experiment.cells` (the units of work, by name),
:meth:`Experiment.run` and :meth:`Experiment.report` — plus :meth:`Experiment.paper_keys`, the
paper numbers a report places beside ours (a test checks each names a cell that exists)."""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from advguard.errors import ConfigError

if TYPE_CHECKING:
    from advguard.evaluation.executors import Executor


@dataclass(frozen=True)
class TrainSpec:
    """A model an experiment needs: the training ``config`` (a shipped name or path), the
    ``output`` folder, and ``set``: fields that override the config."""

    config: str
    output: str
    set: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Experiment(ABC):
    """An experiment file: ``experiment`` (its name), ``kind`` (a registered kind, default
    ``grid``), ``description``, ``paper``, ``command`` (how to reproduce it), ``store`` (the
    SQLite record store, default ``results/<name>.sqlite``), ``train`` (models to train first),
    then the kind's own fields."""

    kind: ClassVar[str]
    #: whether ``compute`` runs its evaluations' chunks on a given executor (grid) or only in
    #: this process (sweep)
    uses_executor: ClassVar[bool] = True

    name: str
    description: str = ""
    paper: str = ""
    command: str = ""
    store: str = ""
    train: tuple[TrainSpec, ...] = ()
    path: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("an experiment file needs an 'experiment' name")
        if not self.store:
            object.__setattr__(self, "store", f"results/{self.name}.sqlite")
        train = tuple(t if isinstance(t, TrainSpec) else _train_spec(self.name, t)
                      for t in self.train)
        object.__setattr__(self, "train", train)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str | None = None) -> Experiment:
        """The typed experiment from a file's mapping (``experiment`` → ``name``; ``kind`` is
        dropped, it chose the class)."""
        from advguard.configs import from_mapping

        body = {k: v for k, v in data.items() if k not in ("experiment", "kind")}
        if "name" in body:
            raise ConfigError("an experiment is named by 'experiment:', not 'name:'")
        name = str(data.get("experiment", ""))
        body = {**cls.prepare({"name": name, **body}), "path": path}
        return from_mapping(cls, body, what=f"{cls.kind} experiment {name!r}")

    @classmethod
    def prepare(cls, body: dict[str, Any]) -> dict[str, Any]:
        """Hook: convert the kind's raw fields (lists → tuples, nested specs) before the
        dataclass is built. Default: unchanged."""
        return body

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def cells(self) -> list[str]:
        """The names of the units of work, in run order (``run(only=...)`` globs over them)."""

    @abstractmethod
    def compute(self, *, only: str | None, progress: bool, device: str | None,
                executor: Executor | None = None) -> None:
        """Compute every missing unit (whose name matches ``only``) into the record store, its
        evaluations' chunks on ``executor`` (default: in this process)."""

    @abstractmethod
    def report(self, *, plots_dir: str | Path | None = None) -> str:
        """Markdown generated from the record store (plots written to ``plots_dir``)."""

    def paper_keys(self) -> dict[str, list[str]]:
        """Per table: the keys of its ``paper`` numbers that name no cell of the table (a
        shipped experiment has none; see tests). Default: no paper numbers."""
        return {}

    def artifacts(self, out: Path) -> dict[Path, str]:
        """Extra files (path → text) written beside a report at ``out``. Default: none."""
        return {}

    # ------------------------------------------------------------------ shared
    def run(self, *, only: str | None = None, progress: bool = True,
            device: str | None = None, executor: Executor | None = None) -> None:
        """Train the listed models if needed (here), then compute every missing unit (on
        ``executor``, default in this process). Resumable: an interrupted run continues where
        it stopped."""
        self.check_executor(executor)  # before any training
        self.check_device(device, executor)
        self.train_models(progress=progress, only=only)
        self.compute(only=only, progress=progress, device=device, executor=executor)

    @staticmethod
    def check_device(device: str | None, executor: Executor | None) -> None:
        """An evaluation device this machine does not have is one error before any training
        (with Ray, the workers resolve it: they may have devices this process does not)."""
        from advguard.evaluation.executors import LocalExecutor
        from advguard.utils import resolve_device

        if device is not None and (executor is None or isinstance(executor, LocalExecutor)):
            resolve_device(device)

    def check_executor(self, executor: Executor | None) -> None:
        """One error when ``executor`` is not the in-process one and this kind cannot use it."""
        from advguard.evaluation.executors import LocalExecutor

        if executor is None or isinstance(executor, LocalExecutor) or self.uses_executor:
            return
        raise ConfigError(f"experiment {self.name!r} is a {self.kind}, computed in this process; "
                          f"--executor {executor.name} applies to grid experiments (evaluations)")

    def references(self, only: str | None) -> str | None:
        """Text in which the selected units name the checkpoints they read (None: unknown, so
        every listed model is needed). With ``only``, :meth:`train_models` trains just the
        models this text names."""
        return None

    def selected(self, only: str | None) -> list[str]:
        return [c for c in self.cells() if not only or fnmatch.fnmatch(c, only)]

    def train_models(self, *, progress: bool = True, only: str | None = None) -> list[Path]:
        """Train the models the experiment lists (each is skipped when its record exists and
        resumes when interrupted); with ``only``, just those the selected units read."""
        from advguard.training import TrainConfig, train

        outputs = []
        refs = self.references(only) if only else None
        for item in self.train:
            out = Path(item.output)
            if refs is not None and f"{out.as_posix()}/" not in refs:
                continue
            if (out / "record.json").exists():
                outputs.append(out / "model.safetensors")
                continue
            config = TrainConfig.from_file(item.config, **dict(item.set))
            outputs.append(train(config, output_dir=out, progress=progress).checkpoint or out)
        return outputs

    def reproduce_line(self) -> str:
        command = self.command or f"advguard experiment run {self.path_name()}"
        return (f"Reproduce: `{command}` then `advguard experiment report "
                f"{self.path_name()}`. Records: `{self.store}`.")

    def path_name(self) -> str:
        """The shipped name (``experiments/x``) when the file is shipped, else its path."""
        from advguard.configs import shipped_name

        return shipped_name(self.path) if self.path else self.name


def _train_spec(experiment: str, item: Any) -> TrainSpec:
    from advguard.configs import from_mapping

    return from_mapping(TrainSpec, item, what=f"experiment {experiment!r}, train entry")
