"""Multiply-accumulate (MAC) counting by forward hooks on ``nn.Conv2d`` and ``nn.Linear``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from advguard.models.factory import MODELS, create_model
from advguard.utils import eval_mode

__all__ = ["FlopCount", "count_flops", "model_flops"]


@dataclass(frozen=True)
class FlopCount:
    """Cost of one forward pass on **one** example.

    ``macs`` counts the multiply-accumulates of every ``nn.Conv2d``, ``nn.ConvTranspose2d`` and
    ``nn.Linear`` call (and of their subclasses, e.g. noise-injection layers):
    ``H_out·W_out·C_out·(C_in/groups)·kh·kw`` for a conv, ``H_in·W_in·C_in·(C_out/groups)·kh·kw``
    for a transposed conv (every input pixel scatters a kernel), ``in_features·out_features``
    (per output row) for a linear layer. Bias additions,
    BatchNorm, activations, pooling, residual additions and the input normalization are *not*
    counted (together they are < 1 % of the total for the registered CNNs). ``flops = 2·macs``.
    ``params`` is the number of parameter elements (BatchNorm affine included, buffers not).
    ``by_type`` splits ``macs`` by layer type (``{"Conv2d": ..., "Linear": ...}``, plus
    ``"ConvTranspose2d"`` for models that have such layers, e.g. the purifiers' generators).
    """

    macs: int
    params: int
    by_type: dict[str, int] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    flops: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flops", 2 * self.macs)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    per_output = (module.in_channels // module.groups) * kh * kw
    return output[0].numel() * per_output


def _deconv_macs(module: nn.ConvTranspose2d, inputs: Any) -> int:
    kh, kw = module.kernel_size
    return int(inputs[0][0].numel()) * (module.out_channels // module.groups) * kh * kw


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return output[0].numel() * module.in_features


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> FlopCount:
    """Count the MACs of one forward pass of ``model`` on one example of shape ``(C, H, W)``.

    Runs a single forward on zeros (on the model's device and dtype, in eval mode and without
    gradients; the model's train/eval modes are restored and nothing in it changes) with forward
    hooks on every ``nn.Conv2d`` and ``nn.Linear``; see :class:`FlopCount` for what is counted.
    Layers called several times are counted each time.

    Example::

        cost = count_flops(create_model("resnet20"), (3, 32, 32))
        cost.macs      # 40_551_040
        cost.flops     # 81_102_080
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    reference: torch.Tensor | None = next(iter(model.parameters()), None)
    if reference is None:
        reference = next(iter(model.buffers()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() \
        else torch.get_default_dtype()

    by_type = {"Conv2d": 0, "Linear": 0}
    if any(isinstance(m, nn.ConvTranspose2d) for m in model.modules()):
        by_type["ConvTranspose2d"] = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            by_type["Conv2d"] += _conv_macs(module, output)
        elif isinstance(module, nn.ConvTranspose2d):
            by_type["ConvTranspose2d"] += _deconv_macs(module, inputs)
        elif isinstance(module, nn.Linear):
            by_type["Linear"] += _linear_macs(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    params = sum(p.numel() for p in model.parameters())
    return FlopCount(macs=sum(by_type.values()), params=params, by_type=by_type,
                     input_shape=shape)


def model_flops(name: str, num_classes: int = 10, in_channels: int = 3,
                input_size: int | None = None, **kwargs: Any) -> FlopCount:
    """:func:`count_flops` of a registered architecture built by
    :func:`~advguard.models.create_model` (``input_size=None`` → its default).

    Example::

        model_flops("resnet18").gmacs                # ≈ 0.555
        model_flops("lenet5", in_channels=1).macs    # 416_520
    """
    size = input_size if input_size is not None else \
        int(MODELS.metadata(name)["default_input_size"])
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, input_size=size,
                         seed=0, **kwargs)
    return count_flops(model, (in_channels, size, size))
