"""The evaluation harness: a per-example worst-case cascade over threat-model settings and
attacks, repeated over independent runs for randomized defenses, recorded in a resumable store.

For each chunk of ``batch_size`` examples:

1. **clean** — the defense classifies the clean inputs in each of ``R`` runs (``R = runs`` for a
   randomized defense, else 1); an example misclassified in any run is not robust.
2. **cascade** — for each step in order and each run, the step's attack runs on the examples
   still robust; the defense then classifies the adversarial examples; an example it gets wrong
   is fooled by that step. Every step therefore only sees the points all earlier attacks failed
   on (as in AutoAttack), and the final robust accuracy is the worst case per example over all
   attacks and runs.

Randomness is per example: every draw a randomized defense or one of our attacks makes for an
example (its noise, random transform, CAP labels, smoothing noise, random start, EOT draws) is a
function of ``(seed, stage, step, run, example index)`` and of the example's own call history,
never of the other examples in its batch (:func:`advguard.rng.example_draws`). Outcomes therefore
do not depend on ``batch_size``, on chunking or on the order chunks run in; an evaluation killed
at any point and run again redoes only the unfinished chunk and ends with identical records.
Two sources stay batch-dependent and are re-seeded per ``(seed, chunk, step, run)``: weight
noise drawn once per forward (PNI/CNI layers, shared by the rows of a batch) and the global RNG
of the attack libraries (pyautoattack, foolbox).

Chunks are computed by an executor (:mod:`advguard.evaluation.executors`): in this process by
default, or as Ray tasks on other processes and machines, each worker building the same context
(model, defense, prepared cascade) from a picklable :class:`ChunkJob`. The driver commits each
chunk's records as it arrives, in whatever order; the records do not depend on the executor.

Example::

    summary = evaluate(EvalConfig(model="runs/q/model.safetensors", eps=0.1, steps=[
        {"setting": "adaptive", "attack": "pgd", "steps": 20}]), store="results.sqlite")
    print(summary.robust_acc)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from advguard.attacks.base import ThreatModel
from advguard.data import ImageDataset, balanced_subset, first_n, load_dataset
from advguard.defenses.base import Defense, as_defense, derive_seed
from advguard.defenses.registry import build_defense
from advguard.errors import AdvguardError, ConfigError
from advguard.evaluation import checks
from advguard.evaluation.config import DRAWS_PROTOCOL, EvalConfig, StepSpec
from advguard.evaluation.executors import (
    ChunkPrior,
    ChunkResult,
    ChunkTask,
    Executor,
    LocalExecutor,
)
from advguard.evaluation.presets import preset_revision, resolve_preset
from advguard.evaluation.settings import Prepared, prepare_step
from advguard.evaluation.store import (
    ExampleRecord,
    FlagRecord,
    OutcomeRecord,
    RecordStore,
    StepRecord,
)
from advguard.evaluation.summary import EvalSummary, summarize
from advguard.rng import example_draws, rng_states, set_rng_states
from advguard.utils import check_images, environment_info, eval_mode, resolve_device


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a model's state dict: names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        # reshape: a 0-dim tensor (e.g. PNI's layer-wise noise scale) cannot be viewed as bytes
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def load_eval_data(config: EvalConfig) -> ImageDataset:
    """The examples an evaluation config selects (first ``n``, or class-balanced ``n``) of its
    split; ``"val"`` is the held-out validation part of ``"train"`` (``val_size``, ``val_seed``)."""
    if config.split == "val":
        from advguard.data.subsets import train_val_split

        train = load_dataset(config.dataset, "train", root=config.data_root)
        data = dataclasses.replace(train_val_split(train, config.val_size,
                                                   seed=config.val_seed)[1], split="val")
    else:
        data = load_dataset(config.dataset, config.split, root=config.data_root)
    if config.n is not None and config.n < len(data):
        data = first_n(data, config.n) if config.subset == "first" else \
            balanced_subset(data, n=config.n, seed=config.seed)
    return data


@dataclass
class _Context:
    config: EvalConfig
    defense: Defense
    prepared: list[Prepared]
    runs: int
    device: torch.device
    preset: str
    preset_revision: int
    steps: tuple[StepSpec, ...]
    environment: dict[str, Any]  # where this context runs: versions, commit, device


def _evaluated_model(config: EvalConfig, model: nn.Module | None,
                     device: torch.device) -> nn.Module:
    """The classifier to evaluate, on ``device`` in eval mode: a copy of the caller's ``model``
    (whose device, mode and noise generators' states stay as they are), else the checkpoint
    ``config.model``."""
    from advguard.checkpoint import load_checkpoint

    if model is None:
        if not config.model:
            raise ConfigError("the evaluation config names no model checkpoint")
        model = load_checkpoint(config.model, device=device).model
    else:
        model = copy.deepcopy(model)
    return model.to(device).eval()


def _build_context(config: EvalConfig, model: nn.Module, device: torch.device,
                   load_model: Callable[[str], nn.Module] | None) -> _Context:
    """The defense around ``model`` (already on ``device``, eval mode) and the prepared cascade:
    built once by the driver and once per worker process, from the same inputs."""
    from advguard.checkpoint import load_checkpoint

    def loader(path: str) -> nn.Module:
        if load_model is not None:
            return load_model(path).to(device).eval()
        return load_checkpoint(path, device=device).model

    defense = as_defense(build_defense(config.defense, model, seed=config.seed)).to(device)
    preset, preset_steps = resolve_preset(config.preset_name, defense, config.eps)
    revision = preset_revision(config.preset_name, defense)
    steps = (*config.steps, *preset_steps)
    prepared = [prepare_step(s, defense, norm=config.norm, eps=config.eps, load_model=loader)
                for s in steps]
    runs = config.runs if defense.traits.randomized else 1
    environment = environment_info(device)
    # every weight the defended model holds (the base model and the networks a defense loads,
    # e.g. a purifier or f_b): a checkpoint replaced under the same path changes it
    environment["defense_fingerprint"] = model_fingerprint(defense)
    return _Context(config, defense, prepared, runs, device, preset, revision, steps,
                    environment)


def _check_same_defense_weights(db: RecordStore, eval_id: str, name: str,
                                fingerprint: str) -> None:
    """Before resuming (or re-reading) an evaluation: its records must come from the defended
    model's current weights. The evaluation id covers the config and the base model's weights,
    not the checkpoints a defense loads by path (a purifier retrained under the same path), so
    those are compared here, against every fingerprint the evaluation and its chunks recorded
    (records made before it was recorded have none and pass)."""
    info = db.evaluation(eval_id)
    recorded = {env.get("defense_fingerprint") for env in
                [info["environment"], *db.chunk_environments(eval_id).values()]} - {None}
    if recorded and recorded != {fingerprint}:
        raise ConfigError(
            f"evaluation {name!r}: its records were made with other defense weights "
            f"(fingerprint {', '.join(sorted(recorded))}; now {fingerprint}): a checkpoint the "
            "defense loads (e.g. a purifier) was replaced under the same path. Evaluate into "
            "another store (--store), or restore the checkpoint the records were made with")


# The context a worker process built for the evaluation it works on (one at a time).
_WORKER_CONTEXTS: dict[str, _Context] = {}


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
    """Run inside ``path`` if it exists here (the driver's directory, so that relative
    checkpoint paths in the config mean the same on a worker), else where we are."""
    previous = os.getcwd()
    moved = path != previous and os.path.isdir(path)
    if moved:
        os.chdir(path)
    try:
        yield
    finally:
        if moved:
            os.chdir(previous)


@dataclass
class ChunkJob:
    """Everything needed to compute any chunk of one evaluation, picklable so that executors
    can ship it to other processes: the config, the caller's model (None: the worker loads
    ``config.model``), the transfer-source loader, the driver's working directory, and a token
    naming the evaluation run. :meth:`compute` builds the context once per process."""

    config: EvalConfig
    model: nn.Module | None
    load_model: Callable[[str], nn.Module] | None
    cwd: str
    token: str
    context: _Context | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["context"] = None  # rebuilt where the job lands
        model = state["model"]
        if model is not None and any(t.device.type != "cpu" for t in model.state_dict().values()):
            state["model"] = copy.deepcopy(model).cpu()  # the worker moves it to its device
        return state

    def _context(self) -> _Context:
        if self.context is not None:
            return self.context
        ctx = _WORKER_CONTEXTS.get(self.token)
        if ctx is None:
            _WORKER_CONTEXTS.clear()
            device = resolve_device(self.config.device)
            with _working_directory(self.cwd):
                model = _evaluated_model(self.config, self.model, device)
                ctx = _build_context(self.config, model, device, self.load_model)
            _WORKER_CONTEXTS[self.token] = ctx
        return ctx

    def compute(self, task: ChunkTask) -> ChunkResult:
        """Run the cascade on one chunk and return its records."""
        ctx = self._context()
        started = time.perf_counter()
        with _working_directory(self.cwd), eval_mode(ctx.defense):
            examples, outcomes, step_seconds = _run_chunk(
                ctx, task.chunk, task.images.to(ctx.device), task.labels.to(ctx.device),
                task.indices, task.prior)
        earlier = task.prior.seconds if task.prior is not None else 0.0
        return ChunkResult(task.chunk, examples, outcomes,
                           time.perf_counter() - started + earlier,
                           step_seconds, ctx.environment)


def _predict(defense: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([defense(x[i:i + batch]).argmax(1) for i in range(0, x.shape[0], batch)])


def _run_chunk(ctx: _Context, chunk: int, x: torch.Tensor, y: torch.Tensor,
               indices: list[int], prior: ChunkPrior | None = None
               ) -> tuple[list[ExampleRecord], list[OutcomeRecord], dict[int, float]]:
    """The cascade on one chunk: its clean runs, then each step on the examples every earlier
    step failed on. With ``prior`` (the records of its first steps), only the later steps run."""
    cfg, defense, runs = ctx.config, ctx.defense, ctx.runs
    n = x.shape[0]
    ids = torch.tensor(indices, dtype=torch.long)
    if prior is None:
        seconds: dict[int, float] = {}
        started = time.perf_counter()
        clean_runs = torch.zeros(n, dtype=torch.long, device=x.device)
        for r in range(runs):
            defense.reseed(derive_seed(cfg.seed, "clean", chunk, r))
            with example_draws(x, ids, derive_seed(cfg.seed, "clean", r), modules=defense):
                clean_runs += (_predict(defense, x, cfg.batch_size) == y).long()
        robust = clean_runs == runs
        fooled_by: list[int | None] = [None if bool(ok) else -1 for ok in robust]
        seconds[-1] = time.perf_counter() - started
        outcomes: list[OutcomeRecord] = []
    else:
        earlier = {e.example: e for e in prior.examples}
        if sorted(earlier) != sorted(indices):
            raise AdvguardError(f"chunk {chunk}: the records to extend cover other examples")
        clean_runs = torch.tensor([earlier[i].clean_correct_runs for i in indices],
                                  dtype=torch.long, device=x.device)
        fooled_by = [earlier[i].fooled_by for i in indices]
        robust = torch.tensor([f is None for f in fooled_by], device=x.device)
        seconds = dict(prior.step_seconds)
        outcomes = list(prior.outcomes)
    threat = ThreatModel(cfg.norm, cfg.eps)  # type: ignore[arg-type]
    for s, prep in enumerate(ctx.prepared):
        if prior is not None and s < prior.steps:
            continue
        started = time.perf_counter()
        for r in range(runs):
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            defense.reseed(derive_seed(cfg.seed, "attack", chunk, s, r))
            gen = torch.Generator(device=x.device).manual_seed(
                derive_seed(cfg.seed, "generator", chunk, s, r))
            rows = ids[idx.cpu()]
            with example_draws(x[idx], rows, derive_seed(cfg.seed, "attack", s, r),
                               modules=defense):
                result = prep.attack(prep.model, x[idx].clone(), y[idx],
                                     target=prep.spec.target, generator=gen)
            # our own check, against our own untouched copy, before anything is recorded
            threat.verify(result.adv, x[idx], who=f"step {s} ({prep.spec.display})")
            defense.reseed(derive_seed(cfg.seed, "eval", chunk, s, r))
            with example_draws(x[idx], rows, derive_seed(cfg.seed, "eval", s, r),
                               modules=defense):
                correct = _predict(defense, result.adv, cfg.batch_size) == y[idx]
            dist = threat.distance(result.adv, x[idx])
            for j, i in enumerate(idx.tolist()):
                outcomes.append(OutcomeRecord(indices[i], s, r, bool(correct[j]),
                                              float(dist[j]), float(result.queries)))
                if not bool(correct[j]):
                    fooled_by[i] = s
            robust[idx[~correct]] = False
        seconds[s] = time.perf_counter() - started
    examples = [ExampleRecord(indices[i], int(y[i]), int(clean_runs[i]), fooled_by[i])
                for i in range(n)]
    return examples, outcomes, seconds


def _probe_flags(ctx: _Context, x: torch.Tensor, y: torch.Tensor,
                 probed_steps: int = 0) -> list[FlagRecord]:
    """The reliability probes; ``probed_steps``: the first steps were probed already (by the
    evaluation this one extends): probe only the ways of taking gradients they did not use."""
    cfg, defense = ctx.config, ctx.defense
    defense.reseed(derive_seed(cfg.seed, "checks"))
    correct = _predict(defense, x, cfg.batch_size) == y
    x, y = x[correct][: cfg.check_examples], y[correct][: cfg.check_examples]
    if x.shape[0] == 0:
        return [FlagRecord("no_probe_examples", -1, True, "no clean-correct example to probe")]
    flags = [] if probed_steps else [
        checks.check_randomness(defense, x, declared=defense.traits.randomized),
        checks.check_dynamic(defense, x, declared=defense.traits.dynamic),
    ]
    probed: set[bool | str] = set()
    for s, prep in enumerate(ctx.prepared):
        if prep.gradient_model is not None and prep.white_box:
            # the probes test the gradients a step follows: once per way of taking them (exact
            # or BPDA); a surrogate forced on a differentiable defense whose exact gradient was
            # probed is an extra attack, not the defense's gradient
            bpda = (not defense.traits.differentiable) if prep.spec.bpda is None \
                else prep.spec.bpda
            if bpda in probed or (bpda and defense.traits.differentiable and probed):
                continue
            probed.add(bpda)
            if s < probed_steps:
                continue
            attack = checks.probe_attack(prep.attack)
            flags.append(checks.check_gradients(prep.gradient_model, x, y, s))
            flags.append(checks.check_eps_sweep(attack, prep.model, defense, x, y, s,
                                                seed=derive_seed(cfg.seed, "checks", s)))
            flags.append(checks.check_more_steps(attack, prep.model, defense, x, y, s,
                                                 seed=derive_seed(cfg.seed, "checks", s)))
    return flags


def evaluate(config: EvalConfig, *, store: RecordStore | str | Path,
             model: nn.Module | None = None, data: ImageDataset | None = None,
             load_model: Callable[[str], nn.Module] | None = None,
             progress: bool = True,
             on_chunk: Callable[[int], None] | None = None,
             executor: Executor | None = None) -> EvalSummary:
    """Run (or resume) the evaluation ``config`` and return its summary.

    ``model``: the classifier (default: loaded from the checkpoint ``config.model``); ``data``:
    the examples (default: selected by the config); ``load_model``: how ``transfer`` steps load
    their source checkpoints (default :func:`advguard.checkpoint.load_checkpoint`); ``store``: a
    :class:`RecordStore` or the path of its SQLite file; ``on_chunk``: called with the chunk's
    index right after each chunk this call computes is committed to the store (not for chunks
    a resumed evaluation skips) — for progress reporting, and for tests that interrupt an
    evaluation at a known point; ``executor``: where the chunks are computed
    (:mod:`advguard.evaluation.executors`; default: in this process). Records do not depend on
    the executor.
    """
    device = resolve_device(config.device)
    given = model  # shipped to workers as is; without it, they load config.model themselves
    model = _evaluated_model(config, given, device)
    if data is None:
        data = load_eval_data(config)
    check_images(data.images, name="evaluation images")
    data_flags = check_model_fits(model, data, config)
    fingerprint = model_fingerprint(model)

    ctx = _build_context(config, model, device, load_model)
    defense, prepared, steps = ctx.defense, ctx.prepared, ctx.steps
    key = f"{fingerprint}/{data.name}/{data.split}/{len(data)}"
    eval_id = config.identity(key, ctx.preset_revision)
    recorded = config.to_dict()
    recorded.update(preset=ctx.preset, steps=[s.to_dict() for s in steps])
    executor = executor if executor is not None else LocalExecutor()
    own_store = not isinstance(store, RecordStore)
    db = RecordStore(store) if not isinstance(store, RecordStore) else store
    try:
        step_records = [StepRecord(-1, "clean", "clean", False, {})] + [
            StepRecord(i, p.spec.display, p.spec.setting, p.white_box, p.attack.to_dict())
            for i, p in enumerate(prepared)]
        if eval_id in db.evaluation_ids():
            _check_same_defense_weights(db, eval_id, config.name or eval_id,
                                        ctx.environment["defense_fingerprint"])
            extends = db.evaluation(eval_id)["environment"].get("extends")
        else:
            extends = _prefix_evaluation(db, config, key, ctx.preset_revision, step_records)
        env = dict(ctx.environment)
        env["model_fingerprint"] = fingerprint
        env["draws"] = DRAWS_PROTOCOL
        if extends is not None:
            env["extends"] = extends
        if not isinstance(executor, LocalExecutor):
            env["executor"] = executor.describe()
        resumed = db.begin_evaluation(
            eval_id, name=config.name or eval_id, config=recorded,
            traits=defense.traits.to_dict(), environment=env, n=len(data), runs=ctx.runs,
            steps=step_records)
        db.write_flags(eval_id, data_flags)
        parent_chunks: set[int] = set()
        if extends is not None:
            parent = extends["evaluation"]
            _check_same_defense_weights(db, parent, parent,
                                        ctx.environment["defense_fingerprint"])
            parent_chunks = db.finished_chunks(parent)
            if not resumed:  # its probes, for its steps
                db.write_flags(eval_id, db.flags(parent))
        indices = (data.indices.tolist() if data.indices is not None
                   else list(range(len(data))))
        if config.checks and not (resumed and db.flags(eval_id)):
            started = time.perf_counter()
            x0 = data.images[: 2 * config.check_examples]
            y0 = data.labels[: x0.shape[0]]
            probed = int(extends["steps"]) if extends is not None else 0
            with eval_mode(defense):
                db.write_flags(eval_id, _probe_flags(ctx, x0.to(device), y0.to(device),
                                                     probed))
            db.add_seconds(eval_id, time.perf_counter() - started)
        done = db.finished_chunks(eval_id)
        n_chunks = (len(data) + config.batch_size - 1) // config.batch_size
        bounds = [(c, c * config.batch_size, min(len(data), (c + 1) * config.batch_size))
                  for c in range(n_chunks)]
        tasks = [ChunkTask(c, data.images[lo:hi], data.labels[lo:hi], indices[lo:hi],
                           _prior(db, extends, c) if extends and c in parent_chunks else None)
                 for c, lo, hi in bounds if c not in done]
        job = ChunkJob(config, given, load_model,
                       os.getcwd(), f"{eval_id}/{uuid.uuid4().hex}", context=ctx)
        bar = tqdm(total=len(data), desc=config.name or "evaluate", disable=not progress,
                   dynamic_ncols=True, unit="ex",
                   initial=sum(hi - lo for c, lo, hi in bounds if c in done))
        finished = n_chunks - len(tasks)
        bar.set_postfix_str(f"chunks {finished}/{n_chunks}", refresh=False)
        try:
            for result in executor.map(job, tasks):
                db.write_chunk(eval_id, result.chunk, result.examples, result.outcomes,
                               result.seconds, result.step_seconds, result.environment)
                finished += 1
                bar.set_postfix_str(f"chunks {finished}/{n_chunks}", refresh=False)
                bar.update(len(result.examples))
                if on_chunk is not None:
                    on_chunk(result.chunk)
        finally:
            bar.close()
        _finish(db, eval_id, prepared)
        return summarize(db, eval_id)
    finally:
        if own_store:
            db.close()


def _prefix_evaluation(db: RecordStore, config: EvalConfig, key: str, revision: int,
                       steps: list[StepRecord]) -> dict[str, Any] | None:
    """An evaluation in ``db`` that this new one extends: the same config and data whose cascade
    is a strict prefix of this one's — the same config at an earlier revision of its preset, or,
    without a preset, the config with its last explicit steps removed. Its records are this
    evaluation's for those steps (every draw derives from the seed, chunk, step, run and
    example, not from the steps after), so only the steps after them need computing. Returns
    ``{"evaluation": id, "steps": k}`` for the longest such prefix, or None."""
    candidates = [config.identity(key, r) for r in range(revision - 1, 0, -1)]
    if config.preset_name == "none":
        candidates += [config.replace(steps=config.steps[:k]).identity(key)
                       for k in range(len(config.steps) - 1, 0, -1)]
    known = set(db.evaluation_ids())
    best: dict[str, Any] | None = None
    ours = [(s.step, s.setting, s.white_box, json.loads(json.dumps(s.attack, sort_keys=True,
                                                                    default=str)))
            for s in steps]  # as the store gives them back
    for candidate in candidates:
        if candidate not in known:
            continue
        theirs = [(s.step, s.setting, s.white_box, s.attack) for s in db.steps(candidate)]
        k = len(theirs) - 1  # without the clean step
        if len(theirs) < len(ours) and theirs == ours[:len(theirs)] and \
                (best is None or k > best["steps"]):
            best = {"evaluation": candidate, "steps": k}
    return best


def _prior(db: RecordStore, extends: dict[str, Any], chunk: int) -> ChunkPrior:
    """The records of ``chunk`` in the evaluation this one ``extends``, to run its later steps."""
    examples, outcomes, seconds, step_seconds = db.chunk_records(extends["evaluation"], chunk)
    return ChunkPrior(int(extends["steps"]), examples, outcomes, seconds, step_seconds)


def check_model_fits(model: nn.Module, data: ImageDataset, config: EvalConfig
                     ) -> list[FlagRecord]:
    """Before any work: the model takes the data's images (channels and size from its spec, or
    a two-image probe) and returns finite (N, K) scores with K above every label; otherwise a
    :class:`ConfigError` naming both sides. Returns the warnings to record as flags: a model
    trained on another dataset of the same shape, and fewer examples than ``config.n``."""
    from advguard.defenses.resources import input_facts, same_task

    facts = input_facts(model)
    c, h, w = data.images.shape[1:]
    where = f"{config.model or 'the model'}"
    if not facts.takes((c, h, w)):
        trained = f" (trained on {facts.dataset})" if facts.dataset else ""
        raise ConfigError(f"{where} takes {facts.image_shape()} images{trained}, but "
                          f"{data.name}/{data.split} has {c}x{h}x{w} images")
    x = data.images[:2].to(next(iter(model.parameters()), torch.empty(0)).device)
    states = rng_states(model)  # the probe must not consume the model's noise draws
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where} cannot take the {c}x{h}x{w} images of {data.name}: "
                          f"{first}") from None
    finally:
        set_rng_states(model, states)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{where} must return scores of shape (N, classes); for {x.shape[0]} "
                          f"images it returned {shape}")
    if not bool(torch.isfinite(out).all()):
        raise ConfigError(f"{where} returns NaN or infinite scores on clean {data.name} images "
                          "(NaN weights or a diverged training run?); nothing to evaluate")
    top = int(data.labels.max()) if len(data) else -1
    if top >= out.shape[1]:
        raise ConfigError(f"{where} has {out.shape[1]} outputs but {data.name} has label {top}")
    flags = []
    if facts.dataset and facts.dataset != data.name and not same_task(facts.dataset, data.name):
        flags.append(FlagRecord("dataset_mismatch", -1, True,
                                f"trained on {facts.dataset}, evaluated on {data.name}"))
    if config.n is not None and config.n > len(data):
        flags.append(FlagRecord("fewer_examples", -1, True,
                                f"asked for n={config.n}; {data.name}/{data.split} has "
                                f"{len(data)}, all evaluated"))
    return flags


def _finish(db: RecordStore, eval_id: str, prepared: list[Prepared]) -> None:
    examples = db.examples(eval_id)
    white = [i for i, p in enumerate(prepared) if p.white_box]
    black = [i for i, p in enumerate(prepared) if not p.white_box]
    flag = checks.blackbox_flag(white, [e.fooled_by for e in examples], black, len(examples))
    db.write_flags(eval_id, [flag])
    db.set_status(eval_id, "complete")
