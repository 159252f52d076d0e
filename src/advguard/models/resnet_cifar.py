"""The CIFAR ResNet family of He et al. (2016): 6n+2 layers, widths 16-32-64 (ResNet-20 ... 110)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from advguard.errors import ConfigError
from advguard.models._layers import init_fan_out_
from advguard.models.factory import register_model

__all__ = ["CifarBasicBlock", "CifarResNet", "ZeroPadShortcut", "cifar_resnet"]

Shortcut = Literal["A", "B"]


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: sub-sample by ``stride`` and append zero channels (no parameters).
    The input's channels come first, then the zeros (as in the PNI code)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.extra = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra}, stride={self.stride}"


class CifarBasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, added to the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: Shortcut = "A") -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(planes)
        self.conv_b = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.downsample = ZeroPadShortcut(in_planes, planes, stride)
            else:
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        residual = self.downsample(x) if self.downsample is not None else x
        return F.relu(residual + out)


class CifarResNet(nn.Module):
    """ResNet for CIFAR from He et al., "Deep residual learning for image recognition" (CVPR 2016,
    Sec. 4.2): a 3×3 conv with 16 filters, three stages of ``n`` basic blocks with 16, 32, 64
    filters on 32², 16², 8² maps, global average pooling and a linear classifier —
    ``depth = 6n + 2`` layers (20, 32, 44, 56, 110, ...).

    ``shortcut="A"`` (default) uses parameter-free zero-padding identity shortcuts when the
    shape changes, as in the paper's CIFAR experiments and in the PNI code (He, Rakin & Fan,
    CVPR 2019, elliothe/CVPR_2019_PNI ``DownsampleA``); ``"B"`` uses 1×1 conv + BN
    projections. Init as in the reference: He-normal (fan-out) convs, BN (1, 0), He-normal
    (fan-in) classifier weight with zero bias. Pooling is adaptive, so any input side works.
    Module names follow the PNI code (``conv_1_3x3``, ``stage_1`` ..., ``classifier``).

    Inputs ``(N, C, H, W)`` (normalized), output logits ``(N, num_classes)``.

    Example::

        net = CifarResNet(depth=20, num_classes=10)   # 0.27M params, 40.6M MACs at 32×32
        logits = net(torch.randn(2, 3, 32, 32))       # (2, 10)
    """

    def __init__(self, depth: int = 20, *, num_classes: int = 10, in_channels: int = 3,
                 shortcut: Shortcut = "A") -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 \
                or (depth - 2) % 6 != 0:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, "
                              f"110, ...), got {depth!r}")
        if shortcut not in ("A", "B"):
            raise ConfigError(f"shortcut must be 'A' (zero-padding) or 'B' (projection), "
                              f"got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv_1_3x3 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn_1 = nn.BatchNorm2d(16)
        self.in_planes = 16
        self.stage_1 = self._make_stage(16, n, 1, shortcut)
        self.stage_2 = self._make_stage(32, n, 2, shortcut)
        self.stage_3 = self._make_stage(64, n, 2, shortcut)
        self.classifier = nn.Linear(64, num_classes)
        init_fan_out_(self)
        nn.init.kaiming_normal_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def _make_stage(self, planes: int, n: int, stride: int, shortcut: Shortcut) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(CifarBasicBlock(self.in_planes, planes, s, shortcut))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_1(self.conv_1_3x3(x)))
        out = self.stage_3(self.stage_2(self.stage_1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(out)


_PAPER = "He et al., CVPR 2016 (CIFAR ResNets); option-A shortcuts as in PNI (CVPR 2019)"
_CIFAR = "CIFAR-10 / CIFAR-100 (32×32, RGB)"
_REF = "elliothe/CVPR_2019_PNI code/models/noisy_resnet_cifar.py (without the noise)"


@register_model(
    "cifar_resnet", paper=_PAPER, default_input_size=32, dataset=_CIFAR, reference=_REF,
    description="Generic CIFAR ResNet of depth 6n+2 (depth=20 unless given; shortcut 'A' or "
                "'B').")
def cifar_resnet(*, num_classes: int, in_channels: int, input_size: int, depth: int = 20,
                 shortcut: Shortcut = "A") -> nn.Module:
    """Factory for :class:`CifarResNet` of any ``depth = 6n + 2`` (default 20)."""
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def _register_depth(depth: int, params: str) -> None:
    def factory(*, num_classes: int, in_channels: int, input_size: int,
                shortcut: Shortcut = "A") -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels,
                           shortcut=shortcut)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"Factory for the CIFAR ResNet-{depth} (:class:`CifarResNet`)."
    register_model(
        f"resnet{depth}", paper=_PAPER, default_input_size=32, dataset=_CIFAR, reference=_REF,
        description=f"CIFAR ResNet-{depth}: 16-32-64 widths, {(depth - 2) // 6} basic blocks per "
                    f"stage, zero-padding shortcuts; {params} params.")(factory)


for _depth, _params in ((20, "0.27M"), (32, "0.46M"), (44, "0.66M"), (56, "0.85M"),
                        (110, "1.7M")):
    _register_depth(_depth, _params)
