"""Small models where the fixed costs of a scan weigh most (issue 23's last two rows).

* Tiny Hugging Face models built from a config (random weights, no download): BERT, GPT-2,
  OPT, Llama (a gated SiLU MLP: its product is a site that functional capture finds), ViT,
  Whisper's encoder and CLIP's vision tower; D=64, 2 layers, small batches. They need
  ``transformers`` (``pip install 'deadrelu[hf]'``); ``workloads.py`` lists them only where it
  imports.
* timm-style networks with many small sites, written in plain torch (timm is not a
  dependency): ``mobilenetv3`` (inverted residuals with squeeze-excite, Hardswish / ReLU,
  Hardsigmoid gates), ``ghostnet`` (ghost modules: a 1x1 conv and a cheap depthwise conv
  concatenated, ReLU, squeeze-excite) and ``regnet`` (RegNetY-style group-conv bottlenecks with
  squeeze-excite), at 64 px. ``timm_model(name)`` builds the real timm architecture instead
  when timm imports (a field check, never CI).

Nothing here is timed; ``overhead.py`` does the timing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# -- tiny Hugging Face models from config ---------------------------------------------------------

#: the size every tiny text model shares
TINY = dict(hidden=64, layers=2, heads=2, ffn=256, vocab=1024, positions=64)


class FirstOutput(nn.Module):
    """Calls a Hugging Face model with one positional tensor and returns its first output: the same
    forward pass ``model(x)`` makes, as a plain tensor for the peers' timing loops."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)[0]


def tiny_bert() -> nn.Module:
    """BertModel, D=64, 2 layers, 2 heads, GELU FFN 256: 2 GELU sites (+ the pooler's Tanh)."""
    from transformers import BertConfig, BertModel
    config = BertConfig(vocab_size=TINY["vocab"], hidden_size=TINY["hidden"], num_hidden_layers=TINY["layers"],
                        num_attention_heads=TINY["heads"], intermediate_size=TINY["ffn"],
                        max_position_embeddings=TINY["positions"])
    return FirstOutput(BertModel(config))


def tiny_gpt2() -> nn.Module:
    """GPT2Model, D=64, 2 layers, 2 heads, gelu_new FFN 256: 2 GELU sites."""
    from transformers import GPT2Config, GPT2Model
    config = GPT2Config(vocab_size=TINY["vocab"], n_embd=TINY["hidden"], n_layer=TINY["layers"],
                        n_head=TINY["heads"], n_inner=TINY["ffn"], n_positions=TINY["positions"], bos_token_id=0, eos_token_id=0, use_cache=False)
    return FirstOutput(GPT2Model(config))


def tiny_opt() -> nn.Module:
    """OPTModel, D=64, 2 layers, 2 heads, ReLU FFN 256: 2 ReLU sites."""
    from transformers import OPTConfig, OPTModel
    config = OPTConfig(vocab_size=TINY["vocab"], hidden_size=TINY["hidden"], num_hidden_layers=TINY["layers"],
                       ffn_dim=TINY["ffn"], num_attention_heads=TINY["heads"], max_position_embeddings=TINY["positions"],
                       word_embed_proj_dim=TINY["hidden"], pad_token_id=1, use_cache=False)
    return FirstOutput(OPTModel(config))


def tiny_llama() -> nn.Module:
    """LlamaModel, D=64, 2 layers, 2 heads, gated SiLU MLP 256: 2 SiLU sites and 2 SwiGLU products."""
    from transformers import LlamaConfig, LlamaModel
    config = LlamaConfig(vocab_size=TINY["vocab"], hidden_size=TINY["hidden"], num_hidden_layers=TINY["layers"],
                         num_attention_heads=TINY["heads"], num_key_value_heads=TINY["heads"],
                         intermediate_size=TINY["ffn"], max_position_embeddings=TINY["positions"], use_cache=False)
    return FirstOutput(LlamaModel(config))


def tiny_vit() -> nn.Module:
    """ViTModel on 3x32x32 images, patch 8 (16 patches + CLS), D=64, 2 layers: 2 GELU sites."""
    from transformers import ViTConfig, ViTModel
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=TINY["hidden"], num_hidden_layers=TINY["layers"],
                       num_attention_heads=TINY["heads"], intermediate_size=TINY["ffn"])
    return FirstOutput(ViTModel(config, add_pooling_layer=False))


def tiny_whisper() -> nn.Module:
    """Whisper's encoder on 16 mel bins x 64 frames (two GELU convs, then 2 layers): 4 GELU sites."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    config = WhisperConfig(vocab_size=TINY["vocab"], num_mel_bins=16, d_model=TINY["hidden"], encoder_layers=2,
                           decoder_layers=1, encoder_attention_heads=TINY["heads"],
                           decoder_attention_heads=TINY["heads"], encoder_ffn_dim=TINY["ffn"],
                           decoder_ffn_dim=TINY["ffn"], max_source_positions=32, max_target_positions=32,
                           pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0, use_cache=False)
    return FirstOutput(WhisperEncoder(config))


def tiny_clip() -> nn.Module:
    """CLIP's vision tower on 3x32x32 images, patch 8, D=64, 2 layers, quick_gelu: 2 GELU sites."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=TINY["hidden"], intermediate_size=TINY["ffn"],
                              num_hidden_layers=TINY["layers"], num_attention_heads=TINY["heads"])
    return FirstOutput(CLIPVisionModel(config))


# -- timm-style networks with many small sites ------------------------------------------------------

def _conv_bn(inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]


class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite: pool, 1x1 reduce, ReLU, 1x1 expand, a gate (Hardsigmoid or Sigmoid)."""

    def __init__(self, channels: int, reduced: int, gate: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(scale))))


class MobileV3Block(nn.Module):
    """MobileNetV3's inverted residual: 1x1 expand + act, kxk depthwise + act, optional SE, 1x1 project."""

    def __init__(self, inp: int, hidden: int, out: int, kernel: int, stride: int, se: bool,
                 act: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != inp:
            layers += [*_conv_bn(inp, hidden, 1), act()]
        layers += [*_conv_bn(hidden, hidden, kernel, stride, hidden), act()]
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4)))
        layers += _conv_bn(hidden, out, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV3(nn.Module):
    """MobileNetV3-Large's block table at width 0.5 (15 blocks): ReLU / Hardswish, SE with Hardsigmoid
    gates; 45 sites, most of them maps of 2x2 to 16x16 at 64 px."""

    #: (kernel, expanded, out, SE, Hardswish, stride), MobileNetV3-Large halved
    TABLE = ((3, 16, 16, False, False, 1), (3, 32, 24, False, False, 2), (3, 40, 24, False, False, 1),
             (5, 40, 40, True, False, 2), (5, 64, 40, True, False, 1), (5, 64, 40, True, False, 1),
             (3, 120, 40, False, True, 2), (3, 100, 40, False, True, 1), (3, 92, 40, False, True, 1),
             (3, 92, 40, False, True, 1), (3, 240, 56, True, True, 1), (3, 336, 56, True, True, 1),
             (5, 336, 80, True, True, 2), (5, 480, 80, True, True, 1), (5, 480, 80, True, True, 1))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 16, 3, 2), nn.Hardswish()]
        channels = 16
        for kernel, hidden, out, se, hswish, stride in self.TABLE:
            layers.append(MobileV3Block(channels, hidden, out, kernel, stride, se, nn.Hardswish if hswish else nn.ReLU))
            channels = out
        layers += [*_conv_bn(channels, 480, 1), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(480, 640), nn.Hardswish(), nn.Linear(640, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class GhostModule(nn.Module):
    """GhostNet's module: a 1x1 conv makes half the channels, a cheap 3x3 depthwise conv the rest."""

    def __init__(self, inp: int, out: int, relu: bool) -> None:
        super().__init__()
        half = (out + 1) // 2
        self.primary = nn.Sequential(*_conv_bn(inp, half, 1), *( [nn.ReLU(inplace=True)] if relu else []))
        self.cheap = nn.Sequential(*_conv_bn(half, half, 3, 1, half), *([nn.ReLU(inplace=True)] if relu else []))
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary(x)
        return torch.cat([primary, self.cheap(primary)], 1)[:, :self.out]


class GhostBottleneck(nn.Module):
    """Ghost module (ReLU), optional strided depthwise conv and SE, ghost module (linear), shortcut."""

    def __init__(self, inp: int, hidden: int, out: int, kernel: int, stride: int, se: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [GhostModule(inp, hidden, relu=True)]
        if stride > 1:
            layers += _conv_bn(hidden, hidden, kernel, stride, hidden)
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4)))
        layers.append(GhostModule(hidden, out, relu=False))
        self.block = nn.Sequential(*layers)
        self.shortcut = (nn.Identity() if stride == 1 and inp == out else
                         nn.Sequential(*_conv_bn(inp, inp, kernel, stride, inp), *_conv_bn(inp, out, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)


class GhostNet(nn.Module):
    """GhostNet-1.0's 16 bottlenecks at width 0.5: 40 ReLU sites (two per ghost module, one per SE)."""

    #: (kernel, hidden, out, SE, stride), GhostNet's table halved
    TABLE = ((3, 8, 8, False, 1), (3, 24, 12, False, 2), (3, 36, 12, False, 1), (5, 36, 20, True, 2),
             (5, 60, 20, True, 1), (3, 120, 40, False, 2), (3, 100, 40, False, 1), (3, 92, 40, False, 1),
             (3, 92, 40, False, 1), (3, 240, 56, True, 1), (3, 336, 56, True, 1), (5, 336, 80, True, 2),
             (5, 480, 80, False, 1), (5, 480, 80, True, 1), (5, 480, 80, False, 1), (5, 480, 80, True, 1))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 8, 3, 2), nn.ReLU(inplace=True)]
        channels = 8
        for kernel, hidden, out, se, stride in self.TABLE:
            layers.append(GhostBottleneck(channels, hidden, out, kernel, stride, se))
            channels = out
        layers += [*_conv_bn(channels, 480, 1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(480, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class RegNetBlock(nn.Module):
    """RegNetY's bottleneck: 1x1 + ReLU, 3x3 group conv + ReLU, SE (Sigmoid gate), 1x1, shortcut, ReLU."""

    def __init__(self, inp: int, out: int, stride: int, group_width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(inp, out, 1), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(*_conv_bn(out, out, 3, stride, out // group_width), nn.ReLU(inplace=True))
        self.se = SqueezeExcite(out, max(4, inp // 4), gate=nn.Sigmoid)
        self.conv3 = nn.Sequential(*_conv_bn(out, out, 1))
        self.shortcut = (nn.Identity() if stride == 1 and inp == out else nn.Sequential(*_conv_bn(inp, out, 1, stride)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3(self.se(self.conv2(self.conv1(x)))) + self.shortcut(x))


class RegNet(nn.Module):
    """RegNetY-200MF-like: depths 1, 1, 4, 7 at widths 24, 56, 152, 368 (halved); 13 blocks x 4 ReLU sites + stem."""

    STAGES = ((1, 24), (1, 56), (4, 152), (7, 368))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 32, 3, 2), nn.ReLU(inplace=True)]
        channels = 32
        for depth, width in self.STAGES:
            width //= 2
            width -= width % 8
            for index in range(depth):
                layers.append(RegNetBlock(channels, width, 2 if index == 0 else 1))
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def timm_model(name: str) -> nn.Module:
    """A real timm architecture (random weights, 10 classes), where timm imports: a field check only.

    Args:
        name: a timm model name (``mobilenetv3_large_100``, ``ghostnet_100``, ``levit_128s``,
            ``regnety_002``).
    """
    import timm
    return timm.create_model(name, pretrained=False, num_classes=10)


__all__ = ["GhostNet", "MobileNetV3", "RegNet", "timm_model", "tiny_bert", "tiny_clip", "tiny_gpt2", "tiny_llama",
           "tiny_opt", "tiny_vit", "tiny_whisper"]
