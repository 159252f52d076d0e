"""Executors: the Ray executor gives the local executor's records, survives a killed worker,
resumes after an interrupted driver, and fails with clear errors (issue 16).

The Ray tests share one local Ray instance with 2 CPUs (module fixture), as CI has no cluster.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from advguard.data import ImageDataset, first_n
from advguard.errors import ConfigError, InputValidationError, UnknownNameError
from advguard.evaluation import EvalConfig, RecordStore, evaluate
from advguard.evaluation.executors import (
    EXECUTORS,
    ChunkFailedError,
    Executor,
    LocalExecutor,
    RayExecutor,
    check_reachable,
    make_executor,
)

ray = pytest.importorskip("ray", reason="the ray executor's tests need advguard[distributed]")

PGD = {"setting": "adaptive", "attack": "pgd", "steps": 4, "alpha": 0.02}


class Faulty(nn.Module):
    """The wrapped classifier, misbehaving only in other processes (Ray workers): ``kill_once``
    kills the first worker that runs it (``marker`` records that it happened); ``raise_on``
    raises ``error`` on batches of that size. Neither is part of the state dict, so the
    fingerprint (and the evaluation id) is that of the well-behaved wrapper."""

    def __init__(self, inner: nn.Module, *, marker: str = "", raise_on: int = 0,
                 error: type[Exception] = ValueError) -> None:
        super().__init__()
        self.inner = inner
        self.driver = os.getpid()
        self.marker = marker
        self.raise_on = raise_on
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if os.getpid() != self.driver:
            if self.marker:
                try:
                    fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os._exit(1)  # the worker process dies mid-chunk
            if self.raise_on and x.shape[0] == self.raise_on:
                raise self.error(f"boom on a batch of {x.shape[0]}")
        return self.inner(x)


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[RayExecutor]:
    """A local Ray instance with 2 CPUs for the module; classes of this file travel by value."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor = RayExecutor(num_cpus=2, max_retries=2)
    executor.connect()
    yield executor
    executor.close()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _records(path: Path, eval_id: str) -> tuple[list[Any], list[Any]]:
    with RecordStore(path) as store:
        return store.examples(eval_id), store.outcomes(eval_id)


def _config(**kw: Any) -> EvalConfig:
    base: dict[str, Any] = {"name": "exec", "eps": 0.1, "batch_size": 10, "device": "cpu",
                            "runs": 2, "checks": False, "steps": [{**PGD, "eot": 2}],
                            "defense": {"name": "gaussian_noise", "sigma": 0.1}}
    base.update(kw)
    return EvalConfig(**base)


def _data(sample: ImageDataset, n: int) -> ImageDataset:
    return first_n(sample, n)


# --------------------------------------------------------------------------- without Ray
def test_registry_and_options() -> None:
    assert {"local", "ray"} <= set(EXECUTORS.names())
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(UnknownNameError, match="local"):
        make_executor("inprocess")  # an alias: suggested, not accepted
    with pytest.raises(ConfigError, match="address"):
        make_executor("local", address="x:1")
    for bad in ({"gpus_per_task": -1}, {"gpus_per_task": float("nan")},
                {"cpus_per_task": 0}, {"cpus_per_task": float("inf")}):
        with pytest.raises(ConfigError, match="gpus_per_task"):
            RayExecutor(**bad)
    with pytest.raises(ConfigError, match="max_retries"):
        RayExecutor(max_retries=-1)
    with pytest.raises(ConfigError, match="num_cpus"):
        RayExecutor(address="localhost:1", num_cpus=2)


def test_ray_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from advguard.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r'pip install "advguard\[distributed\]"'):
        RayExecutor()
    assert main(["eval", "--model", "nope.safetensors", "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "advguard[distributed]" in err[0], err


def test_unreachable_address_fails_fast() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}"):
        RayExecutor(address=f"127.0.0.1:{port}", connect_timeout=2.0).connect()
    assert time.perf_counter() - started < 5
    for bad in ("localhost", "host:port", ":6379"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            check_reachable(bad, timeout=1.0)


def test_address_without_a_ray_cluster_fails_in_bounded_time(
        capfd: pytest.CaptureFixture[str]) -> None:
    """A non-routable address: our TCP check times out, or (behind a proxy that accepts every
    connection, as on some CI machines) Ray's client gives up after about 20 s. Either way one
    error, and nothing on stderr."""
    assert not ray.is_initialized()
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"cannot (reach|connect to) a Ray cluster"):
        RayExecutor(address="10.255.255.1:6379", connect_timeout=1.0).connect()
    assert time.perf_counter() - started < 60
    assert capfd.readouterr().err == ""
    assert not ray.is_initialized()


def test_cli_ray_options_need_the_ray_executor(capsys: pytest.CaptureFixture[str]) -> None:
    from advguard.cli import main

    assert main(["eval", "--model", "m.safetensors", "--gpus-per-task", "1"]) == 2
    assert "--gpus-per-task apply to --executor ray only" in capsys.readouterr().err


def test_sweep_experiments_refuse_a_remote_executor() -> None:
    from advguard.experiments import list_experiments, load_experiment

    class Elsewhere(Executor):
        name = "elsewhere"

        def map(self, job: Any, tasks: Any) -> Iterator[Any]:  # pragma: no cover - not reached
            raise AssertionError

    sweeps = [n for n in list_experiments() if load_experiment(n).kind == "sweep"]
    assert sweeps
    with pytest.raises(ConfigError, match="sweep"):
        load_experiment(sweeps[0]).compute(only="nothing-matches", progress=False, device=None,
                                           executor=Elsewhere())


# --------------------------------------------------------------------------- with Ray
def test_ray_records_identical_to_local(ray_executor: RayExecutor, tmp_path: Path,
                                        fmnist_model: nn.Module,
                                        fmnist_sample_test: ImageDataset) -> None:
    data = _data(fmnist_sample_test, 60)  # 6 chunks over 2 workers, finishing in any order
    config = _config()
    local = evaluate(config, store=tmp_path / "local.sqlite", model=fmnist_model, data=data,
                     progress=False)
    order: list[int] = []
    remote = evaluate(config, store=tmp_path / "ray.sqlite", model=fmnist_model, data=data,
                      progress=False, executor=ray_executor, on_chunk=order.append)
    assert remote.eval_id == local.eval_id
    assert sorted(order) == list(range(6))
    assert _records(tmp_path / "ray.sqlite", local.eval_id) == \
        _records(tmp_path / "local.sqlite", local.eval_id)
    assert remote.robust_acc == local.robust_acc and local.clean_acc > 0
    with RecordStore(tmp_path / "ray.sqlite") as store:
        env = store.evaluation(local.eval_id)["environment"]
    assert env["executor"]["executor"] == "ray" and env["executor"]["cluster"]["CPU"] == 2


def test_killed_worker_chunk_is_redone(ray_executor: RayExecutor, tmp_path: Path,
                                       fmnist_model: nn.Module,
                                       fmnist_sample_test: ImageDataset) -> None:
    data = _data(fmnist_sample_test, 30)
    config = _config(runs=1, defense={"name": "none"}, steps=[PGD])
    marker = tmp_path / "killed"
    model = Faulty(fmnist_model, marker=str(marker))
    local = evaluate(config, store=tmp_path / "local.sqlite", model=Faulty(fmnist_model),
                     data=data, progress=False)
    remote = evaluate(config, store=tmp_path / "ray.sqlite", model=model, data=data,
                      progress=False, executor=ray_executor)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker did die
    assert remote.eval_id == local.eval_id
    assert _records(tmp_path / "ray.sqlite", local.eval_id) == \
        _records(tmp_path / "local.sqlite", local.eval_id)


def test_interrupted_driver_resumes(ray_executor: RayExecutor, tmp_path: Path,
                                    fmnist_model: nn.Module,
                                    fmnist_sample_test: ImageDataset) -> None:
    data = _data(fmnist_sample_test, 30)
    config = _config(runs=1, defense={"name": "none"}, steps=[PGD])
    store = tmp_path / "ray.sqlite"

    def interrupt(chunk: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(config, store=store, model=fmnist_model, data=data, progress=False,
                 executor=ray_executor, on_chunk=interrupt)
    with RecordStore(store) as db:
        (eval_id,) = db.evaluation_ids()
        first = db.finished_chunks(eval_id)
        assert len(first) == 1 and db.evaluation(eval_id)["status"] != "complete"
    computed: list[int] = []
    evaluate(config, store=store, model=fmnist_model, data=data, progress=False,
             executor=ray_executor, on_chunk=computed.append)
    assert sorted(computed) == sorted(set(range(3)) - first)
    local = evaluate(config, store=tmp_path / "local.sqlite", model=fmnist_model, data=data,
                     progress=False)
    assert local.eval_id == eval_id
    assert _records(store, eval_id) == _records(tmp_path / "local.sqlite", eval_id)


_KILL_DRIVER = """
import os, signal, sys
from advguard.evaluation import EvalConfig, evaluate
from advguard.evaluation.executors import RayExecutor

def die(chunk):  # the first chunk is committed: the driver dies with chunks still on workers
    os.kill(os.getpid(), signal.SIGKILL)

evaluate(EvalConfig.from_file(sys.argv[1]), store=sys.argv[2], progress=False,
         executor=RayExecutor(num_cpus=2), on_chunk=die)
"""


def test_killed_driver_resumes_from_the_store(ray_executor: RayExecutor, tmp_path: Path,
                                              fmnist_model: nn.Module) -> None:
    import signal
    import subprocess

    from advguard.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.safetensors", fmnist_model)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {ckpt}\nn: 40\nbatch_size: 10\neps: 0.1\nruns: 2\nchecks: false\n"
                   "device: cpu\ndefense: {name: gaussian_noise, sigma: 0.1}\n"
                   "steps:\n  - {setting: adaptive, attack: pgd, steps: 3, alpha: 0.03, eot: 2}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    store = tmp_path / "killed.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_DRIVER, str(cfg), str(store)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    finally:  # the killed driver's own Ray instance: its agents outlive it in its session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    config = EvalConfig.from_file(cfg)
    with RecordStore(store) as db:
        (eval_id,) = db.evaluation_ids()
        first = db.finished_chunks(eval_id)
    assert len(first) == 1
    computed: list[int] = []
    evaluate(config, store=store, progress=False, executor=ray_executor,
             on_chunk=computed.append)
    assert sorted(computed) == sorted(set(range(4)) - first)
    local = evaluate(config, store=tmp_path / "local.sqlite", progress=False)
    assert local.eval_id == eval_id
    assert _records(store, eval_id) == _records(tmp_path / "local.sqlite", eval_id)


@pytest.mark.parametrize("error", [ValueError, InputValidationError])
def test_failing_chunk_fails_the_evaluation(ray_executor: RayExecutor, tmp_path: Path,
                                            fmnist_model: nn.Module,
                                            fmnist_sample_test: ImageDataset,
                                            error: type[Exception]) -> None:
    data = _data(fmnist_sample_test, 25)  # chunks of 10, 10 and 5: the last one raises
    config = _config(runs=1, defense={"name": "none"}, steps=[PGD])
    store = tmp_path / "ray.sqlite"
    expected = ChunkFailedError if error is ValueError else InputValidationError
    with pytest.raises(expected, match="chunk 2") as info:
        evaluate(config, store=store, model=Faulty(fmnist_model, raise_on=5, error=error),
                 data=data, progress=False, executor=ray_executor)
    assert "boom on a batch of 5" in str(info.value)
    if error is ValueError:  # a bug: the worker's traceback comes along
        text = str(info.value)
        assert "ValueError" in text and "in forward" in text and "\x1b" not in text
    local = evaluate(config, store=tmp_path / "local.sqlite", model=Faulty(fmnist_model),
                     data=data, progress=False)
    with RecordStore(store) as db:
        assert db.finished_chunks(local.eval_id) <= {0, 1}
        assert db.evaluation(local.eval_id)["status"] != "complete"
    # what was finished is kept, and right; the fixed model completes the evaluation
    kept_ex, kept_out = _records(store, local.eval_id)
    all_ex, all_out = _records(tmp_path / "local.sqlite", local.eval_id)
    assert kept_ex == [e for e in all_ex if e in kept_ex]
    assert set(kept_out) <= set(all_out)
    evaluate(config, store=store, model=Faulty(fmnist_model), data=data, progress=False,
             executor=ray_executor)
    assert _records(store, local.eval_id) == (all_ex, all_out)


def test_resources_no_node_has_are_one_error(ray_executor: RayExecutor, tmp_path: Path,
                                             fmnist_model: nn.Module,
                                             fmnist_sample_test: ImageDataset) -> None:
    data = _data(fmnist_sample_test, 10)
    config = _config(runs=1, defense={"name": "none"}, steps=[PGD])
    for options, match in (({"gpus_per_task": 1}, r"1 GPU\(s\) \(--gpus-per-task\)"),
                           ({"cpus_per_task": 3}, r"3 CPU\(s\).*more than 2")):
        with pytest.raises(ConfigError, match=match):  # not a task queued forever
            evaluate(config, store=tmp_path / "r.sqlite", model=fmnist_model, data=data,
                     progress=False, executor=RayExecutor(**options))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="HOST:PORT"):
        RayExecutor(address="no-port-here")


def test_cli_eval_with_ray(ray_executor: RayExecutor, tmp_path: Path, fmnist_model: nn.Module,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from advguard.checkpoint import save_checkpoint
    from advguard.cli import main

    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, fmnist_model)
    args = ["eval", "--model", str(ckpt), "--n", "20", "--batch-size", "10", "--eps", "0.1",
            "--attack", "adaptive:pgd:steps=3", "--no-checks", "--device", "cpu", "-q"]
    assert main([*args, "--store", str(tmp_path / "a.sqlite"), "--executor", "ray"]) == 0
    assert main([*args, "--store", str(tmp_path / "b.sqlite")]) == 0
    rows = [line.rsplit("|", 2)[0] for line in capsys.readouterr().out.splitlines()
            if "| adaptive (white-box) |" in line]  # without the seconds column
    assert len(rows) == 2 and rows[0] == rows[1]
    assert ray.is_initialized()  # an instance the executor did not start is left running
