"""Noise-injection layers: Conv2d / Linear whose weight is perturbed by fresh Gaussian noise on
every forward pass, with a learned noise scale — PNI and CNI — and a converter for any registry
model.

* **PNI** (He, Rakin, Fan, "Parametric Noise Injection: Trainable Randomness to Improve Deep Neural
  Network Robustness against Adversarial Attack", CVPR 2019), weight variant PNI-W:
  ``w̃ = w + α · σ(w) · z``, ``z ~ N(0, I)``, with ``σ(w)`` the standard deviation of the layer's
  weight (no gradient flows through it) and a learned ``α`` of one value per layer
  (``granularity="layer"``, the paper's default), per output channel (``"channel"``) or per
  weight (``"element"``), initialized to 0.25.
* **CNI** (Zheltonozhskii, Baskin, Nemcovsky, Chmiel, Mendelson, Bronstein, "Colored Noise
  Injection for Training Adversarially Robust Neural Networks", 2020; the base models of
  Nemcovsky et al.'s smoothed inference, the SMOOTH paper): the flattened weight noise is
  *colored* — a multivariate Gaussian with a learned low-rank-plus-diagonal covariance,
  ``η = σ(w) · (F·z_f + d ⊙ z_d)``, ``z_f ~ N(0, I_k)``, ``z_d ~ N(0, I_n)``, so that
  ``Cov(η) = σ(w)² · (F Fᵀ + diag(d²))`` with ``F ∈ R^{n×k}`` (``rank`` k, default 5) and
  ``d ∈ R^n`` both learned. ``d`` starts at ``init`` (0.25) and ``F`` at
  ``N(0, factor_init²/k)`` entries (0.1), so the correlated part adds about ``factor_init²·σ(w)²``
  of variance per weight. The CNI reference code scales only the diagonal part by the weight's
  std; scaling both, as PNI does, keeps ``F`` and ``d`` independent of the layer's weight scale.

One noise draw per forward pass is shared by the whole batch (as in both reference codes). A
batch of ``k`` stacked copies of a batch — input ``(k·n, ...)``, copy ``i`` in rows
``i·n … (i+1)·n − 1`` — can instead run in **one** forward with ``k`` independent weight draws, copy
``i`` using draw ``i``: inside :func:`weight_noise_copies` every noisy layer draws its ``k``
perturbations one after the other from its own generator (the order of ``k`` sequential forward
calls, so the outputs and the generators' final states equal those of ``k`` separate forwards) and
runs them as one grouped convolution (:class:`NoisyConv2d`) or one batched matmul
(:class:`NoisyLinear`). Smoothed inference and EOT use it to batch their draws; outside the
context (training, plain evaluation) a forward is exactly the single-draw one. The
noise stays **on in eval mode** (PNI evaluates its models with noise; a randomized model that
attacks and evaluations must treat as such) unless the spec says ``eval_noise=False``.

Randomness: every noise module is an :class:`advguard.rng.Randomness` that draws from its own
generator (seeded from the model's seed and the layer's name), never from the global RNG; the
training loop saves and restores these generators, so resumed training is exact. The learned
scales declare ``exclude_from_weight_decay`` (the default :meth:`Recipe.param_groups
<advguard.training.Recipe.param_groups>` puts them in a group without weight decay, as PNI does).

Checkpoints: the noise configuration is part of the model's spec (``create_model(name,
noise={...})`` records it under ``spec.kwargs["noise"]``), so :func:`~advguard.checkpoint.
load_checkpoint` rebuilds the same layers. Converted layers keep their names (``conv1.weight``,
``conv1.bias``) and add ``conv1.noise.alpha`` (PNI) or ``conv1.noise.factor``/``conv1.noise.diag``
(CNI).

Example::

    model = create_model("resnet20", noise={"kind": "pni", "granularity": "channel"})
    noisy = inject_noise(create_model("smallcnn", in_channels=1), {"kind": "cni", "rank": 5})
    noisy(x)                          # a different weight draw on every call, train or eval
    with weight_noise_copies(noisy, 8):
        out = noisy(x.repeat(8, 1, 1, 1))     # 8 weight draws, one per copy, in one forward
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from advguard.errors import ConfigError
from advguard.models.normalized import ModelSpec, Normalized
from advguard.rng import CopiesAware, Randomness, derive_seed, stacked_copies

__all__ = [
    "CNINoise",
    "NoiseSpec",
    "NoisyConv2d",
    "NoisyLinear",
    "PNINoise",
    "WeightNoise",
    "add_weight_noise",
    "has_noise",
    "inject_noise",
    "noise_modules",
    "weight_noise_copies",
]

NOISE_KINDS = ("pni", "cni")
GRANULARITIES = ("layer", "channel", "element")
LAYER_TYPES = ("all", "conv", "linear")


@dataclass(frozen=True, kw_only=True)
class NoiseSpec:
    """Which noise, where. JSON-serializable (it is stored in the model spec).

    ``kind``: "pni" or "cni". ``layers``: which layers get noise — "all" (every ``nn.Conv2d``
    and ``nn.Linear``, PNI-W's choice), "conv" or "linear". ``init``: PNI's initial α, CNI's
    initial diagonal scale ``d`` (0.25 both). ``granularity`` (PNI): "layer" | "channel" |
    "element". ``rank`` (CNI): k ≥ 0 columns of the factor ``F`` (5); ``factor_init`` (CNI):
    scale of ``F``'s initial entries (0.1). ``eval_noise``: keep drawing noise in eval mode (True).
    """

    kind: str = "pni"
    layers: str = "all"
    init: float = 0.25
    granularity: str = "layer"
    rank: int = 5
    factor_init: float = 0.1
    eval_noise: bool = True

    def __post_init__(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"invalid noise spec: {msg}")

        if self.kind not in NOISE_KINDS:
            raise bad(f"kind must be one of {NOISE_KINDS}, got {self.kind!r}")
        if self.layers not in LAYER_TYPES:
            raise bad(f"layers must be one of {LAYER_TYPES}, got {self.layers!r}")
        if self.granularity not in GRANULARITIES:
            raise bad(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if not (math.isfinite(self.init) and self.init >= 0):
            raise bad(f"init must be a finite number >= 0, got {self.init!r}")
        if not (math.isfinite(self.factor_init) and self.factor_init >= 0):
            raise bad(f"factor_init must be a finite number >= 0, got {self.factor_init!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise bad(f"rank must be an int >= 0, got {self.rank!r}")
        if not isinstance(self.eval_noise, bool):
            raise bad(f"eval_noise must be a bool, got {self.eval_noise!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: NoiseSpec | Mapping[str, Any]) -> NoiseSpec:
        if isinstance(data, NoiseSpec):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"a noise spec must be a mapping, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown noise spec key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


# --------------------------------------------------------------------------- noise modules
class WeightNoise(Randomness):
    """Base class: ``forward(weight)`` returns ``weight`` plus one fresh noise draw from this
    module's generator (on the weight's device); :meth:`draws` returns ``k`` of them, stacked. Its
    own parameters are the learned noise scales, excluded from weight decay."""

    exclude_from_weight_decay: ClassVar[bool] = True
    #: one noise draw per forward pass, shared by every example of the batch ...
    per_example_noise: ClassVar[bool] = False
    #: ... but one draw per stacked copy of the batch inside :func:`weight_noise_copies` (the
    #: noisy layers run ``k`` copies with ``k`` draws; see ``draws_per_example`` in smoothing)
    per_copy_noise: ClassVar[bool] = True

    def __init__(self, *, seed: int, eval_noise: bool = True) -> None:
        super().__init__(seed=seed)
        self.eval_noise = eval_noise

    def sample(self, weight: torch.Tensor) -> torch.Tensor:
        """One noise draw ``η`` shaped like ``weight``."""
        raise NotImplementedError

    def mean_scale(self) -> torch.Tensor:
        """Mean absolute learned scale (PNI: α; CNI: d), detached, as a 0-dim tensor."""
        raise NotImplementedError

    @property
    def active(self) -> bool:
        """Whether a forward pass draws noise (always in training; in eval if ``eval_noise``)."""
        return self.training or self.eval_noise

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return weight
        return weight + self.sample(weight)

    def draws(self, weight: torch.Tensor, copies: int) -> torch.Tensor:
        """``copies`` noisy weights, shape ``(copies, *weight.shape)``: draw ``i`` is what the
        ``i``-th of ``copies`` sequential :meth:`forward` calls would return (the samples are
        drawn one after the other from this module's generator, which ends in the same state).
        Without noise (eval mode with ``eval_noise=False``): ``weight`` repeated, nothing drawn.
        """
        if not self.active:
            return weight.expand(copies, *weight.shape)
        return weight + torch.stack([self.sample(weight) for _ in range(copies)])


def _weight_std(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().std().to(weight.dtype)


class PNINoise(WeightNoise):
    """PNI-W noise ``α · σ(w) · z`` (see the module docstring); ``alpha`` has shape ``()``
    (layer), ``(C_out, 1, ...)`` (channel) or the weight's shape (element)."""

    def __init__(self, weight_shape: tuple[int, ...], *, granularity: str = "layer",
                 init: float = 0.25, seed: int = 0, eval_noise: bool = True) -> None:
        super().__init__(seed=seed, eval_noise=eval_noise)
        if granularity == "layer":
            shape: tuple[int, ...] = ()
        elif granularity == "channel":
            shape = (weight_shape[0],) + (1,) * (len(weight_shape) - 1)
        else:
            shape = tuple(weight_shape)
        self.granularity = granularity
        self.alpha = nn.Parameter(torch.full(shape, float(init)))

    def mean_scale(self) -> torch.Tensor:
        return self.alpha.detach().abs().mean()

    def sample(self, weight: torch.Tensor) -> torch.Tensor:
        z = torch.randn(weight.shape, generator=self.generator(weight.device),
                        device=weight.device, dtype=weight.dtype)
        return self.alpha.to(weight.dtype) * _weight_std(weight) * z

    def extra_repr(self) -> str:
        return f"granularity={self.granularity!r}, alpha={tuple(self.alpha.shape)}"


class CNINoise(WeightNoise):
    """CNI colored noise ``σ(w) · (F z_f + d ⊙ z_d)`` over the flattened weight (see the module
    docstring): ``factor`` F has shape ``(n, rank)``, ``diag`` d shape ``(n,)``."""

    def __init__(self, weight_shape: tuple[int, ...], *, rank: int = 5, init: float = 0.25,
                 factor_init: float = 0.1, seed: int = 0, eval_noise: bool = True) -> None:
        super().__init__(seed=seed, eval_noise=eval_noise)
        n = math.prod(weight_shape)
        init_gen = torch.Generator().manual_seed(derive_seed(seed, "factor-init"))
        scale = factor_init / math.sqrt(rank) if rank else 0.0
        self.rank = rank
        self.factor = nn.Parameter(torch.randn(n, rank, generator=init_gen) * scale)
        self.diag = nn.Parameter(torch.full((n,), float(init)))

    def covariance(self, weight: torch.Tensor) -> torch.Tensor:
        """``Cov(η) = σ(w)² (F Fᵀ + diag(d²))`` of the flattened noise, shape ``(n, n)``."""
        f, d = self.factor.detach(), self.diag.detach()
        return _weight_std(weight) ** 2 * (f @ f.T + torch.diag(d * d))

    def mean_scale(self) -> torch.Tensor:
        return self.diag.detach().abs().mean()

    def sample(self, weight: torch.Tensor) -> torch.Tensor:
        n = weight.numel()
        z = torch.randn(n + self.rank, generator=self.generator(weight.device),
                        device=weight.device, dtype=weight.dtype)
        eta = self.diag.to(weight.dtype) * z[:n]
        if self.rank:
            eta = eta + self.factor.to(weight.dtype) @ z[n:]
        return (_weight_std(weight) * eta).view(weight.shape)

    def extra_repr(self) -> str:
        return f"n={self.diag.numel()}, rank={self.rank}"


def make_weight_noise(spec: NoiseSpec, weight_shape: tuple[int, ...], *, seed: int
                      ) -> WeightNoise:
    """The noise module that ``spec`` asks for, for a weight of ``weight_shape``."""
    if spec.kind == "pni":
        return PNINoise(weight_shape, granularity=spec.granularity, init=spec.init, seed=seed,
                        eval_noise=spec.eval_noise)
    return CNINoise(weight_shape, rank=spec.rank, init=spec.init, factor_init=spec.factor_init,
                    seed=seed, eval_noise=spec.eval_noise)


# --------------------------------------------------------------------------- noisy layers
class NoisyConv2d(CopiesAware, nn.Conv2d):
    """``nn.Conv2d`` whose forward uses ``self.noise(self.weight)`` (a :class:`WeightNoise`).
    A subclass, so FLOP counting and ``isinstance(m, nn.Conv2d)`` keep working.

    Inside :func:`weight_noise_copies` with ``k`` copies, the input ``(k·n, C, H, W)`` runs as one
    grouped convolution: ``(n, k·C, H, W)`` against the ``k`` noisy weights stacked to
    ``(k·C_out, C/groups, kh, kw)`` with ``k·groups`` groups (bias repeated ``k`` times)."""

    noise: WeightNoise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.copies == 1:
            return self._conv_forward(x, self.noise(self.weight), self.bias)
        k = self._split(x)
        if not self.noise.active:
            return self._conv_forward(x, self.weight, self.bias)
        weights = self.noise.draws(self.weight, k)            # (k, C_out, C/groups, kh, kw)
        n, c = x.shape[0] // k, x.shape[1]
        grouped = x.reshape(k, n, c, *x.shape[2:]).transpose(0, 1).reshape(n, k * c,
                                                                            *x.shape[2:])
        padding: str | tuple[int, ...] | int = self.padding
        if self.padding_mode != "zeros":
            grouped = F.pad(grouped, self._reversed_padding_repeated_twice,
                            mode=self.padding_mode)
            padding = 0
        bias = None if self.bias is None else self.bias.repeat(k)
        out = F.conv2d(grouped, weights.reshape(k * self.out_channels, *weights.shape[2:]), bias,
                       self.stride, padding, self.dilation, k * self.groups)
        return out.reshape(n, k, self.out_channels, *out.shape[2:]).transpose(0, 1).reshape(
            k * n, self.out_channels, *out.shape[2:])


class NoisyLinear(CopiesAware, nn.Linear):
    """``nn.Linear`` whose forward uses ``self.noise(self.weight)`` (a :class:`WeightNoise`).

    Inside :func:`weight_noise_copies` with ``k`` copies, the input ``(k·n, ..., in)`` runs as one
    batched matmul ``(k, n·…, in) @ (k, in, out)`` with the ``k`` noisy weights."""

    noise: WeightNoise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.copies == 1:
            return F.linear(x, self.noise(self.weight), self.bias)
        k = self._split(x)
        if not self.noise.active:
            return F.linear(x, self.weight, self.bias)
        weights = self.noise.draws(self.weight, k).transpose(1, 2)  # (k, in, out)
        rows = x.reshape(k, -1, self.in_features)
        if self.bias is None:
            out = torch.bmm(rows, weights)
        else:
            out = torch.baddbmm(self.bias.view(1, 1, -1), rows, weights)
        return out.reshape(*x.shape[:-1], self.out_features)


#: the draws protocol's context (:func:`advguard.rng.stacked_copies`), under its historical name
weight_noise_copies = stacked_copies


def _noisy_copy(layer: nn.Module, noise: WeightNoise) -> nn.Module:
    """A Noisy* layer sharing ``layer``'s weight and bias parameters (built on the meta device,
    so no random init is drawn)."""
    new: nn.Conv2d | nn.Linear
    if isinstance(layer, nn.Conv2d):
        new = NoisyConv2d(layer.in_channels, layer.out_channels, layer.kernel_size,  # type: ignore[arg-type]
                          stride=layer.stride, padding=layer.padding,  # type: ignore[arg-type]
                          dilation=layer.dilation, groups=layer.groups,  # type: ignore[arg-type]
                          bias=layer.bias is not None, padding_mode=layer.padding_mode,
                          device="meta")
    else:
        assert isinstance(layer, nn.Linear)
        new = NoisyLinear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device="meta")
    new.weight = layer.weight
    new.bias = layer.bias
    new.noise = noise.to(layer.weight.device)
    new.train(layer.training)
    return new


def _targets(spec: NoiseSpec) -> tuple[type[nn.Module], ...]:
    return {"all": (nn.Conv2d, nn.Linear), "conv": (nn.Conv2d,), "linear": (nn.Linear,)}[
        spec.layers]


def add_weight_noise(network: nn.Module, noise: NoiseSpec | Mapping[str, Any], *,
                     seed: int = 0) -> int:
    """Replace, **in place**, every plain ``nn.Conv2d``/``nn.Linear`` of ``network`` (exact types;
    subclasses are left alone) selected by ``noise.layers`` with a noisy layer sharing its weight
    and bias. Each noise module gets the seed ``derive_seed(seed, "noise", name)``; CNI's factor
    init is drawn from a generator seeded the same way (the global RNG is not used). Returns the
    number of layers converted; a network that already has noise layers is a :class:`ConfigError`.
    """
    spec = NoiseSpec.from_dict(noise)
    if has_noise(network):
        raise ConfigError("the model already has noise-injection layers")
    wanted = _targets(spec)
    replaced = 0
    for parent_name, parent in list(network.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) not in wanted:
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            weight = child.weight
            assert isinstance(weight, torch.Tensor)
            module = make_weight_noise(spec, tuple(weight.shape),
                                       seed=derive_seed(seed, "noise", name))
            setattr(parent, child_name, _noisy_copy(child, module))
            replaced += 1
    return replaced


def noise_modules(model: nn.Module) -> list[WeightNoise]:
    """Every :class:`WeightNoise` of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, WeightNoise)]


def has_noise(model: nn.Module) -> bool:
    return bool(noise_modules(model))


def inject_noise(model: Normalized, noise: NoiseSpec | Mapping[str, Any], *, seed: int = 0
                 ) -> Normalized:
    """A copy of ``model`` (a :class:`Normalized` built by ``create_model``) with noise layers
    (:func:`add_weight_noise`) and the noise recorded in its spec, so that checkpoints rebuild it;
    ``model`` itself is not changed. Same weights; train/eval mode and device kept.

    Example::

        noisy = inject_noise(create_model("resnet20"), {"kind": "pni"}, seed=0)
        noisy.spec.kwargs["noise"]      # {'kind': 'pni', 'layers': 'all', 'init': 0.25, ...}
    """
    spec = NoiseSpec.from_dict(noise)
    if not isinstance(model, Normalized) or model.spec is None:
        raise ConfigError("inject_noise needs a model built by advguard.models.create_model")
    if "noise" in model.spec.kwargs or has_noise(model):
        raise ConfigError("the model already has noise-injection layers (model_kwargs 'noise')")
    network = copy.deepcopy(model.model)
    add_weight_noise(network, spec, seed=seed)
    old = model.spec
    new_spec = ModelSpec(name=old.name, kwargs={**old.kwargs, "noise": spec.to_dict()},
                         mean=old.mean, std=old.std)
    out = Normalized(network, old.mean, old.std, spec=new_spec).to(model.mean.device)
    out.training = model.training  # the copied network keeps each submodule's mode
    return out
