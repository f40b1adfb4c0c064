"""The selection guide: architecture-level advice where the model's structure makes it relevant.

A deep CNN with ReLU and no normalisation layer, a deep fully-connected stack with dying
units (SELU is an option), ReLU in a transformer (GELU is the usual choice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...kinds import ZERO_GRADIENT_KINDS
from .base import (DEAD_SHARE_WARNING, DEEP_CNN_CONVS, DEEP_MLP_LINEARS, SCOPE_MODEL, RuleContext, Suggestion,
                   _is_activation, _lit, _num, _replace_modules_code, act, is_norm, leaf_order, rule, suggestion)

if TYPE_CHECKING:
    pass


@rule
def rule_selection_guide(context: RuleContext) -> list[Suggestion]:
    """The seed's selection guide, only where the model's structure makes it relevant.

    Layers are recognised by ``isinstance`` over every module, not by leaf class: timm's
    ``BatchNormAct2d`` is a ``BatchNorm2d`` with an activation child, and counts as a norm."""
    result, model = context.result, context.model
    if model is None:
        return []
    from torch import nn
    out = []
    leaves = leaf_order(model)
    modules = [(name, module) for name, module in model.named_modules() if name]
    convs = [n for n, m in modules if isinstance(m, nn.modules.conv._ConvNd)]
    norms = [n for n, m in modules if is_norm(m)]
    linears = [n for n, m in modules if isinstance(m, nn.Linear)]
    attention = [n for n, m in model.named_modules()
                 if isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
                 or "attention" in type(m).__name__.lower()]
    relu_sites = [s for s in result.sites if s.kind in ZERO_GRADIENT_KINDS]
    problem = any(s.never_fired_ratio > DEAD_SHARE_WARNING for s in result.sites)
    # A deep CNN without normalisation.
    if len(convs) >= DEEP_CNN_CONVS and not norms and relu_sites:
        first = model.get_submodule(convs[0])
        dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(type(first), 2)
        out.append(suggestion(
            "guide-cnn-batchnorm", "warning" if problem else "info", [s.name for s in relu_sites],
            f"A {len(convs)}-conv network with ReLU and no normalisation layer",
            {"conv_layers": len(convs), "norm_layers": 0, "dead_ratio": _num(result.summary.dead_ratio)},
            "For deep CNNs, ReLU + BatchNorm is the proven combination: normalising each conv's output keeps "
            "the ReLUs' inputs centred, so fewer units drift into the dead region. Add BatchNorm after each conv "
            "(before its ReLU) and retrain.",
            _replace_modules_code(convs[:16], f"nn.Sequential(old, nn.BatchNorm{dims}d(old.out_channels))",
                                  "conv -> conv + BatchNorm (retrain after)"),
            changes=f"wraps {min(len(convs), 16)} conv(s) as conv + a fresh BatchNorm (retrain)", scope=SCOPE_MODEL,
            cause="activation", generic=True,
            action_line=act(convs, f"add BatchNorm after each of the {len(convs)} convs (before ReLU), then retrain",
                            noun="convs")))
    # A deep fully-connected stack with dying units: SELU + LeCun is an option.
    if (not convs and not attention and len(linears) >= DEEP_MLP_LINEARS and problem
            and not any(s.kind == "SELU" for s in result.sites)):
        activations = [n for n, m in leaves if _is_activation(m)]
        code = (_replace_modules_code(activations[:32], "nn.SELU()", "ReLU -> SELU (retrain after)") + "\n"
                + "# LeCun normal init for the Linear layers:\n"
                + f"for name in [{', '.join(_lit(n) for n in linears[:32])}]:\n"
                + "    nn.init.kaiming_normal_(model.get_submodule(name).weight, nonlinearity='linear')")
        out.append(suggestion(
            "guide-selu-mlp", "info", [s.name for s in result.sites if s.never_fired_ratio > DEAD_SHARE_WARNING],
            f"A deep fully-connected stack ({len(linears)} Linear layers) with dying units: SELU is an option",
            {"linear_layers": len(linears), "dead_ratio": _num(result.summary.dead_ratio)},
            "Deep fully-connected networks without normalisation are where SELU's self-normalisation applies: "
            "SELU everywhere, LeCun-normal init, AlphaDropout instead of Dropout, no BatchNorm. It is an "
            "alternative to keeping ReLU: LeCun init goes with SELU, He init with ReLU — apply one, not both.",
            code, destructive=True, scope=SCOPE_MODEL, cause="activation", generic=True,
            action_line=act([s.name for s in result.sites if s.never_fired_ratio > DEAD_SHARE_WARNING],
                            f"switch ReLU → SELU with LeCun init, then retrain ({len(linears)} Linear layers)"),
            changes=f"swaps {min(len(activations), 32)} activation(s) for SELU and re-initialises "
                    f"{min(len(linears), 32)} Linear layer(s) (LeCun normal)"))
    # ReLU in transformer blocks: GELU is the usual choice. Only plain ReLU: a Hardswish, Hardsigmoid
    # or ReLU6 site (MobileNet-style, LeViT) was chosen for other reasons, and "ReLU -> GELU" misnames it.
    relu_sites = [s for s in relu_sites if s.kind == "ReLU"]
    if attention and relu_sites:
        encoder_layers = [n for n, m in model.named_modules()
                          if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))]
        relu_modules = list(dict.fromkeys(s.module for s in relu_sites if s.function is None and s.module))
        code = ""
        if encoder_layers:
            code = "import torch.nn.functional as F\n" + "\n".join(
                f"model.get_submodule({_lit(n)}).activation = F.gelu" for n in encoder_layers[:16])
        if relu_modules:
            code += ("\n" if code else "") + _replace_modules_code(relu_modules[:16], "nn.GELU()",
                                                                   "ReLU -> GELU in the feed-forward blocks")
        out.append(suggestion(
            "guide-gelu-transformer", "info", [s.name for s in relu_sites],
            f"ReLU in a transformer-style model ({len(attention)} attention module(s), {len(relu_sites)} ReLU site(s))",
            {"attention_modules": len(attention), "relu_sites": len(relu_sites),
             "dead_ratio": _num(result.summary.dead_ratio)},
            "Transformer feed-forward blocks usually use GELU (smooth, no dead region); "
            "nn.TransformerEncoderLayer takes activation='gelu'. Changing it means retraining.",
            code, scope=SCOPE_MODEL, cause="activation", generic=True,
            action_line=act([s.name for s in relu_sites], "switch ReLU → GELU in the feed-forward blocks, then retrain"),
            changes=f"sets GELU in {min(len(encoder_layers), 16)} encoder layer(s), swaps "
                    f"{min(len(relu_modules), 16)} ReLU module(s) for GELU"))
    return out
