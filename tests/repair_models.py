"""Models for the repair tests; each carries its truth (which units are dead, which sites are prunable).

Importable by path for the CLI (``--arch tests/repair_models.py:DeadMLP``). Dead units get
bias (or BatchNorm beta) -100; live units get a bias large enough that they fire on every
sample of ``inputs()`` (uniform in [-1, 1]), so the counts hold for any seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MLP_DEAD = {"0.1": (0, 1, 2, 3, 4), "1.1": (1, 3)}


def inputs(samples: int = 200, features: int = 10, seed: int = 0) -> torch.Tensor:
    """Uniform samples in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(samples, features, generator=generator) * 2 - 1


class DeadMLP(nn.Sequential):
    """(Linear 10->32, ReLU) -> (Linear 32->16, ReLU) -> Linear 16->3, nested Sequentials.

    Dead: units 0-4 of site ``0.1`` and units 1, 3 of site ``1.1``. Pruned shapes:
    ``0.0.weight`` (27, 10), ``1.0.weight`` (14, 27), ``2.weight`` (3, 14).
    """

    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Linear(10, 32), nn.ReLU()), nn.Sequential(nn.Linear(32, 16), nn.ReLU()),
                         nn.Linear(16, 3))
        with torch.no_grad():
            # |w.x| <= 10 * 1/sqrt(10) < 3.2 on [-1, 1]^10: bias 5 fires always, -100 never.
            self[0][0].bias.fill_(5.0)
            self[0][0].bias[list(MLP_DEAD["0.1"])] = -100.0
            self[1][0].weight.mul_(0.01)
            self[1][0].bias.fill_(1.0)
            self[1][0].bias[list(MLP_DEAD["1.1"])] = -100.0


class ConvBNNet(nn.Module):
    """Conv(3->8) -> BN -> ReLU -> Conv(8->6) -> BN -> ReLU -> MaxPool 2 -> flatten -> Linear(96 -> 5), 8x8 input.

    Dead channels (BN beta -100): ``relu1`` 1, 4, 6; ``relu2`` 2. A custom ``forward``
    with ``torch.flatten``, so the Linear's columns are removed in blocks of 16.
    """

    dead = {"relu1": (1, 4, 6), "relu2": (2,)}

    def __init__(self, hard_coded_view: bool = False, train_mode: bool = False) -> None:
        super().__init__()
        self.hard_coded_view = hard_coded_view
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(96, 5)
        with torch.no_grad():
            # |conv1| <= 27 * 0.2 + 0.2 < 6: beta 10 fires always. conv2 is normalised by a
            # running variance of 1e4 (scale 0.01), so beta 2 fires always.
            self.bn1.bias.fill_(10.0)
            self.bn1.bias[list(self.dead["relu1"])] = -100.0
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 2.0)
            self.bn2.running_var.fill_(1e4)
            self.bn2.bias.fill_(2.0)
            self.bn2.bias[list(self.dead["relu2"])] = -100.0
        # train_mode: as a factory or --arch leaves a model (nn.Module starts in train mode), where
        # one forward outside eval mode moves the BatchNorm running statistics.
        self.train(train_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))))
        x = x.view(-1, 96) if self.hard_coded_view else torch.flatten(x, 1)
        return self.fc(x)


def conv_inputs(samples: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(samples, 3, 8, 8, generator=generator) * 2 - 1


class ResidualNet(nn.Module):
    """stem -> relu0 -> [fc1 -> relu1 -> fc2] + skip -> relu2 -> head.

    Dead: relu0 unit 3 (its channel also feeds the skip add: kept), relu1 unit 5
    (prunable: fc1 row, fc2 column), relu2 unit 3 (its input is the add: kept).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.relu0 = nn.ReLU()
        self.fc1 = nn.Linear(8, 8)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(8, 8)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.stem.bias.fill_(5.0)
            self.stem.bias[3] = -100.0
            for layer in (self.fc1, self.fc2):
                layer.weight.mul_(0.01)
                layer.bias.fill_(1.0)
            self.fc1.bias[5] = -100.0
            self.fc2.bias[3] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu0(self.stem(x))
        return self.head(self.relu2(self.fc2(self.relu1(self.fc1(h))) + h))


class BranchyMLP(nn.Module):
    """Linear 10->16 -> ReLU with dead units 0, 1; ``forward`` branches on ``x.dim()``,
    which torch.fx cannot trace (so the export graph is used)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)
        with torch.no_grad():
            self.fc1.bias.fill_(5.0)
            self.fc1.bias[:2] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.fc2(self.act(self.fc1(x)))
        return self.fc2(self.act(self.fc1(x.flatten(1))))


class MixedActivations(nn.Module):
    """fc1 -> ``act1`` ReLU (units 0-3 dead) -> fc2 -> ``act2`` ReLU (healthy) -> fc3 -> F.relu
    (units 0, 1 dead, a functional site) -> out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 12)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(12, 12)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(12, 8)
        self.out = nn.Linear(8, 2)
        with torch.no_grad():
            self.fc1.bias.fill_(5.0)
            self.fc1.bias[:4] = -100.0
            for layer in (self.fc2, self.fc3):
                layer.weight.mul_(0.01)
                layer.bias.fill_(1.0)
            self.fc3.bias[:2] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))))


class LeakyDead(nn.Sequential):
    """Linear 10->12 -> LeakyReLU(0.1) with units 0-2 pushed to -100 -> Linear 12->2."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(10, 12), nn.LeakyReLU(0.1), nn.Linear(12, 2))
        with torch.no_grad():
            self[0].bias.fill_(5.0)
            self[0].bias[:3] = -100.0


#: Dead channels of ``train_resnet()``: BatchNorm -> (site, channels). ``layer1.0.relu#0`` and
#: ``layer2.0.relu#1`` are prunable (conv -> bn -> relu -> conv); the stem's ``relu`` reaches the
#: residual add of ``layer1.0`` and is left alone.
RESNET_DEAD = {"layer1.0.bn1": ("layer1.0.relu#0", (0, 2)), "layer2.0.bn2": ("layer2.0.relu#1", (1,)),
               "bn1": ("relu", (3,))}


def resnet_images(count: int = 16, seed: int = 1) -> torch.Tensor:
    """Images for ``train_resnet`` (the calibration set of tests/real_nets.py)."""
    from real_nets import images
    return images(count=count, seed=seed)


def train_resnet() -> nn.Module:
    """tests/real_nets.py's ResNetLike with one Bottleneck per stage (torchvision's layout, shared
    in-place ReLU, ``out += identity``), BatchNorm calibrated, dead channels per ``RESNET_DEAD``
    (beta -10), left in TRAIN mode as a factory would leave it."""
    import sys
    from pathlib import Path
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:  # loaded by path (--model tests/repair_models.py:train_resnet)
        sys.path.insert(0, here)
    from real_nets import ResNetLike, calibrate, push_beta
    torch.manual_seed(0)
    model = ResNetLike(layers=(1, 1, 1, 1))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    calibrate(model, resnet_images(24))
    for bn_name, (_site, channels) in RESNET_DEAD.items():
        push_beta(model, bn_name, list(channels))
    return model.train()


#: Dead product units of ``GatedMLP``: their ``up`` rows are exactly 0, so act(gate) * up is 0.
GATED_DEAD = (2, 5, 7)


class GatedMLP(nn.Module):
    """A Llama-style gated MLP, ``down(act(gate(x)) * up(x))``, 10 -> 12 -> 3, between two Linears.

    ``act`` SiLU: the product is site ``:swiglu#0`` (``GATED_DEAD`` units dead: their ``up`` rows
    and biases are 0), the gate's SiLU is a site of its own with no dead unit. ``act`` ReLU
    (``relu_gate=True``): the same units die through the gate instead (gate bias -100), so both
    the ``act`` site and the ``:reglu#0`` product site have them dead. Pruned shapes: gate and up
    (9, 10), down (3, 9).
    """

    def __init__(self, relu_gate: bool = False) -> None:
        super().__init__()
        self.gate = nn.Linear(10, 12)
        self.up = nn.Linear(10, 12)
        self.act = nn.ReLU() if relu_gate else nn.SiLU()
        self.down = nn.Linear(12, 3)
        with torch.no_grad():
            dead = list(GATED_DEAD)
            if relu_gate:
                self.gate.bias.fill_(5.0)  # |w.x| < 3.2 on [-1, 1]^10: always active
                self.gate.bias[dead] = -100.0
            else:
                self.up.weight[dead] = 0.0
                self.up.bias[dead] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def llama_with_dead_products(units: tuple[int, ...] = (1, 4, 9)):
    """tests/lm_fixtures.py's tiny Llama (SwiGLU MLPs, 32 units) with ``units`` of layer 0's product
    exactly 0: their ``up_proj`` rows are 0 (Llama's projections have no bias)."""
    import sys
    from pathlib import Path
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from lm_fixtures import llama
    model = llama()
    with torch.no_grad():
        model.layers[0].mlp.up_proj.weight[list(units)] = 0.0
    return model


class ShiftMLP(nn.Sequential):
    """Linear 4->6 -> ReLU -> Linear 6->2, built so that the data decides which units are dead.

    Unit i < 4 of the hidden layer reads x_i with weight 1; units 4, 5 read -x_2 and -x_3.
    Units 0 and 1 have bias -2: on ``inputs(features=4)`` (every x_i in [-1, 1]) they never fire;
    on ``shifted_inputs()`` (x_0 = 3) unit 0 fires (3 - 2 > 0) and unit 1 still does not. Every
    other unit has bias 2 and fires everywhere.
    """

    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        with torch.no_grad():
            weight = torch.zeros(6, 4)
            weight[[0, 1, 2, 3], [0, 1, 2, 3]] = 1.0
            weight[4, 2], weight[5, 3] = -1.0, -1.0
            self[0].weight.copy_(weight)
            self[0].bias.copy_(torch.tensor([-2.0, -2.0, 2.0, 2.0, 2.0, 2.0]))
            self[2].weight.copy_(torch.arange(12, dtype=torch.float32).view(2, 6) / 10 + 0.1)
            self[2].bias.zero_()


def shifted_inputs(samples: int = 50, seed: int = 3) -> torch.Tensor:
    """Held-out data for ``ShiftMLP``: like ``inputs(features=4)`` but x_0 = 3 (unit 0 fires)."""
    data = inputs(samples, features=4, seed=seed)
    data[:, 0] = 3.0
    return data
