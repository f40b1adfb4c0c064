"""Functional activations: ``F.relu(x)``, ``x.relu()``, ``torch.clamp(x, min=0)``... in ``forward``.

Many models never build an activation module; their ``forward`` calls a function.
``FunctionalActivationMode`` is a ``TorchFunctionMode`` that sees every such call,
reads the kind's constants from the call's own arguments (``negative_slope``,
``alpha``, ``min_val``/``max_val``, PReLU's weight) and hands the call to a callback,
which decides where it belongs and runs it. Everything that is not a ReLU-family call
passes straight through.

Only the lookup table and the argument reading live here; attributing a call to the
module whose ``forward`` made it is ``ActivationCapture``'s job (``capture/sites.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..kinds import KindSpec, spec_for_function

#: What ``rrelu`` uses when ``lower``/``upper`` are not given.
RRELU_LOWER = 1.0 / 8.0
RRELU_UPPER = 1.0 / 3.0


@dataclass(frozen=True)
class FunctionalCall:
    """One call of a ReLU-family function, as read from its arguments.

    Attributes:
        function: the canonical function name used in site names (``relu``,
            ``leaky_relu``, ``clamp``...); ``F.relu``, ``torch.relu`` and ``x.relu()``
            are all ``relu``.
        input: the tensor the activation is applied to (the pre-activation).
        inplace: the call overwrites ``input`` with its output.
        arguments: the kind's constants by name (``negative_slope``, ``alpha``,
            ``min_val``, ``max_val``, ``weight``, ``lower``, ``upper``).
    """

    function: str
    input: torch.Tensor
    inplace: bool
    arguments: dict[str, Any]


@dataclass(frozen=True)
class _Entry:
    """How to read one callable's arguments: its parameters after ``input``, in order."""

    function: str
    parameters: tuple[tuple[str, Any], ...] = ()
    always_inplace: bool = False

    def read(self, args: tuple, kwargs: dict[str, Any]) -> FunctionalCall | None:
        if args:
            tensor, rest = args[0], args[1:]
        else:
            tensor, rest = kwargs.get("input", kwargs.get("self")), ()
        # Activations act on float batches; integer bookkeeping (``lengths.clamp(min=0)``)
        # and 0-d scalars are not activation sites.
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.ndim == 0:
            return None
        arguments = {name: default for name, default in self.parameters}
        for (name, _default), value in zip(self.parameters, rest):
            arguments[name] = value
        for name, value in kwargs.items():
            if name in arguments:
                arguments[name] = value
        inplace = self.always_inplace or bool(arguments.pop("inplace", False))
        if self.function == "clamp" and not _is_relu_clamp(arguments):
            return None
        return FunctionalCall(self.function, tensor, inplace, arguments)


def _is_relu_clamp(arguments: dict[str, Any]) -> bool:
    """``clamp`` is a ReLU only as ``min=0`` with no ``max`` (a Python number, not a tensor)."""
    low = arguments.get("min")
    if arguments.get("max") is not None or isinstance(low, bool) or not isinstance(low, Real):
        return False
    return float(low) == 0.0


_INPLACE = ("inplace", False)
_RRELU = (("lower", RRELU_LOWER), ("upper", RRELU_UPPER), ("training", False))
_CLAMP = (("min", None), ("max", None))


def _table() -> dict[Callable, _Entry]:
    table: list[tuple[Callable | None, _Entry]] = [
        (F.relu, _Entry("relu", (_INPLACE,))),
        (torch.relu, _Entry("relu")),
        (torch.Tensor.relu, _Entry("relu")),
        (torch.relu_, _Entry("relu", always_inplace=True)),
        (torch.Tensor.relu_, _Entry("relu", always_inplace=True)),
        (F.relu6, _Entry("relu6", (_INPLACE,))),
        (F.leaky_relu, _Entry("leaky_relu", (("negative_slope", 0.01), _INPLACE))),
        (F.leaky_relu_, _Entry("leaky_relu", (("negative_slope", 0.01),), always_inplace=True)),
        (F.elu, _Entry("elu", (("alpha", 1.0), _INPLACE))),
        (F.elu_, _Entry("elu", (("alpha", 1.0),), always_inplace=True)),
        (F.selu, _Entry("selu", (_INPLACE,))),
        (torch.selu, _Entry("selu")),
        (torch.selu_, _Entry("selu", always_inplace=True)),
        (F.celu, _Entry("celu", (("alpha", 1.0), _INPLACE))),
        (torch.celu, _Entry("celu", (("alpha", 1.0),))),
        (torch.celu_, _Entry("celu", (("alpha", 1.0),), always_inplace=True)),
        (F.gelu, _Entry("gelu")),
        (F.silu, _Entry("silu", (_INPLACE,))),
        (F.mish, _Entry("mish", (_INPLACE,))),
        (F.hardswish, _Entry("hardswish", (_INPLACE,))),
        (F.hardsigmoid, _Entry("hardsigmoid", (_INPLACE,))),
        (F.hardtanh, _Entry("hardtanh", (("min_val", -1.0), ("max_val", 1.0), _INPLACE))),
        (F.hardtanh_, _Entry("hardtanh", (("min_val", -1.0), ("max_val", 1.0)), always_inplace=True)),
        (F.prelu, _Entry("prelu", (("weight", None),))),
        (getattr(torch.Tensor, "prelu", None), _Entry("prelu", (("weight", None),))),
        (F.rrelu, _Entry("rrelu", _RRELU + (_INPLACE,))),
        (torch.rrelu, _Entry("rrelu", _RRELU)),
        (torch.rrelu_, _Entry("rrelu", _RRELU, always_inplace=True)),
        (torch.clamp, _Entry("clamp", _CLAMP)),
        (torch.Tensor.clamp, _Entry("clamp", _CLAMP)),
        (torch.clip, _Entry("clamp", _CLAMP)),
        (torch.Tensor.clip, _Entry("clamp", _CLAMP)),
        (torch.clamp_, _Entry("clamp", _CLAMP, always_inplace=True)),
        (torch.Tensor.clamp_, _Entry("clamp", _CLAMP, always_inplace=True)),
        (getattr(torch, "clip_", None), _Entry("clamp", _CLAMP, always_inplace=True)),
        (torch.Tensor.clip_, _Entry("clamp", _CLAMP, always_inplace=True)),
        (torch.clamp_min, _Entry("clamp", (("min", None),))),
        (torch.Tensor.clamp_min, _Entry("clamp", (("min", None),))),
        (getattr(torch, "clamp_min_", None), _Entry("clamp", (("min", None),), always_inplace=True)),
        (torch.Tensor.clamp_min_, _Entry("clamp", (("min", None),), always_inplace=True)),
    ]
    return {func: entry for func, entry in table if func is not None}


#: Every callable that is captured, with how to read its arguments.
FUNCTIONS: dict[Callable, _Entry] = _table()

#: Canonical function names, for messages and docs.
FUNCTION_NAMES: tuple[str, ...] = tuple(dict.fromkeys(entry.function for entry in FUNCTIONS.values()))


def read_call(func: Callable, args: tuple, kwargs: dict[str, Any]) -> FunctionalCall | None:
    """Recognise a ReLU-family call.

    Args:
        func: the callable that ``__torch_function__`` received.
        args: its positional arguments.
        kwargs: its keyword arguments.

    Returns:
        The call, or None when ``func`` is not a ReLU-family function, its input is
        not a floating tensor with a batch axis, or it is a ``clamp`` that is not
        ``min=0`` without a ``max``.
    """
    try:
        entry = FUNCTIONS.get(func)
    except TypeError:  # an unhashable callable cannot be one of ours
        return None
    return None if entry is None else entry.read(args, kwargs)


def spec_for_call(call: FunctionalCall) -> KindSpec:
    """The kind table for functions: a spec whose constants come from the call's own arguments.

    Args:
        call: a recognised call.

    Returns:
        Its ``KindSpec`` (the same rules ``spec_for_module`` gives the matching module).
    """
    return spec_for_function(call.function, call.arguments)


#: Called with the recognised call and a zero-argument function that runs it; returns
#: what the call returns.
CallHandler = Callable[[FunctionalCall, Callable[[], Any]], Any]
#: Called with an elementwise product's arguments and a function that runs it.
ProductHandler = Callable[[tuple, Callable[[], Any]], Any]

#: Elementwise products, where a gated MLP multiplies ``act(gate)`` by ``up``.
PRODUCTS = frozenset({torch.Tensor.mul, torch.mul, torch.Tensor.__mul__})


class FunctionalActivationMode(TorchFunctionMode):
    """A ``TorchFunctionMode`` that routes ReLU-family calls to a handler.

    Args:
        handler: receives ``(call, run)`` for each recognised call and must return
            ``run()``'s result. While it runs, this mode is off (torch pops a mode while
            its ``__torch_function__`` runs), so ``F.relu6`` calling ``hardtanh``
            inside, or the handler's own reductions, are not seen twice.

        product_handler: receives ``(args, run)`` for each elementwise product
            (``a * b``), to recognise gated MLPs; None leaves products alone.

    Every other torch call goes straight through; that pass-through is the whole
    overhead of functional capture.
    """

    def __init__(self, handler: CallHandler, product_handler: ProductHandler | None = None) -> None:
        super().__init__()
        self._handler = handler
        self._product_handler = product_handler

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if kwargs is None:
            kwargs = {}
        try:
            entry = FUNCTIONS.get(func)
            product = entry is None and self._product_handler is not None and func in PRODUCTS
        except TypeError:  # an unhashable callable is none of ours
            entry, product = None, False
        if entry is not None:
            call = entry.read(args, kwargs)
            if call is not None:
                return self._handler(call, lambda: func(*args, **kwargs))
        elif product and not kwargs:
            assert self._product_handler is not None
            return self._product_handler(args, lambda: func(*args, **kwargs))
        return func(*args, **kwargs)


__all__ = ["FunctionalCall", "FunctionalActivationMode", "FUNCTIONS", "FUNCTION_NAMES", "PRODUCTS", "read_call",
           "spec_for_call", "CallHandler", "ProductHandler"]
