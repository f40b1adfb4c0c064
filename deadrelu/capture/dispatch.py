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

import weakref
from collections import deque
from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import CaptureError
from ..kinds import KNOWN_KINDS, SELU_ALPHA, SELU_SCALE, ActiveRule, KindSpec
from ..settings import ScanSettings
from .functional import FunctionalCall, spec_for_call
from .plans import ACTIVATION_OPS, PlannedSite, SitePlan, family
from .sites import ROOT_NAME, ActivationCapture, SiteRecord
from .units import LAST_AXIS_OPS, Producer, producer_of_op, resolve_unit_dim

_RENAMES = {("ReLU6", "Hardtanh"), ("Hardtanh", "ReLU6"), ("LeakyReLU", "RReLU")}


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
            ``capture.plans.export_plan``).

    Owns, like ``ActivationCapture``, the train/eval flags and the dispatch mode for the
    duration of the ``with`` block, and gives both back on exit, raised or not.
    """

    def __init__(self, model: nn.Module, settings: ScanSettings, device: torch.device, plan: SitePlan) -> None:
        super().__init__(model, settings, device)
        self.plan = plan
        self.running = False
        self._position = 0
        self._op_calls: dict[str, int] = {}
        self._planned: dict[tuple[str, str | None, int], PlannedSite] = {}
        self._plan_problem: str | None = plan.reason
        self._plan_ran: set[int] = set()
        self._op_outputs: deque[tuple[weakref.ref, Producer]] = deque(maxlen=256)
        self._last_op: Producer | None = None
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
        self.coverage.unsupported = [[module, class_name, None, why] for module, class_name, why in self.plan.unsupported]
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
        tensor = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
            return
        width = int(tensor.shape[-1] if op in LAST_AXIS_OPS else tensor.shape[1] if tensor.ndim > 1 else tensor.shape[0])
        producer = producer_of_op(op, width)
        if producer is None:
            return
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

    def _input_link(self, inputs: torch.Tensor, module_name: str, activation: nn.Module | None) -> None:
        """Aten-level sites are not linked to layers: the graph's ops have no modules to blame."""
        return None

    def _unit_dim(self, inputs: torch.Tensor, spec: KindSpec, link: Any = None) -> tuple[int | None, str | None]:
        producer = None
        if self._discovering:
            for reference, candidate in reversed(self._op_outputs):
                if reference() is inputs:
                    producer = candidate
                    break
        last = self._last_op if self._discovering else None
        return resolve_unit_dim(tuple(inputs.shape), producer, last, spec.per_channel_param)

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
        if self.coverage.excluded or self.coverage.unsupported:
            return super().no_sites_error(model_name)
        types = ", ".join(self.plan.module_types[:12]) or "none"
        return CaptureError(f"no ReLU-family activation call seen in {model_name} (module types: {types}; "
                            "functional calls are captured too and none ran)",
                            hint=f"deadrelu scans {', '.join(KNOWN_KINDS)} and their aten ops")


def _planned_name(planned: PlannedSite) -> str:
    if planned.function is None:
        return f"{planned.module}#{planned.call_index}"
    return f"{planned.module or ROOT_NAME}:{planned.function}#{planned.call_index}"


__all__ = ["DispatchCapture", "spec_for_op"]
