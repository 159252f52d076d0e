"""Training recipes of purifier defenses: ADD-Defense (ICLR 2021 submission, Sec. 3, Eq. 1–7) and
APE-GAN (Shen et al. 2017), both in front of a fixed, frozen target model ``M_t``.

The training data of both are clean images and adversarial examples of ``M_t`` from the *known
attacks* (registered attacks of the suite, given as specs), crafted on the fly for every batch
from the batch's clean images with the step generator — the paper crafts one fixed set; crafting
per batch draws fresh random starts every epoch and needs no disk cache, at the cost of the
attacks' compute each epoch.

Min–max games in one optimizer step: each discriminator's own loss sees detached inputs, and
the encoder/generator's adversarial terms see the discriminators through detached parameters
(:func:`torch.func.functional_call`), so one backward pass gives every network the gradient of
its own objective — simultaneous gradient steps, instead of the alternating updates common in
GAN code (neither paper says which it used).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from advguard.attacks import Attack, make_attack, resolve_target
from advguard.errors import AdvguardError, ConfigError
from advguard.training.recipes.base import RECIPES, Recipe, StepOutput

__all__ = ["ADD", "APEGANRecipe", "KnownAttack", "confusion_loss", "gaussian_kl", "mmd2",
           "multi_domain_mmd"]

#: The paper's known attacks on Fashion-MNIST (App. C.1.1): L∞-PGD, ε = 0.15, 40 iterations,
#: untargeted and targeted (a random other class).
PAPER_FMNIST_ATTACKS: tuple[dict[str, Any], ...] = (
    {"attack": "pgd", "eps": 0.15, "steps": 40},
    {"attack": "pgd", "eps": 0.15, "steps": 40, "target": "random"},
)


@dataclass(frozen=True)
class KnownAttack:
    """One known attack: a registered attack and its target mode (None: untargeted,
    "random" / "least_likely": targeted), built from a spec ``{attack: NAME, target: ..., **kw}``.
    """

    attack: Attack
    target: Literal["random", "least_likely"] | None = None

    @classmethod
    def from_spec(cls, spec: Any, *, recipe: str) -> KnownAttack:
        if not isinstance(spec, dict) or "attack" not in spec:
            raise ConfigError(f"recipe {recipe!r}: each known attack must be a mapping with an "
                              f"'attack' name (e.g. {{attack: pgd, eps: 0.15, steps: 40}}), got "
                              f"{spec!r}")
        kwargs = dict(spec)
        name = kwargs.pop("attack")
        target = kwargs.pop("target", None)
        if target not in (None, "random", "least_likely"):
            raise ConfigError(f"recipe {recipe!r}: known attack target must be null, 'random' or "
                              f"'least_likely', got {target!r}")
        try:
            attack = make_attack(name, **kwargs)
        except AdvguardError as exc:
            raise ConfigError(f"recipe {recipe!r}: known attack {name!r}: {exc}") from None
        return cls(attack=attack, target=target)

    def craft(self, target_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              clean_logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Adversarial examples of ``target_model`` for a training batch, detached, projected
        onto the attack's threat model."""
        target = resolve_target(self.target, clean_logits, y, generator) \
            if self.target is not None else None
        adv = self.attack.perturb(target_model, x, y, target=target, generator=generator)
        return self.attack.threat.project(adv.detach(), x)


def mmd2(a: torch.Tensor, b: torch.Tensor, bandwidths: torch.Tensor) -> torch.Tensor:
    """Biased estimate of the squared MMD between samples ``a`` (N, d) and ``b`` (M, d) with a sum
    of Gaussian kernels ``exp(−‖u − v‖² / (2σ²))`` over ``bandwidths`` σ (App. B's estimator)."""
    def kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(u, v).pow(2)
        return sum((torch.exp(-d2 / (2 * s * s)) for s in bandwidths),
                   torch.zeros_like(d2)).mean()

    return kernel(a, a) + kernel(b, b) - 2 * kernel(a, b)


def multi_domain_mmd(z: list[torch.Tensor], scales: tuple[float, ...]) -> torch.Tensor:
    """Eq. 1: ``(1/K²) Σ_{k,l} MMD²(Z_k, Z_l)`` over the domains' latents (each (N, d)), with
    bandwidths ``scales`` × the median pairwise distance of all latents (detached: the median
    heuristic, since the paper does not give σ)."""
    flat = torch.cat(z).detach()
    dist = torch.pdist(flat) if flat.shape[0] > 1 else flat.new_ones(1)
    median = dist.median().clamp_min(1e-6)
    bandwidths = torch.tensor(scales, dtype=flat.dtype, device=flat.device) * median
    k = len(z)
    total = sum((mmd2(a, b, bandwidths) for a, b in itertools.combinations(z, 2)),
                flat.new_zeros(()))
    return 2 * total / (k * k)  # each unordered pair counted twice, diagonal terms are zero


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ, diag σ²) ‖ N(0, I))`` per example (summed over the latent dimensions), shape (N,):
    ``½ Σ (μ² + σ² − 1 − log σ²)`` — Eq. 3's prior term."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 2's encoder side: the cross-entropy of ``D_P``'s prediction against the uniform
    ("perturbation-confused") label over its ``K`` domains, averaged over examples; minimal,
    ``log K``, exactly when every prediction is uniform."""
    return -F.log_softmax(logits, dim=1).mean(1).mean()


def _frozen(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with detached parameters: gradients reach the inputs, not the module."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    buffers = dict(module.named_buffers())
    out: torch.Tensor = functional_call(module, {**params, **buffers}, args)
    return out


def image_gan_losses(net: Any, clean: torch.Tensor, restored: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The image discriminator's own loss (clean images real, detached restored ones fake) and
    the generator's non-saturating fooling loss (the discriminator seen through detached
    parameters), for a purifier ``net`` with ``discriminate_image`` and ``image_discriminator``
    (applied to :meth:`image_input` of the images when the net defines it)."""
    real = net.discriminate_image(clean)
    fake = net.discriminate_image(restored.detach())
    own = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
        F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    prepare = getattr(net, "image_input", None)
    seen = prepare(restored) if callable(prepare) else restored
    fooled = _frozen(net.image_discriminator, seen).squeeze(1)
    return own, F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))


def _check_weights(recipe: str, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"recipe {recipe!r}: {key} must be a number >= 0, got {value!r}")


class _TargetedRecipe(Recipe):
    """Shared parts: the frozen target model ``M_t`` (checkpoint path) and the known attacks."""

    target: str
    known_attacks: tuple[dict[str, Any], ...]

    def _check_common(self) -> None:
        if not self.target:
            raise ConfigError(f"recipe {self.name!r} needs 'target': the checkpoint of the fixed "
                              f"target classifier M_t the purifier protects")
        if not self.known_attacks:
            raise ConfigError(f"recipe {self.name!r} needs at least one known attack")
        object.__setattr__(self, "_attacks", tuple(
            KnownAttack.from_spec(s, recipe=self.name) for s in self.known_attacks))

    @property
    def attacks(self) -> tuple[KnownAttack, ...]:
        out: tuple[KnownAttack, ...] = self.__dict__["_attacks"]
        return out

    @property
    def target_model(self) -> nn.Module:
        m = self.__dict__.get("_target")
        if m is None:
            raise ConfigError(f"recipe {self.name!r}: the target model is loaded by "
                              "prepare_model(model), which the training loop calls first")
        assert isinstance(m, nn.Module)
        return m

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Check that ``model`` is the purifier architecture this recipe trains
        (:meth:`_check_model`), then load the target model against it."""
        self._check_model(getattr(model, "model", model))
        self._load_target(model)
        return model

    def _check_model(self, inner: nn.Module) -> None:
        raise NotImplementedError

    def _load_target(self, model: nn.Module) -> None:
        from advguard.defenses.resources import input_facts, load_checkpoint_part

        try:
            target = load_checkpoint_part(self.target, like=model, role="target")
        except ConfigError as exc:
            raise ConfigError(f"recipe {self.name!r}: {exc}") from None
        facts = input_facts(target)
        if facts.num_classes is not None and input_facts(model).num_classes not in (
                None, facts.num_classes):
            raise ConfigError(f"recipe {self.name!r}: target has {facts.num_classes} classes, "
                              f"the training data {input_facts(model).num_classes}")
        object.__setattr__(self, "_target", target)

    def _target_on(self, device: torch.device) -> nn.Module:
        t = self.target_model
        if next(t.parameters()).device != device:
            t.to(device)
        return t

    def domains_of(self, x: torch.Tensor, y: torch.Tensor,
                   generator: torch.Generator) -> tuple[nn.Module, list[torch.Tensor]]:
        """``M_t`` and ``[x, x_1, …, x_K]``: the clean batch and each known attack's examples."""
        target = self._target_on(x.device)
        with torch.no_grad():
            logits = target(x)
        out = [x]
        for known in self.attacks:
            out.append(known.craft(target, x, y, logits, generator))
        return target, out

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """``M_t(purifier(x))``: validation/test accuracy on purified clean images (the paper's
        "Rec" accuracy)."""
        target = self._target_on(next(model.parameters()).device)
        return nn.Sequential(model, target)


@RECIPES.register("add", paper="ADD-Defense (ICLR 2021 submission), Eq. 1-7",
                  description="purifier E/G with MMD alignment, perturbation discriminator, "
                              "Gaussian prior, latent classifier, MSE + image discriminator, on "
                              "clean and known-attack examples of a frozen target model")
@dataclass(frozen=True, kw_only=True)
class ADD(_TargetedRecipe):
    """ADD-Defense training of an ``add_purifier`` model (Eq. 5 and 7, jointly).

    Per batch: the clean images ``x`` and each known attack's examples ``x_k`` of ``M_t`` form
    ``1 + K`` domains (the model's ``domains``). Encoder ``E`` gives ``(μ, log σ²)``; the latent
    ``z = μ + σ·ε`` (one draw, step generator) feeds

    * ``L_mmd`` (Eq. 1): multi-domain MMD of the domains' latents (Gaussian kernels, bandwidths
      ``mmd_scales`` × the median distance);
    * ``L_g`` (Eq. 3): the prior term, ``KL(N(μ, σ²) ‖ N(0, I))`` per example (summed over latent
      dimensions), averaged over examples of every domain — the JSD to ``N(0, I)`` as the paper
      defines it (the mean of the domains' KL divergences from the prior);
    * ``L_p`` (Eq. 2): ``D_P`` learns the domain of ``z`` (cross-entropy, ``z`` detached); ``E``
      pushes ``D_P``'s prediction towards the uniform ("perturbation-confused") label;
    * ``L_c`` (Eq. 4): the latent classifier ``C`` predicts the class from ``z``;
    * ``L_mse``: ``G(z)`` against the clean image (mean over pixels), weight ``theta``;
    * ``L_adv`` (Eq. 6): ``D_I`` tells clean images from restored ones; ``G`` (and ``E``) fool it
      (non-saturating form).

    Loss = ``L_mmd + λ1 L_g + λ2 L_p(E) + λ3 L_c + L_adv(G) + θ L_mse`` plus the discriminators'
    own losses. Fields: ``target`` (required, ``M_t``), ``known_attacks`` (specs; default the
    paper's F-MNIST pair, PGD ε 0.15 × 40 untargeted and targeted), ``lambda_prior`` (λ1 = 1e-4),
    ``lambda_perturbation`` (λ2 = 1), ``lambda_class`` (λ3 = 1e-3), ``theta`` (1e3) — App. D's
    values for MNIST / F-MNIST / SVHN, which it writes as "e-4", "e0", "e-3", "e3": read here as
    powers of ten (CIFAR-10: 1e-6, 1e-1, 1e-3, 1e1) — ``mmd_scales`` (0.5, 1, 2), and the
    Fig. 12 ablations ``use_mmd``, ``use_prior``, ``use_perturbation_discriminator``,
    ``use_classifier`` (True). Training accuracy = ``M_t`` on the restored images, all domains.

    Example::

        train(TrainConfig(dataset="fashion-mnist", model="add_purifier", recipe="add",
                          model_kwargs={"width": 0.25}, optimizer="adam", lr=2e-4,
                          recipe_kwargs={"target": "runs/scale_s/standard/model.safetensors"}))
    """

    name = "add"
    target: str = ""
    known_attacks: tuple[dict[str, Any], ...] = field(default=PAPER_FMNIST_ATTACKS)
    lambda_prior: float = 1e-4
    lambda_perturbation: float = 1.0
    lambda_class: float = 1e-3
    theta: float = 1e3
    mmd_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    use_mmd: bool = True
    use_prior: bool = True
    use_perturbation_discriminator: bool = True
    use_classifier: bool = True

    def __post_init__(self) -> None:
        _check_weights(self.name, {k: getattr(self, k) for k in (
            "lambda_prior", "lambda_perturbation", "lambda_class", "theta")})
        if not self.mmd_scales or not all(
                isinstance(s, (int, float)) and s > 0 for s in self.mmd_scales):
            raise ConfigError(f"recipe 'add': mmd_scales must be numbers > 0, got "
                              f"{self.mmd_scales!r}")
        self._check_common()

    def _check_model(self, inner: nn.Module) -> None:
        from advguard.models.purifier import ADDPurifier

        if not isinstance(inner, ADDPurifier):
            raise ConfigError(f"recipe 'add' trains an 'add_purifier' model, got "
                              f"{type(inner).__name__}")
        if inner.domains != 1 + len(self.attacks):
            raise ConfigError(f"recipe 'add': the model's perturbation discriminator has "
                              f"{inner.domains} domains, but clean + {len(self.attacks)} known "
                              f"attack(s) make {1 + len(self.attacks)}; set model_kwargs.domains")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        net: Any = getattr(model, "model", model)
        normalize = getattr(model, "normalize", lambda t: t)
        target, domains = self.domains_of(x, y, generator)
        k, n = len(domains), x.shape[0]
        inputs = torch.cat(domains)
        labels = y.repeat(k)
        domain = torch.arange(k, device=x.device).repeat_interleave(n)
        mu, logvar = net.encode(normalize(inputs))
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps
        flat = z.flatten(1)
        restored = net.decode(z)
        clean = x.repeat(k, 1, 1, 1)
        metrics: dict[str, torch.Tensor] = {}

        mse = F.mse_loss(restored, clean)
        loss = self.theta * mse
        metrics["mse"] = mse.detach()
        if self.use_mmd:
            mmd = multi_domain_mmd(list(flat.split(n)), tuple(self.mmd_scales))
            loss = loss + mmd
            metrics["mmd"] = mmd.detach()
        if self.use_prior:
            kl = gaussian_kl(mu, logvar).mean()
            loss = loss + self.lambda_prior * kl
            metrics["prior_kl"] = kl.detach()
        if self.use_perturbation_discriminator:
            d_p = net.perturbation_discriminator
            own = F.cross_entropy(d_p(flat.detach()), domain)
            confused = confusion_loss(_frozen(d_p, flat))
            loss = loss + own + self.lambda_perturbation * confused
            metrics["dp_loss"] = own.detach()
        if self.use_classifier:
            lc = F.cross_entropy(net.classifier(flat), labels)
            loss = loss + self.lambda_class * lc
            metrics["class_loss"] = lc.detach()
        own_i, adv = image_gan_losses(net, x, restored)
        loss = loss + own_i + adv
        metrics["di_loss"] = own_i.detach()
        with torch.no_grad():
            pred = target(restored.detach()).argmax(1)
        correct = (pred == labels).sum().float() / k
        return StepOutput(loss=loss, correct=correct, metrics=metrics)


@RECIPES.register("ape_gan", paper="Shen et al., APE-GAN, 2017",
                  description="APE-GAN generator trained on known-attack examples of a frozen "
                              "target model: 0.7 MSE to the clean image + 0.3 adversarial loss")
@dataclass(frozen=True, kw_only=True)
class APEGANRecipe(_TargetedRecipe):
    """APE-GAN training of an ``ape_gan`` model: the generator maps each known attack's examples
    (and, with ``include_clean``, the clean images) to the clean image; loss
    ``mse_weight · MSE + adv_weight · BCE(D(G(x_adv)), real)`` (0.7 / 0.3 as the paper), the
    discriminator tells clean from restored images. Fields: ``target`` (required),
    ``known_attacks`` (default: the same as ``add``, for the ADD-Defense comparison; APE-GAN's
    own paper uses FGSM), ``mse_weight`` 0.7, ``adv_weight`` 0.3, ``include_clean`` False.
    Training accuracy = ``M_t`` on the restored images.
    """

    name = "ape_gan"
    target: str = ""
    known_attacks: tuple[dict[str, Any], ...] = field(default=PAPER_FMNIST_ATTACKS)
    mse_weight: float = 0.7
    adv_weight: float = 0.3
    include_clean: bool = False

    def __post_init__(self) -> None:
        _check_weights(self.name, {"mse_weight": self.mse_weight,
                                   "adv_weight": self.adv_weight})
        self._check_common()

    def _check_model(self, inner: nn.Module) -> None:
        from advguard.models.purifier import APEGAN

        if not isinstance(inner, APEGAN):
            raise ConfigError(f"recipe 'ape_gan' trains an 'ape_gan' model, got "
                              f"{type(inner).__name__}")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator) -> StepOutput:
        net: Any = getattr(model, "model", model)
        target, domains = self.domains_of(x, y, generator)
        used = domains if self.include_clean else domains[1:]
        k = len(used)
        restored = model(torch.cat(used))
        clean = x.repeat(k, 1, 1, 1)
        labels = y.repeat(k)
        mse = F.mse_loss(restored, clean)
        own, adv = image_gan_losses(net, x, restored)
        loss = self.mse_weight * mse + self.adv_weight * adv + own
        with torch.no_grad():
            pred = target(restored.detach()).argmax(1)
        correct = (pred == labels).sum().float() / k
        return StepOutput(loss=loss, correct=correct,
                          metrics={"mse": mse.detach(), "d_loss": own.detach()})
