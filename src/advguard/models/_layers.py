"""Small shared helpers for the architectures (size arithmetic, init)."""

from __future__ import annotations

from torch import nn

from advguard.errors import ConfigError


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output side of a convolution or pooling layer (floor mode) on a ``size``-wide input."""
    return (size + 2 * padding - kernel) // stride + 1


def check_feature_size(name: str, input_size: int, feature_size: int, minimum: int) -> None:
    """Raise :class:`ConfigError` when ``input_size`` leaves no spatial extent to flatten."""
    if feature_size < 1:
        raise ConfigError(
            f"{name} needs input_size >= {minimum}, got {input_size} (the feature map would be "
            f"empty before the classifier)")


def check_probability(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{what} must be a float in [0, 1), got {value!r}")
    return float(value)


def init_fan_out_(module: nn.Module) -> None:
    """He-normal init with fan-out on every conv (``N(0, 2 / (k·k·C_out))``), BatchNorm to
    (1, 0): the init of the original CIFAR ResNet / WRN code (fb.resnet.torch)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
