"""AdvT training of the classifier ``f_a`` on adversarially transformed inputs ``g(x)`` (Xiao &
Zheng, "One man's trash is another man's treasure", CVPR 2020, Eq. 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from advguard.defenses.adv_transform import AdvTransform
from advguard.defenses.base import Pipeline
from advguard.errors import ConfigError
from advguard.training.recipes.base import RECIPES, Recipe, StepOutput, count_correct


@RECIPES.register("advt", paper="Xiao & Zheng, CVPR 2020",
                  description="cross-entropy of f_a on g(x), the LL-PGD adversarial "
                              "transformation on a frozen pre-trained f_b, redrawn every batch")
@dataclass(frozen=True, kw_only=True)
class AdvT(Recipe):
    """Train ``f_a`` on ``g(x)`` (Eq. 1): every batch is transformed by
    :class:`~advguard.defenses.adv_transform.AdvTransform` — LL-PGD on the frozen model ``f_b``
    (a checkpoint path, loaded in eval mode, never updated: it is not part of the trained model
    and its BatchNorm statistics stay put) from a fresh random start drawn from the step
    generator — and ``f_a`` minimizes the cross-entropy on the result.

    Fields (pixel units of [0, 1]): ``f_b`` (required), ``delta`` 0.2, ``steps`` 13,
    ``step_size`` None (Δ/6), ``random_start`` True, ``targeting`` "least_likely" (the paper) or
    "untargeted" (the authors' code). The paper trains ResNet-18 ``f_a`` for 80 epochs with SGD
    (constant lr 0.1, momentum 0.9): optimizer and schedule are
    :class:`~advguard.training.TrainConfig` fields. Validation and test accuracy during training
    are those of the defended model ``f_a(g(x))`` (:meth:`evaluation_model`). Metric
    ``g_dist``: mean ‖g(x) − x‖∞ of the batch.

    Example::

        train(TrainConfig(dataset="fashion-mnist", model="smallcnn", recipe="advt",
                          recipe_kwargs={"f_b": "runs/advt/f_b/model.safetensors",
                                         "delta": 0.3}))
    """

    name = "advt"
    f_b: str = ""
    delta: float = 0.2
    steps: int = 13
    step_size: float | None = None
    random_start: bool = True
    targeting: Literal["least_likely", "untargeted"] = "least_likely"

    def __post_init__(self) -> None:
        if not self.f_b:
            raise ConfigError("recipe 'advt' needs 'f_b': the checkpoint of the pre-trained "
                              "transformation model")
        self._make(nn.Identity())  # the fields are checked now; f_b is loaded by prepare_model

    def _make(self, f_b: str | nn.Module, model: nn.Module | None = None) -> AdvTransform:
        try:
            return AdvTransform(f_b=f_b, delta=self.delta, steps=self.steps,
                                step_size=self.step_size, random_start=self.random_start,
                                targeting=self.targeting, model=model)
        except ConfigError as exc:
            raise ConfigError(f"recipe 'advt': {exc}") from None

    @property
    def transform(self) -> AdvTransform:
        """The adversarial transformation ``g`` holding the frozen ``f_b`` (after
        :meth:`prepare_model`)."""
        t = self.__dict__.get("_transform")
        if t is None:
            raise ConfigError("recipe 'advt': f_b is loaded by prepare_model(model), which the "
                              "training loop calls before the first step")
        assert isinstance(t, AdvTransform)
        return t

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Load ``f_b`` and check that it was built for ``model``'s inputs (classes, channels,
        size), before any training starts."""
        object.__setattr__(self, "_transform", self._make(self.f_b, model))
        return model

    def _transform_on(self, device: torch.device) -> AdvTransform:
        t = self.transform
        if next(t.f_b.parameters()).device != device:
            t.to(device)
        return t

    def transformed(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``g(x)`` for a training batch (detached; random starts from ``generator``)."""
        with torch.no_grad():
            return self._transform_on(x.device).transform(x, generator)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        gx = self.transformed(x, generator)
        logits = model(gx)
        dist = (gx - x).flatten(1).abs().amax(1).mean()
        return StepOutput(loss=F.cross_entropy(logits, y), correct=count_correct(logits, y),
                          metrics={"g_dist": dist.detach()})

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        x_device = next(model.parameters()).device
        return Pipeline([self._transform_on(x_device)], model)


@RECIPES.register("advt_imitate", paper="Xiao & Zheng, CVPR 2020 (Sec. 3.3, App. A.2)",
                  description="train an image-to-image network h to imitate AdvT's g "
                              "(‖h(x) − g(x)‖²), the reparameterization attack's surrogate")
@dataclass(frozen=True, kw_only=True)
class AdvTImitate(AdvT):
    """Train the model (an image-to-image network such as ``image_fcn``) to imitate the
    adversarial transformation ``g`` of an AdvT defense: loss ``mean ‖h(x) − g(x)‖²`` (per pixel)
    with a fresh random start of ``g`` per batch, so ``h`` learns the expected transformation.
    The fields of ``g`` are those of the ``advt`` recipe (they must match the defense attacked);
    ``f_a`` (required) is the defended classifier: validation/test accuracy during training are
    those of ``f_a(h(x))`` — whether ``h`` imitates ``g`` well enough for ``f_a``. Metrics:
    ``mse``, ``linf`` (mean ‖h(x) − g(x)‖∞). The trained ``h`` is the ``surrogate_model`` of
    ``{"name": "advt", "bpda": "learned", ...}``.

    Example::

        train(TrainConfig(dataset="fashion-mnist", model="image_fcn", recipe="advt_imitate",
                          recipe_kwargs={"f_b": "runs/advt/f_b/model.safetensors",
                                         "f_a": "runs/advt/f_a/model.safetensors",
                                         "delta": 0.3}))
    """

    name = "advt_imitate"
    f_a: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.f_a:
            raise ConfigError("recipe 'advt_imitate' needs 'f_a': the checkpoint of the "
                              "defended classifier (validation accuracy is f_a(h(x)))")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        from advguard.defenses.resources import load_checkpoint_part

        object.__setattr__(self, "_transform", self._make(self.f_b))
        try:
            f_a = load_checkpoint_part(self.f_a, like=None, role="f_a")
        except ConfigError as exc:
            raise ConfigError(f"recipe 'advt_imitate': {exc}") from None
        bad = _image_mismatch(self.transform.f_b, f_a, model)
        if bad:
            raise ConfigError(f"recipe 'advt_imitate': {bad}")
        object.__setattr__(self, "_f_a", f_a)
        return model

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        gx = self.transformed(x, generator)
        out = model(x)
        mse = F.mse_loss(out, gx)
        linf = (out.detach() - gx).flatten(1).abs().amax(1).mean()
        return StepOutput(loss=mse, correct=None,
                          metrics={"mse": mse.detach(), "linf": linf})

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        f_a: nn.Module = self.__dict__["_f_a"]
        f_a.to(next(model.parameters()).device)
        return nn.Sequential(model, f_a)


def _image_mismatch(f_b: nn.Module, f_a: nn.Module, h: nn.Module) -> str:
    """Which of f_b, f_a and h were built for other images (channels, size), or ''."""
    from advguard.defenses.resources import input_facts

    facts = {name: input_facts(m) for name, m in (("f_b", f_b), ("f_a", f_a), ("h", h))}
    out = []
    for name in ("f_b", "f_a"):
        for key in ("channels", "size"):
            mine, theirs = getattr(facts[name], key), getattr(facts["h"], key)
            if mine is not None and theirs is not None and mine != theirs:
                out.append(f"{name} {key} {mine} vs h {theirs}")
    return "; ".join(out)
