"""Aten activation ops, derived from ``kinds.KINDS``, and how one call of them is read.

The ops are each aten ``Spelling`` of a kind (``relu``, ``leaky_relu``...), their
in-place forms and aliases (``_prelu_kernel``), plus ``threshold``, ReLU's general form
(``y = x if x > t else v``), which is no kind of its own. Under ``no_grad`` composite
ops arrive decomposed (``selu`` as ``elu`` with SELU's constants, ``relu6`` as
``hardtanh(0, 6)``); a kind's ``from_ops`` entry recognises them by their arguments.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..kinds import KINDS, ActiveRule, KindSpec, tables

#: ReLU's general form: not a kind, read here (``threshold(x, 0, 0)`` is a ReLU).
GENERAL_FORMS = {"threshold": "threshold", "threshold_": "threshold"}

_ops_cache: list[Any] = [None, None]


def activation_ops() -> dict[str, str]:
    """aten op (overload packet name) -> the function name sites use, rebuilt when ``KINDS`` changes."""
    kind_tables = tables()
    if _ops_cache[0] is not kind_tables:
        _ops_cache[1] = {**GENERAL_FORMS, **kind_tables.aten_ops}
        _ops_cache[0] = kind_tables
    return _ops_cache[1]


def bound_arguments(func: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """An aten call's arguments by schema name, defaults filled in."""
    values: dict[str, Any] = {}
    for position, argument in enumerate(func._schema.arguments):
        if position < len(args):
            values[argument.name] = args[position]
        elif argument.name in kwargs:
            values[argument.name] = kwargs[argument.name]
        else:
            values[argument.name] = argument.default_value
    return values


def spec_for_op(op: str, arguments: dict[str, Any]) -> tuple[KindSpec, bool]:
    """The kind of one aten activation call, with constants read from its arguments.

    Args:
        op: the overload packet name (``leaky_relu_``, ``_prelu_kernel``...).
        arguments: its arguments by schema name (defaults filled in).

    Returns:
        ``(spec, active_from_input)``: whether "active" must be read from the input
        (negative slopes, Hardswish).
    """
    function = activation_ops()[op]
    if function == "threshold":
        threshold, value = float(arguments["threshold"]), float(arguments["value"])
        if threshold == 0.0 and value == 0.0:
            return KINDS["ReLU"].spec({}), False
        # y = x if x > t else v: with v <= t, y > t exactly when x > t. With v > t
        # (unusual) inputs in (t, v] are judged inactive.
        return KindSpec("Threshold", ActiveRule.ABOVE_LOWER, floor=max(threshold, value),
                        output_floor=min(threshold, value)), False
    kind_tables = tables()
    info = next((info for test, info in kind_tables.from_ops.get(function, ()) if test(arguments)),
                kind_tables.function_kinds[function])
    spec = info.spec(arguments)
    return spec, spec.reads_input


def prelu_module(weight: Any) -> nn.PReLU | None:
    """A detached ``nn.PReLU`` holding a call's slopes, for the slope summary."""
    if not isinstance(weight, torch.Tensor):
        return None
    with torch.inference_mode(False), torch.no_grad():
        values = weight.detach().reshape(-1).to("cpu", torch.float32).clone()
        module = nn.PReLU(num_parameters=values.numel())
        module.weight.copy_(values)
    return module


__all__ = ["GENERAL_FORMS", "activation_ops", "bound_arguments", "prelu_module", "spec_for_op"]
