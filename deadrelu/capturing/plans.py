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

from ..kinds import KINDS, family, kind_of_class_name, looks_like_activation
from .aten import activation_ops


def plan_kind(type_name: str | None, op_function: str | None = None) -> str | None:
    """The kind of a graph module by its class name: a known activation class, or a
    ``torch.nn`` kind class calling its own op (``nn.GLU`` calling ``glu``); None otherwise."""
    if not type_name:
        return None
    short = type_name.rsplit(".", 1)[-1]
    kind = kind_of_class_name(short)
    if kind is None and short in KINDS and KINDS[short].functions and (
            op_function is None or op_function in KINDS[short].functions):
        kind = short
    return kind


@dataclass(frozen=True)
class PlannedSite:
    """One activation call of the static graph, with who made it.

    Attributes:
        module: qualified name of the calling module ("" for the root).
        function: None when ``module`` is the activation module itself; else the
            function it called (``relu``) inside its ``forward``.
        call_index: which call of that module (or of that function within it) per forward.
        op_function: the graph op's function name (``selu``), for matching calls.
        kind: the calling module's kind when it is an activation module (its class name may
            differ: transformers' ``ReLUSquaredActivation`` is a ``ReLUSquared``).
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
        unsupported: ``(module, class name, why)`` of activation modules this graph's
            capture cannot scan: a kind deadrelu does not handle (``Tanh``), or a known
            kind computed without an aten activation op (``NewGELUActivation``'s tanh
            formula), which only an eager scan sees.
    """

    sites: tuple[PlannedSite, ...] | None
    reason: str | None = None
    activation_modules: tuple[str, ...] = ()
    module_types: tuple[str, ...] = ()
    unsupported: tuple[tuple[str, str, str], ...] = ()


#: why a module of a known kind made no activation op in a graph
NO_ACTIVATION_OP = "computes its activation without an aten activation op; only an eager scan sees it"
UNSUPPORTED_KIND = "unsupported kind"


def _sort_modules(candidates: dict[str, str], called: set[str], leaves: set[str]
                  ) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Split a graph's activation-like modules into scannable ones and ones listed as not scanned.

    Args:
        candidates: leaf-or-known module path -> class name.
        called: module paths that made an activation op.
        leaves: module paths without submodules.
    """
    activation, unsupported = [], []
    for path, type_name in candidates.items():
        kind = plan_kind(type_name)
        if kind is not None:
            # A torch.nn class always makes its aten op when it runs; another library's
            # class named like a kind may compute the formula by hand (tanh, pow).
            if path in called or type_name == kind:
                activation.append(path)
            else:
                unsupported.append((path, type_name, NO_ACTIVATION_OP))
        elif path in leaves and looks_like_activation(type_name):
            unsupported.append((path, type_name, UNSUPPORTED_KIND))
    return activation, unsupported


def plan_from_calls(calls: list[tuple[str, str, str | None]], activation_modules: tuple[str, ...],
                    module_types: tuple[str, ...], unsupported: tuple[tuple[str, str, str], ...] = ()) -> SitePlan:
    """Number a graph's activation calls the way eager scans number them.

    Args:
        calls: ``(op_function, calling_module_path, calling_module_type)`` in call order.
        activation_modules: activation modules of the model.
        module_types: class names of its modules.
        unsupported: activation modules that cannot be scanned (see ``SitePlan``).

    Returns:
        The plan.
    """
    counts: dict[tuple[str, str | None], int] = {}
    sites = []
    for op_function, path, type_name in calls:
        short_type = type_name.rsplit(".", 1)[-1] if type_name else None
        # Named as eager scans name it: a call made by an activation module (nn.GELU, or
        # transformers' GELUActivation calling F.gelu) is that module's site, ``mlp.act``.
        kind = plan_kind(short_type, op_function) if path != "" else None
        function = None if kind is not None else op_function
        key = (path, function)
        call_index = counts.get(key, 0)
        counts[key] = call_index + 1
        sites.append(PlannedSite(path, function, call_index, op_function, kind))
    return SitePlan(tuple(sites), None, activation_modules, module_types, unsupported)


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
    ops = activation_ops()
    for node in nodes:
        kind = node.kind()
        if kind.startswith("aten::") and kind[6:] in ops:
            path, type_name = resolve(node.getModuleHierarchy() or "")
            calls.append((ops[kind[6:]], path, type_name))
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
    candidates: dict[str, str] = {}
    leaves: set[str] = set()
    types = set()
    for name, module in model.named_modules():
        original = _original_name(module)
        types.add(original)
        if name and not any(True for _ in module.children()):
            leaves.add(name)
        if name and (plan_kind(original) is not None or name in leaves):
            candidates[name] = original
    module_types = tuple(sorted(types - {_original_name(model)}))

    def without_plan(reason: str) -> SitePlan:
        activation, unsupported = _sort_modules(candidates, set(candidates), leaves)
        return SitePlan(None, reason, tuple(activation), module_types, tuple(unsupported))

    try:
        graph = model.inlined_graph
        calls = _script_calls(graph.nodes(), _HierarchyResolver(model))
    except _UnclearHierarchy as exc:
        return without_plan(f"the TorchScript call hierarchy is ambiguous ({exc})")
    except Exception as exc:  # getModuleHierarchy is missing in old torch; some graphs do not inline
        return without_plan(f"the TorchScript graph cannot be read ({type(exc).__name__})")
    if calls is None:
        return without_plan("activation calls sit inside control flow (if/loop) in the TorchScript graph")
    activation, unsupported = _sort_modules(candidates, {path for _f, path, _t in calls}, leaves)
    return plan_from_calls(calls, tuple(activation), module_types, tuple(unsupported))


# -- torch.export plans ---------------------------------------------------------------------

_PATH_CLEANUP = re.compile(r"^L\['self'\]\.?|@\d+$")


def _activation_op(node: Any) -> str | None:
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", None)
    return name if name in activation_ops() else None


def export_plan(program: Any) -> SitePlan:
    """The activation calls of an exported graph in order, named from ``nn_module_stack``.

    Args:
        program: an ``ExportedProgram``, or anything with its ``graph`` (``program.module()``).

    Returns:
        The plan (positional when a control-flow operator holds activations).
    """
    calls: list[tuple[str, str, str | None]] = []
    seen: dict[str, str] = {}
    types: set[str] = set()
    reason = None
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for path, type_name in stack.values():
            short = str(type_name).rsplit(".", 1)[-1]
            types.add(short)
            clean = _PATH_CLEANUP.sub("", str(path))
            if clean:
                seen[clean] = short
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
            calls.append((activation_ops()[op], _PATH_CLEANUP.sub("", str(path)), str(type_name)))
        else:
            calls.append((activation_ops()[op], "", None))
    root = {str(t).rsplit(".", 1)[-1] for p, t in _root_entries(program)}
    module_types = tuple(sorted(types - root))
    # Only modules that ran appear in nn_module_stack: a leaf is a path no other path extends.
    leaves = {path for path in seen if not any(other.startswith(path + ".") for other in seen)}
    candidates = {path: short for path, short in seen.items()
                  if plan_kind(short) is not None or path in leaves}
    called = {path for _f, path, _t in calls} if reason is None else set(candidates)
    activation, unsupported = _sort_modules(candidates, called, leaves)
    if reason is not None:
        return SitePlan(None, reason, tuple(activation), module_types, tuple(unsupported))
    return plan_from_calls(calls, tuple(activation), module_types, tuple(unsupported))


def _root_entries(program: Any) -> list[tuple[str, str]]:
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            return [entry for entry in stack.values() if _PATH_CLEANUP.sub("", str(entry[0])) == ""]
    return []


__all__ = ["PlannedSite", "plan_kind", "SitePlan", "export_plan", "family", "plan_from_calls",
           "torchscript_plan"]
