"""The diagnosis zoo: small models TRAINED so that their units die for one known cause.

Each ``Case`` carries its truth: the cause deadrelu's top suggestion should name
(``learning-rate``, ``bias``, ``input-scale``, ``upstream``, ``batchnorm``,
``zero-weights``) or ``None`` for a healthy model whose verdict should be ``ok``.
The models are trained here, deterministically (seeded, one thread, CPU), on
synthetic data drawn from fixed generators, so nothing is downloaded:

* blobs: Gaussian clusters in 20-d (MLPs, the gated MLP);
* bars: 1x12x12 images of a horizontal or vertical bar, raw pixel values 0..255
  (CNNs; models are trained on standardised pixels unless the case says otherwise);
* tokens: sequences of 8 vectors in 16-d holding a class prototype at random positions
  (a transformer block).

``build(name, size)`` trains one case; ``size="ci"`` is the small zoo the tests run
(the whole zoo trains in a few seconds), ``size="bench"`` the benchmark's larger one.
A case also knows how to fine-tune itself briefly and measure its accuracy, which the
benchmark uses to prove that a suggestion's fix revives units without hurting accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# -- data -------------------------------------------------------------------------------------------


def blobs(rng: np.random.Generator, n: int, d: int = 20, k: int = 4, offset: float = 0.0,
          centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian clusters: centre ~ N(0, 1) per class, point = centre + N(0, 1) + offset."""
    centres = rng.normal(0.0, 1.0, (k, d)) if centres is None else centres
    labels = rng.integers(0, k, n)
    x = centres[labels] + rng.normal(0.0, 1.0, (n, d)) + offset
    return x.astype(np.float32), labels.astype(np.int64), centres


def bars(rng: np.random.Generator, n: int, side: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Raw 0..255 images: class c < 4 is a horizontal bar at row 1+3c, c >= 4 a vertical one
    at column 1+3(c-4); jittered by one pixel, bright or dark, on a noisy grey background."""
    labels = rng.integers(0, 8, n)
    img = rng.normal(110.0, 25.0, (n, 1, side, side))
    shift = rng.integers(-1, 2, n)
    bright = rng.uniform(60.0, 120.0, n) * rng.choice([-1.0, 1.0], n)
    for i, (c, s, b) in enumerate(zip(labels, shift, bright)):
        pos = int(np.clip(1 + 3 * (c % 4) + s, 0, side - 2))
        if c < 4:
            img[i, 0, pos:pos + 2, :] += b
        else:
            img[i, 0, :, pos:pos + 2] += b
    return np.clip(img, 0, 255).astype(np.float32), labels.astype(np.int64)


def tokens(rng: np.random.Generator, n: int, length: int = 8, d: int = 16, k: int = 4,
           prototypes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences of ``length`` noise vectors; the class prototype is added at 3 random positions."""
    prototypes = rng.normal(0.0, 1.5, (k, d)) if prototypes is None else prototypes
    labels = rng.integers(0, k, n)
    x = rng.normal(0.0, 1.0, (n, length, d))
    for i, c in enumerate(labels):
        x[i, rng.choice(length, 3, replace=False)] += prototypes[c]
    return x.astype(np.float32), labels.astype(np.int64), prototypes


# -- architectures ----------------------------------------------------------------------------------


def mlp(widths: tuple[int, ...], classes: int = 4) -> nn.Sequential:
    """Linear -> ReLU blocks (``net.0``, ``net.1``, ...) then a Linear head, as ``nn.Sequential``."""
    layers: list[nn.Module] = []
    for before, after in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(before, after), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], classes))
    return nn.Sequential(*layers)


def cnn(norm: bool, width: int = 8, classes: int = 8, side: int = 12) -> nn.Sequential:
    """Two conv blocks (Conv [-> BatchNorm] -> ReLU -> MaxPool), then Linear -> ReLU -> Linear."""
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not norm)
        return [conv, *([nn.BatchNorm2d(c_out)] if norm else []), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(1, width), *block(width, 2 * width), nn.Flatten(),
                         nn.Linear(2 * width * (side // 4) ** 2, 32), nn.ReLU(), nn.Linear(32, classes))


class TransformerBlock(nn.Module):
    """Pre-norm attention + a ReLU feed-forward (``ff.fc1`` -> ``ff.act`` -> ``ff.fc2``), mean-pooled head."""

    def __init__(self, d: int = 16, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attention = nn.MultiheadAttention(d, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential()
        self.ff.add_module("fc1", nn.Linear(d, hidden))
        self.ff.add_module("act", nn.ReLU())
        self.ff.add_module("fc2", nn.Linear(hidden, d))
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        x = x + self.ff(self.norm2(x))
        return self.head(x.mean(dim=1))


class GatedMLP(nn.Module):
    """A Llama-style gated MLP: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` (SwiGLU)."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class GatedNet(nn.Module):
    """``embed`` (Linear) -> residual gated MLP ``mlp`` -> ``head``."""

    def __init__(self, d_in: int = 20, d: int = 32, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.norm = nn.LayerNorm(d)
        self.mlp = GatedMLP(d, hidden)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.mlp(self.norm(h))
        return self.head(h)


# -- a case -----------------------------------------------------------------------------------------


@dataclass
class Case:
    """One trained zoo model and what is true about it.

    Attributes:
        name: ``<cause or healthy>/<architecture>``.
        cause: the cause the top suggestion should name; None for a healthy model.
        arch: ``mlp``, ``cnn``, ``cnn-bn``, ``transformer`` or ``gated``.
        model: the trained model, in eval mode.
        scan_data: what the model is scanned on.
        train_x, train_y: the (model-ready) training data, for fine-tuning.
        test_x, test_y: held-out (model-ready) data, for accuracy.
        optimizer_state: the optimizer's ``state_dict()`` when the case saves it with the model.
        scan_test_x: held-out data in the scan's form, where it differs from the model's (raw pixels).
        model_input: maps ``scan_data`` to what the model was trained on (the input-scale fix).
        how: one sentence on how the cause was made.
    """

    name: str
    cause: str | None
    arch: str
    model: nn.Module
    scan_data: torch.Tensor
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    optimizer_state: dict[str, Any] | None = None
    scan_test_x: torch.Tensor | None = None
    model_input: Callable[[torch.Tensor], torch.Tensor] | None = None
    how: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def accuracy(self, model: nn.Module | None = None, x: torch.Tensor | None = None) -> float:
        """Held-out accuracy of ``model`` (default: the case's) on ``x`` (default: the test set)."""
        model = self.model if model is None else model
        was = model.training
        model.eval()
        out = model(self.test_x if x is None else x)
        model.train(was)
        return float((out.argmax(1) == self.test_y).float().mean())

    def finetune(self, model: nn.Module, steps: int = 150, lr: float = 1e-3, seed: int = 0,
                 optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
        """A short fine-tune at a sane rate (Adam, batch 64) on the training data."""
        optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
        fit(model, self.train_x, self.train_y, optimizer, steps=steps, batch=64, seed=seed)
        return model


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, steps: int,
        batch: int = 64, seed: int = 0, penalty: Callable[[], torch.Tensor] | None = None,
        after_step: Callable[[], None] | None = None) -> None:
    """Minibatch training with a seeded order; ``penalty`` is added to the loss, ``after_step`` runs after each step."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(x), generator=generator)
    position = 0
    for _ in range(steps):
        if position + batch > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position:position + batch]
        position += batch
        loss = F.cross_entropy(model(x[index]), y[index])
        if penalty is not None:
            loss = loss + penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
    model.eval()


# -- the scenarios ----------------------------------------------------------------------------------

SIZES = {"ci": {"n": 1200, "steps": 1.0}, "bench": {"n": 4000, "steps": 2.0}}


#: added to every seed of a case (``build(..., seed=k)``): the same recipe on other data and initial weights
_SHIFT = 0


def _seed(base: int) -> None:
    torch.manual_seed(base + 1000 * _SHIFT)


def _steps(size: str, base: int) -> int:
    return int(base * SIZES[size]["steps"])


def _blob_data(seed: int, size: str, offset: float = 0.0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed + 1000 * _SHIFT)
    x, y, centres = blobs(rng, SIZES[size]["n"], offset=offset)
    x_test, y_test, _ = blobs(rng, 1000, offset=offset, centres=centres)
    return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "x_test": torch.from_numpy(x_test),
            "y_test": torch.from_numpy(y_test)}


def _bar_data(seed: int, size: str) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 1000 * _SHIFT)
    x, y = bars(rng, SIZES[size]["n"])
    x_test, y_test = bars(rng, 800)
    mean, std = float(x.mean()), float(x.std())
    return {"raw": torch.from_numpy(x), "raw_test": torch.from_numpy(x_test), "mean": mean, "std": std,
            "x": torch.from_numpy((x - mean) / std), "y": torch.from_numpy(y),
            "x_test": torch.from_numpy((x_test - mean) / std), "y_test": torch.from_numpy(y_test)}


def _token_data(seed: int, size: str) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed + 1000 * _SHIFT)
    x, y, prototypes = tokens(rng, SIZES[size]["n"])
    x_test, y_test, _ = tokens(rng, 800, prototypes=prototypes)
    return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "x_test": torch.from_numpy(x_test),
            "y_test": torch.from_numpy(y_test)}


def _case(name: str, cause: str | None, arch: str, model: nn.Module, data: dict[str, Any], how: str,
          scan_data: torch.Tensor | None = None, **extra: Any) -> Case:
    model.eval()
    return Case(name=name, cause=cause, arch=arch, model=model,
                scan_data=data["x"] if scan_data is None else scan_data, train_x=data["x"], train_y=data["y"],
                test_x=data["x_test"], test_y=data["y_test"], how=how, **extra)


def lr_sgd_mlp(size: str) -> Case:
    data = _blob_data(11, size, offset=2.0)
    _seed(11)
    model = mlp((20, 64, 64, 64))
    fit(model, data["x"], data["y"], torch.optim.SGD(model.parameters(), lr=1.0), steps=_steps(size, 150))
    return _case("learning-rate/mlp-sgd", "learning-rate", "mlp", model, data,
                 "plain SGD at lr 1.0 (a sane rate for this MLP is 0.05)")


def lr_sgd_cnn_bn(size: str) -> Case:
    data = _bar_data(12, size)
    _seed(12)
    model = cnn(norm=True)
    fit(model, data["x"], data["y"], torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9),
        steps=_steps(size, 150))
    return _case("learning-rate/cnn-bn-sgd", "learning-rate", "cnn-bn", model, data,
                 "SGD with momentum 0.9 at lr 1.0 (sane: 0.02)")


def lr_adam_mlp(size: str) -> Case:
    data = _blob_data(13, size, offset=1.0)
    _seed(13)
    model = mlp((20, 64, 64, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    fit(model, data["x"], data["y"], optimizer, steps=_steps(size, 150))
    return _case("learning-rate/mlp-adam", "learning-rate", "mlp", model, data,
                 "Adam at lr 0.05 (sane: 1e-3), saved with its optimizer state",
                 optimizer_state=optimizer.state_dict())


def lr_adam_transformer(size: str) -> Case:
    data = _token_data(14, size)
    _seed(14)
    model = TransformerBlock()
    # lr 0.1: at 0.05 how many units die swings with the machine's float rounding (0 to 47 of 64 over
    # eight seeds on one CPU, 10 on seed 0 where another CPU killed more); at 0.1 every seed kills 29+.
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    fit(model, data["x"], data["y"], optimizer, steps=_steps(size, 150))
    return _case("learning-rate/transformer-adam", "learning-rate", "transformer", model, data,
                 "Adam at lr 0.1 (sane: 1e-3), saved with its optimizer state",
                 optimizer_state=optimizer.state_dict())


def bias_mlp(size: str) -> Case:
    data = _blob_data(15, size)
    _seed(15)
    model = mlp((20, 64, 64, 64))
    with torch.no_grad():
        for layer in list(model)[:-1]:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight)
                layer.bias.fill_(-2.0)
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 200))
    return _case("bias/mlp", "bias", "mlp", model, data,
                 "He-initialised weights, hidden biases initialised to -2, Adam at lr 1e-3")


def bias_cnn(size: str) -> Case:
    data = _bar_data(16, size)
    _seed(16)
    model = cnn(norm=False)
    with torch.no_grad():
        model[3].bias.fill_(-1.5)          # the second conv
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 200))
    return _case("bias/cnn", "bias", "cnn", model, data, "the second conv's biases initialised to -1.5, Adam at lr 1e-3")


def input_scale_cnn_bn(size: str) -> Case:
    data = _bar_data(17, size)
    _seed(17)
    model = cnn(norm=True)
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=3e-3), steps=_steps(size, 200))
    mean, std = data["mean"], data["std"]
    return _case("input-scale/cnn-bn", "input-scale", "cnn-bn", model, data,
                 "trained on standardised pixels, scanned on raw 0..255 pixels", scan_data=data["raw"],
                 scan_test_x=data["raw_test"], model_input=lambda x: (x - mean) / std)


def input_scale_mlp(size: str) -> Case:
    data = _bar_data(18, size)
    _seed(18)
    flat = {key: (value.flatten(1) if isinstance(value, torch.Tensor) and value.dim() == 4 else value)
            for key, value in data.items()}
    model = mlp((144, 64, 64))
    model[-1] = nn.Linear(64, 8)
    fit(model, flat["x"], flat["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 200))
    mean, std = data["mean"], data["std"]
    return _case("input-scale/mlp", "input-scale", "mlp", model, flat,
                 "trained on standardised pixels, scanned on raw 0..255 pixels", scan_data=flat["raw"],
                 scan_test_x=flat["raw_test"], model_input=lambda x: (x - mean) / std)


def upstream_mlp(size: str) -> Case:
    data = _blob_data(19, size)
    _seed(19)
    model = mlp((20, 16, 96, 64))
    with torch.no_grad():
        model[0].bias[2:] = -8.0       # 14 of the first layer's 16 units never fire from the start
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 200))
    return _case("upstream/mlp", "upstream", "mlp", model, data,
                 "14 of 16 first-layer units dead from the start (bias -8): the 96-wide next layer starves")


def batchnorm_cnn(size: str) -> Case:
    data = _bar_data(20, size)
    _seed(20)
    model = cnn(norm=True)
    pushed = model[5]                  # the second BatchNorm
    channels = torch.arange(0, 16, 2)  # half its channels

    def penalty() -> torch.Tensor:
        return 0.1 * pushed.bias[channels].sum()   # a regulariser that pushes these betas down
    fit(model, data["x"], data["y"], torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        steps=_steps(size, 200), penalty=penalty)
    return _case("batchnorm/cnn-bn", "batchnorm", "cnn-bn", model, data,
                 "a regulariser pushes beta of 8 of the second BatchNorm's 16 channels down while training")


def _prune_rows(layers: list[nn.Linear], rows: torch.Tensor) -> Callable[[], None]:
    @torch.no_grad()
    def apply() -> None:
        for layer in layers:
            layer.weight[rows] = 0.0
            if layer.bias is not None:
                layer.bias[rows] = 0.0
    return apply


def zero_rows_mlp(size: str) -> Case:
    data = _blob_data(21, size)
    _seed(21)
    model = mlp((20, 64, 64, 64))
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 150))
    prune = _prune_rows([model[2]], torch.arange(0, 64, 3))
    prune()
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 50),
        after_step=prune)
    return _case("zero-weights/mlp", "zero-weights", "mlp", model, data,
                 "a third of net.2's rows pruned to zero (weights and bias), fine-tuned with the mask")


def zero_rows_gated(size: str) -> Case:
    data = _blob_data(22, size)
    _seed(22)
    model = GatedNet()
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 150))
    prune = _prune_rows([model.mlp.gate_proj, model.mlp.up_proj], torch.arange(0, 64, 4))
    prune()
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 50),
        after_step=prune)
    return _case("zero-weights/gated", "zero-weights", "gated", model, data,
                 "a quarter of gate_proj/up_proj rows pruned to zero, fine-tuned with the mask")


def zero_rows_transformer(size: str) -> Case:
    data = _token_data(23, size)
    _seed(23)
    model = TransformerBlock()
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 150))
    prune = _prune_rows([model.ff.fc1], torch.arange(0, 64, 4))
    prune()
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 50),
        after_step=prune)
    return _case("zero-weights/transformer", "zero-weights", "transformer", model, data,
                 "a quarter of ff.fc1's rows pruned to zero, fine-tuned with the mask")


def healthy_mlp(size: str) -> Case:
    data = _blob_data(24, size, offset=1.0)
    _seed(24)
    model = mlp((20, 64, 64, 64))
    fit(model, data["x"], data["y"], torch.optim.SGD(model.parameters(), lr=0.05), steps=_steps(size, 200))
    return _case("healthy/mlp", None, "mlp", model, data, "plain SGD at lr 0.05")


def healthy_cnn_bn(size: str) -> Case:
    data = _bar_data(25, size)
    _seed(25)
    model = cnn(norm=True)
    fit(model, data["x"], data["y"], torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9),
        steps=_steps(size, 200))
    return _case("healthy/cnn-bn", None, "cnn-bn", model, data, "SGD with momentum at lr 0.02")


def healthy_transformer(size: str) -> Case:
    data = _token_data(26, size)
    _seed(26)
    model = TransformerBlock()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(model, data["x"], data["y"], optimizer, steps=_steps(size, 200))
    return _case("healthy/transformer", None, "transformer", model, data, "Adam at lr 1e-3, saved with its state",
                 optimizer_state=optimizer.state_dict())


def healthy_gated(size: str) -> Case:
    data = _blob_data(27, size)
    _seed(27)
    model = GatedNet()
    fit(model, data["x"], data["y"], torch.optim.Adam(model.parameters(), lr=1e-3), steps=_steps(size, 200))
    return _case("healthy/gated", None, "gated", model, data, "Adam at lr 1e-3")


#: every case, by name, in the order the benchmark prints them
CASES: dict[str, Callable[[str], Case]] = {
    "learning-rate/mlp-sgd": lr_sgd_mlp,
    "learning-rate/cnn-bn-sgd": lr_sgd_cnn_bn,
    "learning-rate/mlp-adam": lr_adam_mlp,
    "learning-rate/transformer-adam": lr_adam_transformer,
    "bias/mlp": bias_mlp,
    "bias/cnn": bias_cnn,
    "input-scale/cnn-bn": input_scale_cnn_bn,
    "input-scale/mlp": input_scale_mlp,
    "upstream/mlp": upstream_mlp,
    "batchnorm/cnn-bn": batchnorm_cnn,
    "zero-weights/mlp": zero_rows_mlp,
    "zero-weights/gated": zero_rows_gated,
    "zero-weights/transformer": zero_rows_transformer,
    "healthy/mlp": healthy_mlp,
    "healthy/cnn-bn": healthy_cnn_bn,
    "healthy/transformer": healthy_transformer,
    "healthy/gated": healthy_gated,
}


def build(name: str, size: str = "ci", seed: int = 0) -> Case:
    """Train one case, deterministically.

    Args:
        name: a key of ``CASES``.
        size: ``"ci"`` (small, for tests) or ``"bench"`` (more data and steps).
        seed: 0 for the zoo as committed; another number draws other data and initial weights
            for the same recipe.

    Returns:
        The trained case.
    """
    global _SHIFT
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _SHIFT = seed
    try:
        with torch.random.fork_rng():
            return CASES[name](size)
    finally:
        _SHIFT = 0
        torch.set_num_threads(threads)


def he_std(layer: nn.Module) -> float:
    """He's std for a Linear/Conv layer (used by the benchmark's notes)."""
    return math.sqrt(2.0 / layer.weight[0].numel())
