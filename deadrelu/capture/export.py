"""``torch.export`` programs: a module to run, the activation plan, and the batch sizes it accepts.

``torch.export.unflatten`` rebuilds the submodule tree with the original names, but
each submodule is an ``InterpreterModule``, not an ``nn.ReLU``: an activation's kind
is read from the graph (the op it calls, and ``nn_module_stack``, the stack of
modules that made each call). Functional activations (``F.relu`` in a ``forward``)
sit in their caller's graph and are reported as that module's functional sites.

An exported program only accepts the batch sizes it was exported for: a fixed size,
or a range (``Dim("batch", min=2)``). ``ExportedModel.batch_bounds`` says which, and
the scan re-batches the data to fit (see ``load.data.fit_batches``).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import nn

from ..kinds import KNOWN_KINDS
from .dispatch import ACTIVATION_OPS, SitePlan, plan_from_calls

_PATH_CLEANUP = re.compile(r"^L\['self'\]\.?|@\d+$")


class ExportedModel(nn.Module):
    """An ``ExportedProgram`` as a module: its unflattened module tree, run in order.

    Args:
        program: the loaded ``torch.export`` program.

    Attributes:
        program: the program (its graph names the sites).
        graph_module: what runs: ``torch.export.unflatten(program)`` (original submodule
            names, ``eval()`` works), or ``program.module()`` when unflattening fails.
        batch_bounds: ``(minimum, maximum)`` batch size the program accepts
            (``maximum`` None: unbounded); ``(n, n)`` for a fixed batch size.
        sample_shape: the shape of one sample as exported (None for dynamic axes), or None.
    """

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.program = program
        with warnings.catch_warnings():
            # torch's own pytree deprecation notices are not the user's business.
            warnings.simplefilter("ignore", FutureWarning)
            try:
                self.graph_module = torch.export.unflatten(program)
            except Exception:
                self.graph_module = program.module()
        self.batch_bounds, self.sample_shape = input_constraints(program)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph_module(*args, **kwargs)

    def describe_input(self) -> str | None:
        """What the program accepts, for error messages."""
        if self.sample_shape is None:
            return None
        low, high = self.batch_bounds
        batch = str(low) if low == high else f"B in [{low}, {'inf' if high is None else high}]"
        dims = ", ".join("*" if size is None else str(size) for size in self.sample_shape)
        return f"the exported program takes input of shape ({batch}, {dims})"


def _first_user_input(program: Any) -> Any:
    names = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and names and node.name == names[0]:
            return node.meta.get("val")
    return None


def _as_int(value: Any) -> int | None:
    try:
        number = int(value)
    except Exception:  # sympy's oo / int_oo: unbounded
        return None
    return number if number < 2 ** 62 else None


def input_constraints(program: Any) -> tuple[tuple[int, int | None], tuple[int | None, ...] | None]:
    """The batch sizes the program's first input accepts, and the shape of one sample.

    Args:
        program: an ``ExportedProgram``.

    Returns:
        ``((minimum, maximum), sample_shape)``; ``maximum`` None means unbounded;
        ``sample_shape`` has None for dynamic axes, or is None when unknown.
    """
    value = _first_user_input(program)
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) == 0:
        return (1, None), None
    batch = shape[0]
    sample = tuple(size if isinstance(size, int) else None for size in shape[1:])
    if isinstance(batch, int):
        return (batch, batch), sample
    expression = getattr(getattr(batch, "node", None), "expr", None)
    bounds = program.range_constraints.get(expression) if expression is not None else None
    if bounds is None:
        return (1, None), sample
    low = _as_int(bounds.lower)
    high = _as_int(bounds.upper)
    return (max(1, low or 1), high), sample


def _activation_op(node: Any) -> str | None:
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", None)
    return name if name in ACTIVATION_OPS else None


def export_plan(program: Any) -> SitePlan:
    """The activation calls of an exported graph in order, named from ``nn_module_stack``.

    Args:
        program: an ``ExportedProgram``.

    Returns:
        The plan (positional when a control-flow operator holds activations).
    """
    calls: list[tuple[str, str, str | None]] = []
    activation_modules: dict[str, None] = {}
    types: set[str] = set()
    reason = None
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for path, type_name in stack.values():
            short = str(type_name).rsplit(".", 1)[-1]
            types.add(short)
            clean = _PATH_CLEANUP.sub("", str(path))
            if short in KNOWN_KINDS and clean:
                activation_modules[clean] = None
        if node.op != "call_function":
            continue
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            reason = f"the graph has a control-flow operator ({node.target.__name__}); calls inside it vary with the data"
            continue
        op = _activation_op(node)
        if op is None:
            continue
        if stack:
            path, type_name = list(stack.values())[-1]
            calls.append((ACTIVATION_OPS[op], _PATH_CLEANUP.sub("", str(path)), str(type_name)))
        else:
            calls.append((ACTIVATION_OPS[op], "", None))
    root = {str(t).rsplit(".", 1)[-1] for p, t in _root_entries(program)}
    module_types = tuple(sorted(types - root))
    if reason is not None:
        return SitePlan(None, reason, tuple(activation_modules), module_types)
    return plan_from_calls(calls, tuple(activation_modules), module_types)


def _root_entries(program: Any) -> list[tuple[str, str]]:
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            return [entry for entry in stack.values() if _PATH_CLEANUP.sub("", str(entry[0])) == ""]
    return []


__all__ = ["ExportedModel", "export_plan", "input_constraints"]
