"""The aten/dispatch driver: ``DispatchCapture`` for models that refuse forward hooks.

A ``ScriptModule`` runs its graph in C++, so module hooks never fire; a ``torch.export``
program's submodules are ``InterpreterModule``s, not ``nn.ReLU``. Both still call every
op through the dispatcher, where a ``TorchDispatchMode`` sees ``aten.relu``,
``aten.leaky_relu_``, ``aten.elu``, ``aten.hardtanh``... one call at a time, in
execution order (the ops are derived from ``kinds.KINDS``, see ``capturing.aten``).

Names. The k-th activation call of a forward pass is matched against a *plan*: the
activation ops of the static graph in order, each with the module hierarchy that
called it (``capturing.plans``). A call made inside an activation module becomes that
module's site, a call inside any other module a functional site of that module, named as
eager scans name them (``block.act``, ``block.act#1``, ``block:relu#0``). A gated
product (``aten.mul`` of an activation output and a tensor of its shape) is named after
the module its gate belongs to (``mlp.act_fn`` -> ``mlp:swiglu#0``). When the graph has
no usable plan (control flow, or the calls do not follow it), sites are named by
position, ``aten.relu#k`` (the k-th ``relu`` call per forward), and the result says so.

Unit axes follow the eager rule, judged from the op that produced the activation's
input (``links.OpLinks``). The parts are the eager driver's: the site registry, the
observer, gated products, the padded-sequence reach; only the source of calls differs.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import CaptureError
from ..kinds import KNOWN_KINDS, family, same_family
from ..settings import ScanSettings
from ..stats import SiteStats
from .aten import activation_ops, bound_arguments, prelu_module, spec_for_op
from .contract import keep_train_flags
from .gated import GatedProducts, product_spec
from .links import OpLinks
from .masking import SequenceReach
from .observe import Observer, before_call
from .plans import PlannedSite, SitePlan
from .registry import ROOT_NAME, SiteKey, SiteRecord, SiteRegistry, no_sites_error

#: elementwise products, where a gated MLP multiplies ``act(gate)`` by ``up``
_PRODUCTS = frozenset({"mul"})


class _OpFailed(Exception):
    """The model's own op failed (not the capture): re-raised as it was."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _run(func: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        raise _OpFailed(exc) from None


class _AtenActivationMode(TorchDispatchMode):
    """Routes aten activation calls and products (and, while discovering, every op's output) to a capture."""

    def __init__(self, capture: DispatchCapture) -> None:
        super().__init__()
        self._capture = capture
        self._names: dict[Any, str] = {}
        self._ops = activation_ops()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        capture = self._capture
        if not capture.running:
            return func(*args, **kwargs)
        name = self._names.get(func)
        if name is None:
            name = self._names[func] = func.overloadpacket.__name__
        if name in self._ops:
            return capture.activation_call(name, self._ops[name], func, args, kwargs)
        if name in _PRODUCTS and capture.gated.waiting:
            return capture.product_call(func, args, kwargs)
        try:
            output = func(*args, **kwargs)
        except Exception as exc:
            capture.op_error = exc
            raise
        if capture.links.discovering:
            capture.links.produced(name, output)
            capture.reach.propagate(args, kwargs, output)
        return output


class DispatchCapture:
    """Activation capture at the aten level, for TorchScript and ``torch.export`` models.

    Args:
        model: a ScriptModule or an ``ExportedModel``.
        settings: scan settings.
        device: where accumulators live.
        plan: the graph's activation calls (``capturing.plans.torchscript_plan`` /
            ``export_plan``).

    Owns the train/eval flags and the dispatch mode for the duration of the ``with``
    block, and gives both back on exit, raised or not. Keeps the capture contract
    (``capturing.contract.Capture``).
    """

    #: the graph's layers run without Python module hooks
    sees_modules = False

    def __init__(self, model: nn.Module, settings: ScanSettings, device: torch.device, plan: SitePlan) -> None:
        self.model = model
        self.settings = settings
        self.device = device
        self.plan = plan
        self.eval_mode = True
        self.failure: Exception | None = None
        self.op_error: Exception | None = None
        self.running = False
        self.observer = Observer(settings)
        self.links = OpLinks()
        self.reach = SequenceReach(self.observer.mask)
        self.registry = SiteRegistry(settings, self.links, self.reach)
        self.coverage = self.registry.coverage
        self.gated = GatedProducts()
        self._stack = ExitStack()
        self._position = 0
        self._op_calls: dict[str, int] = {}
        # A site's planned name, by record (records outlive the scan: ids stay unique).
        self._planned: dict[int, PlannedSite] = {}
        self._named: set[int] = set()
        self._plan_problem: str | None = plan.reason
        self._plan_ran: set[int] = set()
        self._product_calls: dict[tuple[str, str], int] = {}
        self._warned = False
        # Per site: whether "active" is read from the input (negative slopes, Hardswish).
        self._reads_input: dict[SiteKey, bool] = {}

    @property
    def in_batch(self) -> bool:
        """Whether a forward pass is running (between ``begin_batch`` and ``end_batch``)."""
        return self.running

    @property
    def positional_names(self) -> bool:
        """Whether site names are positional (``aten.relu#k``) rather than from modules."""
        return self._plan_problem is not None

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self) -> DispatchCapture:
        keep_train_flags(self._stack, self.model)
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
        self.coverage.functional = bool(self.settings.functional)
        self._stack.enter_context(_AtenActivationMode(self))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.running = False
        self.gated.clear()
        try:
            self._stack.close()
        finally:
            self.links.stop()
            self.reach.stop()

    # -- batch loop -----------------------------------------------------------------------
    def begin_batch(self, inside: bool = False) -> None:
        """Fresh per-forward counters; calls are observed from now on (``inside``: no difference here)."""
        self.registry.begin_batch()
        self.gated.clear()
        self.failure = self.op_error = None
        self._position = 0
        self._op_calls.clear()
        self._product_calls.clear()
        if self.links.discovering:
            self.reach.start()
        self.running = True

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """The padding mask of the coming forward pass (see ``ActivationCapture.set_mask``)."""
        self.observer.mask.set(mask)
        self.coverage.masked = self.observer.mask.used

    def end_batch(self) -> None:
        """Check the calls followed the plan; stop following producer ops after the first pass."""
        self.running = False
        self.gated.clear()
        sites = self.plan.sites
        if self._plan_problem is None and sites is not None and self._position != len(sites):
            self._plan_problem = (f"a forward pass made {self._position} activation calls where the graph "
                                  f"shows {len(sites)}")
        self.registry.end_batch()
        if self.links.discovering:
            self.links.stop()
            self.reach.stop()

    # -- dispatch callbacks ---------------------------------------------------------------
    def activation_call(self, op: str, function: str, func: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Run one aten activation call and reduce it into its site.

        An error of the capture's own (not the op's) is kept in ``failure`` before it is
        raised: the TorchScript interpreter re-raises it as a bare RuntimeError.
        """
        try:
            output = self._activation_call(op, function, func, args, kwargs)
        except _OpFailed as wrapped:
            self.op_error = wrapped.error
            raise wrapped.error from None
        except Exception as exc:
            self.failure = exc
            raise
        if self.links.discovering:
            self.reach.propagate(args, kwargs, output)
        return output

    def _activation_call(self, op: str, function: str, func: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        arguments = bound_arguments(func, args, kwargs)
        tensor = arguments.get("self")
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.ndim == 0:
            return _run(func, args, kwargs)
        position = self._position
        self._position += 1
        op_index = self._op_calls.get(function, 0)
        self._op_calls[function] = op_index + 1
        planned = self._plan_entry(position, function)
        if planned is not None and planned.function is not None and not self.settings.functional:
            return _run(func, args, kwargs)  # --no-functional: only activation modules' calls
        key: SiteKey = ("", f"aten.{function}", op_index)
        record = self.registry.get(key) if self.registry.known(key) else self._new_site(key, planned, op, arguments,
                                                                                      tensor)
        if planned is not None:
            self._plan_ran.add(position)
        if record is None:
            return _run(func, args, kwargs)
        before = before_call(record.spec, tensor, op.endswith("_")) if self._reads_input.get(key) else None
        output = _run(func, args, kwargs)
        if isinstance(output, torch.Tensor):
            self.observer.observe(record, output, before)
            if self.settings.functional:
                self.gated.remember(output, record)
        return output

    def product_call(self, func: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """An elementwise product: a gated product's site when one factor is an activation output."""
        gate = None if kwargs else self.gated.match(args)
        try:
            output = func(*args, **kwargs)
        except Exception as exc:
            self.op_error = exc
            raise
        if self.links.discovering:
            self.reach.propagate(args, kwargs, output)
        if gate is None or not isinstance(output, torch.Tensor):
            return output
        try:
            self._product(gate, output)
        except Exception as exc:
            self.failure = exc
            raise
        return output

    def _product(self, gate: SiteRecord, output: torch.Tensor) -> None:
        spec = product_spec(gate)
        function = spec.kind.lower()
        # Positionally ``aten.mul:swiglu#k``: the k-th gated product of that kind per forward pass.
        index = self._op_calls.get(f"mul:{function}", 0)
        self._op_calls[f"mul:{function}"] = index + 1
        key: SiteKey = ("", f"aten.mul:{function}", index)
        if self.registry.known(key):
            record = self.registry.get(key)
        else:
            planned = self._product_plan(gate, function)
            names: tuple[str, ...] = (f"mul:{function}#{index}", f"{ROOT_NAME}:{function}#{index}")
            if planned is not None:
                names = (_planned_name(planned), planned.module) + names
            record = self.registry.open(key, spec, output, candidates=names, label=names[0], unit_dim=gate.unit_dim)
            if record is not None and planned is not None:
                self._planned[id(record)] = planned
        if record is not None:
            self.observer.observe(record, output, None)

    def _product_plan(self, gate: SiteRecord, function: str) -> PlannedSite | None:
        """Where a product is named: the module its gate's activation belongs to (the parent
        of an activation module, or the module whose forward called the function)."""
        planned = self._planned.get(id(gate))
        if planned is None:
            return None
        module = planned.module.rpartition(".")[0] if planned.function is None else planned.module
        index = self._product_calls.get((module, function), 0)
        self._product_calls[(module, function)] = index + 1
        return PlannedSite(module, function, index, function)

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

    def _new_site(self, key: SiteKey, planned: PlannedSite | None, op: str, arguments: dict[str, Any],
                  tensor: torch.Tensor) -> SiteRecord | None:
        spec, reads_input = spec_for_op(op, arguments)
        if planned is not None and planned.kind is not None and same_family(planned.kind, spec.kind):
            spec = replace(spec, kind=planned.kind)  # nn.ReLU6 called as hardtanh(0, 6) stays a ReLU6
        activation = prelu_module(arguments.get("weight")) if spec.kind == "PReLU" else None
        _module, function, call_index = key
        names: tuple[str, ...] = (f"{function}#{call_index}", f"{ROOT_NAME}:{function}#{call_index}")
        if planned is not None:
            names = (_planned_name(planned), planned.module) + names
        record = self.registry.open(key, spec, tensor, candidates=names, label=names[0], activation=activation)
        if record is not None:
            self._reads_input[key] = reads_input
            if planned is not None:
                self._planned[id(record)] = planned
        return record

    # -- results --------------------------------------------------------------------------
    def records(self) -> list[SiteRecord]:
        """Sites that ran, in call order; named from the graph's module hierarchy when the
        calls followed the plan on every batch, else by position (``aten.relu#k``)."""
        records = self.registry.records()
        if self._plan_problem is None:
            for record in records:
                planned = self._planned.get(id(record))
                if planned is not None and id(record) not in self._named:
                    self._named.add(id(record))
                    record.module, record.function, record.call_index = (
                        planned.module, planned.function, planned.call_index)
        elif not self._warned:
            self._warned = True
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

    def finalize(self, record: SiteRecord) -> SiteStats:
        """The site's statistics so far."""
        return record.accumulator.finalize()

    def not_run(self) -> list[str]:
        """Activation modules of the model that made no activation call on this data."""
        if self._plan_problem is not None or self.plan.sites is None:
            return []
        ran = {self.plan.sites[i].module for i in self._plan_ran}
        return [name for name in self.plan.activation_modules if name not in ran]

    def ran_this_batch(self) -> list[str]:
        """Nothing: the graph's calls are not attributed to modules while it runs."""
        return []

    def no_sites_error(self, model_name: str) -> CaptureError:
        """The error for a model in which no activation call was seen."""
        if self.coverage.excluded or self.coverage.unsupported:
            return no_sites_error(self.coverage, model_name, list(self.plan.module_types), "")
        types = ", ".join(self.plan.module_types[:12]) or "none"
        return CaptureError(f"no ReLU-family activation call seen in {model_name} (module types: {types}; "
                            "functional calls are captured too and none ran)",
                            hint=f"deadrelu scans {', '.join(KNOWN_KINDS)} and their aten ops")


def _planned_name(planned: PlannedSite) -> str:
    if planned.function is None:
        return f"{planned.module}#{planned.call_index}"
    return f"{planned.module or ROOT_NAME}:{planned.function}#{planned.call_index}"


__all__ = ["DispatchCapture", "spec_for_op"]
