"""The ReLU family in one table: what "active" means per kind and where it saturates.

Every rule below reads its constants from the module (``negative_slope``, ``alpha``,
``min_val``/``max_val``, PReLU's learned weight), so a user's ``nn.ELU(alpha=0.5)`` is
judged against its own floor, not the default one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn

SELU_SCALE = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


class ActiveRule(str, Enum):
    """How an observation is judged active."""

    #: the pre-activation is > 0 (ReLU, LeakyReLU, PReLU, RReLU, ELU, SELU, CELU, GELU, SiLU)
    PRE_POSITIVE = "pre_positive"
    #: the output is above the lower bound (ReLU6, Hardtanh)
    ABOVE_LOWER = "above_lower"


@dataclass(frozen=True)
class KindSpec:
    """What deadrelu needs to know about one activation call.

    Attributes:
        kind: the activation's name as users know it (``"ReLU"``, ``"ELU"``...).
        active_rule: how "active" is judged.
        output_sign_matches_input: for ``PRE_POSITIVE`` kinds, whether ``output > 0``
            holds exactly when ``input > 0``; then "active" can be read from the output,
            which is safe for in-place modules. False for negative slopes.
        floor: the negative saturation floor (ELU -alpha, SELU -scale*alpha, CELU -alpha),
            or the lower bound for ReLU6/Hardtanh; None when the kind does not saturate.
        ceiling: the upper bound for ReLU6/Hardtanh, else None.
        per_channel_param: PReLU with one slope per channel (unit axis is then 1).
    """

    kind: str
    active_rule: ActiveRule
    output_sign_matches_input: bool = True
    floor: float | None = None
    ceiling: float | None = None
    per_channel_param: bool = False

    @property
    def saturates(self) -> bool:
        return self.floor is not None

    @property
    def saturation(self) -> str | None:
        """How this kind saturates: ``"bounds"`` (ReLU6, Hardtanh: either bound), ``"floor"``
        (ELU, SELU, CELU: the negative floor), or None."""
        if self.active_rule is ActiveRule.ABOVE_LOWER:
            return "bounds"
        return "floor" if self.floor is not None else None

    @property
    def threshold(self) -> float:
        """The value an observation must exceed to be active."""
        if self.active_rule is ActiveRule.ABOVE_LOWER:
            assert self.floor is not None
            return self.floor
        return 0.0


def _hardtanh_spec(kind: str, min_val: float, max_val: float) -> KindSpec:
    return KindSpec(kind, ActiveRule.ABOVE_LOWER, floor=float(min_val), ceiling=float(max_val))


def _prelu_spec(module: nn.PReLU) -> KindSpec:
    weight = module.weight.detach()
    # PReLU slopes are learned and can be negative (seen in face-detection models):
    # then a negative input gives a positive output, so "active" must be read from the input.
    nonnegative = bool((weight >= 0).all())
    return KindSpec("PReLU", ActiveRule.PRE_POSITIVE, output_sign_matches_input=nonnegative,
                    per_channel_param=weight.numel() > 1)


def spec_for_module(module: nn.Module) -> KindSpec | None:
    """The kind table: a spec for a ReLU-family module, or None for anything else.

    Args:
        module: any module.

    Returns:
        The module's ``KindSpec``, with constants read from the module itself.
    """
    # Order matters: ReLU6 subclasses Hardtanh.
    if isinstance(module, nn.ReLU):
        return KindSpec("ReLU", ActiveRule.PRE_POSITIVE)
    if isinstance(module, nn.ReLU6):
        return _hardtanh_spec("ReLU6", 0.0, 6.0)
    if isinstance(module, nn.Hardtanh):
        return _hardtanh_spec("Hardtanh", module.min_val, module.max_val)
    if isinstance(module, nn.LeakyReLU):
        return KindSpec("LeakyReLU", ActiveRule.PRE_POSITIVE,
                        output_sign_matches_input=module.negative_slope >= 0)
    if isinstance(module, nn.PReLU):
        return _prelu_spec(module)
    if isinstance(module, nn.RReLU):
        return KindSpec("RReLU", ActiveRule.PRE_POSITIVE,
                        output_sign_matches_input=min(module.lower, module.upper) >= 0)
    if isinstance(module, nn.SELU):
        return KindSpec("SELU", ActiveRule.PRE_POSITIVE, floor=-SELU_SCALE * SELU_ALPHA)
    if isinstance(module, nn.CELU):
        return KindSpec("CELU", ActiveRule.PRE_POSITIVE, output_sign_matches_input=module.alpha > 0,
                        floor=-abs(module.alpha))
    if isinstance(module, nn.ELU):
        return KindSpec("ELU", ActiveRule.PRE_POSITIVE, output_sign_matches_input=module.alpha > 0,
                        floor=-abs(module.alpha))
    if isinstance(module, nn.GELU):
        return KindSpec("GELU", ActiveRule.PRE_POSITIVE)
    if isinstance(module, nn.SiLU):
        return KindSpec("SiLU", ActiveRule.PRE_POSITIVE)
    return None


#: Module types the kind table knows, for messages ("this model has no ...").
KNOWN_KINDS = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU",
               "Hardtanh", "GELU", "SiLU")


def floor_tolerance(floor: float, rtol: float) -> float:
    """The value at or below which an output counts as sitting at its floor."""
    return floor + abs(floor) * rtol if floor != 0 else rtol


def is_inplace(module: nn.Module) -> bool:
    """Whether the module overwrites its input (``inplace=True``)."""
    return bool(getattr(module, "inplace", False))


def prelu_slope_summary(module: nn.Module) -> dict[str, float] | None:
    """Min / mean / max of a PReLU's learned slopes and how many are <= 0."""
    if not isinstance(module, nn.PReLU):
        return None
    weight = module.weight.detach().float().cpu()
    return {
        "min": float(weight.min()),
        "mean": float(weight.mean()),
        "max": float(weight.max()),
        "count": int(weight.numel()),
        "nonpositive": int((weight <= 0).sum()),
    }


__all__ = ["ActiveRule", "KindSpec", "spec_for_module", "KNOWN_KINDS", "SELU_SCALE",
           "SELU_ALPHA", "floor_tolerance", "is_inplace", "prelu_slope_summary"]
