"""The benchmark's workloads: small but real architectures and their data.

Written in the repo (torchvision is not needed):

* ``cnn``: a ResNet-18-style CNN whose BasicBlocks reuse one in-place ReLU (two sites per block);
* ``mlp``: a 784-1024-1024-1024-10 ReLU MLP;
* ``transformer``: pre-norm encoder blocks whose MLPs use GELU and ReLU on (N, L, D) tensors;
* ``cnn-kinds``: bottleneck CNN, one kind per stage: in-place ReLU reused 3x per block,
  in-place LeakyReLU reused, per-channel PReLU, then RReLU / ReLU6 / Hardtanh;
* ``mlp-kinds``: MLP 784-1024-1024-1024-512-10 with ELU, SELU, CELU and ReLU layers;
* ``transformer-kinds``: encoder blocks whose MLPs use GELU and SiLU;
* ``mobile``: a MobileNetV2-like network (inverted residuals, ReLU6, 50 sites) at 64x64:
  many small sites, where the fixed cost per site and batch dominates.

Together the sites cover every kind deadrelu scans. Weights come from a fixed seed;
the data is Gaussian noise of the documented size. Nothing here is timed;
``overhead.py`` does the timing.
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
    """A stack of encoder blocks alternating GELU and ``second`` MLPs (one site per block)."""

    def __init__(self, dim: int = 256, heads: int = 4, hidden: int = 1024, depth: int = 4,
                 second: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[
            EncoderBlock(dim, heads, hidden, nn.GELU() if index % 2 == 0 else second())
            for index in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(x))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (1x1, 3x3, 1x1, expansion 4) with a chosen activation.

    Parameter-free kinds use one module called three times per forward, as torchvision
    does with ``self.relu``; PReLU (a learned slope per channel) gets one module per position.
    """

    def __init__(self, inplanes: int, planes: int, stride: int, make: Callable[[int], nn.Module],
                 shared: bool) -> None:
        super().__init__()
        width, out = planes, planes * 4
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act1 = make(width)
        self.act2 = self.act1 if shared else make(width)
        self.act3 = self.act1 if shared else make(out)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.act3(out)


class KindsCNN(nn.Module):
    """A slim bottleneck ResNet, one activation kind per stage (28 sites, 6 kinds).

    Stem: in-place ReLU. Stages of two bottleneck blocks: (1) in-place ReLU reused 3x per
    block, (2) in-place LeakyReLU(0.1) reused, (3) per-channel PReLU, (4) RReLU, ReLU6
    and Hardtanh blocks (RReLU in eval mode is a LeakyReLU with the mean slope): 28 sites.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stage_kinds: list[list[tuple[Callable[[int], nn.Module], bool]]] = [
            [(lambda c: nn.ReLU(inplace=True), True)] * 2,
            [(lambda c: nn.LeakyReLU(0.1, inplace=True), True)] * 2,
            [(lambda c: nn.PReLU(c), False)] * 2,
            [(lambda c: nn.RReLU(), True), (lambda c: nn.ReLU6(inplace=True), True),
             (lambda c: nn.Hardtanh(-1.0, 1.0), True)],
        ]
        stages, inplanes = [], 32
        for (planes, stride), kinds in zip(((16, 1), (32, 2), (64, 2), (128, 2)), stage_kinds):
            blocks = []
            for index, (make, shared) in enumerate(kinds):
                blocks.append(Bottleneck(inplanes, planes, stride if index == 0 else 1, make, shared))
                inplanes = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def kinds_mlp() -> nn.Sequential:
    """MLP 784-1024-1024-1024-512-10 with ELU, SELU, CELU and ReLU after the hidden layers (4 sites)."""
    return nn.Sequential(nn.Linear(784, 1024), nn.ELU(), nn.Linear(1024, 1024), nn.SELU(),
                         nn.Linear(1024, 1024), nn.CELU(0.5), nn.Linear(1024, 512), nn.ReLU(),
                         nn.Linear(512, 10))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNet(nn.Module):
    """A MobileNetV2-like network: stem, 24 inverted residual blocks, head; 50 ReLU6 sites.

    MobileNetV2's (expansion, channels, repeats, stride) table with more repeats in the
    middle stages (1 + 2 * 24 + 1 = 50 sites: the first block has no expansion), width
    multiplier 0.5, so at 64x64 most sites are small (2x2 to 32x32 maps).
    """

    SETTINGS = ((1, 8, 1, 1), (6, 12, 3, 2), (6, 16, 4, 2), (6, 32, 5, 2), (6, 48, 5, 1), (6, 80, 5, 2),
                (6, 160, 2, 1))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)]
        channels = 16
        for expand, out, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if index == 0 else 1, expand))
                channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(channels, 640, 1, bias=False), nn.BatchNorm2d(640))
        self.classifier = nn.Linear(640, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


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


def resnet_leaky() -> nn.Module:
    """The ResNet-18-style CNN with in-place LeakyReLU(0.1) in place of every ReLU (a model written
    outside this project's habits: the issue's "ResNet-style CNN with LeakyReLU")."""
    model = ResNet18()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.LeakyReLU(0.1, inplace=True))
    return model


def elu_mlp() -> nn.Sequential:
    """MLP 784-512-512-512-10 with ELU (the issue's "MLP with ELU")."""
    return nn.Sequential(nn.Linear(784, 512), nn.ELU(), nn.Linear(512, 512), nn.ELU(), nn.Linear(512, 512), nn.ELU(),
                         nn.Linear(512, 10))


WORKLOADS: dict[str, Workload] = {
    "cnn": Workload("cnn", "ResNet-18-style CNN, 3x64x64 images, 17 ReLU sites (in-place ReLU reused per block)",
                    ResNet18, (3, 64, 64), 2048, 64),
    "mlp": Workload("mlp", "MLP 784-1024-1024-1024-10, 3 ReLU sites", mlp, (784,), 16384, 256),
    "transformer": Workload("transformer", "4 pre-norm encoder blocks, D=256, 4 heads, MLP 1024 "
                            "(GELU/ReLU alternating), L=64", Encoder, (64, 256), 1024, 32),
    "opt": Workload("opt", "small OPT decoder (transformers OPTModel), D=256, 4 layers, ReLU FFN 1024, "
                    "int64 token ids, L=128", small_opt, (128,), 256, 16, vocab=4096),
    "cnn-kinds": Workload("cnn-kinds", "bottleneck CNN, 3x64x64: ReLU (in-place, reused 3x), LeakyReLU "
                          "(in-place, reused), PReLU, RReLU, ReLU6, Hardtanh stages, 28 sites", KindsCNN,
                          (3, 64, 64), 2048, 64),
    "mlp-kinds": Workload("mlp-kinds", "MLP 784-1024-1024-1024-512-10, ELU, SELU, CELU, ReLU (4 sites)",
                          kinds_mlp, (784,), 16384, 256),
    "transformer-kinds": Workload("transformer-kinds", "4 pre-norm encoder blocks, D=256, MLP 1024, GELU/SiLU "
                                  "alternating, L=64", lambda: Encoder(second=nn.SiLU), (64, 256), 1024, 32),
    "mobile": Workload("mobile", "MobileNetV2-like (x0.5, 24 inverted residuals), 3x64x64, 50 ReLU6 sites",
                       MobileNet, (3, 64, 64), 2048, 64),
}

#: Models written outside this project's habits, tiny Hugging Face models and timm-style many-site
#: networks (``small_models.py``): issue 23's table. The Hugging Face ones are listed where
#: ``transformers`` imports.
EXTRA: dict[str, Workload] = {
    "resnet-leaky": Workload("resnet-leaky", "ResNet-18-style CNN with in-place LeakyReLU(0.1), 3x64x64, 17 sites",
                             resnet_leaky, (3, 64, 64), 512, 64),
    "mlp-elu": Workload("mlp-elu", "MLP 784-512-512-512-10 with ELU, 3 sites", elu_mlp, (784,), 8192, 256),
}
WORKLOADS.update(EXTRA)


def _small() -> dict[str, Workload]:
    import small_models as small
    found = {
        "mobilenetv3": Workload("mobilenetv3", "MobileNetV3-Large-like (x0.5, 15 blocks, SE), 3x64x64, ReLU / "
                                "Hardswish / Hardsigmoid, 45 sites", small.MobileNetV3, (3, 64, 64), 512, 32),
        "ghostnet": Workload("ghostnet", "GhostNet-like (x0.5, 16 ghost bottlenecks, SE), 3x64x64, 40 ReLU sites",
                             small.GhostNet, (3, 64, 64), 512, 32),
        "regnet": Workload("regnet", "RegNetY-200MF-like (x0.5, 13 group-conv blocks, SE), 3x64x64, 53 ReLU sites",
                           small.RegNet, (3, 64, 64), 512, 32),
    }
    try:
        import transformers  # noqa: F401
    except ImportError:
        return found
    vocab, length = small.TINY["vocab"], 32
    for name, build, what in (("hf-bert", small.tiny_bert, "BertModel"), ("hf-gpt2", small.tiny_gpt2, "GPT2Model"),
                              ("hf-opt", small.tiny_opt, "OPTModel"), ("hf-llama", small.tiny_llama, "LlamaModel")):
        found[name] = Workload(name, f"tiny {what} from config (D=64, 2 layers), int64 token ids, L={length}", build,
                               (length,), 256, 8, vocab=vocab)
    found["hf-vit"] = Workload("hf-vit", "tiny ViTModel from config (D=64, 2 layers), 3x32x32, patch 8",
                               small.tiny_vit, (3, 32, 32), 256, 8)
    found["hf-whisper"] = Workload("hf-whisper", "tiny Whisper encoder from config (D=64, 2 layers), 16 mels x 64",
                                   small.tiny_whisper, (16, 64), 256, 8)
    found["hf-clip"] = Workload("hf-clip", "tiny CLIP vision tower from config (D=64, 2 layers), 3x32x32",
                                small.tiny_clip, (3, 32, 32), 256, 8)
    return found


WORKLOADS.update(_small())
