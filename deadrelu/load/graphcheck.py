"""A graph model may only compute on tensors: the check run before a TorchScript or
``torch.export`` graph from a file runs.

Contract
--------
* Input: a graph that has been loaded and never run: every function of a TorchScript
  compilation unit plus every method of every submodule (:func:`check_torchscript`), or
  every ``call_function`` node of an exported program's graph module and of all its
  submodules, which hold the bodies of ``cond``/``while_loop``/... (:func:`check_exported`).
  Nested blocks (``prim::If``/``prim::Loop``) and subgraph attributes are walked too.
* Output: nothing, or :class:`UnsafeGraphError` (exit 2) naming the first operation
  outside the allow-list, where it is, and why it is refused. Nothing is run.
* The allow-list is derived from the operators' own schemas. An ``aten``/``prims`` overload
  is allowed when its schema says it only computes: no ``Storage``/``Stream``/``RRef``/
  ``Future``/custom-class argument or result, every argument it writes (``Tensor(a!)``) is
  a tensor or an in-graph list/dict, every string argument is one of the reviewed
  non-path names (``equation``, ``reduce``, ``padding``...), and it returns something or
  writes something (an op that does neither only runs for a side effect, except the
  assertion and warning ops in :data:`_CHECKS`). On top, :data:`_REFUSED` names the ops
  whose schema looks pure but that reach outside the graph: ``aten::from_file`` (maps a
  file), ``aten::save``, ``aten::_print``, the RNG-seeding ops. ``prim`` nodes are
  allowed by name (:data:`_SAFE_PRIM`: control flow, containers, attribute access,
  metadata queries), except a method call on a C++ object (``torch.classes``). Any
  other namespace (custom ops, ``quantized``, ``profiler``, ``c10d``...) is refused. In an exported graph, the Python callables torch itself emits
  for symbolic sizes (``operator.getitem``, ``operator.add``, ``torch.sym_max``...) and the
  control-flow higher-order ops in :data:`_SAFE_HOPS` are allowed; an operator passed as an
  argument (``with_effects``, ``auto_functionalized``) is checked like a node target.
* Random ops (``dropout``, ``bernoulli``, ``rand``) are allowed: they draw from the
  generator, which only changes what later draws give; ops that *set* its state are not.
* Consent (``--allow-pickle``: the user trusts the file) skips the check; the loaders
  decide that, not this module.

The check is about what an operation can reach, not about bugs inside torch's kernels.
"""

from __future__ import annotations

import builtins
import math
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ModelLoadError

#: Namespaces whose operators are torch's own computations.
_NAMESPACES = frozenset({"aten", "prims"})

#: Ops whose schema looks like a computation but which reach outside the graph.
_REFUSED = {
    "aten::from_file": "maps a file into the tensor's memory (writing the tensor writes the file)",
    "aten::save": "writes a file",
    "aten::_print": "prints",
    "aten::manual_seed": "sets the random number generator's state",
    "aten::seed": "sets the random number generator's state",
    "aten::_get_tracing_state": "reads the tracer's state",
}

#: Ops that return nothing and write nothing but are allowed: they only raise, warn, or set
#: grad mode (which the scan sets again around every batch).
_CHECKS = frozenset({
    "aten::_assert_async", "aten::_assert_scalar", "aten::_assert_tensor_metadata", "aten::sym_constrain_range",
    "aten::sym_constrain_range_for_size", "aten::_linalg_check_errors", "aten::_validate_compressed_sparse_indices",
    "aten::_validate_sparse_coo_tensor_args", "aten::_validate_sparse_compressed_tensor_args",
    "aten::_validate_sparse_csr_tensor_args", "aten::_validate_sparse_csc_tensor_args",
    "aten::_validate_sparse_bsr_tensor_args", "aten::_validate_sparse_bsc_tensor_args", "aten::warn",
    "aten::set_grad_enabled"})

#: The names of string arguments in torch's schemas, each reviewed: a mode, an equation, a
#: message or a TorchScript string operation, never a path (``filename`` is the one that is).
_STRING_ARGUMENTS = frozenset({
    "input", "message", "self", "a", "b", "type", "substr", "el", "key", "inputs", "l", "item", "dict", "string",
    "device_type", "s", "idx", "t", "to_add", "reduce", "activation", "algorithm", "padding_side", "norm",
    "fillchar", "values", "assert_msg", "approximate", "chars", "mode", "separator", "old", "new", "ord",
    "rounding_mode", "interpolation", "driver", "p", "pad_mode", "UPLO", "side", "padding", "equation", "indexing",
    "api_name"})

#: Argument and result types that hand out something other than values: raw memory,
#: streams, remote references, futures, custom C++ objects.
_OPAQUE_TYPE = re.compile(r"Storage|Stream|RRef|Future|Await|Capsule|__torch__\.torch\.classes|\bAnyClassType")

#: TorchScript structural nodes: control flow, containers, attributes, casts, metadata queries.
_SAFE_PRIM = frozenset(f"prim::{name}" for name in (
    "Constant", "If", "Loop", "GetAttr", "SetAttr", "CallMethod", "CallFunction", "ListConstruct", "ListUnpack",
    "TupleConstruct", "TupleUnpack", "TupleIndex", "TupleSlice", "DictConstruct", "DictIndex", "CreateObject",
    "isinstance", "unchecked_cast", "unchecked_unwrap_optional", "Uninitialized", "RaiseException", "Enter", "Exit",
    "NumToTensor", "ImplicitTensorToNum", "dtype", "device", "layout", "requires_grad", "data", "grad", "shape",
    "is_cpu", "is_cuda", "is_xpu", "is_mps", "is_meta", "is_xla", "is_ipu", "is_maia", "is_mtia", "is_vulkan",
    "is_nested", "is_quantized", "is_sparse", "is_sparse_csr", "is_mkldnn", "itemsize", "nbytes", "index", "name",
    "type", "id", "min", "max", "abs", "tolist", "rangelist", "EnumName", "EnumValue", "ModuleContainerIndex",
    "IfThenElse", "StringIndex", "AutogradAdd", "AutogradZero", "AutogradAnyNonZero", "AutogradAllZero",
    "AutogradAllNonZero", "Return"))

#: Why a few prim nodes are refused (others: "not one of the structural prim ops").
_PRIM_REASONS = {
    "prim::Print": "prints", "prim::PythonOp": "calls Python", "prim::IgnoredPythonOp": "calls Python",
    "prim::fork": "starts a task on another thread", "prim::awaitable": "starts a deferred task",
    "prim::rpc_async": "calls a remote process", "prim::rpc_sync": "calls a remote process",
    "prim::rpc_remote": "calls a remote process", "prim::TimePoint": "reads the clock",
    "prim::AddStatValue": "writes profiling statistics"}

#: Higher-order ops that only run subgraphs of the same file (checked as well) on tensors.
_SAFE_HOPS = frozenset({
    "cond", "while_loop", "while_loop_stack_output", "map_impl", "scan", "associative_scan",
    "wrap_with_set_grad_enabled", "wrap_with_autocast", "invoke_subgraph", "auto_functionalized",
    "auto_functionalized_v2", "with_effects", "out_dtype", "flex_attention", "hints_wrapper", "wrap",
    "tag_activation_checkpoint"})


def _safe_callables() -> dict[str, Any]:
    """The Python callables torch's exporter emits for symbolic sizes and grad/autocast
    regions, under the names its serializer writes them."""
    found: list[Any] = [
        operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
        operator.mod, operator.pow, operator.neg, operator.pos, operator.abs, operator.eq, operator.ne,
        operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_, operator.xor,
        operator.not_, operator.invert, operator.lshift, operator.rshift, math.ceil, math.floor, math.trunc,
        math.sqrt, builtins.round, torch._C._set_grad_enabled]
    for name in ("sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_sum"):
        if hasattr(torch, name):
            found.append(getattr(torch, name))
    from torch.amp import autocast_mode
    from torch.autograd import grad_mode
    from torch.fx.experimental import symbolic_shapes
    found += [autocast_mode._enter_autocast, autocast_mode._exit_autocast, grad_mode.set_grad_enabled]
    if hasattr(symbolic_shapes, "cast_symbool_to_symint_guardless"):
        found.append(symbolic_shapes.cast_symbool_to_symint_guardless)
    return {f"{item.__module__}.{item.__name__}": item for item in found}


_CALLABLES: dict[str, Any] | None = None


def _callables() -> dict[str, Any]:
    global _CALLABLES
    if _CALLABLES is None:
        _CALLABLES = _safe_callables()
    return _CALLABLES


class UnsafeGraphError(ModelLoadError):
    """A graph model calls an operation that does more than compute on tensors."""


@dataclass(frozen=True)
class Finding:
    """One refused operation.

    Attributes:
        op: the operation (``aten::from_file``, ``torch.os.system``).
        where: where it is (``node from_file in the top-level graph``).
        why: what it does that computing on tensors does not.
    """

    op: str
    where: str
    why: str

    def error(self, label: str) -> UnsafeGraphError:
        """The error to raise for the file ``label``."""
        return UnsafeGraphError(
            f"{label}: the model's graph calls {self.op} ({self.where}), which {self.why}; a model file may only "
            "compute on tensors, refusing to run it",
            hint="re-export the model without that operation, or pass --allow-pickle if you trust the file")


# -- operators --------------------------------------------------------------------------------------


def _is_value_container(type_text: str) -> bool:
    return type_text.startswith(("List[", "Dict[", "t[]")) or type_text.endswith("[]")


def schema_refusal(schema: Any) -> str | None:
    """Why an operator is refused, judged from its schema (``torch._C.FunctionSchema``).

    Args:
        schema: the overload's schema (``op._schema``, or from ``torch._C._jit_get_all_schemas``).

    Returns:
        None when the op only computes; otherwise what it does, for the message.
    """
    name = schema.name
    namespace = name.split("::", 1)[0]
    if namespace not in _NAMESPACES:
        return f"is an operator of the {namespace!r} namespace, not one of torch's tensor computations"
    if name in _REFUSED:
        return _REFUSED[name]
    for part in (*schema.arguments, *schema.returns):
        if _OPAQUE_TYPE.search(str(part.type)):
            return f"handles a {part.type} (not a tensor value)"
    writes_any = False
    for argument in schema.arguments:
        type_text = str(argument.type)
        if "str" in type_text and argument.name not in _STRING_ARGUMENTS:
            return f"takes a string argument {argument.name!r} (a path?)"
        alias = argument.alias_info
        if alias is not None and alias.is_write:
            writes_any = True
            if "Tensor" not in type_text and not _is_value_container(type_text):
                return f"writes its {type_text} argument {argument.name!r}"
    if not schema.returns and not writes_any and name not in _CHECKS:
        return "returns nothing and writes none of its arguments: it only runs for a side effect"
    return None


def target_refusal(target: Any) -> str | None:
    """Why a ``call_function`` target of an exported graph (or an operator passed to one as an
    argument) is refused.

    Args:
        target: an ``OpOverload``, a ``HigherOrderOperator`` or a Python callable.

    Returns:
        None when allowed; otherwise the reason, for the message.
    """
    if isinstance(target, torch._ops.OpOverload):
        return schema_refusal(target._schema)
    if isinstance(target, torch._ops.HigherOrderOperator):
        if target.name() in _SAFE_HOPS:
            return None
        return "is a higher-order operation that runs more than subgraphs of tensors"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return "is an operator without a chosen overload (torch.export never writes one)"
    if any(target is item for item in _callables().values()):
        return None
    return "is not an operation on tensors"


def target_name(target: Any) -> str:
    """How a target reads in a message: ``aten::add.Tensor``, ``higher_order.cond``, ``posix.system``."""
    if isinstance(target, torch._ops.OpOverload):
        schema = target._schema
        return schema.name + (f".{schema.overload_name}" if schema.overload_name else "")
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{getattr(target, '__qualname__', getattr(target, '__name__', type(target).__name__))}"


_SERIALIZED_OP = re.compile(r"torch\.ops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")


def resolve_serialized(text: str) -> tuple[Any, Finding | None]:
    """What a serialized ``.pt2`` node target names, resolving only operators and the listed
    callables: ``torch.ops.<namespace>.<op>.<overload>`` through torch's operator registry (a
    lookup; whether the op is allowed is decided by :func:`check_exported`, which can name its
    node), the Python callables in the list by their exact name, and never by walking
    attributes of ``torch`` (``torch.os.system`` resolves to ``os.system``).

    Args:
        text: the ``target`` (or ``as_operator`` argument) of a serialized node.

    Returns:
        ``(target, None)`` for an operator or a listed callable; ``(text, None)`` for text that
        names nothing here (torch's own loader then fails on it, as it does for unknown
        names); ``(None, finding)`` for a target refused by its name alone.
    """
    if text in _callables():
        return _callables()[text], None
    where = "a node target in the archive"
    match = _SERIALIZED_OP.fullmatch(text)
    if match is None:
        if text.startswith(("torch", "#")):
            return None, Finding(text, where, "is not an operation on tensors")
        return text, None
    namespace, op_name, overload = match.groups()
    if namespace == "higher_order":
        hop = getattr(torch.ops.higher_order, op_name, None) if overload is None else None
        return (hop, None) if isinstance(hop, torch._ops.HigherOrderOperator) else (text, None)
    if overload is None:
        return None, Finding(text, where, "is an operator without a chosen overload (torch.export never writes one)")
    try:
        target = getattr(getattr(getattr(torch.ops, namespace), op_name), overload)
    except (AttributeError, RuntimeError):
        return text, None
    return (target, None) if isinstance(target, torch._ops.OpOverload) else (text, None)


# -- torch.export graphs ---------------------------------------------------------------------------


def _operators_in(value: Any) -> Iterator[Any]:
    """Operators and callables among a node's arguments (``with_effects(token, op, ...)``)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)) \
                or callable(item) and not isinstance(item, (torch.fx.Node, torch.Tensor, type)):
            yield item


def exported_findings(graph_module: torch.nn.Module) -> list[Finding]:
    """Every refused operation in an exported program's graph module and its submodules.

    Args:
        graph_module: ``ExportedProgram.graph_module``.

    Returns:
        One finding per refused node (empty: the graph only computes).
    """
    findings: list[Finding] = []
    for path, module in graph_module.named_modules():
        graph = getattr(module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        place = f"submodule {path}" if path else "the top-level graph"
        for node in graph.nodes:
            where = f"node {node.name} in {place}"
            if node.op == "call_method":
                findings.append(Finding(f"method {node.target}", where, "is a Python method call, not an operator"))
            elif node.op == "call_function":
                why = target_refusal(node.target)
                if why is not None:
                    findings.append(Finding(target_name(node.target), where, why))
                for inner in _operators_in((node.args, node.kwargs)):
                    why = target_refusal(inner)
                    if why is not None:
                        findings.append(Finding(target_name(inner), f"an argument of {where}", why))
    return findings


def check_exported(program: Any, label: str) -> None:
    """Refuse an exported program whose graph does more than compute on tensors.

    Args:
        program: the loaded ``ExportedProgram`` (not run yet).
        label: the file, for the message.

    Raises:
        UnsafeGraphError: naming the first refused operation.
    """
    findings = exported_findings(program.graph_module)
    if findings:
        raise findings[0].error(label)


# -- TorchScript graphs -----------------------------------------------------------------------------


def _node_refusal(node: Any, schemas: dict[str, Any]) -> str | None:
    kind = node.kind()
    namespace = kind.split("::", 1)[0]
    if namespace == "prim":
        if kind == "prim::CallMethod" and str(node.inputsAt(0).type()).startswith("__torch__.torch.classes."):
            # A C++ object's method (packed weights, process groups) is native code, not a graph.
            return f"calls {node.s('name')}() of a C++ object ({node.inputsAt(0).type()})"
        if kind in _SAFE_PRIM:
            return None
        return _PRIM_REASONS.get(kind, "is not one of the structural prim ops")
    if namespace not in _NAMESPACES:
        return f"is an operator of the {namespace!r} namespace, not one of torch's tensor computations"
    schema = schemas.get(node.schema())
    if schema is None:
        return "is an operator without a known schema"
    return schema_refusal(schema)


def _graph_nodes(graph: Any) -> Iterator[Any]:
    """Every node of a TorchScript graph: nested blocks and subgraph attributes included."""
    stack = [graph.block() if hasattr(graph, "block") else graph]
    while stack:
        block = stack.pop()
        for node in block.nodes():
            yield node
            stack.extend(node.blocks())
            for attribute in node.attributeNames():
                kind = node.kindOf(attribute)
                if kind == "g":
                    stack.append(node.g(attribute).block())
                elif kind == "gs":
                    stack.extend(inner.block() for inner in node.gs(attribute))


def torchscript_findings(module: Any, functions: list[Any] = ()) -> list[Finding]:
    """Every refused node in the methods of a scripted module and its submodules, and in
    ``functions`` (the loaded compilation unit's, which include free functions and classes).

    Args:
        module: a ``torch.jit.ScriptModule``.
        functions: more ``torch._C.ScriptFunction``\\ s to check.

    Returns:
        One finding per refused node (empty: every graph only computes).
    """
    schemas = {str(schema): schema for schema in torch._C._jit_get_all_schemas()}
    graphs: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for path, submodule in module.named_modules():
        script = getattr(submodule, "_c", None)
        if script is None:
            continue
        qualified = script._type().qualified_name()
        for method in script._method_names():
            name = f"{qualified}.{method}"
            if name not in seen:
                seen.add(name)
                graphs.append((f"method {method} of {path or 'the model'}", script._get_method(method).graph))
    for function in functions:
        if function.qualified_name not in seen:
            seen.add(function.qualified_name)
            graphs.append((f"function {function.qualified_name}", function.graph))
    findings: list[Finding] = []
    for where, graph in graphs:
        for node in _graph_nodes(graph):
            why = _node_refusal(node, schemas)
            if why is not None:
                findings.append(Finding(node.kind(), f"in {where}", why))
    return findings


def check_torchscript(module: Any, functions: list[Any], label: str) -> None:
    """Refuse a TorchScript module whose graphs do more than compute on tensors.

    Args:
        module: the loaded ``ScriptModule`` (not run yet).
        functions: every function of its compilation unit.
        label: the file, for the message.

    Raises:
        UnsafeGraphError: naming the first refused operation.
    """
    findings = torchscript_findings(module, functions)
    if findings:
        raise findings[0].error(label)


__all__ = ["Finding", "UnsafeGraphError", "check_exported", "check_torchscript", "exported_findings",
           "resolve_serialized", "schema_refusal", "target_refusal", "torchscript_findings"]
