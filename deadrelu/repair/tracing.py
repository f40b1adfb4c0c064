"""Tracing a model's forward into a ``Dataflow`` (``graph.py``): ``torch.fx`` first, ``torch.export`` after.

``torch.fx`` keeps standard ``torch.nn`` layers whole, so a call to ``self.fc1`` is one node
naming ``fc1``. When fx cannot trace the ``forward`` (control flow on tensor values,
``len(x)``, ``**kwargs``...), or the model is called with keyword inputs, ``torch.export``
is used (through ``programs.TensorOutputs``, so outputs like a KV cache do not stop it) and
each aten op is mapped back to its module through the parameter it reads and its
``nn_module_stack``. Tracing runs on a deep copy in eval mode: the caller's model is never
run or changed.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..capturing.functional import FUNCTIONS, _is_relu_clamp
from ..kinds import FUNCTION_KINDS, GATED_KINDS, spec_for_module
from .graph import (ATEN_ACTIVATIONS, GATED_FUNCTIONS, META_NAMES, PASSTHROUGH_MODULES, PASSTHROUGH_NAMES, Dataflow,
                    FlowNode)


def build_dataflow(model: nn.Module, example: Sequence[Any] | None = None, *, private: bool = False,
                   kwargs: Mapping[str, Any] | None = None) -> Dataflow:
    """Trace ``model`` into a ``Dataflow``: ``torch.fx`` first, ``torch.export`` when fx fails.

    Tracing runs the forward (shapes for fx, fake tensors for export); it runs on a deep
    copy in eval mode, so the caller's model keeps every parameter, buffer (BatchNorm
    running statistics, ``num_batches_tracked``) and ``training`` flag, and the graph is
    the one eval-mode outputs come from.

    Args:
        model: the model (never changed).
        example: one batch of positional inputs, for shapes (and needed by torch.export).
        private: ``model`` is already a copy the caller owns: trace it without another copy
            (its ``training`` flags are still restored).
        kwargs: one batch of keyword inputs (``input_ids=``...); then torch.export traces.

    Returns:
        The dataflow; its layer names are the model's.

    Raises:
        RepairError: neither tracer could read the model's forward.
    """
    from .report import RepairError
    from .verify import EvalMode
    shadow = model if private else copy.deepcopy(model)
    with EvalMode(shadow):
        try:
            if kwargs:
                raise ValueError("the model takes keyword inputs; torch.fx propagates positional ones only")
            return _from_fx(shadow, example)
        except Exception as fx_error:
            if example is None:
                raise RepairError(f"torch.fx cannot trace {type(model).__name__}.forward ({_first_line(fx_error)})",
                                  hint="pass data so that torch.export can be tried") from None
            try:
                return _from_export(shadow, example, kwargs)
            except Exception as export_error:
                raise RepairError(f"cannot trace {type(model).__name__}.forward: torch.fx: "
                                  f"{_first_line(fx_error)}; torch.export: {_first_line(export_error)}",
                                  hint="repairs need the forward as a graph; simplify data-dependent control flow"
                                  ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _fx_function_name(target: Any, node: Any) -> str | None:
    """The canonical activation name of a traced call, as functional capture names it."""
    entry = FUNCTIONS.get(target)
    if entry is None:
        return None
    if entry.function == "clamp":
        arguments = {name: default for name, default in entry.parameters}
        arguments.update(zip([name for name, _ in entry.parameters], node.args[1:]))
        arguments.update({k: v for k, v in node.kwargs.items() if k in arguments})
        return "clamp" if _is_relu_clamp(arguments) else None
    return entry.function


def _containing_module(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path)


def _module_role(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.conv._ConvNd) and not getattr(module, "transposed", False):
        return "conv"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if spec_for_module(module) is not None:
        return "activation"
    if isinstance(module, PASSTHROUGH_MODULES):
        return "passthrough"
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return "flatten"
    return "other"


def _fx_flatten(node: Any) -> str | None:
    """``flatten`` when a call flattens everything after the batch axis, else None (or a label)."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return "flatten" if (start, end) == (1, -1) else None
    if name in ("view", "reshape"):
        shape = node.args[1:]
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        # x.view(x.size(0), -1): the width follows the layers; x.view(-1, 512) hard-codes it.
        if len(shape) == 2 and shape[1] == -1 and not isinstance(shape[0], int):
            return "flatten"
    return None


def _from_fx(model: nn.Module, example: Sequence[Any] | None) -> Dataflow:
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    class _Tracer(torch.fx.Tracer):
        # Subclasses of nn.ReLU / nn.Linear / nn.Conv2d... defined in user code stay whole too,
        # so their calls name the module the scan named.
        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return _module_role(module) in ("linear", "conv", "batchnorm", "activation") or \
                super().is_leaf_module(module, qualified_name)

    graph = _Tracer().trace(model)
    graph_module = torch.fx.GraphModule(model, graph)
    if example is not None:
        with torch.no_grad():  # the caller's eval mode; the model is build_dataflow's copy
            ShapeProp(graph_module).propagate(*example)
    nodes: list[FlowNode] = []
    index_of: dict[Any, int] = {}
    for fx_node in graph.nodes:
        role, label, module, function = "other", str(fx_node.target), None, None
        if fx_node.op == "placeholder":
            role, label = "input", f"input {fx_node.name}"
        elif fx_node.op == "output":
            role, label = "output", "the model output"
        elif fx_node.op == "get_attr":
            role, label = "meta", f"attribute {fx_node.target}"
        elif fx_node.op == "call_module":
            layer = model.get_submodule(fx_node.target)
            role, module = _module_role(layer), str(fx_node.target)
            label = f"{type(layer).__name__} {fx_node.target}"
        else:
            target = fx_node.target
            name = target if fx_node.op == "call_method" else getattr(target, "__name__", str(target))
            callable_ = getattr(torch.Tensor, target, None) if fx_node.op == "call_method" else target
            function = _fx_function_name(callable_, fx_node)
            if function is not None:
                role, module, label = "activation", _containing_module(fx_node), f"{name}()"
            elif target is getattr or name in META_NAMES:
                role, label = "meta", name
            elif _fx_flatten(fx_node) == "flatten":
                role, label = "flatten", f"{name}()"
            elif name in PASSTHROUGH_NAMES:
                role, label = "passthrough", f"{name}()"
            elif target is operator.getitem:
                label = "getitem"
            else:
                label = {"iadd": "add", "add": "add", "mul": "mul", "cat": "cat"}.get(name, name)
                if name in ("view", "reshape", "flatten"):
                    label = f"{name}() to a shape that mixes units or hard-codes the width"
        shape = None
        meta = fx_node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            shape = tuple(int(s) for s in meta.shape)
        node = FlowNode(len(nodes), role, label, module, function, shape=shape,
                        kind=_kind(model, role, module, function),
                        scope=_containing_module(fx_node) if fx_node.op in ("call_function", "call_method") else "")
        node.inputs = [index_of[arg] for arg in fx_node.all_input_nodes if arg in index_of
                       and nodes[index_of[arg]].role != "meta"]
        # The data input first: all_input_nodes follows argument order, so args[0] leads.
        index_of[fx_node] = node.index
        nodes.append(node)
    return Dataflow(model, _mark_gated(_with_users(nodes)), "fx")


# -- building: torch.export --------------------------------------------------------------------

def _aten_name(target: Any) -> str:
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(getattr(packet, "__name__", target)).split(".")[-1]
    return getattr(target, "__name__", str(target))


def _from_export(model: nn.Module, example: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> Dataflow:
    from .programs import export_program
    # Tensors out (a KV cache or a ModelOutput would stop export), the model's own names in.
    program = export_program(model, tuple(example), kwargs, dynamic_batch=False)
    signature = program.graph_signature
    owners = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    nodes: list[FlowNode] = []
    index_of: dict[Any, int] = {}
    for ex_node in program.graph.nodes:
        role, label, module, function = "other", str(ex_node.target), None, None
        if ex_node.op == "placeholder":
            role, label = ("meta", f"parameter {owners[ex_node.name]}") if ex_node.name in owners \
                else ("input", f"input {ex_node.name}")
        elif ex_node.op == "output":
            role, label = "output", "the model output"
        elif ex_node.op == "call_function":
            name = _aten_name(ex_node.target)
            owned = [owners[arg.name] for arg in ex_node.args[1:] if isinstance(arg, torch.fx.Node)
                     and arg.name in owners]
            layer_name = owned[0].rpartition(".")[0] if owned else None
            layer = model.get_submodule(layer_name) if layer_name is not None else None
            if name in ("linear", "conv1d", "conv2d", "conv3d", "convolution") and layer is not None \
                    and _module_role(layer) in ("linear", "conv"):
                role, module, label = _module_role(layer), layer_name, f"{type(layer).__name__} {layer_name}"
            elif "batch_norm" in name and layer is not None and _module_role(layer) == "batchnorm":
                role, module, label = "batchnorm", layer_name, f"{type(layer).__name__} {layer_name}"
            elif name in ATEN_ACTIVATIONS:
                path = _containing_module(ex_node)
                owner = model.get_submodule(path) if path else model
                if path and spec_for_module(owner) is not None:
                    role, module, label = "activation", path, f"{type(owner).__name__} {path}"
                else:
                    role, module, function, label = "activation", path, ATEN_ACTIVATIONS[name], f"{name}()"
            elif name in ("flatten",) and tuple(ex_node.args[1:3]) in ((1,), (1, -1)):
                role, label = "flatten", "flatten()"
            elif name in PASSTHROUGH_NAMES:
                role, label = "passthrough", f"{name}()"
            elif ex_node.target is operator.getitem:
                source = nodes[index_of[ex_node.args[0]]]
                if ex_node.args[1] == 0 and source.role in ("batchnorm", "passthrough"):
                    role, label = "passthrough", "getitem"
                else:
                    label = "getitem"
            elif name in META_NAMES:
                role, label = "meta", name
            else:
                label = name
        shape = None
        value = ex_node.meta.get("val")
        if isinstance(value, torch.Tensor):
            shape = tuple(int(s) for s in value.shape)
        node = FlowNode(len(nodes), role, label, module, function, shape=shape,
                        kind=_kind(model, role, module, function),
                        scope=_containing_module(ex_node) if ex_node.op == "call_function" else "")
        node.inputs = [index_of[arg] for arg in ex_node.all_input_nodes if arg in index_of
                       and nodes[index_of[arg]].role != "meta"]
        index_of[ex_node] = node.index
        nodes.append(node)
    # A BatchNorm's tuple output is read through getitem 0: the getitem is the BN's output.
    return Dataflow(model, _mark_gated(_with_users(nodes)), "export")


def _kind(model: nn.Module, role: str, module: str | None, function: str | None) -> str | None:
    """An activation node's kind: its module's, or its function's."""
    if role != "activation":
        return None
    if function is not None:
        info = FUNCTION_KINDS.get(function)
        return info.name if info is not None else None
    spec = spec_for_module(model.get_submodule(module)) if module else None
    return spec.kind if spec is not None else None


def _mark_gated(nodes: list[FlowNode]) -> list[FlowNode]:
    """Mark ``act(gate) * up`` products as the activation sites the capture names them (``mlp:swiglu#0``).

    The capture makes a product a site when one factor is an activation's output and both
    factors have the same shape; the same rule here, so the k-th marked product of a module
    is that module's ``<kind>#k`` site. The activation factor is put first in ``inputs``.
    """
    for node in nodes:
        if node.label != "mul" or node.role != "other" or len(node.inputs) != 2:
            continue
        first, second = (nodes[i] for i in node.inputs)
        if first.shape is None or first.shape != second.shape or first.shape != node.shape:
            continue
        factors = [f for f in (first, second) if f.role == "activation" and f.function not in GATED_FUNCTIONS]
        if not factors:
            continue
        activation = factors[0]
        other = second if activation is first else first
        node.role, node.module, node.kind = "activation", node.scope, GATED_KINDS.get(activation.kind or "", "GLU")
        node.function = node.kind.lower()
        node.label = f"{node.kind} product"
        node.inputs = [activation.index, other.index]
    return nodes


def _with_users(nodes: list[FlowNode]) -> list[FlowNode]:
    """Fill every node's ``users`` from the others' ``inputs`` (meta nodes have none)."""
    for node in nodes:
        if node.role == "meta":
            continue
        for source in node.inputs:
            nodes[source].users.append(node.index)
    return nodes



__all__ = ["build_dataflow"]
