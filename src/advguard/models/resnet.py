"""CIFAR ResNet-18/34/50 (64-128-256-512 widths) and PreAct ResNet-18."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advguard.models.factory import register_model

__all__ = ["BasicBlock", "Bottleneck", "PreActBlock", "PreActResNet", "ResNet"]


class BasicBlock(nn.Module):
    """Two 3×3 convs with BatchNorm; projection shortcut (1×1 conv + BN) when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided) → 1×1 convs with BatchNorm, 4× channel expansion; projection shortcut
    when the shape changes."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for small images (He et al., "Deep residual learning for image recognition", CVPR
    2016), in the CIFAR form of kuangliu/pytorch-cifar used by most adversarial-robustness code:
    a 3×3 stride-1 stem with no max-pool, four stages of widths 64-128-256-512 (strides 1-2-2-2),
    global average pooling (adaptive, so any input side works; 4×4 before pooling at 32×32) and
    a linear classifier. Projection (1×1 conv + BN) shortcuts. PyTorch default init.

    Inputs ``(N, C, H, W)`` (normalized), output logits ``(N, num_classes)``. Module names match
    the reference, so its checkpoints load into it.

    Example::

        net = ResNet(BasicBlock, (2, 2, 2, 2), num_classes=10)   # ResNet-18
        logits = net(torch.randn(2, 3, 32, 32))                  # (2, 10)
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: Sequence[int], *,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, n: int,
                    stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN → ReLU → conv → BN → ReLU → conv, plus the shortcut (a 1×1
    conv applied to the pre-activated input when the shape changes, else identity)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet (He et al., "Identity mappings in deep residual networks", ECCV
    2016) as in Wong et al., "Fast is better than free" (ICLR 2020, locuslab/fast_adversarial):
    3×3 stem, four stages 64-128-256-512 of :class:`PreActBlock`, a final BN → ReLU, global
    average pooling (adaptive) and a linear classifier. PyTorch default init.

    Inputs ``(N, C, H, W)`` (normalized), output logits ``(N, num_classes)``. Module names match
    the reference, so its checkpoints load into it.

    Example::

        net = PreActResNet((2, 2, 2, 2), num_classes=10)         # PreAct ResNet-18
        logits = net(torch.randn(2, 3, 32, 32))                  # (2, 10)
    """

    def __init__(self, num_blocks: Sequence[int], *, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


_CIFAR = "CIFAR-10 / CIFAR-100 (32×32, RGB)"
_HE = "He et al., CVPR 2016 (CIFAR variant as in kuangliu/pytorch-cifar)"


@register_model(
    "resnet18", paper=_HE, default_input_size=32, dataset=_CIFAR,
    reference="kuangliu/pytorch-cifar models/resnet.py",
    description="ResNet-18 for 32×32 inputs: 3×3 stem, BasicBlocks (2,2,2,2), widths "
                "64-512, projection shortcuts; ~11.2M params.")
def resnet18(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


@register_model(
    "resnet34", paper=_HE, default_input_size=32, dataset=_CIFAR,
    reference="kuangliu/pytorch-cifar models/resnet.py",
    description="ResNet-34 for 32×32 inputs: BasicBlocks (3,4,6,3); ~21.3M params.")
def resnet34(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


@register_model(
    "resnet50", paper=_HE, default_input_size=32, dataset=_CIFAR,
    reference="kuangliu/pytorch-cifar models/resnet.py",
    description="ResNet-50 for 32×32 inputs: Bottlenecks (3,4,6,3), 4× expansion; ~23.5M params.")
def resnet50(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


@register_model(
    "preact_resnet18", paper="He et al., ECCV 2016; as used by Wong et al., ICLR 2020",
    default_input_size=32, dataset=_CIFAR,
    reference="locuslab/fast_adversarial CIFAR10/preact_resnet.py",
    description="Pre-activation ResNet-18 with a final BN-ReLU before pooling; ~11.2M params.")
def preact_resnet18(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)
