"""A small fully convolutional image-to-image network: the imitation network h of AdvT's
reparameterization attack (Xiao & Zheng, CVPR 2020, Sec. 3.3 and Appendix A.2)."""

from __future__ import annotations

import torch
from torch import nn

from advguard.models.factory import register_model

__all__ = ["ImageFCN"]


class ImageFCN(nn.Module):
    """Fully convolutional network mapping (normalized) images to images in [0, 1]: an
    encoder–decoder (conv 3×3 ``width`` → stride-2 conv ``2·width`` → conv → transposed conv back
    to full resolution → conv 3×3 to ``C`` channels) plus a 1×1 convolution skip of the input
    (which can undo the normalization exactly, so imitating a near-identity map is easy), clipped
    to [0, 1]. Inputs ``(N, C, H, W)`` with even ``H, W``; outputs the same shape. It is trained
    by the ``advt_imitate`` recipe to imitate AdvT's transformation ``g`` (``‖h(x) − g(x)‖²``)
    and used as the ``"learned"`` BPDA surrogate of the ``advt`` defense.

    Example::

        h = ImageFCN(in_channels=1, width=32)
        h(torch.rand(2, 1, 28, 28)).shape        # (2, 1, 28, 28)
    """

    def __init__(self, *, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        c, w = in_channels, width
        self.body = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, c, 3, padding=1),
        )
        self.skip = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.body(x)).clamp(0.0, 1.0)


@register_model(
    "image_fcn", paper="Xiao & Zheng, AdvT, CVPR 2020 (reparameterization network h, App. A.2)",
    default_input_size=28, dataset="any (even image side)", output="image",
    description="Image-to-image FCN: conv w - conv 2w /2 - conv 2w - deconv w x2 - conv C, plus a "
                "1x1 skip; outputs images in [0, 1] (num_classes is recorded, not used).")
def image_fcn(*, num_classes: int, in_channels: int, input_size: int,
              width: int = 32) -> nn.Module:
    if input_size % 2:
        from advguard.errors import ConfigError
        raise ConfigError(f"image_fcn needs an even input_size, got {input_size}")
    return ImageFCN(in_channels=in_channels, width=width)
