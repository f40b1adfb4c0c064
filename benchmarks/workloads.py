"""The benchmark's workloads: three small but real architectures and their data.

Written in the repo (torchvision is not needed): a ResNet-18-style CNN whose
BasicBlocks reuse one in-place ReLU (two sites per block), a 784-1024-1024-1024-10
MLP, and a transformer-style encoder stack whose MLPs use GELU and ReLU on
(N, L, D) tensors. Weights come from a fixed seed; the data is Gaussian noise of
the documented size. Nothing here is timed; ``overhead.py`` does the timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one in-place ReLU module called twice per forward."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18 layout (stem, 4 stages of 2 BasicBlocks, 64-512 channels): 17 ReLU sites."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inplanes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mlp(widths: tuple[int, ...] = (784, 1024, 1024, 1024, 10)) -> nn.Sequential:
    """A plain MLP with a ReLU after every hidden Linear (3 sites for the default widths)."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block on (N, L, D): self-attention, then an MLP."""

    def __init__(self, dim: int, heads: int, hidden: int, activation: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class Encoder(nn.Module):
    """A stack of encoder blocks alternating GELU and ReLU MLPs (one site per block)."""

    def __init__(self, dim: int = 256, heads: int = 4, hidden: int = 1024, depth: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[
            EncoderBlock(dim, heads, hidden, nn.GELU() if index % 2 == 0 else nn.ReLU())
            for index in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(x))


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    Attributes:
        name: short name used in the results.
        description: what it is, for the results table.
        build: returns the model (eval mode, fixed seed).
        sample_shape: shape of one input sample.
        samples: how many samples one pass scans.
        batch_size: samples per forward pass.
        vocab: for a language model, the vocabulary size: the data are int64 token ids
            drawn uniformly from it, not Gaussian noise.
    """

    name: str
    description: str
    build: Callable[[], nn.Module]
    sample_shape: tuple[int, ...]
    samples: int
    batch_size: int
    vocab: int | None = None

    def model(self, seed: int = 0) -> nn.Module:
        """The model with deterministic weights, in eval mode."""
        torch.manual_seed(seed)
        return self.build().eval()

    def data(self, samples: int | None = None, seed: int = 1) -> torch.Tensor:
        """Gaussian inputs (token ids for a language model), ``samples`` (default: the workload's
        size) by ``sample_shape``."""
        generator = torch.Generator().manual_seed(seed)
        shape = (samples or self.samples, *self.sample_shape)
        if self.vocab is not None:
            return torch.randint(0, self.vocab, shape, generator=generator)
        return torch.randn(shape, generator=generator)

    def scaled(self, samples: int | None = None, batch_size: int | None = None) -> Workload:
        """The same workload with another data size or batch size."""
        return Workload(self.name, self.description, self.build, self.sample_shape,
                        samples or self.samples, batch_size or self.batch_size, self.vocab)


def small_opt() -> nn.Module:
    """A small OPT decoder (transformers' ``OPTModel``, random weights): D=256, 4 layers, 4 heads,
    ReLU FFN of 1024, vocabulary 4096; needs ``pip install 'deadrelu[hf]'``."""
    from transformers import OPTConfig, OPTModel

    config = OPTConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4, ffn_dim=1024, num_attention_heads=4,
                       max_position_embeddings=256, word_embed_proj_dim=256, activation_function="relu",
                       pad_token_id=1, use_cache=False)
    return OPTModel(config)


WORKLOADS: dict[str, Workload] = {
    "cnn": Workload("cnn", "ResNet-18-style CNN, 3x64x64 images, 17 ReLU sites (in-place ReLU reused per block)",
                    ResNet18, (3, 64, 64), 2048, 64),
    "mlp": Workload("mlp", "MLP 784-1024-1024-1024-10, 3 ReLU sites", mlp, (784,), 16384, 256),
    "transformer": Workload("transformer", "4 pre-norm encoder blocks, D=256, 4 heads, MLP 1024 "
                            "(GELU/ReLU alternating), L=64", Encoder, (64, 256), 1024, 32),
    "opt": Workload("opt", "small OPT decoder (transformers OPTModel), D=256, 4 layers, ReLU FFN 1024, "
                    "int64 token ids, L=128", small_opt, (128,), 256, 16, vocab=4096),
}
