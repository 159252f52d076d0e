"""Training configuration as data (house rule 7): one frozen dataclass, loadable from YAML/JSON,
validated on construction, recorded with every checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from advguard.configs import FileConfig
from advguard.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
AUGMENTS = ("auto", "none", "crop", "flip", "crop+flip")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(FileConfig):
    """Everything that determines a training run.

    Units: ``lr`` is the peak learning rate of the schedule; ``epochs`` are passes over the
    (sub-sampled) training split (0: the initialized, untrained model is written — e.g. the
    untrained f_b of AdvT's Table 1); ``train_size`` is a class-balanced subset size (None: all);
    ``val_size`` is held out from the training split (int: count, float: fraction), stratified and
    seeded, used for validation metrics and for tuning defenses — never the test split;
    ``test_size`` evaluates the first n test points each ``eval_every`` epochs (None: all; 0: none).
    ``precision='auto'`` means bf16 autocast on CUDA and fp32 on CPU; ``channels_last=None`` means
    on for CUDA. ``checkpoint_every_steps`` adds mid-epoch checkpoints (one is always written at the
    end of each epoch and on Ctrl-C). ``init_from`` (a checkpoint path) starts from that model's
    weights instead of a fresh initialization — fine-tuning, e.g. a CNI-W model into CNI-I+W or
    with EPGD examples; the config must build the same architecture (the recipe's noise layers
    included), and the weights are loaded strictly.

    Example::

        TrainConfig(dataset="fashion-mnist", model="smallcnn", epochs=10, lr=0.05)
    """

    config_what = "training config"
    config_section = "train"

    dataset: str = "fashion-mnist-sample"
    model: str = "smallcnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: str = "standard"
    recipe_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)
    augment: str = "auto"
    train_size: int | None = None
    val_size: int | float = 0
    test_size: int | None = None
    eval_every: int = 1
    eval_batch_size: int = 500
    checkpoint_every_steps: int | None = None
    data_root: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    init_from: str | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"invalid training config: {msg}")

        if self.epochs < 0:
            raise bad(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise bad(f"batch_size must be >= 1, got {self.batch_size}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise bad(f"lr must be a finite number > 0, got {self.lr}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise bad(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:  # also false for nan
            raise bad(f"momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer not in ("sgd", "adam"):
            raise bad(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise bad(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.augment not in AUGMENTS:
            raise bad(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if isinstance(self.val_size, float) and not 0 <= self.val_size < 1:
            raise bad(f"a fractional val_size must be in [0, 1), got {self.val_size}")
        if isinstance(self.val_size, int) and self.val_size < 0:
            raise bad(f"val_size must be >= 0, got {self.val_size}")
        if self.train_size is not None and self.train_size < 1:
            raise bad(f"train_size must be >= 1, got {self.train_size}")
        if self.eval_every < 1:
            raise bad(f"eval_every must be >= 1, got {self.eval_every}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            raise bad("checkpoint_every_steps must be >= 1")

    # ----------------------------------------------------------------------------- (de)serialize
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

