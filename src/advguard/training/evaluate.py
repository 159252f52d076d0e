"""Clean-accuracy evaluation used during training (the adversarial harness is
:mod:`advguard.evaluation`)."""

from __future__ import annotations

import torch
from torch import nn

from advguard.data import ImageDataset
from advguard.utils import eval_mode


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 500,
            bf16: bool = False) -> torch.Tensor:
    """Top-1 predictions (N,) int64 for images (N,C,H,W) in [0,1], in eval mode, batched. Images
    are moved to the model's device batch by batch; predictions return on the images' device."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    preds = []
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                preds.append(model(x).argmax(1))
    if not preds:
        return torch.empty(0, dtype=torch.int64, device=images.device)
    return torch.cat(preds).to(images.device)


def evaluate_accuracy(model: nn.Module, dataset: ImageDataset, *, batch_size: int = 500,
                      bf16: bool = False) -> float:
    """Fraction of ``dataset`` that ``model`` classifies correctly (clean inputs, eval mode)."""
    if len(dataset) == 0:
        return float("nan")
    preds = predict(model, dataset.images, batch_size=batch_size, bf16=bf16)
    return float((preds == dataset.labels.to(preds.device)).float().mean())
