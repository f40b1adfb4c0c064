"""Functional activations: ``F.relu(x)``, ``x.relu()``, ``torch.clamp(x, min=0)``... in ``forward``.

Many models never build an activation module; their ``forward`` calls a function.
``FunctionalActivationMode`` is a ``TorchFunctionMode`` that sees every such call,
reads the kind's constants from the call's own arguments (``negative_slope``,
``alpha``, ``min_val``/``max_val``, PReLU's weight) and hands the call to a callback,
which decides where it belongs and runs it. Everything that is not a ReLU-family call
passes straight through.

The table of callables is derived from ``kinds.KINDS`` (each ``Spelling``: ``F.<name>``,
``torch.<name>``, ``Tensor.<name>`` and their in-place ``<name>_`` forms, those that
exist); only the table and the argument reading live here. Attributing a call to the
module whose ``forward`` made it is ``capturing.attribution``'s job.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..kinds import KindSpec, KindTables, Spelling, relu_clamp, spec_for_function, tables

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
    when: Callable[[dict[str, Any]], bool] | None = None

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
        if self.when is not None and not self.when(arguments):
            return None
        return FunctionalCall(self.function, tensor, inplace, arguments)


def _is_relu_clamp(arguments: dict[str, Any]) -> bool:
    """``clamp`` is a ReLU only as ``min=0`` with no ``max`` (see ``kinds.relu_clamp``)."""
    return relu_clamp(arguments)


def _signature_parameters(function: Callable, fallback: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """A Python function's parameters after its input, with defaults; ``fallback`` for builtins."""
    try:
        parameters = list(inspect.signature(function).parameters.values())[1:]
    except (TypeError, ValueError):  # a builtin without a signature: the kind's own list
        return fallback
    return tuple((p.name, None if p.default is inspect.Parameter.empty else p.default) for p in parameters
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY))


def _entries(spelling: Spelling) -> list[tuple[Callable, _Entry]]:
    """The callables of one spelling that exist in this torch, with how to read each."""
    found: list[tuple[Callable, _Entry]] = []
    for namespace in (F, torch, torch.Tensor):
        for inplace in (False, True):
            function = getattr(namespace, spelling.name + ("_" if inplace else ""), None)
            if function is None or not callable(function):
                continue
            # F's Python functions take ``inplace=`` (read from their signature); the rest take
            # the kind's constants only.
            parameters = (_signature_parameters(function, spelling.parameters) if namespace is F and not inplace
                          else spelling.parameters)
            found.append((function, _Entry(spelling.function, parameters, inplace, spelling.when)))
    return found


_table_cache: dict[int, tuple[KindTables, dict[Callable, _Entry]]] = {}


def functional_table() -> dict[Callable, _Entry]:
    """Every captured callable with how to read its arguments, derived from ``kinds.KINDS``.

    Rebuilt when the kind table changes; a capture takes it once when it starts.
    """
    kind_tables = tables()
    cached = _table_cache.get(id(kind_tables))
    if cached is None or cached[0] is not kind_tables:
        table: dict[Callable, _Entry] = {}
        for spelling, _info in kind_tables.spellings:
            if spelling.functional:
                for function, entry in _entries(spelling):
                    table.setdefault(function, entry)  # F.relu_ is torch.relu_: first one wins
        _table_cache.clear()
        _table_cache[id(kind_tables)] = cached = (kind_tables, table)
    return cached[1]


#: Every callable that is captured (with the kind table as imported), with how to read its arguments.
FUNCTIONS: dict[Callable, _Entry] = functional_table()

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
        entry = functional_table().get(func)
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
        self._functions = functional_table()

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if kwargs is None:
            kwargs = {}
        try:
            entry = self._functions.get(func)
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
           "spec_for_call", "CallHandler", "ProductHandler", "functional_table"]
