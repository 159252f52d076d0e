"""POST: adaptive modeling — per-input post-training of the classifier at inference.

Paper: Yan & Ng, "Adaptive Modeling Against Adversarial Attacks" (Algorithms 1–2, Eq. 2–7;
reference code ``JokerYan/post_training``). For each input ``x′``:

1. ``y′ = f(x′)``, the **original class**;
2. the **neighbour class** ``y″ = f(x″)``: ``x″`` is an untargeted PGD from ``x′`` away from
   ``y′`` (Algorithm 1: ``neighbour_steps`` = 20 sign-gradient steps of ``neighbour_alpha``, no
   random start, within the L∞ ball ``eps`` and [0, 1]; each input stops as soon as it leaves
   ``y′`` — ``neighbour_early_stop``, as the reference code's PGD does — so that ``x″`` is the
   first point across the nearest boundary) — or (``neighbour="targeted"``, Table 4) the most
   confident of targeted PGDs towards every other class (the lowest target loss);
3. if ``y″ = y′`` the base model's prediction stands; otherwise a copy of the model is
   post-trained for ``iterations`` (K = 50) SGD steps (``lr`` 1e-3, momentum 0.9, Nesterov), each
   on ``per_class`` (M/2) training images of class ``y′`` and ``per_class`` of class ``y″``
   (``composition="neighbour"``; the ablation's ``"random_class"``: ``y′`` and a random other
   class drawn per step; ``"random"``: ``2·per_class`` random training images), perturbed by
   ``method``:

   * ``"fast"`` — FGSM from a uniform random start (Wong et al.'s Fast-FGSM): ``δ ~ U(−ε, ε)``,
     ``δ ← clip_ε(δ + α·sgn ∇ₓℓ)`` with ``train_eps``, ``train_alpha`` (defaults ``eps``, 10/255
     as in the reference code), clipped to [0, 1] (the reference code does not clip);
   * ``"pgd"`` — PGD-``train_steps`` from a uniform random start, step ``2.5·ε/steps``;
   * ``"fixed"`` — every training image plus ``δ_fix = x″ − x′`` (Eq. 5–7), unclipped as Eq. 7;
   * ``"normal"`` — the images as they are;

   with BatchNorm in eval mode (running statistics used, never updated); then ``x′`` is classified
   by the post-trained copy.

The training data is a pool of **training** (or validation) images named by ``data``: a pool spec
as MI-OL's (``{"dataset": "fashion-mnist", "root": ...}``; ``split`` "train" or "val", never
"test"), checked against the model (classes, channels, size) when the defense is built.

**Batched post-training.** The reference code deep-copies the model per input (batch size 1).
Here the inputs of a call are post-trained as independent parameter sets, each with its own SGD
momentum, its own y′/y″ batches and its own early exit (inputs with ``y″ = y′`` are not trained),
in one of two ways:

* **vectorized** (``vectorize``; by default on accelerators): ``chunk`` inputs at a time, the
  parameters stacked along a leading dimension and the model run with
  :func:`torch.func.functional_call` under :func:`torch.func.vmap`;
* **worker threads** (by default on a CPU, where the per-sample-weight convolutions ``vmap``
  produces ran slower than a loop): the inputs shared out over ``workers`` threads (None: torch's
  intra-op thread count), each with its own copy of the model and one intra-op thread, one input
  at a time — on two cores 1.10× (B = 8) and 1.16× (B = 32) the rate of the reference loop on
  two intra-op threads (benchmarks/results/post_batched.md). Each thread post-trains its own
  copy because ``functional_call`` swaps parameters into the module it is given.

Every random draw of an input (its training batches, its FGSM starts, its random classes) is keyed
by that input's row key (per example inside the evaluation harness), so an input's outcome does
not depend on the other inputs of its chunk, on ``chunk`` or on ``workers``: the batched paths
give the predictions of the per-input loop (with one intra-op thread per input the worker threads
give its parameters bit for bit; several intra-op threads sum in an order that varies between
runs, which FGSM's sign can amplify into parameter differences of ~1e-2).

Traits: randomized (data sampling), **not differentiable** through the fine-tuning, dynamic (an
attack and an optimization inside the forward pass). Gradients for attackers: the forward pass is
differentiable in ``x`` through the final classification by the post-trained copy, its
parameters held fixed (the natural BPDA of a test-time-adapted model); the base model is the
pre-trained classifier.

Shapes: inputs (B, C, H, W) in [0, 1], outputs logits (B, K).

Example::

    post = build_defense({"name": "post_train", "data": {"dataset": "fashion-mnist"},
                          "eps": 0.1, "neighbour_alpha": 0.125, "method": "fast"}, model)
    logits = post(x)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from advguard.data import ImageDataset
from advguard.defenses.base import Defense, Traits
from advguard.defenses.registry import DEFENSES
from advguard.errors import ConfigError
from advguard.rng import combine, keyed_uniform, row_keys
from advguard.utils import eval_mode

__all__ = ["PostTrain", "find_neighbours", "post_train_in_threads", "post_train_params"]

Method = Literal["fast", "pgd", "fixed", "normal"]
Composition = Literal["neighbour", "random_class", "random"]
NeighbourSearch = Literal["untargeted", "targeted"]

# tags of the keyed draws (an input's key is combined with the tag and the iteration)
_T_FIRST, _T_SECOND, _T_CLASS, _T_START = 11, 12, 13, 14


def find_neighbours(model: nn.Module, x: torch.Tensor, y1: torch.Tensor, *, eps: float,
                    alpha: float, steps: int, search: NeighbourSearch = "untargeted",
                    num_classes: int | None = None, early_stop: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The neighbour class ``y″`` of each input and ``x″ − x′`` (Algorithm 1): untargeted PGD
    away from ``y1`` (no random start), or the most confident of the targeted PGDs towards every
    class but ``y1``. ``early_stop``: an input stops moving once it leaves ``y1`` (reaches its
    target), as the reference code's PGD does; False runs all ``steps`` as Algorithm 1 reads.
    Returns ``(y2, delta)``, detached; ``model`` is used as it is (eval mode expected) and its
    parameters are never touched."""
    from advguard.attacks.pgd import PGD

    attack = PGD(eps=eps, alpha=alpha, steps=steps, random_start=False, early_stop=early_stop)
    gen = torch.Generator(device=x.device)  # unused: no random start
    x = x.detach()
    if search == "untargeted":
        adv = attack.perturb(model, x, y1, target=None, generator=gen)
    else:
        k = int(num_classes) if num_classes is not None else int(model(x[:1]).shape[1])
        B = x.shape[0]
        targets = (y1[None, :] + torch.arange(1, k, device=x.device)[:, None]) % k  # (K−1, B)
        xs = x.repeat(k - 1, 1, 1, 1)
        adv_all = attack.perturb(model, xs, y1.repeat(k - 1), target=targets.flatten(),
                                 generator=gen)
        with torch.no_grad():
            loss = F.cross_entropy(model(adv_all), targets.flatten(), reduction="none")
        best = loss.view(k - 1, B).argmin(0)
        adv = adv_all.view(k - 1, B, *x.shape[1:])[best, torch.arange(B, device=x.device)]
    with torch.no_grad():
        y2 = model(adv).argmax(1)
    return y2, (adv - x).detach()


class _Pool:
    """Training images sorted by class: ``images`` (P, C, H, W), ``start``/``count`` per class."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        from advguard.defenses.mixup_inference import sort_by_class

        self.images, self.labels, self.count, self.start = sort_by_class(images, labels)
        self.width = int(self.count.max())  # the largest class: one host read, not per draw

    def to(self, device: torch.device) -> _Pool:
        if self.images.device != device:
            for name in ("labels", "images", "count", "start"):
                setattr(self, name, getattr(self, name).to(device))
        return self


def _draw_from_class(pool: _Pool, keys: torch.Tensor, classes: torch.Tensor, n: int
                     ) -> torch.Tensor:
    """``n`` distinct pool indices of class ``classes[b]`` per row (uniform without
    replacement), from the keyed draws ``keys`` (B,)."""
    counts = pool.count[classes]
    width = pool.width
    u = keyed_uniform(keys, (width,))
    u = u.masked_fill(torch.arange(width, device=u.device)[None, :] >= counts[:, None], 2.0)
    ranked = torch.topk(u, min(n, width), dim=1, largest=False).indices  # valid positions first
    # a class with fewer than n images is cycled through (its ranked positions, repeated)
    take = torch.arange(n, device=u.device)[None, :] % counts[:, None]
    return pool.start[classes][:, None] + ranked.gather(1, take)


class _Functional:
    """A model run with stacked parameter sets (one per input) via ``functional_call`` + ``vmap``;
    buffers (BatchNorm statistics) are shared and never written (eval mode)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.buffers = dict(model.named_buffers())

    def logits(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(self.model, (params, self.buffers), (x,))
        return out

    def loss(self, params: dict[str, torch.Tensor], x: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(params, x), y)

    def batched_logits(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (B, M, K) of inputs x (B, M, C, H, W), row b through parameter set b."""
        if x.shape[0] == 1:  # one parameter set: no vmap (its per-sample convolutions cost)
            return self.logits(_row(params), x[0])[None]
        out: torch.Tensor = vmap(self.logits)(params, x)
        return out

    def param_grads(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[0] == 1:
            one: dict[str, torch.Tensor] = grad(self.loss)(_row(params), x[0], y[0])
            return {k: v[None] for k, v in one.items()}
        out: dict[str, torch.Tensor] = vmap(grad(self.loss))(params, x, y)
        return out

    def input_grads(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            g: torch.Tensor = grad(self.loss, argnums=1)(_row(params), x[0], y[0])
            return g[None]
        out: torch.Tensor = vmap(grad(self.loss, argnums=1))(params, x, y)
        return out


def _row(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v[0] for k, v in params.items()}


def post_train_params(model: nn.Module, pool: _Pool, keys: torch.Tensor, y1: torch.Tensor,
                      y2: torch.Tensor, delta: torch.Tensor, *, method: Method,
                      composition: Composition, iterations: int, per_class: int, lr: float,
                      momentum: float, nesterov: bool, train_eps: float, train_alpha: float,
                      train_steps: int, num_classes: int) -> dict[str, torch.Tensor]:
    """Post-train ``len(keys)`` copies of ``model`` at once (Algorithm 2), copy ``b`` on the
    classes ``y1[b]``/``y2[b]`` with its own draws (keyed by ``keys[b]``) and its own SGD
    momentum. Returns the stacked parameters {name: (B, ...)}; ``model`` is not modified."""
    fn = _Functional(model)
    B = len(keys)
    params = {name: p.detach().unsqueeze(0).expand(B, *p.shape).clone()
              for name, p in model.named_parameters()}
    bufs: dict[str, torch.Tensor] = {}  # SGD momentum, one buffer per parameter set
    for it in range(iterations):
        k_it = combine(keys, it)
        if composition == "random":  # 2·per_class images of the whole pool (with replacement)
            u = keyed_uniform(combine(k_it, _T_FIRST), (2 * per_class,))
            idx = (u * len(pool.labels)).long().clamp_max(len(pool.labels) - 1)
        else:
            second = y2
            if composition == "random_class":
                u = keyed_uniform(combine(k_it, _T_CLASS), ())
                second = (y1 + 1 + (u * (num_classes - 1)).long().clamp_max(num_classes - 2)
                          ) % num_classes
            idx = torch.cat([_draw_from_class(pool, combine(k_it, _T_FIRST), y1, per_class),
                             _draw_from_class(pool, combine(k_it, _T_SECOND), second,
                                              per_class)], dim=1)
        data = pool.images[idx]                              # (B, M, C, H, W)
        labels = pool.labels[idx]                            # (B, M)
        if method == "fixed":
            data = data + delta[:, None]
        elif method in ("fast", "pgd"):
            u = keyed_uniform(combine(k_it, _T_START), tuple(data.shape[1:]))
            d = (2 * u - 1) * train_eps
            d = (data + d).clamp(0, 1) - data
            steps, alpha = (1, train_alpha) if method == "fast" else \
                (train_steps, 2.5 * train_eps / train_steps)
            for _ in range(steps):
                g = fn.input_grads(params, data + d, labels)
                d = (d + alpha * g.sign()).clamp(-train_eps, train_eps)
                d = (data + d).clamp(0, 1) - data
            data = (data + d).detach()
        grads = fn.param_grads(params, data, labels)
        for name, g in grads.items():
            buf = g if it == 0 else momentum * bufs[name] + g
            bufs[name] = buf
            step = g + momentum * buf if nesterov else buf
            params[name] = params[name] - lr * step
    return params


def post_train_in_threads(model: nn.Module, pool: _Pool, keys: torch.Tensor, y1: torch.Tensor,
                          y2: torch.Tensor, delta: torch.Tensor, *, workers: int,
                          **kwargs: Any) -> list[dict[str, torch.Tensor]]:
    """:func:`post_train_params` for each row on its own (parameter sets of one), the rows shared
    out over ``workers`` threads, each with its own copy of ``model`` (``functional_call`` swaps
    parameters into the module it runs) and one intra-op thread. Returns one parameter dict
    {name: (1, ...)} per row, in order; the caller's intra-op thread count is restored."""
    n = len(keys)

    def train(i: int, net: nn.Module) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = post_train_params(
            net, pool, keys[i:i + 1], y1[i:i + 1], y2[i:i + 1], delta[i:i + 1], **kwargs)
        return out

    if workers <= 1:
        return [train(i, model) for i in range(n)]
    # from here every row trains on one intra-op thread, a lone row too: its parameters then do
    # not depend on how many rows share its call
    results: list[dict[str, torch.Tensor] | None] = [None] * n

    def work(first: int) -> None:  # rows first, first + workers, ... on one thread
        torch.set_num_threads(1)  # per thread: its OpenMP setting, and no oversubscription
        net = copy.deepcopy(model)
        for i in range(first, n, workers):
            results[i] = train(i, net)

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            for future in [ex.submit(work, w) for w in range(min(workers, n))]:
                future.result()  # re-raise a worker's error
    finally:
        torch.set_num_threads(threads)
    return [r for r in results if r is not None]


@DEFENSES.register("post_train", kind="defense",
                   paper="Yan & Ng, Adaptive Modeling Against Adversarial Attacks (POST)")
class PostTrain(Defense):
    """Per-input post-training at inference (see the module docstring).

    Args (keyword-only): ``data`` (a pool spec, an :class:`~advguard.data.ImageDataset` of
    training images, or ``(images, labels)``), ``eps`` (8/255: the neighbour search's ball),
    ``neighbour_alpha`` (10/255), ``neighbour_steps`` (20), ``neighbour`` ("untargeted" |
    "targeted"), ``neighbour_early_stop`` (True, the reference code), ``method`` ("fast" |
    "pgd" | "fixed" | "normal"), ``composition`` ("neighbour" | "random_class" | "random"),
    ``iterations`` (50), ``per_class`` (128: M/2, the base model's batch size), ``lr``
    (1e-3), ``momentum`` (0.9), ``nesterov`` (True), ``train_eps`` (None: ``eps``),
    ``train_alpha`` (None: ``neighbour_alpha``), ``train_steps`` (10, for "pgd"), ``chunk``
    (8 inputs per vectorized pass), ``vectorize`` (None: vectorized on accelerators; on a CPU
    the inputs shared out over ``workers`` threads — the same draws and predictions either
    way), ``workers`` (None: torch's intra-op thread count), ``seed``.
    """

    def __init__(self, model: nn.Module, *,
                 data: str | Mapping[str, Any] | ImageDataset | tuple[torch.Tensor, torch.Tensor],
                 eps: float = 8 / 255, neighbour_alpha: float = 10 / 255,
                 neighbour_steps: int = 20, neighbour: NeighbourSearch = "untargeted",
                 neighbour_early_stop: bool = True,
                 method: Method = "fast", composition: Composition = "neighbour",
                 iterations: int = 50, per_class: int = 128, lr: float = 1e-3,
                 momentum: float = 0.9, nesterov: bool = True, train_eps: float | None = None,
                 train_alpha: float | None = None, train_steps: int = 10, chunk: int = 8,
                 vectorize: bool | None = None, workers: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(seed=seed)
        for name, value, low in (("neighbour_steps", neighbour_steps, 1),
                                 ("iterations", iterations, 0), ("per_class", per_class, 1),
                                 ("train_steps", train_steps, 1), ("chunk", chunk, 1),
                                 ("workers", 1 if workers is None else workers, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        for name, fvalue in (("eps", eps), ("neighbour_alpha", neighbour_alpha), ("lr", lr)):
            if not (math.isfinite(float(fvalue)) and float(fvalue) > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {fvalue}")
        if not 0 <= float(momentum) < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.model = model
        self.eps, self.neighbour_alpha = float(eps), float(neighbour_alpha)
        self.neighbour_steps, self.neighbour = neighbour_steps, neighbour
        self.neighbour_early_stop = bool(neighbour_early_stop)
        self.method, self.composition = method, composition
        self.iterations, self.per_class = iterations, per_class
        self.lr, self.momentum, self.nesterov = float(lr), float(momentum), bool(nesterov)
        self.train_eps = float(train_eps) if train_eps is not None else self.eps
        self.train_alpha = float(train_alpha) if train_alpha is not None \
            else self.neighbour_alpha
        self.train_steps, self.chunk = train_steps, chunk
        self.vectorize, self.workers = vectorize, workers
        images, labels, self.num_classes = _pool_tensors(data, model)
        self.pool = _Pool(images, labels)
        self.traits = Traits(randomized=True, differentiable=False, dynamic=True)
        self.reseed(seed)

    @classmethod
    def from_spec(cls, model: nn.Module, params: Mapping[str, Any]) -> PostTrain:
        """Build from a spec; ``data`` (the training pool) is required."""
        if "data" not in params:
            raise ConfigError("defense 'post_train' needs 'data': the training images it "
                              "post-trains on, e.g. {dataset: fashion-mnist}")
        return cls(model, **params)

    @property
    def base_model(self) -> nn.Module:
        return self.model

    def vectorized(self, device: torch.device) -> bool:
        """Whether ``chunk`` inputs are post-trained in one vectorized pass (``vectorize``; None:
        on accelerators only — on a CPU the per-sample-weight convolutions vmap produces ran
        slower than one input at a time, benchmarks/results/post_batched.md; there the inputs are
        shared out over worker threads instead)."""
        return self.vectorize if self.vectorize is not None else device.type != "cpu"

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        keys = row_keys(x, "post_train", self)
        if keys is None:  # outside the harness: one key per row from the defense's generator
            g = self.generator(x.device)
            keys = torch.randint(-(2 ** 62), 2 ** 62, (x.shape[0],), generator=g,
                                 device=g.device, dtype=torch.int64)
        return keys.to(x.device)

    def adapt(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                              dict[str, torch.Tensor]]:
        """The neighbour search and the post-training of every input of ``x``: returns ``y1``,
        ``y2``, the mask of inputs that were post-trained (``y2 != y1``) and their stacked
        parameters (rows in the order of the mask's True entries)."""
        keys = self._keys(x)
        xd = x.detach()
        with eval_mode(self.model), torch.no_grad():
            y1 = self.model(xd).argmax(1)
            y2, delta = find_neighbours(self.model, xd, y1, eps=self.eps,
                                        alpha=self.neighbour_alpha, steps=self.neighbour_steps,
                                        search=self.neighbour, num_classes=self.num_classes,
                                        early_stop=self.neighbour_early_stop)
            active = (y2 != y1) if self.composition == "neighbour" else \
                torch.ones_like(y1, dtype=torch.bool)
            pool = self.pool.to(x.device)
            idx = active.nonzero().flatten()
            kwargs: dict[str, Any] = dict(
                method=self.method, composition=self.composition, iterations=self.iterations,
                per_class=self.per_class, lr=self.lr, momentum=self.momentum,
                nesterov=self.nesterov, train_eps=self.train_eps, train_alpha=self.train_alpha,
                train_steps=self.train_steps, num_classes=self.num_classes)
            with torch.enable_grad():
                if self.vectorized(x.device):  # chunk inputs per vectorized pass
                    parts = [post_train_params(self.model, pool, keys[rows], y1[rows], y2[rows],
                                               delta[rows], **kwargs)
                             for rows in idx.split(self.chunk)]
                else:  # one parameter set per input, shared out over worker threads on a CPU
                    workers = (self.workers or torch.get_num_threads()) \
                        if x.device.type == "cpu" else 1
                    parts = post_train_in_threads(self.model, pool, keys[idx], y1[idx], y2[idx],
                                                  delta[idx], workers=workers, **kwargs)
        params = {name: torch.cat([p[name] for p in parts]) if parts else
                  p0.detach().unsqueeze(0)[:0] for name, p0 in self.model.named_parameters()}
        return y1, y2, active, {k: v.detach() for k, v in params.items()}

    def classify(self, x: torch.Tensor, active: torch.Tensor,
                 params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of ``x`` by the post-trained copies (rows where ``active``, in order, with the
        stacked ``params`` of :meth:`adapt`) and by the base model elsewhere; differentiable in
        ``x`` with the parameters held fixed."""
        with eval_mode(self.model):
            out = self.model(x)
            if active.any():
                fn = _Functional(self.model)
                adapted = fn.batched_logits(params, x[active][:, None])[:, 0]
                out = out.clone()
                out[active] = adapted.to(out.dtype)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        _, _, active, params = self.adapt(x)
        return self.classify(x, active, params)

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass: differentiable in ``x`` through the post-trained copies with their
        parameters held fixed."""
        return self.forward(x)

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, neighbour={self.neighbour!r}, "
                f"composition={self.composition!r}, iterations={self.iterations}, "
                f"per_class={self.per_class}, eps={self.eps:.4g}")


def _pool_tensors(data: str | Mapping[str, Any] | ImageDataset
                  | tuple[torch.Tensor, torch.Tensor],
                  model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training images a spec names (never the test split), checked against ``model``:
    the same channels and size, and images of every class the model predicts. Returns
    ``(images, labels, number of classes)``."""
    from advguard.defenses.mixup_inference import pool_tensors
    from advguard.defenses.resources import InputFacts, input_facts

    images, labels = pool_tensors(data, role="post-training data")
    model_facts = input_facts(model)
    facts = InputFacts(channels=int(images.shape[1]),
                       size=int(images.shape[2]) if images.shape[2] == images.shape[3] else None)
    bad = facts.mismatches(model_facts)
    k = model_facts.num_classes or int(labels.max()) + 1
    present = torch.bincount(labels.long(), minlength=k)
    if len(present) > k:
        bad.append(f"labels up to {len(present) - 1} vs num_classes {k}")
    elif not bool((present > 0).all()):
        missing = (present == 0).nonzero().flatten().tolist()
        bad.append(f"no images of class(es) {missing}")
    if bad:
        raise ConfigError(f"post-training data does not fit the model it defends: "
                          f"{'; '.join(bad)} (data vs model)")
    return images, labels, k
