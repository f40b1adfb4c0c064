"""Networks built like torchvision's and timm's, small enough for CPU tests, each with its truth.

* ``resnet50_like``: torchvision's ResNet-50 layout (stem + [3, 4, 6, 3] Bottleneck blocks, one
  in-place ``self.relu`` called three times per block, ``out += identity`` before the last
  call): 1 + 16 x 3 = 49 sites, at 1/16 of the widths. ``push_beta`` kills channels through a
  BatchNorm's beta.
* ``timm_like``: timm's ``BatchNormAct2d`` (a ``BatchNorm2d`` subclass whose ``act`` child runs
  inside its forward) in a MobileNet-style stem, and residual blocks whose last BatchNorm has
  gamma = 0 (zero-init residual) before the add.
* ``mobilenetv3_like``: timm's MobileNetV3 layout — ``nn.Hardswish(inplace=True)`` inside
  BatchNormAct2d, inverted residual blocks with a squeeze-excite (ReLU inside, Hardsigmoid
  gate) — with channels killed through a BatchNorm's beta below Hardswish's -3.
* ``t5_like``: a T5-style encoder-decoder in plain torch (``config.is_encoder_decoder``, a
  ``forward(input_ids, decoder_input_ids)`` that needs both), a ReLU feed-forward in each
  stack, with ``T5_DEAD`` units killed through fc1's bias; ``t5_tokens`` are its token ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck, verbatim in structure."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetLike(nn.Module):
    """torchvision.models.resnet.ResNet's layout with Bottleneck blocks."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), width: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.inplanes = width * 4
        self.conv1 = nn.Conv2d(3, self.inplanes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for k, blocks in enumerate(layers):
            stages.append(self._make_layer(width * 2 ** k, blocks, stride=1 if k == 0 else 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def calibrate(model: nn.Module, data: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics from ``data`` (as training would leave them), then eval mode:
    each channel after BatchNorm is then ~N(β, γ²) on that data."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(data)
    return model.eval()


def resnet50_like(seed: int = 0) -> ResNetLike:
    """49 sites; He-initialised convs, BatchNorm γ = 1, β = 0 calibrated on ``images()``, in eval mode."""
    torch.manual_seed(seed)
    model = ResNetLike()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return calibrate(model, images())


def push_beta(model: nn.Module, bn_name: str, channels: list[int], beta: float = -10.0) -> None:
    """Set β of ``channels`` of BatchNorm ``bn_name`` to ``beta`` (γ stays 1): those channels die."""
    bn = model.get_submodule(bn_name)
    with torch.no_grad():
        bn.bias[channels] = beta


def images(count: int = 24, size: int = 16, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=generator)


# -- timm-like --------------------------------------------------------------------------------

class BatchNormAct2d(nn.BatchNorm2d):
    """timm.layers.norm_act.BatchNormAct2d: BatchNorm, then drop and act *inside* the norm's forward."""

    def __init__(self, num_features: int, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         1.0 if self.momentum is None else self.momentum, self.eps)
        return self.act(self.drop(x))


class ConvBnAct(nn.Module):
    """timm's ConvNormAct: a conv and a BatchNormAct2d."""

    def __init__(self, cin: int, cout: int, stride: int = 1, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(cout, act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x))


class ZeroInitBasicBlock(nn.Module):
    """timm's ResNet BasicBlock with ``zero_init_last``: bn2.weight = 0, then ``x += shortcut; act2(x)``."""

    def __init__(self, cin: int, cout: int, stride: int = 1, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act_layer(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        x += shortcut
        return self.act2(x)


class TimmLike(nn.Module):
    """A MobileNet-style stem of ConvBnAct (6 convs, all normalised through BatchNormAct2d) and two
    zero-init residual blocks. Shortcut channels 0..3 of ``blocks.1`` are pushed below zero, so
    they die at ``blocks.1.act2`` — where ``blocks.1.bn2`` has γ = 0, β = 0 and is *not* the cause."""

    def __init__(self, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBnAct(3, 8, act_layer=act_layer), ConvBnAct(8, 8, act_layer=act_layer),
                                  ConvBnAct(8, 16, stride=2, act_layer=act_layer),
                                  ConvBnAct(16, 16, act_layer=act_layer))
        self.blocks = nn.Sequential(ZeroInitBasicBlock(16, 16, act_layer=act_layer),
                                    ZeroInitBasicBlock(16, 16, act_layer=act_layer))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def timm_like(act_layer: type[nn.Module] = nn.ReLU, seed: int = 0) -> TimmLike:
    torch.manual_seed(seed)
    model = calibrate(TimmLike(act_layer), images())
    with torch.no_grad():  # after calibration, so the pushed channels stay pushed
        model.blocks[1].downsample[1].bias[:4] = -20.0
    return model


def timm_stem_only(act_layer: type[nn.Module] = nn.ReLU, seed: int = 0) -> nn.Sequential:
    """Four ConvBnAct (every conv normalised, but no *leaf* BatchNorm anywhere) and a head."""
    torch.manual_seed(seed)
    model = nn.Sequential(ConvBnAct(3, 8, act_layer=act_layer), ConvBnAct(8, 8, act_layer=act_layer),
                          ConvBnAct(8, 16, stride=2, act_layer=act_layer), ConvBnAct(16, 16, act_layer=act_layer),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return calibrate(model, images())


class DenseLayer(nn.Module):
    """timm's DenseLayer: concat the features so far, BatchNormAct2d, conv (growth channels)."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = BatchNormAct2d(cin)
        self.conv1 = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv1(self.norm1(torch.cat(features, 1)))


class DenseLike(nn.Module):
    """A dense block: each layer sees the concatenation of all earlier outputs (widths 8, 12, 16, 20)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList(DenseLayer(8 + 4 * k, 4) for k in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1).mean((2, 3))


# -- MobileNetV3-like (timm's mobilenetv3_small layout, at toy widths) ----------------------------

class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite as MobileNetV3 configures it: a ReLU inside, a Hardsigmoid gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(scale)


class InvertedResidual(nn.Module):
    """timm's InvertedResidual: 1x1 expand, BN + in-place Hardswish, depthwise 3x3, BN + in-place
    Hardswish, squeeze-excite, 1x1 project, BN (no act), skip when the shape allows."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid, nn.Hardswish)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = BatchNormAct2d(mid, nn.Hardswish)
        self.se = SqueezeExcite(mid, max(mid // 4, 4))
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        x = self.bn3(self.conv_pwl(self.se(x)))
        return x + shortcut if self.has_skip else x


class MobileNetV3Like(nn.Module):
    """Stem (conv, BN + in-place Hardswish), two inverted residual blocks, a 1x1 head conv with an
    in-place Hardswish, and a classifier: 10 sites (6 Hardswish; a ReLU and a Hardsigmoid in each SE)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(8, nn.Hardswish)
        self.blocks = nn.Sequential(InvertedResidual(8, 16, 8), InvertedResidual(8, 24, 12, stride=2))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(12, 16, 1)
        self.act2 = nn.Hardswish(inplace=True)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.bn1(self.conv_stem(x)))
        x = self.act2(self.conv_head(self.global_pool(x)))
        return self.classifier(torch.flatten(x, 1))


#: the channels ``mobilenetv3_like`` kills through blocks.0.bn1's beta (-10: always below -3)
HARDSWISH_DEAD = [0, 1, 2, 3]
#: channels pushed to beta = -1.5: mostly negative outputs, but above -3 (gradient alive): not dead
HARDSWISH_NEGATIVE = [4, 5]


def mobilenetv3_like(seed: int = 0) -> MobileNetV3Like:
    """He-initialised, BatchNorm calibrated on ``images()``; then ``blocks.0.bn1``'s beta is -10 on
    ``HARDSWISH_DEAD`` (dead at ``blocks.0.bn1.act``) and -1.5 on ``HARDSWISH_NEGATIVE`` (alive)."""
    torch.manual_seed(seed)
    model = MobileNetV3Like()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
    model = calibrate(model, images())
    push_beta(model, "blocks.0.bn1", HARDSWISH_DEAD, beta=-10.0)
    push_beta(model, "blocks.0.bn1", HARDSWISH_NEGATIVE, beta=-1.5)
    return model


# -- a T5-style encoder-decoder -------------------------------------------------------------------

#: units killed through each stack's fc1 bias: (encoder, decoder)
T5_DEAD = {"encoder.ffn.act": [0, 1, 2], "decoder.ffn.act": [5, 6]}
T5_VOCAB, T5_WIDTH, T5_FFN = 32, 16, 24


class T5Block(nn.Module):
    """T5's DenseReluDense feed-forward after a (cross-)mixing step: ``wo(act(wi(x)))`` added back."""

    def __init__(self, cross: bool) -> None:
        super().__init__()
        self.mix = nn.Linear(T5_WIDTH * (2 if cross else 1), T5_WIDTH)
        self.ffn = nn.Module()
        self.ffn.wi, self.ffn.act, self.ffn.wo = nn.Linear(T5_WIDTH, T5_FFN), nn.ReLU(), nn.Linear(T5_FFN, T5_WIDTH)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        if memory is not None:  # the decoder attends to the encoder: here, the sequence's mean, per sample
            x = torch.cat([x, memory.mean(1, keepdim=True).expand_as(x)], -1)
        x = self.mix(x)
        return x + self.ffn.wo(self.ffn.act(self.ffn.wi(x)))


class T5Like(nn.Module):
    """An encoder over ``input_ids`` and a decoder over ``decoder_input_ids``: both are required,
    as in transformers' T5Model (``config.is_encoder_decoder`` says so to deadrelu)."""

    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace
        self.config = SimpleNamespace(is_encoder_decoder=True)
        self.embed = nn.Embedding(T5_VOCAB, T5_WIDTH)
        self.encoder, self.decoder = T5Block(cross=False), T5Block(cross=True)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        memory = self.encoder(self.embed(input_ids))
        return self.decoder(self.embed(decoder_input_ids), memory)


def t5_like(seed: int = 0) -> T5Like:
    torch.manual_seed(seed)
    model = T5Like().eval()
    with torch.no_grad():
        for site, units in T5_DEAD.items():
            getattr(model, site.split(".")[0]).ffn.wi.bias[units] = -100.0
    return model


def t5_tokens(count: int = 12, length: int = 6) -> torch.Tensor:
    """int64 token ids, (count, length)."""
    return torch.randint(0, T5_VOCAB, (count, length), generator=torch.Generator().manual_seed(3))


# -- factories for the CLI (``--model tests/real_nets.py:broken_resnet --data tests/real_nets.py:resnet_data``)

#: the channels ``broken_resnet`` kills through layer3.4.bn2's β
BROKEN_CHANNELS = list(range(8))


def broken_resnet() -> ResNetLike:
    """``resnet50_like`` with β = −10 on channels 0–7 of ``layer3.4.bn2``: 8 of 16 dead at ``layer3.4.relu#1``."""
    model = resnet50_like()
    push_beta(model, "layer3.4.bn2", BROKEN_CHANNELS)
    return model


def resnet_data() -> torch.Tensor:
    return images()
