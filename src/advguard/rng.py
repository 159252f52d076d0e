"""Owned randomness (house rule 3): modules that draw random numbers own a seed and one
``torch.Generator`` per device, and never touch the global RNG — attack libraries reseed it.
Used by randomized defenses and by randomized model components (noise-injection layers)."""

from __future__ import annotations

import contextvars
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and ``keys`` (stable across runs and
    platforms, unlike ``hash``)."""
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class Randomness(nn.Module):
    """Owns a seed and one ``torch.Generator`` per device, created lazily and seeded from it.

    :meth:`reseed` re-seeds this module and, with derived seeds, every :class:`Randomness`
    submodule, so a composite defense is reproducible from one number.
    """

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__()
        self._seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    @property
    def seed(self) -> int:
        return self._seed

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This module's generator for ``device`` (the device of the inputs)."""
        key = str(torch.device(device))
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=torch.device(device))
            gen.manual_seed(self._seed)
            self._generators[key] = gen
        return gen

    def reseed(self, seed: int) -> None:
        """Re-seed this module and, with seeds derived from ``seed``, its random submodules."""
        self._seed = int(seed)
        self._generators.clear()
        for name, child in self.named_modules():
            if child is not self and isinstance(child, Randomness):
                child._seed = derive_seed(seed, name)
                child._generators.clear()

    def rng_state(self) -> dict[str, object]:
        """The seed and the state of every generator created so far (for resumable training)."""
        return {"seed": self._seed,
                "generators": {k: g.get_state() for k, g in self._generators.items()}}

    def set_rng_state(self, state: dict[str, object]) -> None:
        """Restore what :meth:`rng_state` returned."""
        self._seed = int(state["seed"])  # type: ignore[call-overload]
        self._generators.clear()
        generators = state["generators"]
        assert isinstance(generators, dict)
        for key, value in generators.items():
            self.generator(key).set_state(value)


def rng_states(module: nn.Module) -> dict[str, dict[str, object]]:
    """:meth:`Randomness.rng_state` of every :class:`Randomness` submodule, by module name."""
    return {name: m.rng_state() for name, m in module.named_modules()
            if isinstance(m, Randomness)}


def set_rng_states(module: nn.Module, states: dict[str, dict[str, object]]) -> None:
    """Inverse of :func:`rng_states` (names must match)."""
    modules = dict(module.named_modules())
    for name, state in states.items():
        target = modules.get(name)
        if not isinstance(target, Randomness):
            raise KeyError(f"no randomized submodule named {name!r}")
        target.set_rng_state(state)


# --------------------------------------------------------------------------- the draws protocol
# Every path that averages, votes or takes an expectation over draws of a randomized model
# (``Averaged``, ``EOT``, ``MajorityVote``, ``Smoothed``, MI-OL, SmoothAdv, EPGD) runs the draws
# through :func:`iter_draws`: ``k`` stacked copies of the batch per forward, where every noise
# source gives every copy its own draw. A noise source (a :class:`Randomness` module with no
# random submodule, whose ``traits`` -- if any -- say randomized) declares how it draws:
#
# * ``per_example_noise = True`` -- independently per row of its input (random transforms, input
#   noise, CAP's labels, MI-OL's partners), so stacked copies get independent draws for free;
# * ``per_copy_noise = True`` -- once per forward, shared by the rows, but once per stacked copy
#   inside :func:`stacked_copies` (PNI/CNI weight noise, through :class:`CopiesAware` layers).
#
# A source declaring neither draws once per forward: :func:`iter_draws` then runs one copy per
# forward, so that the draws stay independent.


class CopiesAware:
    """Mixin for layers that can run a batch of stacked copies with one draw per copy: ``copies``
    is how many stacked copies of a batch the next forward holds (1: an ordinary batch), set only
    by :func:`stacked_copies`."""

    copies: int = 1

    def _split(self, x: torch.Tensor) -> int:
        k = self.copies
        if x.shape[0] % k:
            raise ValueError(
                f"{type(self).__name__}: a batch of {x.shape[0]} rows cannot hold "
                f"{k} stacked copies (stacked_copies(model, {k})); the batch size must be "
                f"a multiple of the number of copies")
        return k


@contextmanager
def stacked_copies(model: nn.Module, copies: int) -> Iterator[nn.Module]:
    """Within the context, every forward of ``model`` takes a batch of ``copies`` stacked copies
    of a batch (input ``(copies·n, ...)``, copy ``i`` in rows ``i·n … (i+1)·n − 1``, as made by
    ``x.repeat(copies, 1, 1, 1)``) and every :class:`CopiesAware` layer of ``model`` gives copy
    ``i`` its own draw ``i``, made in the order of ``copies`` sequential forwards. A batch size
    that is not a multiple of ``copies`` raises ``ValueError``. Nested contexts multiply; the
    previous setting is restored on exit. Gradients flow as in ordinary forwards.

    Example::

        with stacked_copies(model, 16):
            logits = model(x.repeat(16, 1, 1, 1)).view(16, len(x), -1)   # 16 weight draws
    """
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be an int >= 1, got {copies!r}")
    layers = [m for m in model.modules() if isinstance(m, CopiesAware)]
    saved = [m.__dict__.get("copies") for m in layers]
    try:
        for m in layers:
            m.copies = m.copies * copies
        yield model
    finally:
        for m, old in zip(layers, saved):
            if old is None:
                del m.copies
            else:
                m.copies = old


def noise_sources(model: nn.Module) -> Iterator[nn.Module]:
    """The modules inside ``model`` that draw noise themselves: :class:`Randomness` modules with
    no random submodule of their own, except those whose ``traits`` declare them deterministic
    (e.g. a bit-depth transform)."""
    for module in model.modules():
        if not isinstance(module, Randomness):
            continue
        if any(isinstance(sub, Randomness) for sub in module.modules() if sub is not module):
            continue
        traits = getattr(module, "traits", None)
        if traits is not None and not getattr(traits, "randomized", True):
            continue
        yield module


def is_randomized(model: nn.Module) -> bool:
    """Whether any noise source lives inside ``model`` (its outputs are random)."""
    return any(True for _ in noise_sources(model))


def draws_per_copy(model: nn.Module) -> bool:
    """True when stacked copies of a batch get independent draws from every noise source of
    ``model`` (each declares ``per_example_noise`` or ``per_copy_noise``); True for a model
    without noise."""
    return all(bool(getattr(m, "per_example_noise", False) or getattr(m, "per_copy_noise", False))
               for m in noise_sources(model))


def draw_chunks(total: int, chunk: int) -> list[int]:
    """``total`` draws split into chunks of at most ``chunk`` (the last one smaller)."""
    if total < 1:
        raise ValueError(f"the number of draws must be >= 1, got {total}")
    size, sizes, left = max(1, int(chunk)), [], int(total)
    while left > 0:
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes


def iter_draws(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, draws: int, *,
               chunk: int, module: nn.Module) -> Iterator[torch.Tensor]:
    """``draws`` independent draws of ``fn(x)``, yielded in chunks of shape ``(k, N, ...)``.

    ``module`` is what ``fn`` runs (``fn`` is ``module`` or one of its methods): each chunk is
    one forward of ``k`` stacked copies of ``x`` inside :func:`stacked_copies`, ``k`` at most
    ``chunk``, or 1 when a noise source of ``module`` cannot draw per copy
    (:func:`draws_per_copy`). Gradients flow to ``x``.
    """
    n = x.shape[0]
    size = chunk if draws_per_copy(module) else 1
    for k in draw_chunks(draws, size):
        with stacked_copies(module, k):
            out = fn(x.repeat(k, *([1] * (x.dim() - 1))))
        yield out.view(k, n, *out.shape[1:])


def mean_probs(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, draws: int, *,
               chunk: int, module: nn.Module, output: str = "logits") -> torch.Tensor:
    """``log((1/draws) Σ_i p_i(x))`` over :func:`iter_draws` of ``fn`` — logits whose softmax is
    the expected probability vector (``output``: what ``fn`` returns, "logits" or "probs")."""
    total: torch.Tensor | None = None
    for out in iter_draws(fn, x, draws, chunk=chunk, module=module):
        probs = out.float() if output == "probs" else out.float().softmax(-1)
        part = probs.sum(0)
        total = part if total is None else total + part
    assert total is not None
    return (total / draws).clamp_min(1e-12).log()


# --------------------------------------------------------------------------- per-example draws
# Per-example draws. Inside :func:`example_draws` (set by the evaluation harness around each stage
# of a chunk) a draw made for a row of a batch is a function of (stage seed, the example the row
# belongs to, how many calls of this kind that example has seen, the row's occurrence among the
# rows of the same example in the call, the drawing module, its call count inside the current
# defense call, the stacked copy) -- never of which other examples share the batch. Rows are
# matched to examples by the nearest clean input (L2): attacks move inputs within a small ball
# and may pass any subset, stacked copies or restarts of the rows they were given. Draws come
# from a counter-based generator (SplitMix64 on int64 tensors), identical on every device.
_C1 = -4658895280553007687    # 0xbf58476d1ce4e5b9 as int64
_C2 = -7723592293110705685    # 0x94d049bb133111eb
_GOLDEN = -7046029254386353131  # 0x9e3779b97f4a7c15


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finalizer on an int64 tensor (wrapping arithmetic): a bijective hash."""
    z = (z ^ _srl(z, 30)) * _C1
    z = (z ^ _srl(z, 27)) * _C2
    return z ^ _srl(z, 31)


def combine(keys: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Keys (int64) extended by ``value`` (an int or an int64 tensor broadcasting with them)."""
    return mix64(keys * _GOLDEN + value)


def _signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _name_key(text: str) -> int:
    return _signed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def _bits(keys: torch.Tensor, numel: int, offset: int = 0) -> torch.Tensor:
    counter = (torch.arange(numel, device=keys.device, dtype=torch.int64) + offset) * _GOLDEN
    return mix64(mix64(keys)[:, None] + counter[None, :])


def keyed_uniform(keys: torch.Tensor, shape: tuple[int, ...], *,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform draws in [0, 1) of shape ``(len(keys), *shape)``: row ``i`` a function of
    ``keys[i]`` alone (float64: 53 random bits, else 24)."""
    numel = math.prod(int(s) for s in shape)
    z = _bits(keys, numel)
    if dtype == torch.float64:
        out = _srl(z, 11).double() * 2.0 ** -53
    else:
        out = (_srl(z, 40).float() * 2.0 ** -24).to(dtype)
    return out.view(len(keys), *shape)


def keyed_normal(keys: torch.Tensor, shape: tuple[int, ...], *,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws (Box–Muller on two keyed uniforms), otherwise as
    :func:`keyed_uniform`."""
    numel = math.prod(int(s) for s in shape)
    u1 = (_srl(_bits(keys, numel), 11).double() + 1.0) * 2.0 ** -53   # (0, 1]
    u2 = _srl(_bits(keys, numel, offset=numel), 11).double() * 2.0 ** -53
    out = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
    return out.to(dtype).view(len(keys), *shape)


@dataclass
class _Examples:
    """The examples of one harness stage: their clean inputs, keys and call counts."""

    seed: int
    clean: torch.Tensor            # (n, D) float32
    sq_norms: torch.Tensor         # (n,)
    keys: torch.Tensor             # (n,) int64
    names: Mapping[int, str]       # id(module) -> stable name, for drawing modules
    counts: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, x: torch.Tensor, namespace: str) -> torch.Tensor | None:
        """Keys for the rows of ``x`` in ``namespace``: (stage seed, namespace, example, the
        example's call count in the namespace, occurrence of the example among the rows)."""
        flat = x.detach().flatten(1).float()
        if flat.shape[1] != self.clean.shape[1] or flat.shape[0] == 0:
            return None
        clean = self.clean.to(flat.device)
        dist = (flat * flat).sum(1, keepdim=True) + self.sq_norms.to(flat.device)[None, :] \
            - 2.0 * flat @ clean.T
        slot = dist.argmin(1)
        order = torch.argsort(slot, stable=True)
        ranked = slot[order]
        first = torch.searchsorted(ranked, ranked, right=False)
        occurrence = torch.empty_like(slot)
        occurrence[order] = torch.arange(len(slot), device=slot.device) - first
        counts = self.counts.get(namespace)
        if counts is None:
            counts = self.counts[namespace] = torch.zeros(len(self.keys), dtype=torch.int64)
        counts = counts.to(slot.device)
        seen = counts[slot]
        counts[torch.unique(slot)] += 1
        self.counts[namespace] = counts
        keys = combine(combine(torch.full_like(slot, _signed(self.seed)),
                               _name_key(namespace)), self.keys.to(slot.device)[slot])
        return combine(combine(keys, seen), occurrence)


@dataclass
class _Rows:
    """Inside the outermost defense call: the keys of its input rows, and each drawing module's
    call count within the call."""

    keys: torch.Tensor
    calls: dict[str, int] = field(default_factory=dict)


_EXAMPLES: contextvars.ContextVar[_Examples | None] = contextvars.ContextVar(
    "advguard_examples", default=None)
_ROWS: contextvars.ContextVar[_Rows | None] = contextvars.ContextVar("advguard_rows",
                                                                     default=None)


@contextmanager
def example_draws(x: torch.Tensor, examples: torch.Tensor | list[int], seed: int, *,
                  modules: nn.Module | None = None) -> Iterator[None]:
    """Within the context, draws made through :func:`rand_rows` / :func:`randn_rows` for rows
    belonging to the clean inputs ``x`` (matched to the nearest) are keyed by ``(seed, example
    id, ...)`` with ``examples`` the ids of ``x``'s rows, so an example's draws do not depend on
    the batch it is in. ``modules``: the defense, whose drawing submodules are told apart by
    their names in it (stable across chunks)."""
    ids = torch.as_tensor(examples, dtype=torch.int64).cpu()
    if ids.shape != (x.shape[0],):
        raise ValueError(f"examples must hold one id per row of x ({x.shape[0]}), got "
                         f"{tuple(ids.shape)}")
    flat = x.detach().flatten(1).float()
    names = {id(m): name for name, m in modules.named_modules()} if modules is not None else {}
    table = _Examples(int(seed), flat, (flat * flat).sum(1), mix64(ids * _GOLDEN + 1), names)
    token = _EXAMPLES.set(table)
    rows_token = _ROWS.set(None)
    try:
        yield
    finally:
        _ROWS.reset(rows_token)
        _EXAMPLES.reset(token)


@contextmanager
def call_rows(x: torch.Tensor) -> Iterator[None]:
    """Around the outermost call of a defense: inside :func:`example_draws`, key the rows of
    ``x`` (nested calls and the draws of their modules then follow these rows, through stacked
    copies). A no-op elsewhere and inside an outer call."""
    table = _EXAMPLES.get()
    if table is None or _ROWS.get() is not None:
        yield
        return
    keys = table.rows(x, "defense")
    token = _ROWS.set(_Rows(keys) if keys is not None else None)
    try:
        yield
    finally:
        _ROWS.reset(token)


def row_keys(x: torch.Tensor, stream: str, module: nn.Module | None = None
             ) -> torch.Tensor | None:
    """Per-row keys for a draw by ``module`` (or an attack: ``stream``) on the rows of ``x``,
    or None outside :func:`example_draws` (the caller then uses its generator)."""
    table = _EXAMPLES.get()
    if table is None:
        return None
    name = table.names.get(id(module), type(module).__name__) if module is not None else ""
    label = f"{name}/{stream}"
    rows = _ROWS.get()
    if rows is None:
        return table.rows(x, label)
    base = len(rows.keys)
    if base == 0 or x.shape[0] % base:
        return None  # a layout the protocol cannot follow: the generator decides
    copies = x.shape[0] // base
    call = rows.calls.get(label, 0)
    rows.calls[label] = call + 1
    keys = rows.keys.to(x.device).repeat(copies)
    copy = torch.arange(copies, device=x.device).repeat_interleave(base)
    return combine(combine(combine(keys, _name_key(label)), call), copy)


def _draw_rows(kind: str, x: torch.Tensor, shape: tuple[int, ...] | None,
               generator: torch.Generator, stream: str, module: nn.Module | None,
               dtype: torch.dtype | None) -> torch.Tensor:
    size = (x.shape[0], *(x.shape[1:] if shape is None else shape))
    dtype = dtype or (x.dtype if x.is_floating_point() else torch.float32)
    keys = row_keys(x, stream, module)
    if keys is not None:
        keyed = keyed_uniform if kind == "uniform" else keyed_normal
        return keyed(keys, tuple(size[1:]), dtype=dtype).to(x.device)
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(size, generator=generator, device=generator.device, dtype=dtype).to(x.device)


def rand_rows(x: torch.Tensor, shape: tuple[int, ...] | None = None, *,
              generator: torch.Generator, stream: str = "", module: nn.Module | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uniform draws in [0, 1) of shape ``(x.shape[0], *shape)`` (``shape`` None: ``x.shape[1:]``)
    on ``x``'s device, one row per row of ``x``. Inside :func:`example_draws` (the harness) each
    row's draws are a function of the example the row belongs to, not of the batch; otherwise
    they come from ``generator``. ``stream`` names the purpose and ``module`` the drawing module
    (draws of different streams and modules are independent)."""
    return _draw_rows("uniform", x, shape, generator, stream, module, dtype)


def randn_rows(x: torch.Tensor, shape: tuple[int, ...] | None = None, *,
               generator: torch.Generator, stream: str = "", module: nn.Module | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal draws, otherwise as :func:`rand_rows`."""
    return _draw_rows("normal", x, shape, generator, stream, module, dtype)
