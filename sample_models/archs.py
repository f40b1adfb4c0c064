"""Architectures of the sample models (torch and stdlib only).

deadrelu loads these by file path, e.g.::

    deadrelu scan sample_models/mlp_high_lr.pt sample_models/mlp_data.npy \\
        --arch sample_models/archs.py:HighLrMLP

so this file must stay importable on its own: no package-relative imports and
nothing beyond torch and the standard library. Every constructor takes keyword
arguments whose defaults match the committed weights.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["HighLrMLP", "SmallCNN", "SaturatedELUNet", "LeakyPReLUNet"]


class HighLrMLP(nn.Module):
    """``depth`` x (Linear -> ReLU) then a Linear head, all in ``self.net``.

    Module names: ``net.0`` Linear, ``net.1`` ReLU, ``net.2`` Linear, ``net.3`` ReLU, ...,
    ``net.{2*depth}`` the output Linear. Each ReLU is its own module.
    """

    def __init__(self, in_features: int = 20, hidden: int = 128, depth: int = 3, classes: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two Conv2d -> BatchNorm2d -> ReLU(inplace) -> MaxPool blocks, then Linear -> ReLU -> Linear.

    Input: ``(N, in_channels, 16, 16)``. Module names: ``features.conv1``, ``features.bn1``,
    ``features.relu1``, ``features.pool1``, ``features.conv2`` ... ``features.pool2``,
    ``head.fc1``, ``head.relu3``, ``head.fc2``.
    """

    def __init__(self, in_channels: int = 1, classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)),
            ("bn1", nn.BatchNorm2d(width)),
            ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(2)),                      # 16x16 -> 8x8
            ("conv2", nn.Conv2d(width, 2 * width, kernel_size=3, padding=1, bias=False)),
            ("bn2", nn.BatchNorm2d(2 * width)),
            ("relu2", nn.ReLU(inplace=True)),
            ("pool2", nn.MaxPool2d(2)),                      # 8x8 -> 4x4
        ]))
        self.head = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(2 * width * 4 * 4, 4 * width)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(4 * width, classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class SaturatedELUNet(nn.Module):
    """``fc1`` -> ``elu`` (ELU, alpha=1) -> ``fc2`` -> ``selu`` (SELU) -> ``fc3``.

    ELU's negative floor is ``-alpha = -1``; SELU's is ``-scale*alpha ~= -1.7581``.
    """

    def __init__(self, in_features: int = 20, hidden: int = 64, classes: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.elu = nn.ELU(alpha=1.0)
        self.fc2 = nn.Linear(hidden, hidden)
        self.selu = nn.SELU()
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.selu(self.fc2(self.elu(self.fc1(x)))))


class LeakyPReLUNet(nn.Module):
    """``fc1`` -> ``leaky`` (LeakyReLU 0.1) -> ``fc2`` -> ``prelu`` (PReLU, one slope per unit) -> ``fc3``."""

    def __init__(self, in_features: int = 20, hidden: int = 64, classes: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.leaky = nn.LeakyReLU(negative_slope=0.1)
        self.fc2 = nn.Linear(hidden, hidden)
        self.prelu = nn.PReLU(num_parameters=hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.prelu(self.fc2(self.leaky(self.fc1(x)))))
