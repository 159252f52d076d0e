"""The model registry: ``create_model(name, ...)``, ``list_models(pattern)``, ``model_info(name)``.

Every architecture registers a factory ``f(*, num_classes, in_channels, input_size, **arch_args)``
returning a plain ``nn.Module`` that maps normalized images to logits; :func:`create_model` checks
the arguments, builds the network and wraps it in :class:`~advguard.models.Normalized` with a
:class:`~advguard.models.ModelSpec` that can rebuild it (timm-style registry, house rule 5).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advguard.errors import ConfigError
from advguard.models.noise import NoiseSpec, add_weight_noise
from advguard.models.normalized import ModelSpec, Normalized, as_float_tuple
from advguard.registry import Registry

__all__ = [
    "MODELS",
    "ModelFactory",
    "ModelInfo",
    "create_model",
    "create_model_from_spec",
    "list_models",
    "model_info",
    "register_model",
]

ModelFactory = Callable[..., nn.Module]

#: name → architecture factory. Metadata: paper, default_input_size, dataset, description,
#: reference.
MODELS: Registry[ModelFactory] = Registry("model")

_COMMON = ("num_classes", "in_channels", "input_size")


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a registered architecture.

    ``default_input_size`` is the side of the square input the architecture was designed for
    (28 for MNIST-style nets, 32 for CIFAR nets); ``dataset`` the intended dataset family;
    ``reference`` the code the implementation follows; ``output`` "logits" (a classifier, the
    default) or "image" (an image-to-image network such as AdvT's imitation network).
    """

    name: str
    paper: str
    default_input_size: int
    description: str
    dataset: str = ""
    reference: str = ""
    arch_args: tuple[str, ...] = ()
    output: str = "logits"


def register_model(name: str, *, paper: str, default_input_size: int, dataset: str,
                   description: str, reference: str = "",
                   output: str = "logits") -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering an architecture factory under ``name`` in :data:`MODELS`.

    The factory must take keyword-only ``num_classes``, ``in_channels``, ``input_size`` plus its
    own architecture arguments (JSON-serializable values, with defaults unless the caller must
    choose), and return an ``nn.Module`` mapping normalized ``(N, C, H, W)`` inputs to logits
    (``output="image"``: to images in [0, 1] of the input's shape).
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        params = inspect.signature(factory).parameters
        missing = [p for p in _COMMON if p not in params]
        if missing:
            raise TypeError(f"model factory {name!r} lacks keyword arguments {missing}")
        return MODELS.register(
            name, paper=paper, default_input_size=default_input_size, dataset=dataset,
            description=description, reference=reference, output=output)(factory)

    return decorator


def _arch_params(name: str) -> dict[str, inspect.Parameter]:
    params = inspect.signature(MODELS.get(name)).parameters
    return {k: p for k, p in params.items()
            if k not in _COMMON and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return value


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3,
                 input_size: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, seed: int | None = None,
                 noise: Mapping[str, Any] | None = None, **kwargs: Any) -> Normalized:
    """Build a registered architecture, wrapped in :class:`Normalized`.

    Args:
        name: registry name (see :func:`list_models`); an unknown name raises
            :class:`~advguard.errors.UnknownNameError` suggesting close matches.
        num_classes: number of logits.
        in_channels: image channels ``C``.
        input_size: side of the square input the model is built for; ``None`` → the
            architecture's default (28 for ``lenet5``/``smallcnn``, 32 for the CIFAR nets).
            ResNets and WRNs pool adaptively and accept other sizes at run time too; the
            flatten size of ``lenet5``/``smallcnn``/``vgg_small`` is computed from it.
        mean, std: per-channel normalization applied inside the model; ``None`` → 0 and 1
            (identity). Both must have ``in_channels`` entries.
        seed: if given, parameters are initialized from ``torch.manual_seed(seed)`` inside
            ``torch.random.fork_rng`` (the global RNG is left as it was); ``None`` draws them
            from the global RNG, as PyTorch modules do. Not part of the spec.
        noise: a noise-injection spec (:class:`~advguard.models.noise.NoiseSpec` fields, e.g.
            ``{"kind": "pni"}`` or ``{"kind": "cni", "rank": 5}``): every ``nn.Conv2d`` /
            ``nn.Linear`` it selects becomes a noisy layer (:mod:`advguard.models.noise`). It is
            recorded, defaults resolved, in ``spec.kwargs["noise"]`` (absent when None), so
            checkpoints rebuild the noise layers; their generators are seeded from ``seed``
            (0 if None) and each layer's name.
        **kwargs: architecture arguments (e.g. ``dropout`` for ``smallcnn``, ``depth`` and
            ``widen_factor`` for ``wide_resnet``); an unknown one raises
            :class:`~advguard.errors.ConfigError` listing those accepted.

    Returns:
        a :class:`Normalized` module mapping ``(N, C, H, W)`` images in [0, 1] to logits
        ``(N, num_classes)``, with ``.spec`` recording every argument (defaults resolved),
        freshly initialized (see ``seed``).

    Example::

        model = create_model("resnet20", num_classes=100, mean=(0.507, 0.487, 0.441),
                             std=(0.267, 0.256, 0.276))
        logits = model(torch.rand(2, 3, 32, 32))     # (2, 100)
    """
    entry = MODELS.entry(name)
    num_classes = _positive_int(num_classes, "num_classes")
    in_channels = _positive_int(in_channels, "in_channels")
    if input_size is None:
        input_size = int(entry.metadata["default_input_size"])
    input_size = _positive_int(input_size, "input_size")

    params = _arch_params(name)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = ", ".join([*_COMMON, "mean", "std", "seed", "noise", *params])
        raise ConfigError(
            f"model {name!r} got unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {accepted}")
    arch_args: dict[str, Any] = {}
    for key, param in params.items():
        if key in kwargs:
            arch_args[key] = kwargs[key]
        elif param.default is inspect.Parameter.empty:
            raise ConfigError(f"model {name!r} requires the argument {key!r}")
        else:
            arch_args[key] = param.default

    mean_t = as_float_tuple(mean, "mean") if mean is not None else (0.0,) * in_channels
    std_t = as_float_tuple(std, "std") if std is not None else (1.0,) * in_channels
    if len(mean_t) != in_channels or len(std_t) != in_channels:
        raise ConfigError(
            f"mean and std need one entry per input channel ({in_channels}), got "
            f"{len(mean_t)} and {len(std_t)}")

    all_kwargs = {"num_classes": num_classes, "in_channels": in_channels,
                  "input_size": input_size, **arch_args}
    noise_spec = NoiseSpec.from_dict(noise) if noise is not None else None
    spec_kwargs = dict(all_kwargs)
    if noise_spec is not None:
        spec_kwargs["noise"] = noise_spec.to_dict()
    spec = ModelSpec(name=name, kwargs=spec_kwargs, mean=mean_t, std=std_t)
    if seed is None:
        network = entry.value(**all_kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = entry.value(**all_kwargs)
    if noise_spec is not None:
        add_weight_noise(network, noise_spec, seed=0 if seed is None else seed)
    return Normalized(network, spec.mean, spec.std, spec=spec)


def create_model_from_spec(spec: ModelSpec | Mapping[str, Any]) -> Normalized:
    """Rebuild the (freshly initialized) model that a :class:`ModelSpec` describes: same
    architecture, same ``state_dict`` keys and shapes. Accepts the spec or its
    :meth:`ModelSpec.to_dict` form (what a checkpoint stores).

    Example::

        clone = create_model_from_spec(model.spec)
        clone.load_state_dict(model.state_dict())
    """
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.from_dict(spec)
    return create_model(**spec.to_dict())


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell pattern (``"resnet*"``,
    ``"wrn*"``)."""
    return MODELS.names(pattern)


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered architecture (paper, default input size, description, ...)."""
    meta = MODELS.metadata(name)
    return ModelInfo(
        name=name,
        paper=str(meta["paper"]),
        default_input_size=int(meta["default_input_size"]),
        description=str(meta["description"]),
        dataset=str(meta.get("dataset", "")),
        reference=str(meta.get("reference", "")),
        arch_args=tuple(_arch_params(name)),
        output=str(meta.get("output", "logits")),
    )
