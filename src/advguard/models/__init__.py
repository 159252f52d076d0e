"""Model architectures for adversarial-robustness experiments, behind a registry.

Every model takes images in [0, 1] of shape ``(N, C, H, W)`` and returns logits
``(N, num_classes)``; normalization happens inside (:class:`Normalized`), and ``model.spec``
(:class:`ModelSpec`) rebuilds it from a checkpoint.

Example::

    from advguard.models import create_model, list_models, count_flops

    list_models("resnet*")          # ['resnet110', 'resnet18', 'resnet20', ...]
    model = create_model("preact_resnet18", num_classes=10,
                         mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
    logits = model(torch.rand(8, 3, 32, 32))
    count_flops(model, (3, 32, 32)).macs    # 555_422_720
"""

from __future__ import annotations

# Importing the architecture modules registers them.
from advguard.models import fcn, purifier, resnet, resnet_cifar, small, vgg, wrn  # noqa: F401
from advguard.models.factory import (
    MODELS,
    ModelFactory,
    ModelInfo,
    create_model,
    create_model_from_spec,
    list_models,
    model_info,
    register_model,
)
from advguard.models.flops import FlopCount, count_flops, model_flops
from advguard.models.normalized import ModelSpec, Normalized
from advguard.models.resnet import PreActResNet, ResNet
from advguard.models.resnet_cifar import CifarResNet, cifar_resnet
from advguard.models.small import LeNet5, SmallCNN
from advguard.models.vgg import VGGSmall
from advguard.models.wrn import WideResNet, wide_resnet

__all__ = [
    "MODELS",
    "CifarResNet",
    "FlopCount",
    "LeNet5",
    "ModelFactory",
    "ModelInfo",
    "ModelSpec",
    "Normalized",
    "PreActResNet",
    "ResNet",
    "SmallCNN",
    "VGGSmall",
    "WideResNet",
    "cifar_resnet",
    "count_flops",
    "create_model",
    "create_model_from_spec",
    "list_models",
    "model_flops",
    "model_info",
    "register_model",
    "wide_resnet",
]
