"""The small VGG-style network used as the transformation model f_b by AdvT."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from advguard.models._layers import check_feature_size, check_probability, conv_out
from advguard.models.factory import register_model

__all__ = ["VGG_SMALL_CONFIG", "VGGSmall"]

#: Conv widths (3×3, BatchNorm, ReLU) and "M" for 2×2 max-pooling.
VGG_SMALL_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 64, 64, "M", 128, 128, "M")


class VGGSmall(nn.Module):
    """Small VGG-style CNN: the f_b model of AdvT (Xiao & Zheng, "One man's trash is another
    man's treasure: resisting adversarial examples by adversarial examples", CVPR 2020,
    Appendix A.1).

    Features ``64-M-128-M-64-64-M-128-128-M`` (3×3 conv with padding 1 → BatchNorm → ReLU; M =
    2×2 max-pool), classifier ``FC 512 → ReLU → dropout → FC 512 → ReLU → dropout → FC N``.
    For 32×32 inputs the flatten size is 128·2·2 = 512; it is computed from ``input_size``
    (``>= 16``). Inputs ``(N, C, S, S)`` (normalized), output logits ``(N, num_classes)``.
    PyTorch default init. ``cfg`` may replace the feature configuration.

    Example::

        net = VGGSmall(num_classes=10, in_channels=3, input_size=32)
        logits = net(torch.randn(2, 3, 32, 32))      # (2, 10)
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                 dropout: float = 0.5, cfg: Sequence[int | str] = VGG_SMALL_CONFIG) -> None:
        super().__init__()
        dropout = check_probability(dropout, "dropout")
        layers: list[nn.Module] = []
        channels, side, pools = in_channels, input_size, 0
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                side, pools = conv_out(side, 2, 2), pools + 1
            else:
                width = int(item)
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                           nn.ReLU()]
                channels = width
        check_feature_size("vgg_small", input_size, side, minimum=2**pools)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, 512), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(512, 512), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    "vgg_small", paper="Xiao & Zheng, AdvT, CVPR 2020 (f_b, Appendix A.1)",
    default_input_size=32, dataset="CIFAR-10 / CIFAR-100 (32×32, RGB)",
    description="Small VGG: conv 64-M-128-M-64-64-M-128-128-M (3×3, BN, ReLU), "
                "FC 512-512-N with dropout 0.5.")
def vgg_small(*, num_classes: int, in_channels: int, input_size: int,
              dropout: float = 0.5) -> nn.Module:
    return VGGSmall(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                    dropout=dropout)
