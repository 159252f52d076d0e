"""Purifier defenses: a trained image-to-image network in front of a fixed target classifier.

* ``add`` — ADD-Defense (ICLR 2021 submission): ``x → G(E(x)) → M_t``, the perturbation-invariant
  representation's encoder and generator (:class:`~advguard.models.purifier.ADDPurifier`),
  trained by the ``add`` recipe. The latent is the encoder's mean by default (deterministic);
  ``sample=True`` draws ``z = μ + σ·ε`` at inference instead (the defense is then declared
  randomized, so evaluations use EOT and repeated runs).
* ``ape_gan`` — APE-GAN (Shen et al. 2017), the paper's baseline: ``x → G(x) → M_t``
  (:class:`~advguard.models.purifier.APEGAN`), trained by the ``ape_gan`` recipe.

Both are :class:`~advguard.defenses.base.Transform`s (they compose in a pipeline), loaded from a
training run's ``model.safetensors`` by path (the checkpoint's metadata names the target model,
the dataset and the known attacks it was trained on) and checked against the defended model's
inputs before any work starts. Both are differentiable end to end: gradient attacks go through
the purifier exactly (no BPDA is needed; a BPDA-identity step is the attack of the paper's
Sec. 4.3).

Example::

    defense = build_defense({"name": "add", "purifier": "runs/add/model.safetensors"}, target)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from advguard.defenses.base import Traits, Transform
from advguard.defenses.registry import DEFENSES
from advguard.defenses.resources import load_checkpoint_part
from advguard.errors import ConfigError
from advguard.rng import randn_rows

__all__ = ["ADDDefense", "APEGANDefense", "Purifier"]


def _inner(module: nn.Module) -> nn.Module:
    inner = getattr(module, "model", None)
    return inner if isinstance(inner, nn.Module) else module


class Purifier(Transform):
    """A trained purifier network in front of the classifier (one hook: :meth:`transform`).

    Subclasses name the registered architecture they accept (:attr:`architecture`)."""

    architecture: ClassVar[str] = ""

    def __init__(self, *, purifier: str | Path | nn.Module, model: nn.Module | None = None,
                 seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.purifier = load_checkpoint_part(purifier, like=model, role="purifier",
                                             same_classes=False)
        spec = getattr(self.purifier, "spec", None)
        name = getattr(spec, "name", None)
        if name is not None and name != self.architecture:
            raise ConfigError(f"purifier: the checkpoint holds a {name!r} model, this defense "
                              f"needs an {self.architecture!r} purifier")
        self.purifier_path = str(purifier) if isinstance(purifier, (str, Path)) else None

    @classmethod
    def from_spec(cls, model: nn.Module, params: Mapping[str, Any]) -> Transform:
        if "purifier" not in params:
            raise ConfigError(f"needs 'purifier': the checkpoint of a trained "
                              f"{cls.architecture!r} model (e.g. runs/.../model.safetensors)")
        return cls(**params, model=model)

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out: torch.Tensor = self.purifier(x)
        return out


@DEFENSES.register("add", kind="transform",
                   paper="ADD-Defense (ICLR 2021 submission): perturbation-invariant purifier")
class ADDDefense(Purifier):
    """ADD-Defense's purification ``G(E(x))``.

    Args (keyword-only): ``purifier`` (checkpoint of an ``add_purifier`` trained by the ``add``
    recipe, or the module), ``sample`` (False: the latent mean; True: a latent draw per row and
    call — randomized), ``model`` (the defended classifier; a spec passes it), ``seed``.
    """

    architecture = "add_purifier"
    per_example_noise = True

    def __init__(self, *, purifier: str | Path | nn.Module, sample: bool = False,
                 model: nn.Module | None = None, seed: int = 0) -> None:
        super().__init__(purifier=purifier, model=model, seed=seed)
        if not isinstance(sample, bool):
            raise ConfigError(f"sample must be true or false, got {sample!r}")
        self.sample = sample
        self.traits = Traits(randomized=sample, differentiable=True)

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        net = self.purifier
        inner = _inner(net)
        if not self.sample:
            return super().transform(x, generator)
        normalize = getattr(net, "normalize", None)
        xn = normalize(x) if callable(normalize) else x
        mu, logvar = inner.encode(xn)  # type: ignore[operator]
        eps = randn_rows(x, tuple(mu.shape[1:]), generator=generator, stream="latent",
                         module=self, dtype=mu.dtype)
        out: torch.Tensor = inner.decode(mu + (0.5 * logvar).exp() * eps)  # type: ignore[operator]
        return out


@DEFENSES.register("ape_gan", kind="transform",
                   paper="Shen et al., APE-GAN, 2017 (ADD-Defense's baseline)")
class APEGANDefense(Purifier):
    """APE-GAN's purification ``G(x)``. Args: ``purifier`` (checkpoint of an ``ape_gan`` model
    trained by the ``ape_gan`` recipe, or the module), ``model``, ``seed``. Deterministic and
    differentiable."""

    architecture = "ape_gan"
    traits = Traits()
