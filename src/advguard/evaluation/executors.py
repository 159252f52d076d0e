"""Executors: where an evaluation's chunks are computed.

The harness (:func:`advguard.evaluation.evaluate`) splits an evaluation into chunks of
``batch_size`` examples whose randomness depends on ``(seed, chunk, step, run, example)`` alone,
so chunks are independent units of work. An executor computes a list of them and hands each
result back to the driver as it finishes; the driver commits it to the record store at once.
One hook: :meth:`Executor.map`.

- ``local`` (:class:`LocalExecutor`, the default): in this process, in chunk order.
- ``ray`` (:class:`RayExecutor`): one `Ray <https://docs.ray.io>`_ task per chunk on a local Ray
  instance or an existing cluster (``pip install "advguard[distributed]"``). Ray retries a chunk
  whose worker dies (``max_retries``); a chunk that raises fails the evaluation with the worker's
  error, and the chunks finished before stay in the store. A killed driver resumes from the store
  as with the local executor. Records are identical to a local run of the same config, whatever
  order the chunks finish in (tested).

Example::

    with RayExecutor(address="10.0.0.5:6379", gpus_per_task=1) as ex:
        summary = evaluate(config, store="results.sqlite", executor=ex)

What the workers need: advguard (same version) and torch installed; the checkpoints the config
and its defense spec name, at the same paths (relative paths are taken from the driver's
working directory when it exists on the worker, else from the worker's own). The examples travel
with the tasks; the dataset itself is not read on the workers. A model passed to ``evaluate`` as an
object (not a checkpoint path) is shipped to the workers through Ray's object store.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from advguard.errors import AdvguardBug, AdvguardError, ConfigError
from advguard.registry import Registry

if TYPE_CHECKING:
    from types import ModuleType

    from advguard.evaluation.harness import ChunkJob
    from advguard.evaluation.store import ExampleRecord, OutcomeRecord


@dataclass(frozen=True)
class ChunkPrior:
    """The records of a chunk's first ``steps`` cascade steps (and its clean runs), made by an
    evaluation whose steps are a prefix of this one's: the chunk runs only the steps after them,
    on the examples that survived (the same records as computing it whole, since every draw
    derives from (seed, chunk, step, run, example)). ``seconds`` / ``step_seconds``: what they
    cost when they were computed."""

    steps: int
    examples: list[ExampleRecord]
    outcomes: list[OutcomeRecord]
    seconds: float
    step_seconds: dict[int, float]


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of an evaluation: its index, its examples (CPU tensors) and their dataset
    indices; ``prior``: records of its first steps to extend, if any."""

    chunk: int
    images: torch.Tensor
    labels: torch.Tensor
    indices: list[int]
    prior: ChunkPrior | None = None


@dataclass(frozen=True)
class ChunkResult:
    """A computed chunk: its records and timings (``seconds``: the chunk's wall time where it
    ran; ``step_seconds``: per cascade step, ``-1`` = clean)."""

    chunk: int
    examples: list[ExampleRecord]
    outcomes: list[OutcomeRecord]
    seconds: float
    step_seconds: dict[int, float]
    environment: dict[str, Any] | None = None  # where it ran: versions, commit, device


class ChunkFailedError(RuntimeError):
    """A chunk raised an unexpected exception on a remote worker; the message carries the
    worker's traceback. Chunks finished before it are in the record store."""


class WorkerLostError(AdvguardError):
    """A chunk's worker died more often than the executor retries it (killed, out of memory, a
    lost node). Chunks finished before it are in the record store; run again to resume."""


class Executor(ABC):
    """Computes an evaluation's chunks. Subclasses implement :meth:`map`; an executor may hold a
    connection (a Ray instance), released by :meth:`close` or by leaving a ``with`` block."""

    name: ClassVar[str]

    @abstractmethod
    def map(self, job: ChunkJob, tasks: Sequence[ChunkTask]) -> Iterator[ChunkResult]:
        """Compute every task of ``job``; yield each result as soon as it is done, in any order.
        When the caller stops iterating (an error, an interrupt), work not yet returned is
        cancelled."""

    def describe(self) -> dict[str, Any]:
        """What ran the chunks, recorded with the evaluation's environment."""
        return {"executor": self.name}

    def close(self) -> None:
        """Release what the executor holds (nothing by default)."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXECUTORS: Registry[type[Executor]] = Registry("executor", aliases={"inprocess": "local",
                                                                  "in-process": "local"})


def make_executor(name: str, **options: Any) -> Executor:
    """The registered executor ``name`` built with ``options`` (e.g. ``address`` for ``ray``);
    an unknown name or option is a :class:`ConfigError`."""
    import inspect

    cls = EXECUTORS.get(name)
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"executor {name!r} takes no option {', '.join(unknown)} (its options: "
                          f"{', '.join(known) or 'none'})")
    return cls(**options)


@EXECUTORS.register("local", description="in this process, chunk after chunk (the default)")
class LocalExecutor(Executor):
    """Chunks computed in this process, in order."""

    name = "local"

    def map(self, job: ChunkJob, tasks: Sequence[ChunkTask]) -> Iterator[ChunkResult]:
        for task in tasks:
            yield job.compute(task)


# --------------------------------------------------------------------------- Ray
INSTALL_HINT = 'pip install "advguard[distributed]"'


def import_ray() -> ModuleType:
    """The ``ray`` module, or one :class:`ConfigError` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the ray executor needs Ray, which is not installed: {INSTALL_HINT}"
                          ) from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"Ray address must be HOST:PORT, ray://HOST:PORT or 'auto', got "
                          f"{address!r}")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float) -> None:
    """Raise one :class:`ConfigError` unless a TCP connection to ``address`` (``HOST:PORT`` or
    ``ray://HOST:PORT``) opens within ``timeout`` seconds — before Ray's own, much longer,
    connection retries."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address} within {timeout:g} s "
                          f"({exc.strerror or exc}); start one with `ray start --head` and pass "
                          "the address it prints, or omit --address to start a local instance"
                          ) from None


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none)."""
    return (str(exc).strip().splitlines() or [""])[0]


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[Path]:
    """Send this process's file descriptor 2 to a temporary file while inside (its path is
    yielded; the file is removed on exit)."""
    fd, name = tempfile.mkstemp(prefix="advguard-ray-", suffix=".log")
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield Path(name)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
        Path(name).unlink(missing_ok=True)


def _ray_compute(job: ChunkJob, task: ChunkTask) -> ChunkResult:
    """The Ray task: compute one chunk on a worker."""
    # Ray sets OMP_NUM_THREADS to the task's CPUs in the worker's environment; make sure torch
    # uses that many threads even if it was imported before (workers are reused across tasks).
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))
    return job.compute(task)


@EXECUTORS.register("ray", description="one Ray task per chunk, local instance or cluster",
                    extra="distributed")
class RayExecutor(Executor):
    """One Ray task per chunk.

    ``address``: an existing cluster (``HOST:PORT`` of ``ray start --head``, ``ray://HOST:PORT``
    for Ray Client, or ``"auto"``); None starts a local instance with ``num_cpus`` CPUs (default:
    all) that :meth:`close` shuts down. When Ray is already initialized in this process, that
    instance is used and left running. ``cpus_per_task`` / ``gpus_per_task``: the resources each
    chunk reserves (a fraction of a GPU lets several chunks share one); ``max_retries``: how
    often a chunk whose worker dies is run again; ``connect_timeout``: seconds to wait for an
    ``address`` to answer.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_task: float = 1.0, gpus_per_task: float = 0.0, max_retries: int = 3,
                 connect_timeout: float = 10.0) -> None:
        if not (math.isfinite(cpus_per_task) and math.isfinite(gpus_per_task)
                and cpus_per_task > 0 and gpus_per_task >= 0):
            raise ConfigError(f"ray executor: cpus_per_task must be > 0 and gpus_per_task >= 0, "
                              f"got {cpus_per_task} and {gpus_per_task}")
        if max_retries < 0 or not (math.isfinite(connect_timeout) and connect_timeout > 0):
            raise ConfigError(f"ray executor: max_retries must be >= 0 and connect_timeout > 0, "
                              f"got {max_retries} and {connect_timeout}")
        if num_cpus is not None and (address is not None or num_cpus < 1):
            raise ConfigError("ray executor: num_cpus (>= 1) applies to a local instance only "
                              "(no address)")
        if address is not None and address != "auto":
            _host_port(address)  # a malformed address is an error now, not at the first chunk
        self._ray = import_ray()
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = float(cpus_per_task)
        self.gpus_per_task = float(gpus_per_task)
        self.max_retries = int(max_retries)
        self.connect_timeout = float(connect_timeout)
        self._owned = False

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Join (or start) the Ray instance; idempotent."""
        ray = self._ray
        if ray.is_initialized():
            return
        if self.address not in (None, "auto"):
            check_reachable(self.address, self.connect_timeout)
        kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        if self.address is None:
            kwargs.update(num_cpus=self.num_cpus, include_dashboard=False)
        else:
            kwargs["address"] = self.address
        with _stderr_to_file() as log:  # Ray's C++ client logs each connection retry there
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError) as exc:  # no cluster; a version mismatch
                first = _first_line(exc) or type(exc).__name__
                last = log.read_text(errors="replace").strip().splitlines()[-1:]
                detail = f" (last message: {last[0].split('] ', 1)[-1][:200]})" if last else ""
                where = f"a Ray cluster at {self.address}" if self.address else \
                    "a local Ray instance"
                raise ConfigError(f"cannot connect to {where}: {first}{detail}") from None
        self._owned = True

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"executor": self.name, "ray": self._ray.__version__,
                               "address": self.address or "local",
                               "cpus_per_task": self.cpus_per_task,
                               "gpus_per_task": self.gpus_per_task}
        if self._ray.is_initialized():
            res = self._ray.cluster_resources()
            out["cluster"] = {k: res[k] for k in ("CPU", "GPU") if k in res}
        return out

    # ------------------------------------------------------------------ the hook
    def map(self, job: ChunkJob, tasks: Sequence[ChunkTask]) -> Iterator[ChunkResult]:
        if not tasks:
            return
        ray = self._ray
        self.connect()
        self._check_feasible()
        remote = ray.remote(_ray_compute).options(
            num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
            max_retries=self.max_retries, retry_exceptions=False)
        job_ref = ray.put(job)
        pending = {remote.remote(job_ref, task): task.chunk for task in tasks}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                chunk = pending.pop(done[0])
                try:
                    result = self._result(done[0], chunk)
                except Exception:
                    # keep what other workers already finished, then fail with this chunk's error
                    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                    for ref in ready:
                        try:
                            finished = self._result(ref, pending.pop(ref))
                        except Exception:
                            continue
                        yield finished
                    raise
                yield result
        finally:
            for ref in pending:
                ray.cancel(ref)  # running chunks get KeyboardInterrupt; workers stay

    def _check_feasible(self) -> None:
        """One error, instead of tasks Ray would queue forever, when no node of the cluster has
        the CPUs or GPUs a chunk asks for."""
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        for key, need, flag in (("CPU", self.cpus_per_task, "--cpus-per-task"),
                                ("GPU", self.gpus_per_task, "--gpus-per-task")):
            most = max((float(r.get(key, 0.0)) for r in nodes), default=0.0)
            if need > most:
                raise ConfigError(f"each chunk asks for {need:g} {key}(s) ({flag}), but no node "
                                  f"of the Ray cluster has more than {most:g}")

    def _result(self, ref: Any, chunk: int) -> ChunkResult:
        from ray import exceptions as rx

        try:
            result: ChunkResult = self._ray.get(ref)
        except rx.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, AdvguardError | AdvguardBug):
                try:  # the worker's own error, same type, saying where it happened
                    err = type(cause)(f"chunk {chunk} (on a Ray worker): {cause}")
                except TypeError:
                    err = None
                if err is not None:
                    raise err from None
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours its task names
            raise ChunkFailedError(f"chunk {chunk} failed on a Ray worker:\n{text}") from None
        except rx.TaskCancelledError:  # pragma: no cover - only when cancelled from outside
            raise AdvguardError(f"chunk {chunk} was cancelled on the Ray cluster") from None
        except rx.RayError as exc:  # a worker or node died more often than retried
            first = _first_line(exc)
            raise WorkerLostError(
                f"chunk {chunk}: its Ray worker died {self.max_retries + 1} time(s) "
                f"({type(exc).__name__}{': ' + first if first else ''}); the finished chunks "
                "are in the record store, run the same command again to resume") from None
        return result
