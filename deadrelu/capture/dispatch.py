"""Aten-level capture for models that refuse forward hooks: TorchScript and torch.export.

A ``ScriptModule`` runs its graph in C++, so module hooks never fire; a
``torch.export`` program's submodules are ``InterpreterModule``s, not ``nn.ReLU``.
Both still call every op through the dispatcher, where a ``TorchDispatchMode`` sees
``aten.relu``, ``aten.leaky_relu_``, ``aten.elu``, ``aten.hardtanh``... one call at a
time, in execution order.

Under ``inference_mode`` (how scans run) composite ops arrive whole (``aten.prelu``,
``aten.selu``, ``aten.celu``); under ``no_grad`` they arrive decomposed
(``aten._prelu_kernel``, ``aten.elu`` with SELU's constants): both are matched, and a
decomposed SELU/CELU is recognised by its constants.

Names. The k-th activation call of a forward pass is matched against a *plan*: the
activation ops of the static graph in order, each with the module hierarchy that
called it (TorchScript's ``getModuleHierarchy()``, export's ``nn_module_stack``). A
call made inside an activation module (``relu(ReLU)``) becomes that module's site, a
call inside any other module a functional site of that module, named as eager
scans name them (``block.act``, ``block.act#1``, ``block:relu#0``). When the graph
has no usable plan (control flow, or the calls do not follow it), sites are named by
position, ``aten.relu#k`` (the k-th ``relu`` call per forward), and the result says
so (``coverage["positional_names"]``).

Unit axes follow the eager rule, judged from the op that produced the activation's
input (by tensor identity through a weakref): ``linear``/``addmm``/``matmul``/
``layer_norm``/``embedding`` -> last axis, ``convolution``/``batch_norm``/
``group_norm`` -> axis 1.
"""

from __future__ import annotations

import re
import weakref
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import CaptureError
from ..kinds import KNOWN_KINDS, SELU_ALPHA, SELU_SCALE, ActiveRule, KindSpec
from ..settings import ScanSettings
from .functional import FunctionalCall, spec_for_call
from .sites import ROOT_NAME, ActivationCapture, SiteRecord

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

#: Functions that one op may turn into when it is decomposed (selu -> elu, relu6 ->
#: hardtanh, rrelu -> leaky_relu): a plan entry and a call match when families agree.
_FAMILY = {"relu": "relu", "threshold": "threshold", "leaky_relu": "leaky", "rrelu": "leaky", "elu": "elu",
           "selu": "elu", "celu": "elu", "hardtanh": "hardtanh", "relu6": "hardtanh", "prelu": "prelu",
           "gelu": "gelu", "silu": "silu"}

#: Ops whose output carries features on the last axis / on axis 1.
_LAST_AXIS_OPS = frozenset({"linear", "addmm", "mm", "matmul", "bmm", "baddbmm", "addmv", "mv", "layer_norm",
                            "native_layer_norm", "rms_norm", "embedding", "embedding_bag", "_embedding_bag",
                            "bilinear", "einsum", "_addmm_activation"})
_CHANNEL_AXIS_OPS = frozenset({"convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                               "conv_transpose2d", "conv_transpose3d", "mkldnn_convolution", "cudnn_convolution",
                               "miopen_convolution", "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
                               "_native_batch_norm_legit_no_training", "cudnn_batch_norm", "group_norm",
                               "native_group_norm", "instance_norm"})
_RENAMES = {("ReLU6", "Hardtanh"), ("Hardtanh", "ReLU6"), ("LeakyReLU", "RReLU")}


def family(function: str) -> str:
    """The decomposition family of a site function name (``selu`` and ``elu`` agree)."""
    return _FAMILY.get(function, function)


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


# -- unit axes from ops ---------------------------------------------------------------------


@dataclass(frozen=True)
class _OpProducer:
    """An op whose output may feed an activation: which axis holds its features, how many."""

    op: str
    axis: str  # "last" or "channel"
    width: int


def resolve_unit_dim_from_op(shape: tuple[int, ...], producer: _OpProducer | None, last: _OpProducer | None,
                             per_channel_param: bool) -> tuple[int | None, str | None]:
    """The eager unit-axis rule (``capture.units.resolve_unit_dim``) with ops for modules.

    Args:
        shape: the activation's shape.
        producer: the op whose output *is* the activation's input, if known.
        last: the most recent producing op before the activation.
        per_channel_param: a PReLU with one slope per channel.

    Returns:
        ``(unit_dim, warning)``.
    """
    ndim = len(shape)
    if ndim <= 1:
        return None, None
    if ndim == 2 or per_channel_param:
        return 1, None
    if producer is not None:
        return (ndim - 1 if producer.axis == "last" else 1), None
    if last is not None:
        matches = [axis for axis in range(1, ndim) if shape[axis] == last.width]
        if len(matches) == 1:
            return matches[0], None
        why = f"{len(matches)} axes of shape {tuple(shape)} match the width {last.width} of aten.{last.op}"
    else:
        why = f"no linear/convolution/norm op ran before it (shape {tuple(shape)})"
    return 1, f"unit axis is ambiguous ({why}); assumed axis 1"


# -- reading an aten call -------------------------------------------------------------------


def _bound_arguments(func: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for position, argument in enumerate(func._schema.arguments):
        if position < len(args):
            values[argument.name] = args[position]
        elif argument.name in kwargs:
            values[argument.name] = kwargs[argument.name]
        else:
            values[argument.name] = argument.default_value
    return values


def _close(a: Any, b: float) -> bool:
    return isinstance(a, (int, float)) and abs(float(a) - b) <= 1e-6 * max(1.0, abs(b))


def spec_for_op(op: str, arguments: dict[str, Any]) -> tuple[KindSpec, bool]:
    """The kind of one aten activation call, with constants read from its arguments.

    Args:
        op: the overload packet name (``leaky_relu_``, ``_prelu_kernel``...).
        arguments: its arguments by schema name (defaults filled in).

    Returns:
        ``(spec, active_from_input)``: whether "active" must be read from the input
        (negative slopes, ``threshold`` with a replacement value above its threshold).
    """
    function = ACTIVATION_OPS[op]
    tensor = arguments.get("self")
    if function == "threshold":
        threshold, value = float(arguments["threshold"]), float(arguments["value"])
        if threshold == 0.0 and value == 0.0:
            return KindSpec("ReLU", ActiveRule.PRE_POSITIVE), False
        # y = x if x > t else v: with v <= t, y > t exactly when x > t. With v > t
        # (unusual) inputs in (t, v] are judged inactive.
        return KindSpec("Threshold", ActiveRule.ABOVE_LOWER, floor=max(threshold, value)), False
    if function == "elu":
        alpha, scale = float(arguments["alpha"]), float(arguments["scale"])
        input_scale = float(arguments["input_scale"])
        if _close(alpha, SELU_ALPHA) and _close(scale, SELU_SCALE) and _close(input_scale, 1.0):
            function, read = "selu", {}
        elif _close(scale, 1.0) and alpha != 0 and _close(input_scale, 1.0 / alpha) and not _close(alpha, 1.0):
            function, read = "celu", {"alpha": alpha}
        else:
            spec = KindSpec("ELU", ActiveRule.PRE_POSITIVE, output_sign_matches_input=alpha * scale > 0 and scale > 0,
                            floor=-abs(alpha * scale))
            return spec, not spec.output_sign_matches_input
    elif function == "hardtanh":
        low, high = float(arguments["min_val"]), float(arguments["max_val"])
        function, read = ("relu6", {}) if (low, high) == (0.0, 6.0) else ("hardtanh", {"min_val": low,
                                                                                      "max_val": high})
    elif function == "leaky_relu":
        read = {"negative_slope": float(arguments["negative_slope"])}
    elif function == "rrelu":
        read = {"lower": float(arguments["lower"]), "upper": float(arguments["upper"])}
    elif function == "celu":
        read = {"alpha": float(arguments["alpha"])}
    elif function == "prelu":
        read = {"weight": arguments["weight"]}
    else:
        read = {}
    spec = spec_for_call(FunctionalCall(function, tensor, op.endswith("_"), read))
    needs_input = spec.active_rule is ActiveRule.PRE_POSITIVE and not spec.output_sign_matches_input
    return spec, needs_input


def _prelu_module(weight: Any) -> nn.PReLU | None:
    """A detached ``nn.PReLU`` holding a call's slopes, for the slope summary."""
    if not isinstance(weight, torch.Tensor):
        return None
    with torch.inference_mode(False), torch.no_grad():
        values = weight.detach().reshape(-1).to("cpu", torch.float32).clone()
        module = nn.PReLU(num_parameters=values.numel())
        module.weight.copy_(values)
    return module


class _OpFailed(Exception):
    """The model's own op failed (not the capture): re-raised as it was."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _run(func: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        raise _OpFailed(exc) from None


class _AtenActivationMode(TorchDispatchMode):
    """Routes aten activation calls (and, while discovering, producer outputs) to a capture."""

    def __init__(self, capture: DispatchCapture) -> None:
        super().__init__()
        self._capture = capture
        self._names: dict[Any, str] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        capture = self._capture
        if not capture.running:
            return func(*args, **kwargs)
        name = self._names.get(func)
        if name is None:
            name = self._names[func] = func.overloadpacket.__name__
        if name in ACTIVATION_OPS:
            return capture.activation_call(name, func, args, kwargs)
        try:
            output = func(*args, **kwargs)
        except Exception as exc:
            capture.op_error = exc
            raise
        if capture.discovering:
            capture.producer_output(name, output)
        return output


class DispatchCapture(ActivationCapture):
    """Activation capture at the aten level, for TorchScript and ``torch.export`` models.

    Args:
        model: a ScriptModule or an ``ExportedModel``.
        settings: scan settings.
        device: where accumulators live.
        plan: the graph's activation calls (see ``torchscript_plan`` and
            ``capture.export.export_plan``).

    Owns, like ``ActivationCapture``, the train/eval flags and the dispatch mode for the
    duration of the ``with`` block, and gives both back on exit, raised or not.
    """

    def __init__(self, model: nn.Module, settings: ScanSettings, device: torch.device, plan: SitePlan) -> None:
        super().__init__(model, settings, device)
        self.plan = plan
        self.running = False
        #: an error raised by the capture inside a forward pass, if any
        self.failure: Exception | None = None
        #: the model's own op error, whose text TorchScript drops when it re-raises it
        self.op_error: Exception | None = None
        self._position = 0
        self._op_calls: dict[str, int] = {}
        self._planned: dict[tuple[str, str | None, int], PlannedSite] = {}
        self._plan_problem: str | None = plan.reason
        self._plan_ran: set[int] = set()
        self._op_outputs: deque[tuple[weakref.ref, _OpProducer]] = deque(maxlen=256)
        self._last_op: _OpProducer | None = None
        self._relabelled = False
        # Per site: whether "active" is read from the input (negative slopes, threshold).
        self._reads_input: dict[tuple[str, str, int], bool] = {}

    @property
    def discovering(self) -> bool:
        return self._discovering

    @property
    def positional_names(self) -> bool:
        """Whether site names are positional (``aten.relu#k``) rather than from modules."""
        return self._plan_problem is not None

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self) -> DispatchCapture:
        training = {module: module.training for module in self.model.modules()}
        self._stack.callback(self._restore_modes, training)
        try:
            self.model.eval()
        except (RuntimeError, NotImplementedError):
            pass  # ep.module() refuses eval(); its graph was fixed at export time anyway
        # The JIT's optimising executor may fuse activations into kernels the dispatcher
        # never sees; the plain interpreter calls every op.
        self._stack.enter_context(torch.jit.optimized_execution(False))
        self.coverage.activation_modules = list(self.plan.activation_modules)
        # The graph holds functional calls like any other op; they are sites unless turned off.
        self.coverage.functional = self.settings.functional
        self._stack.enter_context(_AtenActivationMode(self))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.running = False
        self._op_outputs.clear()
        super().__exit__(*exc_info)

    # -- batch loop -----------------------------------------------------------------------
    def begin_batch(self) -> None:
        super().begin_batch()
        self.failure = self.op_error = None
        self._position = 0
        self._op_calls.clear()
        self.running = True

    def end_batch(self) -> None:
        self.running = False
        sites = self.plan.sites
        if self._plan_problem is None and sites is not None and self._position != len(sites):
            self._plan_problem = (f"a forward pass made {self._position} activation calls where the graph "
                                  f"shows {len(sites)}")
        if self._discovering:
            self._op_outputs.clear()
            self._last_op = None
        super().end_batch()

    # -- dispatch callbacks ---------------------------------------------------------------
    def producer_output(self, op: str, output: Any) -> None:
        """Remember a linear/conv/norm output (by weakref) to judge unit axes from."""
        if op in _LAST_AXIS_OPS:
            axis = "last"
        elif op in _CHANNEL_AXIS_OPS:
            axis = "channel"
        else:
            return
        tensor = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
            return
        width = int(tensor.shape[-1] if axis == "last" else tensor.shape[1] if tensor.ndim > 1 else tensor.shape[0])
        producer = _OpProducer(op, axis, width)
        self._op_outputs.append((weakref.ref(tensor), producer))
        self._last_op = producer

    def activation_call(self, op: str, func: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Run one aten activation call and reduce it into its site.

        An error of the capture's own (not the op's) is kept in ``failure`` before it is
        raised: the TorchScript interpreter re-raises it as a bare RuntimeError.
        """
        try:
            return self._activation_call(op, func, args, kwargs)
        except _OpFailed as wrapped:
            self.op_error = wrapped.error
            raise wrapped.error from None
        except Exception as exc:
            self.failure = exc
            raise

    def _activation_call(self, op: str, func: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        arguments = _bound_arguments(func, args, kwargs)
        tensor = arguments.get("self")
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.ndim == 0:
            return _run(func, args, kwargs)
        function = ACTIVATION_OPS[op]
        position = self._position
        self._position += 1
        op_index = self._op_calls.get(function, 0)
        self._op_calls[function] = op_index + 1
        planned = self._plan_entry(position, function)
        if planned is not None and planned.function is not None and not self.settings.functional:
            return _run(func, args, kwargs)  # --no-functional: only activation modules' calls
        positional_key = ("", f"aten.{function}", op_index)
        record = self._sites.get(positional_key) if positional_key in self._sites else self._new_site(
            positional_key, planned, op, arguments, tensor)
        if planned is not None:
            self._plan_ran.add(position)
        if record is None:
            return _run(func, args, kwargs)
        active_source = None
        if self._reads_input.get(positional_key, False):
            # An in-place call overwrites its input: read the sign before it runs.
            active_source = torch.gt(tensor, record.spec.threshold) if op.endswith("_") else tensor
        output = _run(func, args, kwargs)
        if isinstance(output, torch.Tensor):
            self.observe(record, output, output if active_source is None else active_source)
        return output

    def _plan_entry(self, position: int, function: str) -> PlannedSite | None:
        sites = self.plan.sites
        if self._plan_problem is not None or sites is None:
            return None
        if position >= len(sites):
            self._plan_problem = f"a forward pass made more activation calls than the graph's {len(sites)}"
            return None
        planned = sites[position]
        if family(planned.op_function) != family(function):
            self._plan_problem = (f"activation call {position} was aten.{function} where the graph "
                                  f"has {planned.op_function}")
            return None
        return planned

    def _new_site(self, key: tuple[str, str, int], planned: PlannedSite | None, op: str,
                  arguments: dict[str, Any], tensor: torch.Tensor) -> SiteRecord | None:
        spec, reads_input = spec_for_op(op, arguments)
        if planned is not None and planned.kind is not None and (planned.kind, spec.kind) in _RENAMES:
            spec = replace(spec, kind=planned.kind)
        activation = _prelu_module(arguments.get("weight")) if spec.kind == "PReLU" else None
        module, function, call_index = key
        record = self._site(module, function, call_index, spec, tensor, activation, planned)
        if record is not None:
            self._reads_input[key] = reads_input
            if planned is not None:
                self._planned[key] = planned
        return record

    def _site(self, module_name: str, function: str | None, call_index: int, spec: KindSpec,  # type: ignore[override]
              inputs: torch.Tensor, activation: nn.Module | None, planned: PlannedSite | None = None
              ) -> SiteRecord | None:
        key = (module_name, function, call_index)
        if key in self._sites:
            return self._sites[key]
        candidates = [f"{function}#{call_index}", f"{ROOT_NAME}:{function}#{call_index}"]
        if planned is not None:
            candidates = [_planned_name(planned), planned.module] + candidates
        if not self._selected(tuple(candidates)):
            self._sites[key] = None
            self.coverage.excluded.append(candidates[0])
            return None
        record = self._new_record(module_name, function, call_index, spec, inputs, activation)
        self._sites[key] = record
        return record

    def _unit_dim(self, inputs: torch.Tensor, spec: KindSpec) -> tuple[int | None, str | None]:
        producer = None
        if self._discovering:
            for reference, candidate in reversed(self._op_outputs):
                if reference() is inputs:
                    producer = candidate
                    break
        last = self._last_op if self._discovering else None
        return resolve_unit_dim_from_op(tuple(inputs.shape), producer, last, spec.per_channel_param)

    # -- results --------------------------------------------------------------------------
    def records(self) -> list[SiteRecord]:
        """Sites that ran, in call order; named from the graph's module hierarchy when the
        calls followed the plan on every batch, else by position (``aten.relu#k``)."""
        records = super().records()
        if not self._relabelled:
            self._relabelled = True
            if self._plan_problem is None:
                for record in records:
                    planned = self._planned.get((record.module, record.function, record.call_index))
                    if planned is not None:
                        record.module, record.function, record.call_index = (
                            planned.module, planned.function, planned.call_index)
            else:
                self.coverage.warnings.append(
                    f"site names are positional (aten.<function>#k = the k-th call of that function per forward "
                    f"pass), not module names: {self._plan_problem}")
        return records

    def site_name(self, record: SiteRecord) -> str:
        """``module``/``module#k`` for activation modules, ``<module>:<function>#k`` for
        calls inside other modules, ``aten.<function>#k`` for positional names."""
        if record.function is not None and record.function.startswith("aten."):
            return f"{record.function}#{record.call_index}"
        if record.function is None and self.plan.sites is not None:
            calls = sum(1 for s in self.plan.sites if s.module == record.module and s.function is None)
            return f"{record.module}#{record.call_index}" if calls > 1 else record.module
        return f"{record.module or ROOT_NAME}:{record.function}#{record.call_index}"

    def not_run(self) -> list[str]:
        """Activation modules of the model that made no activation call on this data."""
        if self._plan_problem is not None or self.plan.sites is None:
            return []
        ran = {self.plan.sites[i].module for i in self._plan_ran}
        return [name for name in self.plan.activation_modules if name not in ran]

    def no_sites_error(self, model_name: str) -> CaptureError:
        """The error for a model in which no activation call was seen."""
        types = ", ".join(self.plan.module_types[:12]) or "none"
        return CaptureError(f"no ReLU-family activation call seen in {model_name} (module types: {types}; "
                            "functional calls are captured too and none ran)",
                            hint=f"deadrelu scans {', '.join(KNOWN_KINDS)} and their aten ops")


def _planned_name(planned: PlannedSite) -> str:
    if planned.function is None:
        return f"{planned.module}#{planned.call_index}"
    return f"{planned.module or ROOT_NAME}:{planned.function}#{planned.call_index}"


def capture_for(model: nn.Module, settings: ScanSettings, device: torch.device) -> ActivationCapture:
    """The capture that fits a model: hooks for eager modules, aten-level for others.

    Args:
        model: an eager ``nn.Module``, a ``ScriptModule`` or an ``ExportedModel``.
        settings: scan settings.
        device: where accumulators live.

    Returns:
        An (unentered) capture context manager.
    """
    from .export import ExportedModel, export_plan

    if isinstance(model, torch.jit.ScriptModule):
        return DispatchCapture(model, settings, device, torchscript_plan(model))
    if isinstance(model, ExportedModel):
        return DispatchCapture(model, settings, device, export_plan(model.program))
    return ActivationCapture(model, settings, device)


__all__ = ["ACTIVATION_OPS", "DispatchCapture", "PlannedSite", "SitePlan", "capture_for", "family",
           "plan_from_calls", "resolve_unit_dim_from_op", "spec_for_op", "torchscript_plan"]
