"""Purifier networks: ADD-Defense's encoder / generator / discriminators / latent classifier
(ADD-Defense, ICLR 2021 submission, Table 4) and APE-GAN's generator and discriminator (Shen et
al., "APE-GAN: Adversarial Perturbation Elimination with GAN", 2017).

Both are image-to-image models (registry ``output="image"``): ``forward`` maps a (normalized)
image to a purified image in [0, 1] of the same shape, which a fixed target classifier then
classifies (the ``add`` and ``ape_gan`` defenses). The training-only parts (discriminators, the
latent classifier) live in the same module so that one checkpoint holds the whole trained system
and training resumes exactly; inference uses only the encoder and the generator.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from advguard.errors import ConfigError, InputValidationError
from advguard.models.factory import register_model

__all__ = ["APEGAN", "ADDPurifier"]

_SLOPE = 0.2  # LeakyReLU negative slope (DCGAN convention; the paper does not give one)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _conv_stack(channels: list[int], *, transpose: bool = False) -> nn.Sequential:
    """4×4, stride-2, padding-1 (de)convolutions with LeakyReLU between them (none after the last),
    Table 4's building block."""
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    for i, (cin, cout) in enumerate(itertools.pairwise(channels)):
        layers.append(conv(cin, cout, 4, stride=2, padding=1))
        if i < len(channels) - 2:
            layers.append(nn.LeakyReLU(_SLOPE))
    return nn.Sequential(*layers)


def _check_input(x: torch.Tensor, channels: int, size: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels or x.shape[-2:] != (size, size):
        raise InputValidationError(f"{name} was built for {channels}x{size}x{size} images, got "
                                   f"inputs of shape {tuple(x.shape)}")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(_SLOPE))
    return nn.Sequential(*layers)


class ADDPurifier(nn.Module):
    """ADD-Defense's networks (Table 4), channel counts scaled by ``width`` (1.0 = the paper).

    * encoder ``E``: Conv 128-256-512-1024 (4×4, stride 2, LeakyReLU), then Conv 2048 → the
      latent's mean and log-variance (1024 channels each: the last layer's 2048 maps split in two,
      our reading of Table 4, where the generator starts from 1024 maps);
    * generator ``G``: Deconv 1024-512-256-128-C (4×4, stride 2, LeakyReLU), sigmoid → [0, 1];
    * perturbation discriminator ``D_P``: FC 1024-256-64-``domains`` over the flattened latent
      (``domains`` = clean + the known attacks: Table 4's FC(3) is clean + two attacks);
    * image discriminator ``D_I``: Conv 32-64-128-256 (4×4, stride 2, LeakyReLU), FC 512, FC 1;
    * latent class classifier ``C``: FC 256-``num_classes`` (the paper gives no architecture).

    The five stride-2 layers need a side divisible by 32: other sizes are zero-padded
    symmetrically to the next multiple of 32 inside the purifier (28×28 → 32×32, latent 1×1) and
    the generated image is cropped back, so inputs and outputs have the caller's shape.

    ``forward(x)`` is the deterministic purification ``G(μ(x))``; :meth:`encode` returns
    ``(μ, log σ²)`` and :meth:`decode` maps a latent to an image, for the training recipe and
    for a defense that samples the latent.

    Example::

        p = ADDPurifier(in_channels=1, input_size=28, num_classes=10, width=0.25)
        p(torch.rand(2, 1, 28, 28)).shape          # (2, 1, 28, 28)
    """

    #: submodules used only by the training recipe (``forward`` does not touch them)
    training_only: tuple[str, ...] = ("perturbation_discriminator", "image_discriminator",
                                      "classifier")

    def __init__(self, *, in_channels: int, input_size: int, num_classes: int,
                 domains: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if domains < 2:
            raise ConfigError(f"add_purifier: domains (clean + known attacks) must be >= 2, "
                              f"got {domains}")
        if not (math.isfinite(width) and width > 0):
            raise ConfigError(f"add_purifier: width must be a number > 0, got {width}")
        c, w = in_channels, width
        self.input_size = input_size
        self.in_channels = in_channels
        self.padded = 32 * math.ceil(input_size / 32)
        self.latent_channels = _scaled(1024, w)
        side = self.padded // 32
        self.latent_dim = self.latent_channels * side * side
        self.domains = domains
        enc = [c] + [_scaled(k, w) for k in (128, 256, 512, 1024)]
        self.encoder = nn.Sequential(_conv_stack(enc), nn.LeakyReLU(_SLOPE),
                                     nn.Conv2d(enc[-1], 2 * self.latent_channels, 4, 2, 1))
        gen = [self.latent_channels] + [_scaled(k, w) for k in (1024, 512, 256, 128)] + [c]
        self.generator = _conv_stack(gen, transpose=True)
        self.perturbation_discriminator = _mlp(
            [self.latent_dim] + [_scaled(k, w) for k in (1024, 256, 64)] + [domains])
        dis = [c] + [_scaled(k, w) for k in (32, 64, 128, 256)]
        self.image_discriminator = nn.Sequential(
            _conv_stack(dis), nn.LeakyReLU(_SLOPE), nn.Flatten(),
            _mlp([dis[-1] * (self.padded // 16) ** 2, _scaled(512, w), 1]))
        self.classifier = _mlp([self.latent_dim, _scaled(256, w), num_classes])

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.padded - x.shape[-1]
        if extra == 0:
            return x
        lo = extra // 2
        return F.pad(x, (lo, extra - lo, lo, extra - lo))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` of the latent, each (N, latent_channels, s, s), s = padded side / 32."""
        _check_input(x, self.in_channels, self.input_size, "add_purifier")
        h = self.encoder(self._pad(x))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] of the caller's size from a latent ``z`` shaped like ``μ``."""
        out = torch.sigmoid(self.generator(z))
        extra = self.padded - self.input_size
        if extra:
            lo = extra // 2
            out = out[..., lo:lo + self.input_size, lo:lo + self.input_size]
        return out

    def image_input(self, images: torch.Tensor) -> torch.Tensor:
        """What ``D_I`` takes: images of the caller's size, padded to the multiple of 32."""
        return self._pad(images)

    def discriminate_image(self, images: torch.Tensor) -> torch.Tensor:
        """``D_I`` logit (N,) of images in [0, 1] of the caller's size."""
        return self.image_discriminator(self.image_input(images)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return self.decode(mu)


class APEGAN(nn.Module):
    """APE-GAN (Shen et al. 2017): a small convolutional generator trained to map adversarial
    examples back to clean images, with a convolutional discriminator.

    * generator: Conv 64 (4×4, stride 2, LeakyReLU), Conv 128 (4×4, stride 2, BatchNorm,
      LeakyReLU), Deconv 64 (BatchNorm, ReLU), Deconv C → sigmoid (images in [0, 1]; the
      original uses tanh on [-1, 1] images);
    * discriminator: Conv 64-128-256 (3×3, stride 2, BatchNorm from the second, LeakyReLU), FC 1.

    Sizes are scaled by ``width`` (1.0 = the paper's). Inputs need a side divisible by 4
    (28 and 32 are). ``forward`` is the generator.

    Example::

        g = APEGAN(in_channels=1, input_size=28)
        g(torch.rand(2, 1, 28, 28)).shape          # (2, 1, 28, 28)
    """

    #: submodules used only by the training recipe (``forward`` does not touch them)
    training_only: tuple[str, ...] = ("discriminator",)

    def __init__(self, *, in_channels: int, input_size: int, width: float = 1.0) -> None:
        super().__init__()
        if input_size % 4:
            raise ConfigError(f"ape_gan needs an input side divisible by 4, got {input_size}")
        if not (math.isfinite(width) and width > 0):
            raise ConfigError(f"ape_gan: width must be a number > 0, got {width}")
        c = in_channels
        self.in_channels, self.input_size = in_channels, input_size
        a, b = _scaled(64, width), _scaled(128, width)
        self.generator = nn.Sequential(
            nn.Conv2d(c, a, 4, 2, 1), nn.LeakyReLU(_SLOPE),
            nn.Conv2d(a, b, 4, 2, 1), nn.BatchNorm2d(b), nn.LeakyReLU(_SLOPE),
            nn.ConvTranspose2d(b, a, 4, 2, 1), nn.BatchNorm2d(a), nn.ReLU(),
            nn.ConvTranspose2d(a, c, 4, 2, 1), nn.Sigmoid())
        d1, d2, d3 = _scaled(64, width), _scaled(128, width), _scaled(256, width)
        side = input_size
        for _ in range(3):
            side = (side + 1) // 2
        self.discriminator = nn.Sequential(
            nn.Conv2d(c, d1, 3, 2, 1), nn.LeakyReLU(_SLOPE),
            nn.Conv2d(d1, d2, 3, 2, 1), nn.BatchNorm2d(d2), nn.LeakyReLU(_SLOPE),
            nn.Conv2d(d2, d3, 3, 2, 1), nn.BatchNorm2d(d3), nn.LeakyReLU(_SLOPE),
            nn.Flatten(), nn.Linear(d3 * side * side, 1))

    def discriminate_image(self, images: torch.Tensor) -> torch.Tensor:
        """Discriminator logit (N,) of images in [0, 1]."""
        return self.image_discriminator(images).squeeze(1)

    @property
    def image_discriminator(self) -> nn.Module:
        """The discriminator (the name the purifier recipes share with ADD's ``D_I``)."""
        return self.discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, self.input_size, "ape_gan")
        return self.generator(x)


@register_model(
    "add_purifier", paper="ADD-Defense (ICLR 2021 submission), Table 4",
    default_input_size=32, dataset="any (padded to a multiple of 32 inside)", output="image",
    description="ADD-Defense purifier: encoder (Conv 128-256-512-1024-2048, latent mean/log-var), "
                "generator (Deconv 1024-512-256-128-C), perturbation discriminator, image "
                "discriminator, latent classifier; channels x width.")
def add_purifier(*, num_classes: int, in_channels: int, input_size: int, domains: int = 3,
                 width: float = 1.0) -> nn.Module:
    return ADDPurifier(in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                       domains=domains, width=width)


@register_model(
    "ape_gan", paper="Shen et al., APE-GAN, 2017", default_input_size=28,
    dataset="any (side divisible by 4)", output="image",
    description="APE-GAN generator (Conv 64-128, Deconv 64-C) and discriminator "
                "(Conv 64-128-256, FC 1); channels x width (num_classes is recorded, not used).")
def ape_gan(*, num_classes: int, in_channels: int, input_size: int,
            width: float = 1.0) -> nn.Module:
    return APEGAN(in_channels=in_channels, input_size=input_size, width=width)
