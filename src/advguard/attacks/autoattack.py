"""Adapters to **pyautoattack 0.2.0** (AutoAttack; Croce & Hein, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML 2020) behind
advguard's :class:`~advguard.attacks.base.Attack` protocol: the AutoAttack cascade and its four
attacks APGD, APGD-T, FAB and Square.

pyautoattack is optional (``pip install 'advguard[eval]'``); it is imported when an adapter runs,
never when advguard is imported. Each adapter runs the library under advguard's rules:

* **randomness** — pyautoattack draws from torch's *global* RNG and reseeds it
  (``torch.random.manual_seed(seed)`` inside every attack; ``time.time()`` when ``seed=None``).
  The adapters derive its integer seed from the ``generator`` passed to the attack (a fixed
  generator gives identical results) and run it inside :func:`isolated_global_rng`, so the
  caller's global torch (CPU and CUDA) and numpy RNG states are unchanged afterwards;
* **output** — its progress messages and reliability warnings (randomized or probability
  outputs, zero gradients, ...) go to the ``advguard.attacks.autoattack`` logger (warnings at
  INFO, progress at DEBUG), not to the terminal; errors propagate;
* **the model** — the model is passed straight through (a defense, an EOT/BPDA wrapper: its output
  is logits) and used as given (train/eval mode untouched); its parameters are frozen while the
  library runs, because FAB computes input gradients with ``backward()``, which would otherwise
  accumulate into the parameters' ``.grad``;
* **devices** — the library gets ``device=x.device``.

The helpers :func:`import_optional`, :func:`library_seed`, :func:`isolated_global_rng` and
:func:`library_output` are shared with :mod:`advguard.attacks.foolbox_attacks`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from advguard.attacks.base import ATTACKS, Attack
from advguard.errors import ConfigError
from advguard.utils import frozen_params

LOG = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'advguard[eval]'"
_LIBRARY_NORM = {"linf": "Linf", "l2": "L2"}
_PAPER = "Croce & Hein, ICML 2020"


# --------------------------------------------------------------------------- shared helpers
def import_optional(module: str, *, needed_by: str) -> ModuleType:
    """Import an optional attack library, or raise :class:`ConfigError` saying how to install it.
    Warnings raised while the library is imported (foolbox 3.3.4 imports a deprecated scipy
    namespace) are the library's: they are logged at INFO, not shown."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lib = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{needed_by} needs the optional package {module!r} ({exc}); "
                          f"install it with: {INSTALL_HINT}") from None
    for w in caught:
        LOG.info("importing %s: %s: %s", module, w.category.__name__, w.message)
    return lib


def library_seed(generator: torch.Generator) -> int:
    """An integer seed in ``[0, 2**31 - 1)`` drawn from ``generator`` (for libraries)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


def _lazy_cuda_seeds() -> tuple[Any, Any, list[Any]] | None:
    # torch.manual_seed queues CUDA seeding until CUDA is initialized (torch.cuda._lazy_call); a
    # library's reseed would silently replace the caller's queued seed. Private API: best effort.
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    if tracker is None or torch.cuda.is_initialized():
        return None
    return (tracker.manual_seed_all_cb, tracker.manual_seed_cb, list(tracker.call_order))


def _restore_lazy_cuda_seeds(saved: tuple[Any, Any, list[Any]] | None) -> None:
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    if saved is None or tracker is None or torch.cuda.is_initialized():
        return
    tracker.manual_seed_all_cb, tracker.manual_seed_cb, tracker.call_order = saved


@contextlib.contextmanager
def isolated_global_rng(seed: int) -> Iterator[None]:
    """Seed torch's global generators (CPU and every initialized CUDA device) and numpy's global
    RNG with ``seed`` for the duration of the block, and restore all their states on exit — for
    libraries that draw from, or reseed, the global RNGs."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    lazy = _lazy_cuda_seeds()
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        _restore_lazy_cuda_seeds(lazy)


class _Relay(logging.Handler):
    """Re-log a library's records on ``logger``: warnings become INFO, progress DEBUG."""

    def __init__(self, logger: logging.Logger, source: str) -> None:
        super().__init__()
        self.logger, self.source = logger, source

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelno if record.levelno >= logging.ERROR else \
            logging.INFO if record.levelno >= logging.WARNING else logging.DEBUG
        self.logger.log(level, "%s: %s", self.source, record.getMessage())


def _package_dir(name: str) -> str | None:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    return str(Path(file).parent) if file else None


@contextlib.contextmanager
def library_output(packages: Sequence[str], *, loggers: Sequence[str] = (),
                   logger: logging.Logger = LOG) -> Iterator[None]:
    """Keep a library's messages out of the caller's output without hiding them.

    Records of the named library ``loggers`` and warnings issued from files of ``packages`` are
    re-logged on ``logger`` (warnings at INFO, lower levels at DEBUG); warnings issued by any other
    code (the caller's model, torch) are re-issued unchanged; exceptions propagate."""
    relay = _Relay(logger, packages[0])
    saved = []
    for name in loggers:
        lib = logging.getLogger(name)
        saved.append((lib, lib.propagate))
        lib.addHandler(relay)
        lib.propagate = False
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                caught = list(record or [])
    finally:
        for lib, propagate in saved:
            lib.removeHandler(relay)
            lib.propagate = propagate
        dirs = [d for d in map(_package_dir, packages) if d]
        for w in caught:
            if any(str(w.filename).startswith(d) for d in dirs):
                logger.info("%s: %s: %s", packages[0], w.category.__name__, w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                       source=w.source)


@contextlib.contextmanager
def _pyautoattack_run(model: nn.Module, seed: int) -> Iterator[None]:
    """Seeded, isolated RNG; library output relayed; parameters frozen; and the caller's trace
    function (coverage, debugger) restored — AutoAttack's dynamic-defense check calls
    ``sys.settrace(None)``."""
    trace = sys.gettrace()
    try:
        with isolated_global_rng(seed), library_output(["pyautoattack"], loggers=["auto-attack"]), \
                frozen_params(model):
            yield
    finally:
        if sys.gettrace() is not trace:
            sys.settrace(trace)


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[-1])


def _need_classes(name: str, k: int, minimum: int, why: str) -> None:
    if k < minimum:
        raise ConfigError(f"{name} needs at least {minimum} classes ({why}); the model has {k}")


def _reject_target(name: str, target: torch.Tensor | None, why: str) -> None:
    if target is not None:
        raise ConfigError(f"{name} does not take target= ({why})")


class _PyAutoAttack(Attack):
    """Shared library access for the pyautoattack adapters (not registered)."""

    name: ClassVar[str] = "pyautoattack"

    def _library(self, module: str = "pyautoattack") -> Any:
        # pyautoattack 0.2.0 exports only AutoAttack at the top level; the single attacks live in
        # its submodules autopgd_base, fab_pt and square.
        return import_optional(module, needed_by=f"attack {self.name!r}")

    @property
    def _norm(self) -> str:
        return _LIBRARY_NORM[self.norm]


def _positive(**values: float) -> None:
    for key, value in values.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")


# --------------------------------------------------------------------------- AutoAttack
@ATTACKS.register("autoattack", source="pyautoattack", kind="gradient", norms=("linf", "l2"),
                  targets="own", paper=_PAPER)
@dataclass(frozen=True, kw_only=True)
class AutoAttack(_PyAutoAttack):
    """The AutoAttack cascade: each attack runs on the points still robust after the previous ones.

    Paper: Croce & Hein, ICML 2020. Library: pyautoattack 0.2.0 (``pyautoattack.AutoAttack``,
    ``run_standard_evaluation``). Inputs (N,C,H,W) in [0, 1], model outputs logits (N,K).

    ``version`` (library presets, kept as they are):

    * ``"standard"`` (default): APGD-CE (100 steps, 1 restart), APGD-T (targeted DLR over the top
      ``min(9, K−1)`` classes), FAB-T (same targets), Square (5000 queries). Needs K ≥ 4;
    * ``"plus"``: APGD-CE and APGD-DLR (5 restarts), FAB (5 restarts), Square, APGD-T, FAB-T;
    * ``"rand"``: APGD-CE and APGD-DLR with EOT over ``eot_iter`` (default 20) draws, for
      randomized defenses (``eot_iter`` is used by this version only).

    ``batch_size`` (library default 250) bounds the examples per library call. The attacks choose
    their own targets, so ``target=`` raises :class:`ConfigError`; success is misclassification.
    The library's reliability checks (randomized defense, probability output, dynamic defense,
    Square beating the white-box attacks) are logged at INFO on ``advguard.attacks.autoattack``.
    With fewer than 10 classes the number of target classes is capped at K − 1 here (the
    library would index past K).

    Example::

        result = AutoAttack(eps=8/255)(model, x, y, generator=torch.Generator().manual_seed(0))
        robust_accuracy = 1 - result.success_rate
        AutoAttack(eps=8/255, version="rand")(defense, x, y)   # randomized defenses
    """

    name = "autoattack"
    version: Literal["standard", "plus", "rand"] = "standard"
    eot_iter: int = 20
    batch_size: int = 250

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version not in ("standard", "plus", "rand"):
            raise ConfigError(f"version must be 'standard', 'plus' or 'rand', got {self.version!r}")
        _positive(eot_iter=self.eot_iter, batch_size=self.batch_size)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        _reject_target(self.name, target, "its attacks choose their own targets")
        lib = self._library()
        k = _num_classes(model, x)
        if self.version == "rand":
            _need_classes(self.name, k, 3, "the DLR loss of APGD-DLR")
        else:
            _need_classes(self.name, k, 4, "the targeted DLR loss of APGD-T")
        # Its dynamic-defense check counts calls in a module-level dict that is never reset, so
        # after one dynamic model every later model would be flagged: reset it for this run.
        funcs = self._library("pyautoattack.checks").funcs
        funcs.update(dict.fromkeys(funcs, 0))
        seed = library_seed(generator)
        with _pyautoattack_run(model, seed):
            aa = lib.AutoAttack(model, device=x.device, eps=self.eps, norm=self._norm, seed=seed,
                                version=self.version)
            aa.verbose = False
            aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, k - 1)
            aa.fab.n_target_classes = min(aa.fab.n_target_classes, k - 1)
            if self.version == "rand":
                aa.apgd.eot_iter = self.eot_iter
            adv, _ = aa.run_standard_evaluation(x, y, batch_size=self.batch_size)
        return adv.detach()


# --------------------------------------------------------------------------- APGD
@ATTACKS.register("apgd", source="pyautoattack", kind="gradient", norms=("linf", "l2"),
                  targets="untargeted", paper=_PAPER)
@dataclass(frozen=True, kw_only=True)
class APGD(_PyAutoAttack):
    """Auto-PGD: PGD with momentum and a step size halved when progress stalls (no step-size
    tuning), on the cross-entropy or the DLR loss.

    Paper: Croce & Hein, ICML 2020. Library: pyautoattack 0.2.0 (``APGDAttack``). Inputs
    (N,C,H,W) in [0, 1], model outputs logits (N,K).

    Args (library defaults): ``eps``; ``norm`` ("linf" | "l2"); ``loss`` ("ce" | "dlr"; DLR
    needs K ≥ 3); ``steps`` (100); ``restarts`` (1, each on the points not yet fooled);
    ``eot_iter`` (1: gradients averaged over this many forward passes, for randomized models);
    ``rho`` (0.75, the step-size decrease threshold). Untargeted only (the library's APGD accepts
    only "ce" and "dlr"; use ``apgd-t`` for the targeted DLR loss): ``target=`` raises
    :class:`ConfigError`. Returns the first adversarial iterate found, the clean input otherwise.

    Example::

        result = APGD(eps=8/255, loss="dlr", steps=100)(model, x, y)
    """

    name = "apgd"
    loss: Literal["ce", "dlr"] = "ce"
    steps: int = 100
    restarts: int = 1
    eot_iter: int = 1
    rho: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("ce", "dlr"):
            raise ConfigError(f"loss must be 'ce' or 'dlr', got {self.loss!r}")
        _positive(steps=self.steps, restarts=self.restarts, eot_iter=self.eot_iter)
        if not 0 < self.rho < 1:
            raise ConfigError(f"rho must be in (0, 1), got {self.rho}")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        _reject_target(self.name, target, "APGD is untargeted; use 'apgd-t'")
        lib = self._library("pyautoattack.autopgd_base")
        if self.loss == "dlr":
            _need_classes(self.name, _num_classes(model, x), 3, "the DLR loss")
        seed = library_seed(generator)
        with _pyautoattack_run(model, seed):
            attack = lib.APGDAttack(model, n_iter=self.steps, norm=self._norm,
                                    n_restarts=self.restarts, eps=self.eps, seed=seed,
                                    loss=self.loss, eot_iter=self.eot_iter, rho=self.rho,
                                    verbose=False, device=x.device,
                                    logger=logging.getLogger("auto-attack"))
            return attack.perturb(x, y).detach()


@ATTACKS.register("apgd-t", source="pyautoattack", kind="gradient", norms=("linf", "l2"),
                  targets="own", paper=_PAPER)
@dataclass(frozen=True, kw_only=True)
class APGDTargeted(_PyAutoAttack):
    """APGD on the targeted DLR loss, run in turn towards each of the ``n_target_classes``
    highest-scoring wrong classes (on the points not yet fooled); success is misclassification.

    Paper: Croce & Hein, ICML 2020. Library: pyautoattack 0.2.0 (``APGDAttack_targeted``).
    Inputs (N,C,H,W) in [0, 1], model outputs logits (N,K) with K ≥ 4.

    Args (library defaults): ``eps``; ``norm`` ("linf" | "l2"); ``n_target_classes`` (9, capped
    at K − 1); ``steps`` (100 per target class); ``restarts`` (1); ``eot_iter`` (1); ``rho``
    (0.75). It chooses its own targets, so ``target=`` raises :class:`ConfigError`.

    Example::

        result = APGDTargeted(eps=8/255, n_target_classes=9)(model, x, y)
    """

    name = "apgd-t"
    steps: int = 100
    restarts: int = 1
    n_target_classes: int = 9
    eot_iter: int = 1
    rho: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(steps=self.steps, restarts=self.restarts, eot_iter=self.eot_iter,
                  n_target_classes=self.n_target_classes)
        if not 0 < self.rho < 1:
            raise ConfigError(f"rho must be in (0, 1), got {self.rho}")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        _reject_target(self.name, target, "it targets the top wrong classes itself")
        lib = self._library("pyautoattack.autopgd_base")
        k = _num_classes(model, x)
        _need_classes(self.name, k, 4, "the targeted DLR loss")
        seed = library_seed(generator)
        with _pyautoattack_run(model, seed):
            attack = lib.APGDAttack_targeted(
                model, n_iter=self.steps, norm=self._norm, n_restarts=self.restarts,
                eps=self.eps, seed=seed, eot_iter=self.eot_iter, rho=self.rho,
                n_target_classes=min(self.n_target_classes, k - 1), verbose=False,
                device=x.device, logger=logging.getLogger("auto-attack"))
            return attack.perturb(x, y).detach()


# --------------------------------------------------------------------------- FAB
@ATTACKS.register("fab", source="pyautoattack", kind="gradient", norms=("linf", "l2"),
                  targets="own", paper="Croce & Hein, ICML 2020 (FAB)")
@dataclass(frozen=True, kw_only=True)
class FAB(_PyAutoAttack):
    """Fast Adaptive Boundary attack: a minimum-norm attack that steps towards the linearized
    decision boundary; a point counts only if its perturbation is within ``eps``.

    Paper: Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
    attack", ICML 2020. Library: pyautoattack 0.2.0 (``FABAttack_PT``). Inputs (N,C,H,W) in
    [0, 1], model outputs logits (N,K).

    Args (library defaults): ``eps``; ``norm`` ("linf" | "l2"); ``steps`` (100); ``restarts``
    (1; restarts after the first start from a random point); ``targeted`` (False; True runs FAB-T
    towards each of the ``n_target_classes`` (9, capped at K − 1) highest-scoring wrong classes);
    ``alpha_max`` (0.1), ``eta`` (1.05), ``beta`` (0.9). FAB chooses its own targets, so
    ``target=`` raises :class:`ConfigError`; success is misclassification. The untargeted
    version takes one backward pass per class and step.

    Example::

        result = FAB(eps=8/255, targeted=True)(model, x, y)
    """

    name = "fab"
    steps: int = 100
    restarts: int = 1
    targeted: bool = False
    n_target_classes: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(steps=self.steps, restarts=self.restarts,
                  n_target_classes=self.n_target_classes)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        _reject_target(self.name, target, "FAB is untargeted, and FAB-T (targeted=True) "
                       "targets the top wrong classes itself")
        lib = self._library("pyautoattack.fab_pt")
        k = _num_classes(model, x)
        _need_classes(self.name, k, 2, "a decision boundary")
        seed = library_seed(generator)
        with _pyautoattack_run(model, seed):
            attack = lib.FABAttack_PT(
                model, norm=self._norm, n_restarts=self.restarts, n_iter=self.steps,
                eps=self.eps, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta,
                verbose=False, seed=seed, targeted=self.targeted, device=x.device,
                n_target_classes=min(self.n_target_classes, k - 1))
            return attack.perturb(x, y).detach()


# --------------------------------------------------------------------------- Square
@ATTACKS.register("square", source="pyautoattack", kind="score", norms=("linf", "l2"),
                  targets="optional",
                  paper="Andriushchenko, Croce, Flammarion, Hein, ECCV 2020")
@dataclass(frozen=True, kw_only=True)
class Square(_PyAutoAttack):
    """Square Attack: random search with square-shaped updates at the boundary of the ε-ball,
    using only the model's scores (no gradients).

    Paper: Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020. Library: pyautoattack 0.2.0
    (``SquareAttack``). Inputs (N,C,H,W) in [0, 1] (square images: the library's update schedule
    assumes H = W), model outputs scores (N,K).

    Args (library defaults): ``eps``; ``norm`` ("linf" | "l2"); ``queries`` (5000 per restart);
    ``p_init`` (0.8, initial fraction of pixels changed); ``restarts`` (1); ``loss`` ("margin" |
    "ce"; untargeted); ``rescale_schedule`` (True: the schedule of square sizes is rescaled to
    ``queries``; AutoAttack itself uses False with 5000 queries). Targeted when called with
    ``target=`` (the library then minimizes the cross-entropy to the target).

    Example::

        result = Square(eps=8/255, queries=1000)(model, x, y)
        result = Square(eps=8/255)(model, x, y, target="random")
    """

    name = "square"
    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    loss: Literal["margin", "ce"] = "margin"
    rescale_schedule: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(queries=self.queries, restarts=self.restarts)
        if not 0 < self.p_init <= 1:
            raise ConfigError(f"p_init must be in (0, 1], got {self.p_init}")
        if self.loss not in ("margin", "ce"):
            raise ConfigError(f"loss must be 'margin' or 'ce', got {self.loss!r}")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                target: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        lib = self._library("pyautoattack.square")
        seed = library_seed(generator)
        with _pyautoattack_run(model, seed):
            attack = lib.SquareAttack(
                model, norm=self._norm, n_queries=self.queries, eps=self.eps,
                p_init=self.p_init, n_restarts=self.restarts, seed=seed, verbose=False,
                targeted=target is not None, loss=self.loss,
                resc_schedule=self.rescale_schedule, device=x.device)
            return attack.perturb(x, y if target is None else target).detach()
