"""Small CNNs for 28×28 grey-scale images (MNIST, Fashion-MNIST): LeNet-5, TRADES SmallCNN."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from advguard.models._layers import check_feature_size, check_probability, conv_out
from advguard.models.factory import register_model

__all__ = ["LeNet5", "SmallCNN"]


class LeNet5(nn.Module):
    """LeNet-5-style CNN (LeCun et al., "Gradient-based learning applied to document
    recognition", Proc. IEEE 1998), in its common modern form: ReLU and max pooling instead of
    the original tanh/sub-sampling units, no sparse C3 connection table.

    ``conv 6@5×5 (pad 2) → max-pool 2 → conv 16@5×5 → max-pool 2 → FC 120 → FC 84 → FC N``.
    For 28×28 inputs the flatten size is 16·5·5 = 400. Inputs ``(N, C, S, S)`` with
    ``S >= 12`` (normalized), output logits ``(N, num_classes)``. PyTorch default init.

    Example::

        net = LeNet5(num_classes=10, in_channels=1, input_size=28)
        logits = net(torch.randn(2, 1, 28, 28))      # (2, 10)
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1,
                 input_size: int = 28) -> None:
        super().__init__()
        side = conv_out(conv_out(conv_out(input_size, 5, padding=2), 2, 2), 5)
        side = conv_out(side, 2, 2)
        check_feature_size("lenet5", input_size, side, minimum=12)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class SmallCNN(nn.Module):
    """The "SmallCNN" used for MNIST by TRADES (Zhang et al., "Theoretically principled trade-off
    between robustness and accuracy", ICML 2019; yaodongyu/TRADES ``models/small_cnn.py``).

    ``conv 32@3×3 → conv 32@3×3 → max-pool 2 → conv 64@3×3 → conv 64@3×3 → max-pool 2 →
    FC 200 → dropout → FC 200 → FC N`` (ReLU after every conv and the two hidden FCs; no
    padding). As in the reference there is a single dropout layer, after the first FC. For
    28×28 inputs the flatten size is 64·4·4 = 1024; inputs ``(N, C, S, S)`` with ``S >= 16``.

    Init follows the reference: He-normal (fan-in) convs with zero bias, and a **zero last
    layer** (``classifier.fc3``), so a freshly built model outputs all-zero logits (and zero
    gradients to earlier layers) until trained; pass ``zero_init_last=False`` for PyTorch's
    default init there. Module names match the reference, so its checkpoints load into it.

    Example::

        net = SmallCNN(num_classes=10, in_channels=1, input_size=28)
        logits = net(torch.randn(2, 1, 28, 28))      # (2, 10)
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 dropout: float = 0.5, zero_init_last: bool = True) -> None:
        super().__init__()
        dropout = check_probability(dropout, "dropout")
        side = conv_out(conv_out(input_size, 3), 3) // 2
        side = conv_out(conv_out(side, 3), 3) // 2
        check_feature_size("smallcnn", input_size, side, minimum=16)
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 32, 3)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(32, 32, 3)),
            ("relu2", nn.ReLU()),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(32, 64, 3)),
            ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(64, 64, 3)),
            ("relu4", nn.ReLU()),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64 * side * side, 200)),
            ("relu1", nn.ReLU()),
            ("drop", nn.Dropout(dropout)),
            ("fc2", nn.Linear(200, 200)),
            ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(200, num_classes)),
        ]))
        for m in self.feature_extractor:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = self.classifier[-1]
        if zero_init_last and isinstance(last, nn.Linear):
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.feature_extractor(x), 1))


_MNIST = "MNIST / Fashion-MNIST (28×28, grey-scale)"


@register_model(
    "lenet5", paper="LeCun et al., Proc. IEEE 1998 (modern ReLU/max-pool variant)",
    default_input_size=28, dataset=_MNIST,
    description="LeNet-5: conv 6-16 (5×5) with max-pooling, FC 120-84-N; ~61k params.")
def lenet5(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return LeNet5(num_classes=num_classes, in_channels=in_channels, input_size=input_size)


@register_model(
    "smallcnn", paper="Zhang et al., TRADES, ICML 2019 (MNIST model)",
    default_input_size=28, dataset=_MNIST, reference="yaodongyu/TRADES models/small_cnn.py",
    description="TRADES SmallCNN: conv 32-32-pool-64-64-pool, FC 200-200-N, dropout 0.5 after "
                "the first FC; zero-initialized last layer.")
def smallcnn(*, num_classes: int, in_channels: int, input_size: int, dropout: float = 0.5,
             zero_init_last: bool = True) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                    dropout=dropout, zero_init_last=zero_init_last)
