"""Wide residual networks (WRN-d-k), including the WRN-34-10 of Madry et al. and TRADES."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advguard.errors import ConfigError
from advguard.models._layers import check_probability, init_fan_out_
from advguard.models.factory import register_model

__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet"]


class WideBasicBlock(nn.Module):
    """Pre-activation wide block: BN → ReLU → conv3×3 → BN → ReLU → (dropout) → conv3×3, plus the
    shortcut. When the shape changes, the shortcut is a 1×1 conv applied to the *pre-activated*
    input (as in the reference code)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class _NetworkBlock(nn.Module):
    """A stage of ``n`` wide blocks (kept as its own module so parameter names match the
    reference: ``block1.layer.0.conv1.weight``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int,
                 dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                           stride if i == 0 else 1, dropout)
            for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """Wide residual network WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis, "Wide
    residual networks", BMVC 2016), in the form used for adversarial training by Madry et al.
    (ICLR 2018, WRN-34-10) and TRADES (Zhang et al., ICML 2019; yaodongyu/TRADES
    ``models/wideresnet.py``).

    A 3×3 conv with 16 filters, three stages of ``n = (depth - 4) / 6`` pre-activation blocks
    with ``16k``, ``32k``, ``64k`` filters (strides 1, 2, 2), a final BN → ReLU, global average
    pooling (adaptive, so any input side works; 8×8 before pooling at 32×32) and a linear
    classifier. ``dropout`` is applied between the two convs of each block (0 by default, as in
    Madry/TRADES; the WRN paper used 0.3). Init as in the reference: He-normal (fan-out) convs,
    BN (1, 0), zero classifier bias (PyTorch default classifier weight).

    Module names match the reference, whose checkpoints therefore load after dropping the
    unused ``sub_block1.*`` entries the TRADES/RobustBench code carries (it is never called in
    their ``forward``, so it is not built here).

    Inputs ``(N, C, H, W)`` (normalized), output logits ``(N, num_classes)``.

    Example::

        net = WideResNet(depth=34, widen_factor=10, num_classes=10)    # 46.2M params
        logits = net(torch.randn(1, 3, 32, 32))                        # (1, 10)
    """

    def __init__(self, depth: int = 34, widen_factor: int = 10, *, num_classes: int = 10,
                 in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 \
                or (depth - 4) % 6 != 0:
            raise ConfigError(
                f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) \
                or widen_factor < 1:
            raise ConfigError(f"widen_factor must be a positive int, got {widen_factor!r}")
        dropout = check_probability(dropout, "dropout")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = _NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = _NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_fan_out_(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


_PAPER = "Zagoruyko & Komodakis, BMVC 2016; WRN-34-10 as in Madry et al. 2018 / TRADES 2019"
_CIFAR = "CIFAR-10 / CIFAR-100 (32×32, RGB)"
_REF = "yaodongyu/TRADES models/wideresnet.py"


@register_model(
    "wide_resnet", paper=_PAPER, default_input_size=32, dataset=_CIFAR, reference=_REF,
    description="Generic WRN-d-k: depth=6n+4 (default 28), widen_factor=k (default 10), "
                "dropout (default 0).")
def wide_resnet(*, num_classes: int, in_channels: int, input_size: int, depth: int = 28,
                widen_factor: int = 10, dropout: float = 0.0) -> nn.Module:
    """Factory for :class:`WideResNet` of any ``depth`` and ``widen_factor`` (default
    WRN-28-10)."""
    return WideResNet(depth, widen_factor, num_classes=num_classes, in_channels=in_channels,
                      dropout=dropout)


@register_model(
    "wrn34_10", paper=_PAPER, default_input_size=32, dataset=_CIFAR, reference=_REF,
    description="WRN-34-10 (5 blocks per stage, widths 160-320-640): the Madry / TRADES "
                "adversarial-training model; 46.2M params.")
def wrn34_10(*, num_classes: int, in_channels: int, input_size: int,
             dropout: float = 0.0) -> nn.Module:
    return WideResNet(34, 10, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model(
    "wrn28_10", paper="Zagoruyko & Komodakis, BMVC 2016", default_input_size=32, dataset=_CIFAR,
    reference=_REF,
    description="WRN-28-10 (4 blocks per stage, widths 160-320-640); 36.5M params.")
def wrn28_10(*, num_classes: int, in_channels: int, input_size: int,
             dropout: float = 0.0) -> nn.Module:
    return WideResNet(28, 10, num_classes=num_classes, in_channels=in_channels, dropout=dropout)
