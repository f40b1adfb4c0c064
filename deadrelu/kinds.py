"""The ReLU family in one table: what "active" means per kind, where it saturates, how it is advised.

``KINDS`` is the one place a kind is described: the ``nn`` module class it comes from,
the functions that compute it (``Spelling``: ``F.relu``/``torch.relu``/``Tensor.relu``/
``aten.relu``, the constants each takes after its input, ``torch.clamp(min=0)`` as a
ReLU), the aten calls of another kind that compute it (``selu`` arrives as ``elu`` with
SELU's constants), the family a decomposed op belongs to, the ``KindSpec`` built from a
module's or a call's own constants (active rule, floor, least output, saturation), and
the facts advice rests on (gradient exactly 0 where inactive; a gradient on the negative
side; He initialisation applies).

Everything else derives from it: ``KNOWN_KINDS`` and the suggestion rules' kind groups
here; the functional capture's table (``capturing.functional``), the aten ops the
dispatch capture and graph plans look for (``capturing.aten``), each site's reduction
plan and saturation (``capturing.registry``). Those derived tables are rebuilt whenever
``KINDS`` changes (``tables()``), so adding a kind is one entry here.

Every spec reads its constants from the module or the call (``negative_slope``,
``alpha``, ``min_val``/``max_val``, PReLU's learned weight), so a user's
``nn.ELU(alpha=0.5)`` is judged against its own floor, not the default one.

No torch at import time: result-only commands read the kind groups.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from numbers import Real
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
    #: the output is not 0 (gated products ``act(gate) * up`` and ``GLU``: no sign rule)
    NONZERO = "nonzero"


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
        output_floor: the least value the kind outputs by definition (ReLU 0, ReLU6 0,
            Hardtanh its ``min_val``), which lets the reduction use exact identities; None
            when there is none.
        split_dim: the axis the kind halves (``GLU``: its output is half its input there);
            None for elementwise kinds.
    """

    kind: str
    active_rule: ActiveRule
    output_sign_matches_input: bool = True
    floor: float | None = None
    ceiling: float | None = None
    per_channel_param: bool = False
    pre_threshold: float = 0.0
    output_floor: float | None = None
    split_dim: int | None = None

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
        if self.active_rule is ActiveRule.NONZERO:
            return 0.0
        return self.pre_threshold

    @property
    def reads_input(self) -> bool:
        """Whether "active" must be read from the pre-activation: the output's sign does not
        tell it (negative slopes, Hardswish's -3)."""
        return self.active_rule is ActiveRule.PRE_POSITIVE and not self.output_sign_matches_input


# -- specs from constants ---------------------------------------------------------------------

def _positive(kind: str, output_floor: float | None = None) -> Callable[[Mapping[str, Any]], KindSpec]:
    return lambda constants: KindSpec(kind, ActiveRule.PRE_POSITIVE, output_floor=output_floor)


def _bounded(kind: str, low: float | None = None, high: float | None = None
             ) -> Callable[[Mapping[str, Any]], KindSpec]:
    def spec(constants: Mapping[str, Any]) -> KindSpec:
        lower = low if low is not None else float(constants.get("min_val", -1.0))
        upper = high if high is not None else float(constants.get("max_val", 1.0))
        return KindSpec(kind, ActiveRule.ABOVE_LOWER, floor=float(lower), ceiling=float(upper),
                        output_floor=float(lower))
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
        # aten's elu(x, alpha, scale, input_scale) is scale * (x if x > 0 else alpha * (exp(x * input_scale) - 1)).
        alpha, scale = float(constants.get("alpha", 1.0)), float(constants.get("scale", 1.0))
        return KindSpec(kind, ActiveRule.PRE_POSITIVE, output_sign_matches_input=alpha * scale > 0 and scale > 0,
                        floor=-abs(alpha * scale))
    return spec


def _selu(constants: Mapping[str, Any]) -> KindSpec:
    return KindSpec("SELU", ActiveRule.PRE_POSITIVE, floor=-SELU_SCALE * SELU_ALPHA)


def _hardswish(constants: Mapping[str, Any]) -> KindSpec:
    # x * relu6(x + 3) / 6 is exactly 0, with gradient 0, for x <= -3; between -3 and 0 it
    # is negative and still learns. "Active" is where the gradient lives: x > -3, read
    # from the input (the output is 0 both at x <= -3 and at x = 0).
    return KindSpec("Hardswish", ActiveRule.PRE_POSITIVE, output_sign_matches_input=False, pre_threshold=-3.0)


def _gated(kind: str) -> Callable[[Mapping[str, Any]], KindSpec]:
    # A gated product act(gate) * up has no sign rule: a unit is active where the product is not 0.
    return lambda constants: KindSpec(kind, ActiveRule.NONZERO, output_sign_matches_input=False)


def _glu(constants: Mapping[str, Any]) -> KindSpec:
    # nn.GLU / F.glu: first half * sigmoid(second half) along ``dim``; its units are the output's.
    # Without a ``dim`` it is the product of a gate no kind names: elementwise.
    dim = constants.get("dim")
    return KindSpec("GLU", ActiveRule.NONZERO, output_sign_matches_input=False,
                    split_dim=None if dim is None else int(dim))


def _close(value: Any, target: float) -> bool:
    return isinstance(value, (int, float)) and abs(float(value) - target) <= 1e-6 * max(1.0, abs(target))


def _selu_constants(arguments: Mapping[str, Any]) -> bool:
    """aten ``elu`` computing SELU (how ``selu`` arrives under ``no_grad``)."""
    return (_close(arguments.get("alpha"), SELU_ALPHA) and _close(arguments.get("scale"), SELU_SCALE)
            and _close(arguments.get("input_scale", 1.0), 1.0))


def _celu_constants(arguments: Mapping[str, Any]) -> bool:
    """aten ``elu`` computing CELU: ``scale`` 1 and ``input_scale`` 1/alpha (alpha 1 is plain ELU)."""
    alpha = arguments.get("alpha")
    return (_close(arguments.get("scale"), 1.0) and isinstance(alpha, (int, float)) and alpha != 0
            and _close(arguments.get("input_scale"), 1.0 / float(alpha)) and not _close(alpha, 1.0))


def _relu6_bounds(arguments: Mapping[str, Any]) -> bool:
    """aten ``hardtanh`` computing ReLU6 (bounds 0 and 6)."""
    return _close(arguments.get("min_val"), 0.0) and _close(arguments.get("max_val"), 6.0)


def relu_clamp(arguments: Mapping[str, Any]) -> bool:
    """``clamp`` is a ReLU only as ``min=0`` with no ``max`` (a Python number, not a tensor)."""
    low = arguments.get("min")
    if arguments.get("max") is not None or isinstance(low, bool) or not isinstance(low, Real):
        return False
    return float(low) == 0.0


#: the constants a module keeps under the names its functional form takes them
_MODULE_CONSTANTS = ("negative_slope", "alpha", "min_val", "max_val", "lower", "upper", "weight", "dim")


@dataclass(frozen=True)
class Spelling:
    """One function that computes a kind, however it is called.

    ``F.<name>``, ``torch.<name>``, ``Tensor.<name>`` and their in-place forms ``<name>_``
    are seen by functional capture (those that exist); aten ops ``<name>``/``<name>_``
    (and ``aten_aliases``) by aten-level capture and graph plans.

    Attributes:
        name: the function's name (``leaky_relu``).
        parameters: the constants the function takes after its input, in order, with their
            defaults, under aten's argument names (``negative_slope``, ``min_val``...).
        site: the function name sites are named by (``clip``/``clamp_min`` -> ``clamp``);
            ``name`` when empty.
        when: a call counts only when its arguments pass this (``clamp`` only as ``min=0``).
        functional: seen by functional capture.
        aten: seen as an aten op.
        aten_aliases: other aten ops of the same call (``_prelu_kernel``, ``rrelu_with_noise``).
    """

    name: str
    parameters: tuple[tuple[str, Any], ...] = ()
    site: str = ""
    when: Callable[[Mapping[str, Any]], bool] | None = None
    functional: bool = True
    aten: bool = True
    aten_aliases: tuple[str, ...] = ()

    @property
    def function(self) -> str:
        """The function name sites use."""
        return self.site or self.name


@dataclass(frozen=True)
class KindInfo:
    """One kind of activation.

    Attributes:
        name: as users know it (``"ReLU"``); also the ``nn`` class name.
        spellings: the functions that compute it (see ``Spelling``).
        family: what a decomposed aten op of this kind looks like (``selu`` -> ``elu``);
            kinds of one family may rename each other's graph sites (an ``nn.ReLU6`` module
            whose call arrives as ``hardtanh``).
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
        from_ops: ``(function, test)``: an aten call of another kind's function computes
            this kind when its arguments pass the test (under ``no_grad`` ``selu`` arrives
            as ``elu`` with SELU's constants, ``relu6`` as ``hardtanh(0, 6)``).
        gated_by: for a gated product kind, the kind of its gate (``SwiGLU``: ``SiLU``);
            the product of a gate no kind names is a ``GLU``.
    """

    name: str
    spellings: tuple[Spelling, ...]
    family: str
    spec: Callable[[Mapping[str, Any]], KindSpec]
    zero_gradient: bool = False
    negative_side: bool = False
    he_init: bool = False
    class_names: tuple[str, ...] = ()
    from_ops: tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...] = ()
    gated_by: str = ""

    @property
    def functions(self) -> tuple[str, ...]:
        """The function names its sites use (``relu``, ``clamp``)."""
        return tuple(dict.fromkeys(spelling.function for spelling in self.spellings))


_CLAMP = (("min", None), ("max", None))
_RRELU = (("lower", 1 / 8), ("upper", 1 / 3), ("training", False))

#: Every kind deadrelu scans. Order matters for module lookup: subclasses first (ReLU6 is a Hardtanh).
KINDS: dict[str, KindInfo] = {info.name: info for info in (
    KindInfo("ReLU", (Spelling("relu"),
                      # torch.clamp(x, min=0) and its aliases; not an aten site (clamp(min=eps) is everywhere).
                      Spelling("clamp", _CLAMP, when=relu_clamp, aten=False),
                      Spelling("clip", _CLAMP, site="clamp", when=relu_clamp, aten=False),
                      Spelling("clamp_min", (("min", None),), site="clamp", when=relu_clamp, aten=False)),
             "relu", _positive("ReLU", output_floor=0.0), zero_gradient=True, he_init=True),
    KindInfo("ReLU6", (Spelling("relu6"),), "hardtanh", _bounded("ReLU6", 0.0, 6.0), zero_gradient=True,
             he_init=True, from_ops=(("hardtanh", _relu6_bounds),)),
    KindInfo("Hardtanh", (Spelling("hardtanh", (("min_val", -1.0), ("max_val", 1.0))),), "hardtanh",
             _bounded("Hardtanh")),
    KindInfo("LeakyReLU", (Spelling("leaky_relu", (("negative_slope", 0.01),)),), "leaky", _leaky,
             negative_side=True, he_init=True),
    KindInfo("PReLU", (Spelling("prelu", (("weight", None),), aten_aliases=("_prelu_kernel",)),), "prelu", _prelu,
             negative_side=True, he_init=True),
    KindInfo("RReLU", (Spelling("rrelu", _RRELU, aten_aliases=("rrelu_with_noise",)),), "leaky", _rrelu,
             negative_side=True, he_init=True),
    KindInfo("SELU", (Spelling("selu"),), "elu", _selu, negative_side=True, from_ops=(("elu", _selu_constants),)),
    KindInfo("CELU", (Spelling("celu", (("alpha", 1.0),)),), "elu", _exponential("CELU"), negative_side=True,
             from_ops=(("elu", _celu_constants),)),
    KindInfo("ELU", (Spelling("elu", (("alpha", 1.0),)),), "elu", _exponential("ELU"), negative_side=True),
    # The tanh approximation (nn.GELU(approximate="tanh"), F.gelu(x, approximate="tanh"),
    # transformers' gelu_new/gelu_fast/gelu_pytorch_tanh) has the same sign rule: one kind.
    KindInfo("GELU", (Spelling("gelu"),), "gelu", _positive("GELU"), negative_side=True,
             class_names=("GELUActivation", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation",
                          "AccurateGELUActivation", "ClippedGELUActivation", "GELUTanh", "PytorchGELUTanh",
                          "QuickGELU", "GeLU")),
    KindInfo("SiLU", (Spelling("silu"),), "silu", _positive("SiLU"), negative_side=True,
             class_names=("SiLUActivation", "SiLU", "Swish", "SwishActivation")),
    KindInfo("Mish", (Spelling("mish"),), "mish", _positive("Mish"), negative_side=True,
             class_names=("MishActivation", "Mish")),
    KindInfo("Hardswish", (Spelling("hardswish"),), "hardswish", _hardswish, zero_gradient=True,
             class_names=("HardSwish", "HardSwishActivation", "Hardswish")),
    KindInfo("Hardsigmoid", (Spelling("hardsigmoid"),), "hardsigmoid", _bounded("Hardsigmoid", 0.0, 1.0),
             zero_gradient=True, class_names=("HardSigmoid", "Hardsigmoid")),
    # relu(x)**2 (Primer; transformers' "relu2"): 0 with gradient 0 for x <= 0. Its graph op is a
    # relu (then a square): the relu family, so a graph site of such a module keeps this kind.
    KindInfo("ReLUSquared", (), "relu", _positive("ReLUSquared", output_floor=0.0), zero_gradient=True,
             class_names=("ReLUSquaredActivation", "ReLUSquared", "SquaredReLU")),
    # Gated MLPs (SwiGLU, GeGLU, ReGLU): act(gate_proj(x)) * up_proj(x). The gate's activation
    # is a site of its own kind; the product, where it can be attributed, is a site of these.
    # GLU is nn.GLU / F.glu (x[:half] * sigmoid(x[half:])) and the product of any other gate.
    KindInfo("SwiGLU", (), "gated", _gated("SwiGLU"), gated_by="SiLU"),
    KindInfo("GeGLU", (), "gated", _gated("GeGLU"), gated_by="GELU"),
    KindInfo("ReGLU", (), "gated", _gated("ReGLU"), gated_by="ReLU"),
    KindInfo("GLU", (Spelling("glu", (("dim", -1),)),), "gated", _glu),
)}


@dataclass(frozen=True)
class KindTables:
    """Lookups derived from ``KINDS`` (see ``tables()``).

    Attributes:
        function_kinds: site function name (``relu``, ``clamp``) -> kind.
        families: function name -> decomposition family (``threshold`` is ReLU's general form).
        class_name_kinds: class names (outside ``torch.nn``) -> kind; gated kinds are never
            matched by name (a class called ``SwiGLU`` is usually a whole MLP block).
        spellings: every ``(spelling, kind)``.
        aten_ops: aten op (overload packet name, in-place forms too) -> site function name.
        from_ops: function -> ``(test, kind)`` of the kinds a call of it may compute.
        gated: the gate's kind -> the kind of its gated product.
    """

    function_kinds: dict[str, KindInfo]
    families: dict[str, str]
    class_name_kinds: dict[str, KindInfo]
    spellings: tuple[tuple[Spelling, KindInfo], ...]
    aten_ops: dict[str, str]
    from_ops: dict[str, tuple[tuple[Callable[[Mapping[str, Any]], bool], KindInfo], ...]]
    gated: dict[str, str]


def _build_tables() -> KindTables:
    spellings = tuple((spelling, info) for info in KINDS.values() for spelling in info.spellings)
    aten_ops: dict[str, str] = {}
    for spelling, _info in spellings:
        if spelling.aten:
            for op in (spelling.name, *spelling.aten_aliases):
                aten_ops[op] = aten_ops[f"{op}_"] = spelling.function
    from_ops: dict[str, list[tuple[Callable[[Mapping[str, Any]], bool], KindInfo]]] = {}
    for info in KINDS.values():
        for function, test in info.from_ops:
            from_ops.setdefault(function, []).append((test, info))
    return KindTables(
        function_kinds={spelling.function: info for spelling, info in spellings},
        families={"threshold": "threshold", **{spelling.function: info.family for spelling, info in spellings}},
        class_name_kinds={name: info for info in KINDS.values() if info.family != "gated"
                          for name in (info.name, *info.class_names)},
        spellings=spellings, aten_ops=aten_ops,
        from_ops={function: tuple(entries) for function, entries in from_ops.items()},
        gated={info.gated_by: info.name for info in KINDS.values() if info.gated_by})


_tables_cache: list[Any] = [None, None]


def tables() -> KindTables:
    """The lookups derived from ``KINDS``, rebuilt when a kind is added or replaced.

    Cheap to call (one tuple of the table's entries is compared); hot paths (a capture's
    modes) take the tables once per capture.
    """
    key = tuple((name, id(info)) for name, info in KINDS.items())
    if _tables_cache[0] != key:
        _tables_cache[1] = _build_tables()
        _tables_cache[0] = key
    return _tables_cache[1]


#: Kind names, for messages ("this model has no ...").
KNOWN_KINDS: tuple[str, ...] = tuple(KINDS)
#: Kinds whose gradient is exactly 0 where they are inactive: a dead unit stops learning.
ZERO_GRADIENT_KINDS: tuple[str, ...] = tuple(k for k, info in KINDS.items() if info.zero_gradient)
#: Kinds that keep some gradient for negative inputs.
NEGATIVE_SIDE_KINDS: tuple[str, ...] = tuple(k for k, info in KINDS.items() if info.negative_side)
#: Kinds the He-initialisation advice applies to.
HE_KINDS: tuple[str, ...] = tuple(k for k, info in KINDS.items() if info.he_init)
#: Function / aten name -> decomposition family (``threshold`` is ReLU's general form).
FAMILIES: dict[str, str] = tables().families
#: Function / aten name -> kind.
FUNCTION_KINDS: dict[str, KindInfo] = tables().function_kinds
#: Class names (outside ``torch.nn``) -> kind; ``torch.nn`` classes are matched by isinstance.
CLASS_NAME_KINDS: dict[str, KindInfo] = tables().class_name_kinds
#: The gate's kind -> the kind of its gated product.
GATED_KINDS: dict[str, str] = tables().gated

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
    info = tables().class_name_kinds.get(class_name.rsplit(".", 1)[-1])
    return None if info is None else info.name


def family(function: str) -> str:
    """The decomposition family of a function name (``selu`` and ``elu`` agree)."""
    return tables().families.get(function, function)


def same_family(kind: str, other: str) -> bool:
    """Whether two kinds decompose alike (``ReLU6`` and ``Hardtanh``; ``ReLU`` and ``ReLUSquared``)."""
    first, second = KINDS.get(kind), KINDS.get(other)
    return first is not None and second is not None and first.family == second.family


_module_classes_cache: list[Any] = [None, None]


def _module_classes() -> list[tuple[type, KindInfo]]:
    """``torch.nn`` classes of the kinds, made once per kind table (``spec_for_module`` runs per module)."""
    current = tables()
    if _module_classes_cache[0] is not current:
        from torch import nn
        _module_classes_cache[1] = [(getattr(nn, info.name), info) for info in KINDS.values() if hasattr(nn, info.name)]
        _module_classes_cache[0] = current
    return _module_classes_cache[1]


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
    named = tables().class_name_kinds.get(type(module).__name__)
    if named is None:
        return None
    return named.spec({name: getattr(module, name) for name in _MODULE_CONSTANTS if hasattr(module, name)
                       and isinstance(getattr(module, name), (int, float))})


def spec_for_function(function: str, arguments: Mapping[str, Any]) -> KindSpec:
    """The kind table for functions and aten ops: a spec from the call's own arguments.

    Raises:
        KeyError: ``function`` is not a known ReLU-family function.
    """
    info = tables().function_kinds.get(function)
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


__all__ = ["ActiveRule", "KindSpec", "KindInfo", "KindTables", "KINDS", "KNOWN_KINDS", "CLASS_NAME_KINDS",
           "GATED_KINDS", "Spelling", "tables", "relu_clamp", "same_family",
           "looks_like_activation", "kind_of_class_name", "ZERO_GRADIENT_KINDS",
           "NEGATIVE_SIDE_KINDS", "HE_KINDS", "FAMILIES", "family", "spec_for_module", "spec_for_function",
           "SELU_SCALE", "SELU_ALPHA", "floor_tolerance", "is_inplace", "prelu_slope_summary"]
