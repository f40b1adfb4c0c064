"""Activation sites and the hooks that feed them.

A *site* is one call of an activation per forward pass. ``ActivationCapture`` owns
every hook handle (in an ``ExitStack``) and the model's train/eval flags, and gives
both back in ``__exit__`` whether or not the forward pass raised. With functional
capture on it also owns the ``TorchFunctionMode`` that sees ``F.relu`` & co. and the
global module pre/post hooks that keep the stack of running modules those calls are
attributed to.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import time
import weakref
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from ..errors import CaptureError
from ..kinds import (GATED_KINDS, KINDS, KNOWN_KINDS, ActiveRule, KindSpec, floor_tolerance, is_inplace,
                     looks_like_activation, spec_for_module)
from ..settings import Granularity, ScanSettings
from ..result import InputLink
from ..stats import Accumulator, CompiledReduction, ReductionPlan, ReductionWorkspace, SiteStats
from .functional import FunctionalActivationMode, FunctionalCall, spec_for_call
from .units import NORM_LAYERS, PRODUCERS, is_producer, producer_of_module, resolve_unit_dim

ROOT_NAME = "<root>"


@dataclass
class SiteRecord:
    """One site's identity and running accumulator (capture-internal, mutable).

    Attributes:
        module: qualified module name from ``named_modules()`` ("" for the root).
        function: for functional sites, the function called (``relu``); None for module sites.
        call_index: which call of that module (or function within that module) per forward.
        spec: the activation kind's rules.
        unit_dim: the unit axis (None: the whole output is one unit; with position
            granularity, every axis after the batch is a unit axis).
        unit_shape: shape of the per-unit tensors.
        plan: the site's reduction plan.
        order: when it was first seen (network order).
        activation: the activation module, for slope summaries (None for functions).
        link: which layer produced the site's input, seen while discovering (None: not tracked).
    """

    module: str
    function: str | None
    call_index: int
    spec: KindSpec
    unit_dim: int | None
    unit_shape: tuple[int, ...]
    plan: ReductionPlan
    order: int
    accumulator: Accumulator
    activation: nn.Module | None = None
    calls: int = 0
    #: a padding mask was given but this site's activation does not start with its (N, L) axes
    unmasked: bool = False
    #: the plan for the masked (real positions only) view, made on first use
    masked_plan: ReductionPlan | None = None
    link: InputLink | None = None

    def check_shape(self, shape: torch.Size, granularity: Granularity) -> None:
        """Raise if a later call's output no longer has this site's units."""
        if granularity is Granularity.POSITION:
            actual = tuple(shape[1:])
        elif self.unit_dim is None:
            actual = ()
        else:
            actual = (shape[self.unit_dim],) if len(shape) > self.unit_dim else None  # type: ignore[assignment]
        if actual != self.unit_shape:
            raise CaptureError(
                f"site {self.module or ROOT_NAME} call {self.call_index} changed its units mid-scan: "
                f"first {self.unit_shape}, now output shape {tuple(shape)}",
                hint="with --granularity position every batch must have the same spatial size; "
                     "otherwise the model routes different tensors through one call site")


@dataclass
class Coverage:
    """What capture found but could not or did not scan (shown, never dropped)."""

    activation_modules: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: whether functional calls (``F.relu`` in ``forward``) were captured
    functional: bool = False
    #: activation modules not scanned: ``[module, class name, calls in the first forward
    #: pass (None when unknown), why]`` (an unsupported kind, or no aten op to see)
    unsupported: list[list[Any]] = field(default_factory=list)
    #: whether a padding mask was applied (``set_mask``) in any forward pass
    masked: bool = False


def _mutates_first_argument(name: str) -> bool:
    """Whether a torch function named ``name`` writes into its first argument (``add_``, ``__iadd__``).

    Activation functions (``relu_``...) are left out: a site reads its input before it runs."""
    if name.startswith("__i") and name.endswith("__"):
        return True
    if not name.endswith("_") or name.startswith("_"):
        return False
    from ..kinds import FAMILIES
    return name.rstrip("_") not in FAMILIES and name.rstrip("_") not in ("clamp_min", "threshold")


class _InplaceWatch(TorchFunctionMode):
    """While discovering: forget a layer's output once something writes into it in place.

    torchvision's ``out = self.bn3(out); out += identity; out = self.relu(out)`` hands the
    ReLU the very tensor ``bn3`` returned, but after the residual add: identity alone would
    link the site to ``bn3``. Inference tensors keep no version counter, so the in-place
    op itself is what is watched."""

    def __init__(self, capture: ActivationCapture) -> None:
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor) and _mutates_first_argument(getattr(func, "__name__", "")):
            self.capture._forget_output(args[0])
        out = kwargs.get("out")
        if isinstance(out, torch.Tensor):
            self.capture._forget_output(out)
        return func(*args, **kwargs)


class ActivationCapture:
    """Hooks every ReLU-family module of a model for the duration of a ``with`` block.

    Args:
        model: the model; its modules' train/eval flags are restored on exit.
        settings: scan settings (granularity, layer filters, thresholds' tolerance).
        device: where accumulators live (the model's device).
        eval_mode: put the model in eval mode inside the block (a scan); False keeps the
            mode it has (a training monitor reading the training forward passes). Then
            nothing is observed while the model is in eval mode (validation passes inside a
            training window), and a forward pass that bypasses the root (a loop calling
            ``model.net(x)``) gets its batch begun by its first activation call.

    The contract every capture keeps (``DispatchCapture`` overrides parts of it):

    * ``begin_batch()`` before each forward pass, ``end_batch()`` after it;
    * ``records()`` lists the sites in network order, ``site_name(record)`` names one,
      ``finalize(record)`` returns its statistics, ``not_run()`` the activation modules
      that never ran;
    * ``failure`` / ``op_error``: an error the capture raised inside a forward pass, and
      the model's own op error, for interpreters that re-raise without the text;
    * ``positional_names``: whether sites are named by position, not by module;
    * ``ran_this_batch()``: the activations that ran in the current forward pass;
    * ``no_sites_error(model_name)``: the error for a model in which nothing was captured.
    """

    def __init__(self, model: nn.Module, settings: ScanSettings, device: torch.device,
                 eval_mode: bool = True) -> None:
        self.model = model
        self.settings = settings
        self.device = device
        self.eval_mode = eval_mode
        self.coverage = Coverage()
        #: an error raised by the capture inside a forward pass, if any
        self.failure: Exception | None = None
        #: the model's own op error, when an interpreter re-raised it without its text
        self.op_error: Exception | None = None
        self._stack = ExitStack()
        self._sites: dict[tuple[str, str | None, int], SiteRecord | None] = {}
        self._calls: dict[tuple[str, str | None], int] = {}
        self._max_calls: dict[tuple[str, str | None], int] = {}
        self._pending: dict[str, list[tuple[SiteRecord | None, torch.Tensor | None]]] = {}
        self._order = itertools.count()
        self._discovering = True
        self._recent_outputs: deque[tuple[weakref.ref, nn.Module]] = deque(maxlen=256)
        self._last_producer: nn.Module | None = None
        self._producer_stack: ExitStack | None = None
        self._producer_names: dict[nn.Module, str] = {}
        self._watch: _InplaceWatch | None = None
        self.modules_run: list[str] = []
        # Reduction plumbing: scratch buffers shared by all sites, the compiled reduction
        # when the scan chose one, and host seconds spent reducing (for that choice).
        self.workspace = ReductionWorkspace()
        self.compiled: CompiledReduction | None = None
        self.reduce_seconds = 0.0
        # Functional capture: the modules whose forward is running (innermost last), how
        # many of them are hooked activation modules, and whether the model's forward is
        # running at all (calls made while loading data are not the model's).
        self._module_names: dict[nn.Module, tuple[str, bool]] = {}
        self._module_stack: list[tuple[nn.Module, str, bool]] = []
        self._activation_depth = 0
        self._in_batch = False
        self._mode: FunctionalActivationMode | None = None
        self._mode_on = False
        # Gated MLPs: recent activation outputs (by weakref) and the site that made each, so
        # that ``act(gate) * up`` is recognised as a gated product of that site's units.
        self._gate_outputs: deque[tuple[weakref.ref, SiteRecord]] = deque(maxlen=8)
        self._unit_hint: tuple[torch.Tensor, int | None] | None = None
        # Padding mask of the current forward pass: (N, L) bool, its flat view, and
        # whether every position is real (then nothing needs leaving out).
        self._mask: torch.Tensor | None = None
        self._flat_mask: torch.Tensor | None = None
        self._mask_full = True
        self._watch_on = False

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self) -> ActivationCapture:
        if isinstance(self.model, torch.jit.ScriptModule):
            raise CaptureError("TorchScript modules refuse forward hooks",
                               hint="scan the eager model, or load the TorchScript file with deadrelu.load")
        training = {module: module.training for module in self.model.modules()}
        self._stack.callback(self._restore_modes, training)
        if self.eval_mode:
            self.model.eval()
        try:
            self._register()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._pending.clear()
        self._recent_outputs.clear()
        self._in_batch = False
        try:
            self._stack.close()
        finally:
            self._module_stack.clear()
            self._module_names.clear()

    @staticmethod
    def _restore_modes(training: dict[nn.Module, bool]) -> None:
        for module, flag in training.items():
            module.training = flag

    def _register(self) -> None:
        producer_stack = ExitStack()
        self._stack.push(producer_stack)
        self._producer_stack = producer_stack
        self._watch = _InplaceWatch(self)
        producer_stack.callback(self._leave_watch)
        for name, module in self.model.named_modules():
            spec = spec_for_module(module)
            if spec is not None:
                self.coverage.activation_modules.append(name)
                pre = module.register_forward_pre_hook(self._pre_hook(name, module, spec))
                post = module.register_forward_hook(self._post_hook(name))
                self._stack.callback(pre.remove)
                self._stack.callback(post.remove)
            elif is_producer(module):
                self._producer_names[module] = name
                handle = module.register_forward_hook(self._producer_hook)
                producer_stack.callback(handle.remove)
            elif self._unsupported_activation(name, module):
                # Counted during the first forward pass only (the hook goes with the producer hooks).
                entry = [name, type(module).__name__, 0, "unsupported kind"]
                self.coverage.unsupported.append(entry)
                handle = module.register_forward_hook(self._count_hook(entry))
                producer_stack.callback(handle.remove)
        if self.settings.functional:
            self._register_functional()

    def _unsupported_activation(self, name: str, module: nn.Module) -> bool:
        """A leaf module that is an activation of a kind deadrelu does not scan (``Tanh``,
        ``LaplaceActivation``), outside any scanned activation module."""
        if next(module.children(), None) is not None:
            return False
        if not looks_like_activation(type(module).__name__, type(module).__module__):
            return False
        return not any(name.startswith(parent + ".") for parent in self.coverage.activation_modules if parent)

    def _count_hook(self, entry: list[Any]) -> Callable:
        def count(module: nn.Module, args: Any, output: Any) -> None:
            if self._in_batch:
                entry[2] += 1
        return count

    def _register_functional(self) -> None:
        """Global module hooks for the module stack, then the mode that sees functional calls."""
        activation = set(self.coverage.activation_modules)
        self._module_names = {module: (name, name in activation) for name, module in self.model.named_modules()}
        pre = register_module_forward_pre_hook(self._enter_module)
        self._stack.callback(pre.remove)
        # always_call: the module is popped even when its forward raises.
        post = register_module_forward_hook(self._exit_module, always_call=True)
        self._stack.callback(post.remove)
        # The mode is on only from begin_batch to end_batch: every torch call made while it
        # is on pays a Python pass-through (~2-4 us), and the tool's own work between
        # forward passes (input checks, the data loader) is not the model's. The ExitStack
        # turns it off if a forward pass raised before end_batch.
        self._mode = FunctionalActivationMode(self._functional_call, self._product_call)
        self._stack.callback(self._leave_mode)
        self.coverage.functional = True

    def _leave_watch(self) -> None:
        if self._watch is not None and self._watch_on:
            self._watch_on = False
            self._watch.__exit__(None, None, None)

    def _leave_mode(self) -> None:
        if self._mode_on and self._mode is not None:
            self._mode_on = False
            self._mode.__exit__(None, None, None)

    # -- batch loop -----------------------------------------------------------------------
    def begin_batch(self) -> None:
        """Reset per-forward call counters (done in the tool's own loop, so a model whose
        ``forward`` is called directly, bypassing root hooks, still gets fresh indices)."""
        self._calls.clear()
        self._pending.clear()
        self._module_stack.clear()
        self._gate_outputs.clear()
        self._activation_depth = 0
        self._in_batch = True
        if self._discovering and self._watch is not None and not self._watch_on:
            self._watch.__enter__()
            self._watch_on = True
        if self._mode is not None and not self._mode_on:
            self._mode.__enter__()
            self._mode_on = True

    def _begin_batch_mid_forward(self) -> None:
        """Open a batch from inside a forward pass: the stack of running modules (kept by the
        global hooks) stays, so functional calls are still attributed to the right module."""
        stack, depth = list(self._module_stack), self._activation_depth
        self.begin_batch()
        self._module_stack.extend(stack)
        self._activation_depth = depth

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """The padding mask of the coming forward pass.

        Args:
            mask: ``(N, L)``, nonzero/True at real positions and 0/False at padding; None
                for no mask. Sites whose activation starts with the ``(N, L)`` axes (or is
                their flattened ``(N*L, ...)`` view) leave padded positions out of every
                statistic; other sites are marked ``unmasked``.
        """
        if mask is None:
            self._mask = self._flat_mask = None
            self._mask_full = True
            return
        self._mask = mask if mask.dtype == torch.bool else mask != 0
        self._flat_mask = self._mask.reshape(-1)
        self._mask_full = bool(self._mask.all())
        self.coverage.masked = True

    def end_batch(self) -> None:
        """Record call counts of this forward pass; stop tracking producers after the first."""
        self._in_batch = False
        self._gate_outputs.clear()
        self._leave_mode()
        self._leave_watch()
        for key, count in self._calls.items():
            if count > self._max_calls.get(key, 0):
                self._max_calls[key] = count
        if self._discovering:
            self._discovering = False
            self._recent_outputs.clear()
            self._last_producer = None
            if self._producer_stack is not None:
                self._producer_stack.close()

    # -- hooks ----------------------------------------------------------------------------
    def _producer_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            self._recent_outputs.append((weakref.ref(output), module))
        self._last_producer = module

    def _producer_of(self, tensor: torch.Tensor) -> nn.Module | None:
        # Identity through a weakref, never id(): a freed tensor's id can be reused.
        for ref, module in reversed(self._recent_outputs):
            if ref() is tensor:
                return module
        return None

    def _forget_output(self, tensor: torch.Tensor) -> None:
        # An output written into in place (a residual add) is no longer what its layer produced.
        # (Rebuilt, not .remove(): tuples compare their weakrefs, which compare the tensors.)
        if any(ref() is tensor for ref, _ in self._recent_outputs):
            kept = [entry for entry in self._recent_outputs if entry[0]() is not tensor]
            self._recent_outputs.clear()
            self._recent_outputs.extend(kept)

    def _input_link(self, inputs: torch.Tensor, module_name: str, activation: nn.Module | None) -> InputLink | None:
        """Which layer produced a new site's input (eager capture; aten-level capture overrides).

        ``output``: the input *is* that layer's output tensor, untouched since; ``enclosing``:
        an activation module that is a child of a norm layer (timm's ``BatchNormAct2d``) applied
        to its normalised output; ``after-op``: something else (a residual add, a concat, a
        view) came after the last layer that ran, named in ``layer`` when there was one."""
        if not self._discovering:
            return None
        producer = self._producer_of(inputs)
        if producer is not None and producer in self._producer_names:
            return InputLink(self._producer_names[producer], "output")
        if activation is not None and module_name:
            parent_name = module_name.rpartition(".")[0]
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            if isinstance(parent, NORM_LAYERS) and parent is not activation:
                return InputLink(parent_name, "enclosing")
        elif activation is None and module_name:  # F.relu inside a norm layer's own forward
            if isinstance(self.model.get_submodule(module_name), NORM_LAYERS):
                return InputLink(module_name, "enclosing")
        last = self._last_producer
        return InputLink(self._producer_names.get(last) if last is not None else None, "after-op")

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        # Modules outside the model (built inside forward) are not pushed: their calls
        # belong to the model module whose forward built them.
        known = self._module_names.get(module)
        if known is None:
            return
        self._module_stack.append((module, known[0], known[1]))
        if known[1]:
            self._activation_depth += 1

    def _exit_module(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = self._module_stack
        if stack and stack[-1][0] is module:  # the usual case: the innermost module returns
            if stack.pop()[2]:
                self._activation_depth -= 1
            return
        # A module whose forward raised (always_call) or one entered before begin_batch.
        if not any(entry[0] is module for entry in reversed(stack)):
            return
        while stack:
            popped, _name, is_activation = stack.pop()
            if is_activation:
                self._activation_depth -= 1
            if popped is module:
                return

    def _functional_call(self, call: FunctionalCall, run: Callable[[], Any]) -> Any:
        """Attribute one functional call to the running module, run it and observe it."""
        # nn.ReLU.forward calls F.relu: a hooked activation module already reports it.
        if not self._in_batch or self._activation_depth or not (self.eval_mode or self.model.training):
            return run()
        module_name = self._module_stack[-1][1] if self._module_stack else ""
        key = (module_name, call.function)
        call_index = self._calls.get(key, 0)
        self._calls[key] = call_index + 1
        site_key = (module_name, call.function, call_index)
        if site_key in self._sites:
            site = self._sites[site_key]
        else:
            site = self._site(module_name, call.function, call_index, spec_for_call(call), call.input, None)
        if site is None:
            return run()
        spec = site.spec
        active_source = None
        if spec.active_rule is ActiveRule.PRE_POSITIVE and not spec.output_sign_matches_input:
            # An in-place call overwrites its input: read the sign before it runs.
            active_source = torch.gt(call.input, spec.threshold) if call.inplace else call.input
        output = run()
        if isinstance(output, torch.Tensor):
            self.observe(site, output, output if active_source is None else active_source)
            self._gate_outputs.append((weakref.ref(output), site))
        return output

    def _product_call(self, args: tuple, run: Callable[[], Any]) -> Any:
        """``act(gate) * up`` in a gated MLP: the product, of the same shape as the
        activation's output, is a site of its own (``mlp:swiglu#0``) with the gate's units."""
        if not self._in_batch or self._activation_depth or not self._gate_outputs or len(args) < 2:
            return run()
        left, right = args[0], args[1]
        if not (isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor)) or left.shape != right.shape:
            return run()
        gate = None
        for reference, record in reversed(self._gate_outputs):
            tensor = reference()
            if tensor is left or tensor is right:
                gate = record
                break
        if gate is None or not left.is_floating_point():
            return run()
        output = run()
        if not isinstance(output, torch.Tensor):
            return output
        kind = GATED_KINDS.get(gate.spec.kind, "GLU")
        function = kind.lower()
        module_name = self._module_stack[-1][1] if self._module_stack else ""
        key = (module_name, function)
        call_index = self._calls.get(key, 0)
        self._calls[key] = call_index + 1
        site_key = (module_name, function, call_index)
        with torch._C.DisableTorchFunction():
            if site_key in self._sites:
                site = self._sites[site_key]
            else:
                self._unit_hint = (output, gate.unit_dim)
                try:
                    site = self._site(module_name, function, call_index, KINDS[kind].spec({}), output, None)
                finally:
                    self._unit_hint = None
            if site is not None:
                # Active where the product is not 0: judged on |product| > 0.
                self.observe(site, output, output.abs())
        return output

    def _pre_hook(self, name: str, module: nn.Module, spec: KindSpec) -> Callable:
        # Sign of the input must be read before an in-place module overwrites it, but
        # only when the output's sign does not already tell it (negative slopes).
        needs_input_sign = spec.active_rule is ActiveRule.PRE_POSITIVE and not spec.output_sign_matches_input
        read_sign_now = needs_input_sign and is_inplace(module)

        def pre_hook(mod: nn.Module, args: tuple) -> None:
            if not self.eval_mode:
                if not self.model.training:
                    return  # an eval-mode forward pass (validation) inside a training capture
                if not self._in_batch:
                    self._begin_batch_mid_forward()  # the loop called a submodule, bypassing the root's hooks
            key = (name, None)
            call_index = self._calls.get(key, 0)
            self._calls[key] = call_index + 1
            inputs = args[0] if args and isinstance(args[0], torch.Tensor) else None
            site = self._site(name, None, call_index, spec, inputs, module) if inputs is not None else None
            active_source = None
            if site is not None and needs_input_sign:
                active_source = torch.gt(inputs, spec.threshold) if read_sign_now else inputs
            self._pending.setdefault(name, []).append((site, active_source))
        return pre_hook

    def _post_hook(self, name: str) -> Callable:
        def post_hook(mod: nn.Module, args: tuple, output: Any) -> None:
            pending = self._pending.get(name)
            if not pending:
                return
            site, active_source = pending.pop()
            if site is None or not isinstance(output, torch.Tensor):
                return
            # The tool's own reductions are not the model's calls: they bypass the
            # functional mode (and its Python pass-through per op).
            with torch._C.DisableTorchFunction():
                self.observe(site, output, output if active_source is None else active_source)
            if self._mode_on:
                self._gate_outputs.append((weakref.ref(output), site))
        return post_hook

    # -- sites ----------------------------------------------------------------------------
    def _selected(self, candidates: tuple[str, ...]) -> bool:
        layers, exclude = self.settings.layers, self.settings.exclude
        if layers and not any(fnmatch.fnmatchcase(c, p) for c in candidates for p in layers):
            return False
        return not any(fnmatch.fnmatchcase(c, p) for c in candidates for p in exclude)

    def _site(self, module_name: str, function: str | None, call_index: int, spec: KindSpec,
              inputs: torch.Tensor, activation: nn.Module | None) -> SiteRecord | None:
        key = (module_name, function, call_index)
        if key in self._sites:
            return self._sites[key]
        if function is None:
            candidates = (module_name, f"{module_name}#{call_index}")
        else:
            candidates = (f"{module_name or ROOT_NAME}:{function}#{call_index}", module_name)
        if not self._selected(candidates):
            self._sites[key] = None
            self.coverage.excluded.append(candidates[0] if function else f"{module_name}#{call_index}")
            return None
        record = self._new_record(module_name, function, call_index, spec, inputs, activation)
        self._sites[key] = record
        return record

    def _new_record(self, module_name: str, function: str | None, call_index: int, spec: KindSpec,
                    inputs: torch.Tensor, activation: nn.Module | None) -> SiteRecord:
        shape = tuple(inputs.shape)  # activations are elementwise: output shape == input shape
        link = self._input_link(inputs, module_name, activation)
        if self.settings.granularity is Granularity.POSITION:
            unit_dim: int | None = 1 if len(shape) > 1 else None
            unit_shape = shape[1:]
            dims = (0,) if len(shape) > 1 else tuple(range(len(shape)))
        else:
            unit_dim, warning = self._unit_dim(inputs, spec, link)
            if warning and not self._discovering and len(shape) > 2:
                warning += " (site first ran after the first batch, when producers were no longer tracked)"
            if warning:
                label = f"{module_name or ROOT_NAME}" + (f":{function}" if function else "") + f"#{call_index}"
                self.coverage.warnings.append(f"{label}: {warning}")
            unit_shape = () if unit_dim is None else (shape[unit_dim],)
            dims = tuple(axis for axis in range(len(shape)) if axis != unit_dim)
        if spec.active_rule is ActiveRule.ABOVE_LOWER:
            floor_at, ceiling_at = spec.floor, spec.ceiling
        else:
            floor_at = None if spec.floor is None else floor_tolerance(spec.floor, self.settings.thresholds.saturation_rtol)
            ceiling_at = None
        # The least output by definition lets the reduction use exact identities (ReLU:
        # sum |h| == sum h; ReLU6/Hardtanh: at the lower bound == not active).
        if spec.kind in ("ReLU", "ReLUSquared"):
            output_floor: float | None = 0.0
        else:
            output_floor = spec.floor if spec.active_rule is ActiveRule.ABOVE_LOWER else None
        plan = ReductionPlan(dims=dims, threshold=spec.threshold, floor_at=floor_at, ceiling_at=ceiling_at,
                             output_floor=output_floor)
        return SiteRecord(module=module_name, function=function, call_index=call_index, spec=spec,
                          unit_dim=unit_dim, unit_shape=unit_shape, plan=plan, order=next(self._order),
                          accumulator=Accumulator(unit_shape, inputs.device), activation=activation,
                          link=link)

    def _unit_dim(self, inputs: torch.Tensor, spec: KindSpec,
                  link: InputLink | None = None) -> tuple[int | None, str | None]:
        """The unit axis of a new site's tensor, judged from the module that produced it
        (aten-level capture overrides this to judge from the producing op)."""
        if self._unit_hint is not None and self._unit_hint[0] is inputs:
            return self._unit_hint[1], None  # a gated product has its gate's units
        producer = self._producer_of(inputs) if self._discovering else None
        if producer is None and link is not None and link.how == "enclosing" and link.layer is not None:
            producer = self.model.get_submodule(link.layer)  # the norm layer the activation sits in
        last = self._last_producer if self._discovering else None
        return resolve_unit_dim(tuple(inputs.shape), None if producer is None else producer_of_module(producer),
                                None if last is None else producer_of_module(last), spec.per_channel_param)

    def observe(self, site: SiteRecord, output: torch.Tensor, active_source: torch.Tensor) -> None:
        """Reduce one call's output into the site's accumulator; keeps no reference to it."""
        start = time.perf_counter()
        site.check_shape(output.shape, self.settings.granularity)
        plan = site.plan
        if self._mask is not None:
            output, active_source, plan = self._real_positions(site, output, active_source)
        if torch.is_grad_enabled():  # a training forward pass: the statistics are not part of its graph
            with torch.no_grad():
                site.accumulator.update(output, active_source, plan, self.workspace, self.compiled)
        else:
            site.accumulator.update(output, active_source, plan, self.workspace, self.compiled)
        site.calls += 1
        # Host time only (no device sync): what the compile decision weighs.
        self.reduce_seconds += time.perf_counter() - start

    def _real_positions(self, site: SiteRecord, output: torch.Tensor, active_source: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, ReductionPlan]:
        """The observations at real (unpadded) positions, and the plan that reduces them."""
        mask, shape = self._mask, output.shape
        assert mask is not None and self._flat_mask is not None
        starts_with_mask = (output.ndim >= 3 and tuple(shape[:2]) == tuple(mask.shape)
                            and site.unit_dim is not None and site.unit_dim >= 2
                            and self.settings.granularity is Granularity.CHANNEL)
        # A (N*L, D) view of the same positions (some MLPs flatten tokens before the FFN).
        flattened = (output.ndim == 2 and shape[0] == mask.numel() and site.unit_dim == 1
                     and (mask.shape[1] > 1 or tuple(shape[:1]) == tuple(mask.shape[:1])))
        if not (starts_with_mask or flattened):
            site.unmasked = True
            return output, active_source, site.plan
        if self._mask_full:
            return output, active_source, site.plan
        # Gathering the real positions (R, ...) leaves the padding out of every statistic,
        # and each unit's observation count is the number of real tokens (times inner axes).
        index = mask if starts_with_mask else self._flat_mask
        picked = output[index]
        active = picked if active_source is output else active_source[index]
        if flattened:
            return picked, active, site.plan
        if site.masked_plan is None:
            dims = (0,) + tuple(axis - 1 for axis in site.plan.dims if axis >= 2)
            site.masked_plan = dataclasses.replace(site.plan, dims=dims)
        return picked, active, site.masked_plan

    # -- the contract's queries -----------------------------------------------------------
    @property
    def positional_names(self) -> bool:
        """Whether sites are named by position rather than by module (never, for hooks)."""
        return False

    def ran_this_batch(self) -> list[str]:
        """Activation modules (or ``module:function``) that ran in the current forward pass, in order."""
        return [name if function is None else f"{name or ROOT_NAME}:{function}" for name, function in self._calls]

    def no_sites_error(self, model_name: str) -> CaptureError:
        """The error for a scan in which no site ran: excluded, never ran, or nothing to capture."""
        if self.coverage.excluded:
            return CaptureError("no activation site left to scan: --layers/--exclude excluded every site",
                                hint=f"sites found: {', '.join(_as_table_names(self.coverage.excluded)[:6])}")
        if self.coverage.activation_modules:
            return CaptureError("the model's activation modules never ran on this data",
                                hint=f"modules found: {', '.join(self.coverage.activation_modules[:6])}")
        if self.coverage.unsupported:
            return CaptureError(f"no activation deadrelu can scan in {model_name}: "
                                f"{unsupported_summary(self.coverage.unsupported)}",
                                hint=f"deadrelu scans {', '.join(KNOWN_KINDS)}")
        types = sorted({type(m).__name__ for m in self.model.modules()} - {type(self.model).__name__})
        functional = ("no functional activation (F.relu...) ran either" if self.coverage.functional
                      else "functional calls (F.relu...) were not captured: --no-functional")
        return CaptureError(
            f"no ReLU-family activation found in {model_name} (module types: {', '.join(types[:12]) or 'none'}; "
            f"{functional})",
            hint=f"deadrelu scans {', '.join(KNOWN_KINDS)} modules and functional calls to them")

    # -- results --------------------------------------------------------------------------
    def records(self) -> list[SiteRecord]:
        """Sites that ran, in network order."""
        return sorted((r for r in self._sites.values() if r is not None), key=lambda r: r.order)

    def site_name(self, record: SiteRecord) -> str:
        """``module`` when called once per forward, ``module#k`` otherwise;
        ``<module>:<function>#<k>`` for functional sites."""
        if record.function is not None:
            return f"{record.module or ROOT_NAME}:{record.function}#{record.call_index}"
        if self._max_calls.get((record.module, None), 1) > 1:
            return f"{record.module}#{record.call_index}"
        return record.module or ROOT_NAME

    def not_run(self) -> list[str]:
        """Activation modules found in the model that never ran on the data."""
        ran = {key[0] for key, count in self._max_calls.items() if key[1] is None and count > 0}
        return [name or ROOT_NAME for name in self.coverage.activation_modules if name not in ran]

    def finalize(self, record: SiteRecord) -> SiteStats:
        return record.accumulator.finalize()


def _as_table_names(excluded: list[str]) -> list[str]:
    """Excluded sites named as the table names them: a module called once is ``act``, not ``act#0``."""
    calls: dict[str, int] = {}
    for name in excluded:
        if ":" not in name and "#" in name:
            module = name.rpartition("#")[0]
            calls[module] = calls.get(module, 0) + 1
    return [name.rpartition("#")[0] if ":" not in name and name.endswith("#0") and calls.get(name[:-2]) == 1
            else name for name in excluded]


def unsupported_summary(entries: list[list[Any]]) -> str:
    """``19 Hardswish calls not scanned (unsupported kind) at modules blocks.0.act, ...; 2 NewGELUActivation ...``.

    Args:
        entries: ``Coverage.unsupported`` rows ``[module, class, calls or None, why]``.

    Returns:
        One line, grouped by class and reason, in the order first seen.
    """
    groups: dict[tuple[str, str], list[Any]] = {}
    for module, class_name, calls, why in entries:
        group = groups.setdefault((class_name, why), [0, 0, []])
        group[0] += 1
        group[1] += calls or 0
        group[2].append(module)
    parts = []
    for (class_name, why), (modules, calls, names) in groups.items():
        count, noun = (calls, "call") if calls else (modules, "module")
        where = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        # The module names follow "at module(s)": a Sequential's "1" must not read as a count.
        parts.append(f"{count} {class_name} {noun}{'s' if count != 1 else ''} not scanned ({why}) at "
                     f"module{'s' if len(names) != 1 else ''} {where}")
    return "; ".join(parts)
