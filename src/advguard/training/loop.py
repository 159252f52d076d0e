"""The one training loop. Recipes (``standard``, ``mixup``, adversarial ones...) plug into it.

``train(config, output_dir=...)`` is a function call that returns the trained model and its
record; the CLI only wraps it. With an ``output_dir`` the run is resumable: training state
(weights, optimizer, schedule position, every generator state and the partial epoch's metrics) is
written atomically at the end of every epoch, every ``checkpoint_every_steps`` steps, and when the
run is interrupted with Ctrl-C; running the same config again continues from there and ends with
weights identical to an uninterrupted run (same device and software).

Determinism: data order and augmentation come from a CPU generator seeded by ``config.seed``;
recipe randomness from a generator on the training device; layers that use the global RNG
(dropout) run inside ``torch.random.fork_rng`` reseeded at each epoch from ``(seed, epoch)`` and
saved/restored mid-epoch, so the caller's global RNG state is untouched.

Speed (CUDA): data resident on the device, bf16 autocast, channels_last, metrics accumulated on the
device (no host sync inside an epoch except the progress bar's every ``refresh`` steps), optional
``torch.compile``.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from advguard.checkpoint import (
    FORMAT,
    STATE_FORMAT,
    is_advguard_file,
    load_state,
    load_state_dict_file,
    save_checkpoint,
    save_state,
)
from advguard.data import (
    Augmentation,
    Compose,
    HorizontalFlip,
    ImageDataset,
    InMemoryLoader,
    RandomCrop,
    balanced_subset,
    dataset_info,
    first_n,
    load_dataset,
    standard_augmentation,
    train_val_split,
)
from advguard.errors import AdvguardError, AdvguardWarning, ConfigError, OutputError
from advguard.files import check_creatable
from advguard.models import create_model
from advguard.rng import rng_states, set_rng_states
from advguard.training.config import TrainConfig
from advguard.training.evaluate import evaluate_accuracy
from advguard.training.recipes import Recipe, make_recipe
from advguard.training.schedules import Schedule, make_schedule
from advguard.utils import environment_info, resolve_device

STATE_FILE = "state.safetensors"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
RECORD_FILE = "record.json"
#: The first line of the ``config.yaml`` a run writes: how advguard recognises its own run.
CONFIG_HEADER = "# advguard training run: the resolved config (written by advguard train)"


def _is_run_file(path: Path, *, with_run: bool) -> bool:
    """Whether ``path`` is a file :func:`train` wrote; ``with_run``: the directory holds a run's
    state or model (then a ``config.yaml`` of TrainConfig fields from before
    :data:`CONFIG_HEADER` existed counts even if it does not list every field)."""
    import dataclasses

    import yaml

    name = path.name
    if not path.is_file():
        return False
    if name.startswith((f".{STATE_FILE}.", f".{MODEL_FILE}.")):  # a save cut short by kill -9
        return True
    if name == STATE_FILE:
        return is_advguard_file(path, STATE_FORMAT) is not None
    if name == MODEL_FILE:
        return "train_config" in (is_advguard_file(path, FORMAT) or {}).get("metadata", {})
    if name not in (CONFIG_FILE, RECORD_FILE):
        return False
    try:
        text = path.read_text(encoding="utf-8")
        if name == RECORD_FILE:
            record = json.loads(text)
            return isinstance(record, dict) and {"config", "history", "final"} <= set(record)
        if text.startswith(CONFIG_HEADER):
            return True
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        legacy = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return False
    # from before the header: every field (as train() dumps it), or some fields beside a run
    return isinstance(legacy, dict) and (set(legacy) == fields
                                         or (with_run and set(legacy) <= fields))


def check_run_dir(out: Path) -> None:
    """Raise :class:`OutputError` unless ``out`` can hold a training run: it does not exist yet
    and can be created, or it is a directory holding only what :func:`train` writes there
    (``config.yaml`` starting with :data:`CONFIG_HEADER`, an advguard ``state.safetensors`` and
    ``model.safetensors``, ``record.json``, temporary files of a save cut short). A directory with
    anything else (another ``config.yaml``, other files) is refused, never written into."""
    if not out.exists():
        check_creatable(out, "the output directory")
        return
    if not out.is_dir():
        raise OutputError(f"output directory {out} is an existing file; give a directory")
    with_run = _is_run_file(out / STATE_FILE, with_run=False) or \
        _is_run_file(out / MODEL_FILE, with_run=False)
    try:
        foreign = sorted(e.name for e in out.iterdir() if not _is_run_file(e, with_run=with_run))
    except OSError as exc:
        raise OutputError(f"cannot read output directory {out}: {exc.strerror or exc}") from None
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4
                                          else "")
        raise OutputError(f"output directory {out} holds files advguard train did not write "
                          f"({shown}); choose a new or empty directory")


class TrainingInterrupted(AdvguardError):
    """Raised after Ctrl-C once the training state has been saved; run again to resume."""


@dataclass
class TrainRecord:
    """What a training run produced: config, per-epoch history, final metrics, provenance."""

    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    output_dir: str | None = None
    resumed_from: dict[str, int] | None = None
    #: what the run did differently from what its config asked (e.g. fewer training images)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "recipe": self.recipe, "history": self.history,
            "final": self.final, "environment": self.environment, "wall_time_s": self.wall_time_s,
            "output_dir": self.output_dir, "resumed_from": self.resumed_from,
            "warnings": self.warnings,
        }


@dataclass
class TrainResult:
    """The trained model (eval mode, on the training device) and its :class:`TrainRecord`."""

    model: nn.Module
    record: TrainRecord

    @property
    def checkpoint(self) -> Path | None:
        out = self.record.output_dir
        return Path(out) / MODEL_FILE if out else None


# --------------------------------------------------------------------------- data
@dataclass
class _Data:
    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset | None
    warnings: list[str] = field(default_factory=list)


def prepare_data(config: TrainConfig) -> _Data:
    """Load the splits a config asks for: (subset of) train, held-out validation, test subset."""
    train = load_dataset(config.dataset, "train", root=config.data_root)
    notes = []
    if config.train_size is not None and config.train_size < len(train):
        train = balanced_subset(train, n=config.train_size, seed=config.seed)
    elif config.train_size is not None and config.train_size > len(train):
        notes.append(f"train_size={config.train_size} but {config.dataset} has {len(train)} "
                     "training images: all of them are used")
        warnings.warn(notes[-1], AdvguardWarning, stacklevel=2)
    val = None
    if config.val_size:
        train, val = train_val_split(train, config.val_size, seed=config.seed)
    test = None
    if config.test_size != 0:
        test = load_dataset(config.dataset, "test", root=config.data_root)
        if config.test_size is not None and config.test_size < len(test):
            test = first_n(test, config.test_size)
    return _Data(train, val, test, notes)


def make_augmentation(config: TrainConfig) -> Augmentation | None:
    if config.augment == "auto":
        return standard_augmentation(config.dataset)
    parts: list[Augmentation] = []
    if "crop" in config.augment:
        parts.append(RandomCrop(padding=4))
    if "flip" in config.augment:
        parts.append(HorizontalFlip(p=0.5))
    return Compose(parts) if parts else None


# --------------------------------------------------------------------------- helpers
def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1)


@contextlib.contextmanager
def _sigint_flag() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C into a flag checked at step boundaries (a second one interrupts
    immediately). Outside the main thread, signals are left alone."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> None:
        flag.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _make_optimizer(config: TrainConfig, recipe: Recipe, model: nn.Module
                    ) -> torch.optim.Optimizer:
    groups = recipe.param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0)
    return torch.optim.Adam(groups, lr=config.lr)


# --------------------------------------------------------------------------- the loop
def _load_initial_weights(model: nn.Module, path: str) -> None:
    """Fine-tuning: load a checkpoint's weights strictly into the freshly built ``model``; a
    different architecture is a :class:`ConfigError` naming what does not match."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("other shape", wrong)) if keys]
        raise ConfigError(f"init_from {path}: the checkpoint does not fit the model this config "
                          f"builds ({'; '.join(parts)})")
    model.load_state_dict(state)


def train(config: TrainConfig, *, output_dir: str | Path | None = None, resume: bool = True,
          progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Train a model as ``config`` says and return it with its record.

    ``output_dir``: where ``model.safetensors`` (final checkpoint with metadata),
    ``state.safetensors`` (resumable state), ``config.yaml`` and ``record.json`` go. If it already
    holds the state of a run with the same config, training resumes from it (``resume=False``
    starts over); a different config there is an error unless ``overwrite=True``.

    Example::

        result = train(TrainConfig(model="smallcnn", epochs=3), output_dir="runs/quick")
        result.record.final["test_acc"]
    """
    device = resolve_device(config.device)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    channels_last = config.channels_last if config.channels_last is not None \
        else device.type == "cuda"
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:  # before any work: never write into a directory that is not a run's
        check_run_dir(out)

    data = prepare_data(config)
    info = dataset_info(config.dataset)
    recipe = make_recipe(config.recipe, **config.recipe_kwargs)
    schedule = make_schedule(config.schedule, config.epochs, **config.schedule_kwargs)

    c, h, _ = data.train.image_shape
    model: nn.Module = create_model(
        config.model, num_classes=data.train.num_classes, in_channels=c, input_size=h,
        mean=info.mean, std=info.std, seed=config.seed, **config.model_kwargs)
    with torch.random.fork_rng(devices=[]):  # recipe-added parts are seeded by config.seed too
        torch.manual_seed(config.seed + 1)
        model = recipe.prepare_model(model)
    if config.init_from is not None:
        _load_initial_weights(model, config.init_from)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = _make_optimizer(config, recipe, model)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]

    data_gen = torch.Generator().manual_seed(config.seed)
    step_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    loader = InMemoryLoader(data.train, batch_size=config.batch_size, shuffle=True,
                            drop_last=len(data.train) >= config.batch_size,
                            augment=make_augmentation(config), device=device, generator=data_gen)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError("the training split is empty")

    run = _Run(config=config, model=model, recipe=recipe, optimizer=optimizer, schedule=schedule,
               loader=loader, data=data, device=device, use_bf16=use_bf16,
               channels_last=channels_last, data_gen=data_gen, step_gen=step_gen, out=out,
               progress=progress)
    if out is not None:
        run.open_output(resume=resume, overwrite=overwrite)
    return run.execute()


@dataclass
class _Run:
    """State and steps of one training run (internal; :func:`train` is the entry point)."""

    config: TrainConfig
    model: nn.Module
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loader: InMemoryLoader
    data: _Data
    device: torch.device
    use_bf16: bool
    channels_last: bool
    data_gen: torch.Generator
    step_gen: torch.Generator
    out: Path | None
    progress: bool
    epoch: int = 0
    step: int = 0  # completed steps within `epoch`
    history: list[dict[str, Any]] = field(default_factory=list)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch_start_data_state: torch.Tensor | None = None
    resumed_rng: dict[str, torch.Tensor] | None = None
    resumed_from: dict[str, int] | None = None
    elapsed: float = 0.0

    # ------------------------------------------------------------------ output dir and resume
    def open_output(self, *, resume: bool, overwrite: bool) -> None:
        assert self.out is not None  # train() checked it with check_run_dir
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output directory {self.out}: "
                              f"{exc.strerror or exc}") from None
        state_path = self.out / STATE_FILE
        config_path = self.out / CONFIG_FILE
        wanted = self.config.to_dict()
        if config_path.exists() and not overwrite:
            import yaml

            previous = yaml.safe_load(config_path.read_text())
            if previous != wanted and (state_path.exists() or (self.out / MODEL_FILE).exists()):
                changed = sorted(k for k in set(previous) | set(wanted)
                                 if previous.get(k) != wanted.get(k))
                raise ConfigError(
                    f"{self.out} holds a run with a different config (differs in: "
                    f"{', '.join(changed)}); choose another output directory or pass overwrite")
        if resume and state_path.exists():
            self.restore(load_state(state_path))
        import yaml

        try:
            config_path.write_text(f"{CONFIG_HEADER}\n{yaml.safe_dump(wanted, sort_keys=False)}")
        except OSError as exc:
            raise OutputError(f"cannot write {config_path}: {exc.strerror or exc}") from None

    def state_dict(self, rng: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch, "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data_gen_epoch_start": self.epoch_start_data_state,
            "step_gen": self.step_gen.get_state(),
            "model_rng": rng_states(self.model),
            "global_rng": rng,
            "sums": self.sums,
            "history": self.history,
            "elapsed": self.elapsed,
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state["config"] != self.config.to_dict():
            raise ConfigError("saved training state was made with a different config")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # state tensors follow the parameters' device
            for p in group["params"]:
                for k, v in self.optimizer.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor) and k != "step":
                        self.optimizer.state[p][k] = v.to(p.device)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.elapsed = float(state["elapsed"])
        self.step_gen.set_state(state["step_gen"].to(self.step_gen.get_state().device))
        set_rng_states(self.model, state["model_rng"])
        if state["data_gen_epoch_start"] is not None:
            self.epoch_start_data_state = state["data_gen_epoch_start"]
            self.data_gen.set_state(self.epoch_start_data_state)
        self.resumed_rng = state["global_rng"]
        self.resumed_from = {"epoch": self.epoch, "step": self.step}

    def save(self, rng: dict[str, torch.Tensor]) -> None:
        if self.out is not None:
            save_state(self.out / STATE_FILE, self.state_dict(rng))

    # ------------------------------------------------------------------ running
    def execute(self) -> TrainResult:
        cfg = self.config
        train_model: nn.Module = self.model
        if cfg.compile:
            train_model = torch.compile(self.model)  # type: ignore[assignment]
        devices = [self.device] if self.device.type == "cuda" else []
        started = time.perf_counter() - self.elapsed
        with torch.random.fork_rng(devices=devices), _sigint_flag() as interrupted:
            while self.epoch < cfg.epochs:
                if self.step == 0:
                    self.epoch_start_data_state = self.data_gen.get_state()
                    torch.manual_seed(_epoch_seed(cfg.seed, self.epoch))
                    self.sums = {}
                elif self.resumed_rng is not None:
                    _set_rng_states(self.resumed_rng, self.device)
                self.resumed_rng = None
                self._run_epoch(train_model, interrupted, started)
                self.elapsed = time.perf_counter() - started
                self._finish_epoch()
                self.save(_rng_states(self.device))
                if self.out is not None:
                    self._write_model()
        self.elapsed = time.perf_counter() - started
        self.model.eval()
        if cfg.epochs == 0 and self.out is not None:  # the untrained model, as initialized
            self._write_model()
        record = self._record()
        if self.out is not None:
            (self.out / RECORD_FILE).write_text(json.dumps(record.to_dict(), indent=2))
        return TrainResult(self.model, record)

    def _run_epoch(self, train_model: nn.Module, interrupted: threading.Event,
                   started: float) -> None:
        cfg = self.config
        steps = len(self.loader)
        self.model.train()
        bar = tqdm(total=steps, initial=self.step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        batches = iter(self.loader)
        for _ in range(self.step):  # mid-epoch resume: replay the data generator's draws
            next(batches)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)
        for x, y in batches:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            factor = self.schedule.factor(self.epoch + self.step / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            with autocast:
                out = self.recipe.loss(train_model, x, y, generator=self.step_gen)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            self._accumulate(out.loss.detach().float() * y.shape[0], out.correct, y.shape[0],
                             out.metrics)
            self.step += 1
            bar.update(1)
            if self.progress and (self.step % 20 == 0 or self.step == steps):
                n = float(self.sums["n"])
                shown = {"loss": f"{float(self.sums['loss']) / n:.4f}"}
                if "correct" in self.sums:  # recipes without a class prediction have no accuracy
                    shown["acc"] = f"{float(self.sums['correct']) / n:.4f}"
                bar.set_postfix(shown)
            if self.step == steps:
                break
            every = cfg.checkpoint_every_steps
            if interrupted.is_set() or (every and self.step % every == 0):
                self.elapsed = time.perf_counter() - started
                self.save(_rng_states(self.device))
                if interrupted.is_set():
                    bar.close()
                    where = f" to {self.out / STATE_FILE}" if self.out else \
                        " nowhere (no output directory)"
                    raise TrainingInterrupted(
                        f"interrupted at epoch {self.epoch + 1}, step {self.step}/{steps}; state "
                        f"saved{where}; run the same command again to resume")
        bar.close()

    def _accumulate(self, loss_sum: torch.Tensor, correct: torch.Tensor | None, n: int,
                    metrics: dict[str, torch.Tensor]) -> None:
        def add(key: str, value: torch.Tensor) -> None:
            value = value.detach().float().to(self.device)
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()

        add("loss", loss_sum)
        if correct is not None:
            add("correct", correct)
        add("n", torch.tensor(float(n)))
        for key, value in metrics.items():
            add(f"m_{key}", value * n)

    def _finish_epoch(self) -> None:
        cfg = self.config
        n = float(self.sums["n"])
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "lr": self.optimizer.param_groups[0]["base_lr"] * self.schedule.factor(self.epoch + 1),
            "train_loss": float(self.sums["loss"]) / n,
        }
        if "correct" in self.sums:
            row["train_acc"] = float(self.sums["correct"]) / n
        for key, value in self.sums.items():
            if key.startswith("m_"):
                row[key[2:]] = float(value) / n
        last = self.epoch + 1 == cfg.epochs
        if last or (self.epoch + 1) % cfg.eval_every == 0:
            for split, ds in (("val", self.data.val), ("test", self.data.test)):
                if ds is not None:
                    row[f"{split}_acc"] = evaluate_accuracy(
                        self.recipe.evaluation_model(self.model), ds,
                        batch_size=cfg.eval_batch_size, bf16=self.use_bf16)
        row["elapsed_s"] = round(self.elapsed, 3)
        if not math.isfinite(row["train_loss"]):
            raise AdvguardError(f"training diverged at epoch {self.epoch + 1} "
                                f"(loss {row['train_loss']}); lower the learning rate")
        self.history.append(row)
        if self.progress:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            tqdm.write(" ".join(f"{k}={v}" for k, v in shown.items()))
        self.epoch += 1
        self.step = 0
        self.sums = {}

    def _record(self) -> TrainRecord:
        final = {k: v for k, v in (self.history[-1] if self.history else {}).items()
                 if k.endswith("_acc") or k.endswith("_loss")}
        return TrainRecord(
            config=self.config.to_dict(), history=list(self.history), final=final,
            environment=environment_info(self.device), recipe=self.recipe.to_dict(),
            wall_time_s=round(self.elapsed, 3),
            output_dir=str(self.out) if self.out is not None else None,
            resumed_from=self.resumed_from, warnings=list(self.data.warnings))

    def _write_model(self, record: TrainRecord | None = None) -> None:
        assert self.out is not None
        rec = record or self._record()
        save_checkpoint(self.out / MODEL_FILE, self.model, metadata={
            "dataset": self.config.dataset,
            "recipe": rec.recipe,
            "train_config": rec.config,
            "seed": self.config.seed,
            "epochs_completed": self.epoch,
            "metrics": rec.final,
            "history": rec.history,
            "environment": rec.environment,
            "wall_time_s": rec.wall_time_s,
        })
