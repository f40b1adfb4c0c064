"""Small models that carry their truth: each is built so the expected counts are known exactly."""

from __future__ import annotations

import torch
from torch import nn


def linear_with_dead_units(dead: int = 8, width: int = 32, in_features: int = 10,
                           activation: nn.Module | None = None) -> nn.Sequential:
    """Linear -> activation -> Linear, with bias -100 on the first ``dead`` units.

    Inputs in [-1, 1]^in_features with default init give |w.x| < 10, so those units
    never reach a positive pre-activation.
    """
    model = nn.Sequential(nn.Linear(in_features, width), activation or nn.ReLU(), nn.Linear(width, 1))
    with torch.no_grad():
        model[0].bias[:dead] = -100.0
        model[0].bias[dead:] = 0.5
    return model


class ReusedReLUBlock(nn.Module):
    """A torchvision-style BasicBlock core: one ``self.relu`` called twice per forward.

    First call sees fc1(x) (bias -100 on units 0..2 -> 3 dead); second call sees
    fc2(relu(fc1 x)) + shift, where shift is -100 on units 0..4 -> 5 dead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 12)
        self.relu = nn.ReLU()
        shift = torch.zeros(12)
        shift[:5] = -100.0
        self.register_buffer("shift", shift)
        with torch.no_grad():
            self.fc1.bias.copy_(torch.full((12,), 2.0))
            self.fc1.bias[:3] = -100.0
            self.fc2.bias.fill_(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.relu(self.fc1(x))
        return self.relu(self.fc2(hidden) + self.shift)


class ConvBNInplace(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU(inplace=True); BN beta -100 on channels 1, 4, 6."""

    dead_channels = (1, 4, 6)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.bn.bias[list(self.dead_channels)] = -100.0
            self.bn.weight.fill_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))


class SequenceMLP(nn.Module):
    """Transformer-style (N, L, D) block: Linear(16 -> 24) -> ReLU -> Linear; bias -100 on 3 features.

    L is 24 too, so the unit axis can only be told from the producing Linear.
    """

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 24)
        self.act = nn.ReLU()
        self.down = nn.Linear(24, 16)
        with torch.no_grad():
            self.up.bias.fill_(1.0)
            self.up.bias[[0, 7, 23]] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class Conv1dNet(nn.Module):
    """Conv1d(4 -> 10) -> ReLU -> Conv1d(10 -> 6) -> ReLU; conv1 bias -100 on channels 2 and 9."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 10, 3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(10, 6, 3)
        self.act2 = nn.ReLU()
        with torch.no_grad():
            self.conv1.bias.fill_(1.0)
            self.conv1.bias[[2, 9]] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(x))))


def seed_example_network() -> nn.Sequential:
    """The network of the seed's ``count_dead_neurons`` example."""
    return nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 1))


def count_dead_neurons(model: nn.Module, test_input: torch.Tensor, threshold: float = 0.0) -> int:
    """The seed's detection snippet, verbatim in logic (max over the batch axis <= threshold)."""
    model.eval()
    dead_count = 0

    def hook(module, input, output):
        nonlocal dead_count
        max_activation = output.max(dim=0)[0]
        dead_count += (max_activation <= threshold).sum().item()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(test_input)
    for handle in handles:
        handle.remove()
    return dead_count


def bounded_inputs(samples: int, features: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(samples, features, generator=generator) * 2 - 1


class UserModel(nn.Module):
    """A model class of the user's own around ``inner``: unpickling it imports (and so runs) their code,
    where a pickle of torch.nn classes alone loads without consent."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.net = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
