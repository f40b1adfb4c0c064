"""Models the screenshots show beside the bundled samples (``benchmarks/screenshots.py``).

``long_names``: four blocks whose activation sites are named with 47 characters
(``feature_backbone.residual_stage_0.pointwise_act``) and whose biases kill 25, 30, 35 and 41
of 64 units: every output must show those names whole and the code's long unit lists uncut.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

WIDTH = 64
DEAD = (25, 30, 35, 41)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.pointwise_projection = nn.Linear(width, width)
        self.pointwise_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_act(self.pointwise_projection(x))


class LongNames(nn.Module):
    """Identity weights (×0.5); a unit is dead exactly when its bias is -100."""

    def __init__(self, width: int = WIDTH, dead: tuple[int, ...] = DEAD) -> None:
        super().__init__()
        self.feature_backbone = nn.ModuleDict({f"residual_stage_{k}": Block(width) for k in range(len(dead))})
        self.classifier_head = nn.Linear(width, 2)
        with torch.no_grad():
            for block, count in zip(self.feature_backbone.values(), dead):
                block.pointwise_projection.weight.copy_(torch.eye(width) * 0.5)
                block.pointwise_projection.bias.zero_()
                block.pointwise_projection.bias[:count] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.feature_backbone.values():
            x = block(x) + 0.1
        return self.classifier_head(x)


def long_names() -> LongNames:
    return LongNames()


def long_names_data() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (256, WIDTH)).astype(np.float32))
