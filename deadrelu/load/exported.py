"""``torch.export`` programs as modules: what runs, and the batch sizes a program accepts.

``torch.export.unflatten`` rebuilds the submodule tree with the original names, but
each submodule is an ``InterpreterModule``, not an ``nn.ReLU``; capture reads the
program's graph instead (``capturing.plans.export_plan``).

An exported program only accepts the batch sizes it was exported for: a fixed size,
or a range (``Dim("batch", min=2)``). ``ExportedModel.batch_bounds`` says which, and
the scan re-batches the data to fit (see ``load.data.fit_batches``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


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


def is_exported_graph_module(module: Any) -> bool:
    """Whether ``module`` is ``ExportedProgram.module()``'s output: a graph of aten ops whose
    activation modules are gone (and whose ``eval()`` raises)."""
    graph = getattr(module, "graph", None)
    if not isinstance(module, torch.fx.GraphModule) or graph is None:
        return False
    if any(cls.__name__ == "_StatefulGraphModule" for cls in type(module).__mro__):
        return True
    return any(node.meta.get("nn_module_stack") for node in graph.nodes if node.op == "call_function")


__all__ = ["ExportedModel", "input_constraints", "is_exported_graph_module"]
