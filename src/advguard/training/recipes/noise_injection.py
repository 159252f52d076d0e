"""Noise-injection training: PNI (He, Rakin, Fan, CVPR 2019) and CNI (Zheltonozhskii et al. 2020)
weight noise, optionally with Gaussian input noise (CNI-I+W, Nemcovsky et al., the SMOOTH paper),
on top of any other recipe (adversarial training by default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from advguard.errors import ConfigError
from advguard.models.noise import NoiseSpec, has_noise, inject_noise, noise_modules
from advguard.models.normalized import Normalized
from advguard.training.recipes.base import RECIPES, Recipe, StepOutput, make_recipe


class InputNoise(nn.Module):
    """``model(x + η)`` for a fixed noise tensor ``η`` (one draw per training step), so that the
    base recipe's attack and loss both see the noisy model: an attack crafted through this module
    perturbs ``x`` and the model classifies ``x_adv + η``. No clipping to [0, 1] after adding
    the noise (as in Gaussian data augmentation for randomized smoothing, Cohen et al. 2019).
    A batch of ``k`` stacked copies (EOT / EPGD averaging over the model's weight noise) gets the
    same ``η`` on every copy: the step's input-noise draw is fixed, the weight noise varies."""

    def __init__(self, model: nn.Module, eta: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.eta = eta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eta = self.eta.to(x.dtype)
        n = eta.shape[0]
        if x.shape[0] != n:
            if x.shape[0] % n:
                raise ValueError(f"InputNoise: a batch of {x.shape[0]} rows is not a stack of "
                                 f"copies of the {n}-row batch its noise was drawn for")
            eta = eta.repeat(x.shape[0] // n, *([1] * (eta.dim() - 1)))
        return self.model(x + eta)


def _pni_defaults() -> dict[str, Any]:
    return {"kind": "pni"}


def _at_defaults() -> dict[str, Any]:
    return {"adv_weight": 0.5}


@RECIPES.register("noise_injection", paper="He et al., CVPR 2019 (PNI); Zheltonozhskii et al. "
                  "2020 (CNI); Nemcovsky et al. (CNI-I+W)",
                  description="learned weight noise (PNI/CNI) + an inner recipe (PGD-AT by "
                              "default) + optional Gaussian input noise")
@dataclass(frozen=True, kw_only=True)
class NoiseInjection(Recipe):
    """Train a noise-injected model: before training, every Conv2d/Linear of the model becomes a
    noisy layer (:func:`advguard.models.noise.inject_noise`, recorded in the model spec so that
    checkpoints rebuild it); each step then runs the ``base`` recipe — by default PGD adversarial
    training — on that model, whose noise is drawn afresh on every forward pass (also while the
    attack crafts examples, and in eval mode). The learned noise scales get no weight decay
    (:meth:`Recipe.param_groups`). With ``input_sigma > 0`` each step also draws Gaussian input
    noise ``η ~ N(0, input_sigma²)`` (per pixel, from the step generator) and the base recipe runs
    on ``x ↦ model(x + η)`` (:class:`InputNoise`): the SMOOTH paper's CNI-I+W fine-tuning.

    Hyper-parameters: ``noise`` — a :class:`~advguard.models.noise.NoiseSpec` mapping, default
    ``{"kind": "pni"}`` (PNI-W, layer-wise α initialized to 0.25; ``{"kind": "cni", "rank": 5}``
    for CNI-W); ``base`` — the inner recipe, default ``"pgd_at"``; ``base_kwargs`` — its
    hyper-parameters, default ``{"adv_weight": 0.5}``, i.e. PGD-7 (2/255 steps) at ε = 8/255 with
    PNI's 1:1 clean/adversarial loss; ``input_sigma`` — pixel-unit std of the input noise
    (0: none). Metric ``noise_scale``: mean of the learned scales (PNI α; CNI d).

    Example::

        train(TrainConfig(dataset="cifar10", model="resnet20", recipe="noise_injection",
                          recipe_kwargs={"noise": {"kind": "cni", "rank": 5}}, epochs=160,
                          schedule="step", schedule_kwargs={"milestones": [80, 120]}))
    """

    name = "noise_injection"
    noise: dict[str, Any] = field(default_factory=_pni_defaults)
    base: str = "pgd_at"
    base_kwargs: dict[str, Any] = field(default_factory=_at_defaults)
    input_sigma: float = 0.0

    def __post_init__(self) -> None:
        NoiseSpec.from_dict(self.noise)  # validates
        if self.base == self.name:
            raise ConfigError("recipe 'noise_injection' cannot use itself as its base recipe")
        if not self.input_sigma >= 0:
            raise ConfigError(f"recipe 'noise_injection': input_sigma must be >= 0, got "
                              f"{self.input_sigma}")
        object.__setattr__(self, "_inner", make_recipe(self.base, **self.base_kwargs))

    @property
    def inner(self) -> Recipe:
        """The base recipe instance."""
        inner = self.__dict__["_inner"]
        assert isinstance(inner, Recipe)
        return inner

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Convert the fresh model (it must not have noise layers already). The noise layers'
        seeds are drawn from the global RNG, which the training loop seeds from the config's
        seed around this call."""
        if has_noise(model):
            raise ConfigError("recipe 'noise_injection' adds noise layers itself, but the model "
                              "already has some (drop 'noise' from model_kwargs)")
        if not isinstance(model, Normalized):
            raise ConfigError("recipe 'noise_injection' needs a model built by create_model")
        seed = int(torch.randint(0, 2**62, (1,)))
        return self.inner.prepare_model(inject_noise(model, self.noise, seed=seed))

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return self.inner.param_groups(model, weight_decay)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        target = model
        if self.input_sigma > 0:
            eta = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            target = InputNoise(model, eta * self.input_sigma)
        out = self.inner.loss(target, x, y, generator=generator)
        scales = [m.mean_scale() for m in noise_modules(model)]
        metrics = dict(out.metrics)
        if scales:
            metrics["noise_scale"] = torch.stack(scales).mean().float()
        return StepOutput(loss=out.loss, correct=out.correct, metrics=metrics)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["noise"] = NoiseSpec.from_dict(self.noise).to_dict()
        return out
