"""Site plans: the activation calls a static graph makes, in order, named as eager scans name them.

TorchScript graphs and ``torch.export`` programs hold no ``nn.ReLU`` modules to hook;
their activations are aten ops. A plan lists those ops in call order, each with the
module hierarchy that made the call (TorchScript's ``getModuleHierarchy()``, export's
``nn_module_stack``), so the dispatch-level capture (``capture.dispatch``) can give
its sites the names an eager scan gives (``block.act``, ``layer1.relu#1``,
``block:relu#0``). When control flow makes the order depend on the data there is no
plan, and sites are named by position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ..kinds import KNOWN_KINDS, family

#: aten op (overload packet name) -> the function name sites use.
ACTIVATION_OPS: dict[str, str] = {
    "relu": "relu", "relu_": "relu",
    "threshold": "threshold", "threshold_": "threshold",
    "leaky_relu": "leaky_relu", "leaky_relu_": "leaky_relu",
    "rrelu": "rrelu", "rrelu_": "rrelu", "rrelu_with_noise": "rrelu", "rrelu_with_noise_": "rrelu",
    "elu": "elu", "elu_": "elu",
    "selu": "selu", "selu_": "selu",
    "celu": "celu", "celu_": "celu",
    "hardtanh": "hardtanh", "hardtanh_": "hardtanh",
    "relu6": "relu6", "relu6_": "relu6",
    "prelu": "prelu", "_prelu_kernel": "prelu",
    "gelu": "gelu", "gelu_": "gelu",
    "silu": "silu", "silu_": "silu",
}

@dataclass(frozen=True)
class PlannedSite:
    """One activation call of the static graph, with who made it.

    Attributes:
        module: qualified name of the calling module ("" for the root).
        function: None when ``module`` is the activation module itself; else the
            function it called (``relu``) inside its ``forward``.
        call_index: which call of that module (or of that function within it) per forward.
        op_function: the graph op's function name (``selu``), for matching calls.
        kind: the calling module's class name when it is a known activation kind.
    """

    module: str
    function: str | None
    call_index: int
    op_function: str
    kind: str | None = None


@dataclass(frozen=True)
class SitePlan:
    """The activation calls a graph makes, in order, or why there is no such list.

    Attributes:
        sites: planned sites in call order (None: names will be positional).
        reason: why there is no plan (control flow, no module hierarchy...).
        activation_modules: activation modules the model contains, by qualified name.
        module_types: class names of the modules the model contains (for "nothing found").
    """

    sites: tuple[PlannedSite, ...] | None
    reason: str | None = None
    activation_modules: tuple[str, ...] = ()
    module_types: tuple[str, ...] = ()


def plan_from_calls(calls: list[tuple[str, str, str | None]], activation_modules: tuple[str, ...],
                    module_types: tuple[str, ...]) -> SitePlan:
    """Number a graph's activation calls the way eager scans number them.

    Args:
        calls: ``(op_function, calling_module_path, calling_module_type)`` in call order.
        activation_modules: activation modules of the model.
        module_types: class names of its modules.

    Returns:
        The plan.
    """
    counts: dict[tuple[str, str | None], int] = {}
    sites = []
    for op_function, path, type_name in calls:
        short_type = type_name.rsplit(".", 1)[-1] if type_name else None
        is_module = short_type in KNOWN_KINDS and path != ""
        function = None if is_module else op_function
        key = (path, function)
        call_index = counts.get(key, 0)
        counts[key] = call_index + 1
        sites.append(PlannedSite(path, function, call_index, op_function, short_type if is_module else None))
    return SitePlan(tuple(sites), None, activation_modules, module_types)


# -- TorchScript plans ----------------------------------------------------------------------

_HIERARCHY_ENTRY = re.compile(r"([^().]*)\(([^()]*)\)")
#: Containers TorchScript does not list as a level of the call hierarchy (they have no forward).
_CONTAINERS = ("ModuleList", "ModuleDict")


class _UnclearHierarchy(Exception):
    """A hierarchy entry matches no submodule, or several (children of two ModuleLists)."""


def _original_name(module: Any) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


class _HierarchyResolver:
    """Turns TorchScript's call hierarchy into ``named_modules()`` names.

    ``getModuleHierarchy()`` gives ``layers(ModuleList)``-free chains such as
    ``0(Sequential).1(ReLU).UNKNOWN_INSTANCE(UNKNOWN_TYPE)`` (the last entry: a function
    called inside ``1``); ModuleList/ModuleDict levels are looked up here.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._cache: dict[str, tuple[str, str | None]] = {}

    def __call__(self, text: str) -> tuple[str, str | None]:
        """``(qualified module name, its class name)`` of the module that made the call."""
        if text not in self._cache:
            self._cache[text] = self._resolve(text)
        return self._cache[text]

    def _resolve(self, text: str) -> tuple[str, str | None]:
        module, names, last_type = self.model, [], None
        for instance, type_name in _HIERARCHY_ENTRY.findall(text):
            if not instance or instance == "UNKNOWN_INSTANCE":
                continue
            children = dict(module.named_children())
            if instance in children:
                names.append(instance)
                module = children[instance]
            else:
                found = [(name, dict(child.named_children())[instance]) for name, child in children.items()
                         if _original_name(child) in _CONTAINERS and instance in dict(child.named_children())
                         and _original_name(dict(child.named_children())[instance]) == type_name]
                if len(found) != 1:
                    raise _UnclearHierarchy(f"{'.'.join(names + [instance]) or text} matches "
                                            f"{len(found)} submodules")
                names += [found[0][0], instance]
                module = found[0][1]
            last_type = type_name
        return ".".join(names), last_type


def _script_calls(nodes: Any, resolve: _HierarchyResolver) -> list[tuple[str, str, str | None]] | None:
    """Activation calls of a TorchScript block in order; None when control flow makes
    the order depend on the data (a loop or an ``if`` whose branches differ)."""
    calls: list[tuple[str, str, str | None]] = []
    for node in nodes:
        kind = node.kind()
        if kind.startswith("aten::") and kind[6:] in ACTIVATION_OPS:
            path, type_name = resolve(node.getModuleHierarchy() or "")
            calls.append((ACTIVATION_OPS[kind[6:]], path, type_name))
        blocks = list(node.blocks())
        if not blocks:
            continue
        inner = [_script_calls(block.nodes(), resolve) for block in blocks]
        if any(branch is None for branch in inner):
            return None
        if kind == "prim::If":
            # ``F.threshold`` scripted is ``if inplace: threshold_ else: threshold``: one call either way.
            shapes = [[(family(f), p) for f, p, _t in branch] for branch in inner]  # type: ignore[union-attr]
            if all(shape == shapes[0] for shape in shapes):
                calls.extend(inner[0])  # type: ignore[arg-type]
                continue
            return None
        if any(inner):
            return None
    return calls


def torchscript_plan(model: torch.jit.ScriptModule) -> SitePlan:
    """The activation calls of a ScriptModule's inlined graph, named from its module hierarchy."""
    activation_modules, types = [], set()
    for name, module in model.named_modules():
        original = _original_name(module)
        types.add(original)
        if original in KNOWN_KINDS and name:
            activation_modules.append(name)
    module_types = tuple(sorted(types - {_original_name(model)}))
    try:
        graph = model.inlined_graph
        calls = _script_calls(graph.nodes(), _HierarchyResolver(model))
    except _UnclearHierarchy as exc:
        return SitePlan(None, f"the TorchScript call hierarchy is ambiguous ({exc})", tuple(activation_modules),
                        module_types)
    except Exception as exc:  # getModuleHierarchy is missing in old torch; some graphs do not inline
        return SitePlan(None, f"the TorchScript graph cannot be read ({type(exc).__name__})",
                        tuple(activation_modules), module_types)
    if calls is None:
        return SitePlan(None, "activation calls sit inside control flow (if/loop) in the TorchScript graph",
                        tuple(activation_modules), module_types)
    return plan_from_calls(calls, tuple(activation_modules), module_types)


# -- torch.export plans ---------------------------------------------------------------------

_PATH_CLEANUP = re.compile(r"^L\['self'\]\.?|@\d+$")


def _activation_op(node: Any) -> str | None:
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", None)
    return name if name in ACTIVATION_OPS else None


def export_plan(program: Any) -> SitePlan:
    """The activation calls of an exported graph in order, named from ``nn_module_stack``.

    Args:
        program: an ``ExportedProgram``, or anything with its ``graph`` (``program.module()``).

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


__all__ = ["ACTIVATION_OPS", "PlannedSite", "SitePlan", "export_plan", "family", "plan_from_calls",
           "torchscript_plan"]
