"""The ReLU family in one table: what "active" means per kind, where it saturates, how it is advised.

``KINDS`` is the one place a kind is described: the ``nn`` module class it comes from,
the functional names that compute it (``F.relu``, ``torch.clamp(min=0)`` -> ``relu``;
aten ops use the same names), the family a decomposed op belongs to (``selu`` is an
``elu`` with fixed constants), the ``KindSpec`` built from a module's or a call's own
constants, and the facts advice rests on (gradient exactly 0 where inactive; a gradient
on the negative side; He initialisation applies). ``KNOWN_KINDS``, the suggestion
rules' kind groups, the dispatch family map and the saturation of a site all derive
from it, so adding a kind is one entry here (plus, for a new functional spelling, its
argument reader in ``capture.functional``).

Every spec reads its constants from the module or the call (``negative_slope``,
``alpha``, ``min_val``/``max_val``, PReLU's learned weight), so a user's
``nn.ELU(alpha=0.5)`` is judged against its own floor, not the default one.

No torch at import time: result-only commands read the kind groups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import re
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

SELU_SCALE = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


class ActiveRule(str, Enum):
    """How an observation is judged active."""

    #: the pre-activation is > ``KindSpec.pre_threshold`` (0 for ReLU, LeakyReLU, PReLU, RReLU, ELU,
    #: SELU, CELU, GELU, SiLU, Mish; -3 for Hardswish)
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
        pre_threshold: for ``PRE_POSITIVE`` kinds, the pre-activation an observation must
            exceed (0, or -3 for Hardswish, whose gradient is 0 at and below -3).
    """

    kind: str
    active_rule: ActiveRule
    output_sign_matches_input: bool = True
    floor: float | None = None
    ceiling: float | None = None
    per_channel_param: bool = False
    pre_threshold: float = 0.0

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
        return self.pre_threshold


# -- specs from constants ---------------------------------------------------------------------

def _positive(kind: str) -> Callable[[Mapping[str, Any]], KindSpec]:
    return lambda constants: KindSpec(kind, ActiveRule.PRE_POSITIVE)


def _bounded(kind: str, low: float | None = None, high: float | None = None
             ) -> Callable[[Mapping[str, Any]], KindSpec]:
    def spec(constants: Mapping[str, Any]) -> KindSpec:
        lower = low if low is not None else float(constants.get("min_val", -1.0))
        upper = high if high is not None else float(constants.get("max_val", 1.0))
        return KindSpec(kind, ActiveRule.ABOVE_LOWER, floor=float(lower), ceiling=float(upper))
    return spec


def _leaky(constants: Mapping[str, Any]) -> KindSpec:
    return KindSpec("LeakyReLU", ActiveRule.PRE_POSITIVE,
                    output_sign_matches_input=float(constants.get("negative_slope", 0.01)) >= 0)


def _rrelu(constants: Mapping[str, Any]) -> KindSpec:
    lower, upper = float(constants.get("lower", 1 / 8)), float(constants.get("upper", 1 / 3))
    return KindSpec("RReLU", ActiveRule.PRE_POSITIVE, output_sign_matches_input=min(lower, upper) >= 0)


def _prelu(constants: Mapping[str, Any]) -> KindSpec:
    weight = constants.get("weight")
    if weight is None or not hasattr(weight, "detach"):
        return KindSpec("PReLU", ActiveRule.PRE_POSITIVE, output_sign_matches_input=False)
    # PReLU slopes are learned and can be negative (seen in face-detection models):
    # then a negative input gives a positive output, so "active" must be read from the input.
    nonnegative = bool((weight.detach() >= 0).all())
    return KindSpec("PReLU", ActiveRule.PRE_POSITIVE, output_sign_matches_input=nonnegative,
                    per_channel_param=weight.numel() > 1)


def _exponential(kind: str) -> Callable[[Mapping[str, Any]], KindSpec]:
    def spec(constants: Mapping[str, Any]) -> KindSpec:
        alpha = float(constants.get("alpha", 1.0))
        return KindSpec(kind, ActiveRule.PRE_POSITIVE, output_sign_matches_input=alpha > 0, floor=-abs(alpha))
    return spec


def _selu(constants: Mapping[str, Any]) -> KindSpec:
    return KindSpec("SELU", ActiveRule.PRE_POSITIVE, floor=-SELU_SCALE * SELU_ALPHA)


def _hardswish(constants: Mapping[str, Any]) -> KindSpec:
    # x * relu6(x + 3) / 6 is exactly 0, with gradient 0, for x <= -3; between -3 and 0 it
    # is negative and still learns. "Active" is where the gradient lives: x > -3, read
    # from the input (the output is 0 both at x <= -3 and at x = 0).
    return KindSpec("Hardswish", ActiveRule.PRE_POSITIVE, output_sign_matches_input=False, pre_threshold=-3.0)


def _gated(kind: str) -> Callable[[Mapping[str, Any]], KindSpec]:
    # A gated product act(gate) * up has no sign rule; a unit is active where the product is
    # not 0, read from |product| (the capture hands that in as the active source).
    return lambda constants: KindSpec(kind, ActiveRule.PRE_POSITIVE, output_sign_matches_input=False)


#: the constants a module keeps under the names its functional form takes them
_MODULE_CONSTANTS = ("negative_slope", "alpha", "min_val", "max_val", "lower", "upper", "weight")


@dataclass(frozen=True)
class KindInfo:
    """One kind of activation.

    Attributes:
        name: as users know it (``"ReLU"``); also the ``nn`` class name.
        functions: functional / aten names that compute it (``relu``, ``relu6``...).
        family: what a decomposed aten op of this kind looks like (``selu`` -> ``elu``).
        spec: builds the ``KindSpec`` from constants by name (a module's attributes or a
            call's arguments).
        zero_gradient: the gradient is exactly 0 where the unit is inactive: a dead unit
            stops learning (ReLU, ReLU6).
        negative_side: a gradient remains for negative inputs: a "dead" unit only ever uses
            its negative side.
        he_init: He (Kaiming) initialisation is the matching init.
        class_names: class names of modules outside ``torch.nn`` that compute this kind
            (``transformers``' ``NewGELUActivation``, timm's ``HardSwish``), matched by
            name so that neither library is imported.
    """

    name: str
    functions: tuple[str, ...]
    family: str
    spec: Callable[[Mapping[str, Any]], KindSpec]
    zero_gradient: bool = False
    negative_side: bool = False
    he_init: bool = False
    class_names: tuple[str, ...] = ()


#: Every kind deadrelu scans. Order matters for module lookup: subclasses first (ReLU6 is a Hardtanh).
KINDS: dict[str, KindInfo] = {info.name: info for info in (
    KindInfo("ReLU", ("relu", "clamp"), "relu", _positive("ReLU"), zero_gradient=True, he_init=True),
    KindInfo("ReLU6", ("relu6",), "hardtanh", _bounded("ReLU6", 0.0, 6.0), zero_gradient=True, he_init=True),
    KindInfo("Hardtanh", ("hardtanh",), "hardtanh", _bounded("Hardtanh")),
    KindInfo("LeakyReLU", ("leaky_relu",), "leaky", _leaky, negative_side=True, he_init=True),
    KindInfo("PReLU", ("prelu",), "prelu", _prelu, negative_side=True, he_init=True),
    KindInfo("RReLU", ("rrelu",), "leaky", _rrelu, negative_side=True, he_init=True),
    KindInfo("SELU", ("selu",), "elu", _selu, negative_side=True),
    KindInfo("CELU", ("celu",), "elu", _exponential("CELU"), negative_side=True),
    KindInfo("ELU", ("elu",), "elu", _exponential("ELU"), negative_side=True),
    # The tanh approximation (nn.GELU(approximate="tanh"), F.gelu(x, approximate="tanh"),
    # transformers' gelu_new/gelu_fast/gelu_pytorch_tanh) has the same sign rule: one kind.
    KindInfo("GELU", ("gelu",), "gelu", _positive("GELU"), negative_side=True,
             class_names=("GELUActivation", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation",
                          "AccurateGELUActivation", "ClippedGELUActivation", "GELUTanh", "PytorchGELUTanh",
                          "QuickGELU", "GeLU")),
    KindInfo("SiLU", ("silu",), "silu", _positive("SiLU"), negative_side=True,
             class_names=("SiLUActivation", "SiLU", "Swish", "SwishActivation")),
    KindInfo("Mish", ("mish",), "mish", _positive("Mish"), negative_side=True,
             class_names=("MishActivation", "Mish")),
    KindInfo("Hardswish", ("hardswish",), "hardswish", _hardswish, zero_gradient=True,
             class_names=("HardSwish", "HardSwishActivation", "Hardswish")),
    KindInfo("Hardsigmoid", ("hardsigmoid",), "hardsigmoid", _bounded("Hardsigmoid", 0.0, 1.0), zero_gradient=True,
             class_names=("HardSigmoid", "Hardsigmoid")),
    # relu(x)**2 (Primer; transformers' "relu2"): 0 with gradient 0 for x <= 0.
    KindInfo("ReLUSquared", (), "relu_squared", _positive("ReLUSquared"), zero_gradient=True,
             class_names=("ReLUSquaredActivation", "ReLUSquared", "SquaredReLU")),
    # Gated MLPs (SwiGLU, GeGLU, ReGLU): act(gate_proj(x)) * up_proj(x). The gate's activation
    # is a site of its own kind; the product, where it can be attributed, is a site of these.
    KindInfo("SwiGLU", (), "gated", _gated("SwiGLU")),
    KindInfo("GeGLU", (), "gated", _gated("GeGLU")),
    KindInfo("ReGLU", (), "gated", _gated("ReGLU")),
    KindInfo("GLU", (), "gated", _gated("GLU")),
)}

#: Kind names, for messages ("this model has no ...").
KNOWN_KINDS: tuple[str, ...] = tuple(KINDS)
#: Kinds whose gradient is exactly 0 where they are inactive: a dead unit stops learning.
ZERO_GRADIENT_KINDS: tuple[str, ...] = tuple(k for k, info in KINDS.items() if info.zero_gradient)
#: Kinds that keep some gradient for negative inputs.
NEGATIVE_SIDE_KINDS: tuple[str, ...] = tuple(k for k, info in KINDS.items() if info.negative_side)
#: Kinds the He-initialisation advice applies to.
HE_KINDS: tuple[str, ...] = tuple(k for k, info in KINDS.items() if info.he_init)
#: Function / aten name -> decomposition family (``threshold`` is ReLU's general form).
FAMILIES: dict[str, str] = {"threshold": "threshold",
                            **{name: info.family for info in KINDS.values() for name in info.functions}}
#: Function / aten name -> kind.
FUNCTION_KINDS: dict[str, KindInfo] = {name: info for info in KINDS.values() for name in info.functions}
#: Class names (outside ``torch.nn``) -> kind; ``torch.nn`` classes are matched by isinstance.
CLASS_NAME_KINDS: dict[str, KindInfo] = {name: info for info in KINDS.values() if info.family != "gated"
                                         for name in (info.name, *info.class_names)}
#: The gate's kind -> the kind of its gated product.
GATED_KINDS: dict[str, str] = {"SiLU": "SwiGLU", "GELU": "GeGLU", "ReLU": "ReGLU"}

#: ``torch.nn`` activation classes that are not unit activations (normalisers, attention).
_NOT_UNIT_ACTIVATIONS = frozenset({"MultiheadAttention", "Softmax", "Softmin", "Softmax2d", "LogSoftmax",
                                   "Identity"})
_ACTIVATION_WORDS = re.compile(r"activation|gelu|relu|swish|silu|mish|sigmoid|tanh|softplus|softsign|glu|elu"
                               r"|shrink|^act$|act$", re.IGNORECASE)


def looks_like_activation(class_name: str, module_path: str | None = None) -> bool:
    """Whether a (leaf) module class is an activation by its name, whatever its kind.

    Used to list activations deadrelu cannot scan instead of dropping them silently:
    ``torch.nn``'s own activation classes (``Tanh``, ``Softplus``...) and classes named
    like one (``LaplaceActivation``, ``XIELUActivation``). Normalisers (``Softmax``) and
    attention are not unit activations.

    Args:
        class_name: the module's class name.
        module_path: the module's ``__module__``, when known.

    Returns:
        True for an activation class.
    """
    if class_name in _NOT_UNIT_ACTIVATIONS:
        return False
    if module_path == "torch.nn.modules.activation":
        return True
    return bool(_ACTIVATION_WORDS.search(class_name))


def kind_of_class_name(class_name: str) -> str | None:
    """The kind a module class computes, judged by its (short) name; None when unknown."""
    info = CLASS_NAME_KINDS.get(class_name.rsplit(".", 1)[-1])
    return None if info is None else info.name


def family(function: str) -> str:
    """The decomposition family of a function name (``selu`` and ``elu`` agree)."""
    return FAMILIES.get(function, function)


def _module_classes() -> list[tuple[type, KindInfo]]:
    from torch import nn
    return [(getattr(nn, info.name), info) for info in KINDS.values() if hasattr(nn, info.name)]


def spec_for_module(module: nn.Module) -> KindSpec | None:
    """The kind table for modules: a spec for a ReLU-family module, or None for anything else.

    ``torch.nn`` classes (and their subclasses) are matched by type; other libraries'
    activation classes (``transformers``' ``NewGELUActivation``...) by class name.

    Args:
        module: any module.

    Returns:
        The module's ``KindSpec``, with constants read from the module itself.
    """
    for cls, info in _module_classes():
        if isinstance(module, cls):
            return info.spec({name: getattr(module, name) for name in _MODULE_CONSTANTS if hasattr(module, name)})
    info = CLASS_NAME_KINDS.get(type(module).__name__)
    if info is None:
        return None
    return info.spec({name: getattr(module, name) for name in _MODULE_CONSTANTS if hasattr(module, name)
                      and isinstance(getattr(module, name), (int, float))})


def spec_for_function(function: str, arguments: Mapping[str, Any]) -> KindSpec:
    """The kind table for functions and aten ops: a spec from the call's own arguments.

    Raises:
        KeyError: ``function`` is not a known ReLU-family function.
    """
    info = FUNCTION_KINDS.get(function)
    if info is None:
        raise KeyError(f"no kind rule for function {function!r}")
    return info.spec(arguments)


def floor_tolerance(floor: float, rtol: float) -> float:
    """The value at or below which an output counts as sitting at its floor."""
    return floor + abs(floor) * rtol if floor != 0 else rtol


def is_inplace(module: nn.Module) -> bool:
    """Whether the module overwrites its input (``inplace=True``)."""
    return bool(getattr(module, "inplace", False))


def prelu_slope_summary(module: nn.Module) -> dict[str, float] | None:
    """Min / mean / max of a PReLU's learned slopes and how many are <= 0."""
    from torch import nn
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


__all__ = ["ActiveRule", "KindSpec", "KindInfo", "KINDS", "KNOWN_KINDS", "CLASS_NAME_KINDS", "GATED_KINDS",
           "looks_like_activation", "kind_of_class_name", "ZERO_GRADIENT_KINDS",
           "NEGATIVE_SIDE_KINDS", "HE_KINDS", "FAMILIES", "family", "spec_for_module", "spec_for_function",
           "SELU_SCALE", "SELU_ALPHA", "floor_tolerance", "is_inplace", "prelu_slope_summary"]
