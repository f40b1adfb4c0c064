"""Fused activations: during a scan a ReLU-family module computes its output and its
statistics in one pass.

A hooked activation computes its output (one read of the pre-activation, one write), then
the post-hook reads the output again to reduce it. For ``nn.ReLU``, ``nn.ReLU6``,
``nn.Hardtanh``, ``nn.LeakyReLU``, ``nn.PReLU`` and eval-mode ``nn.RReLU`` modules (their
exact classes: a subclass may compute something else) on float32 CPU tensors with no
gradient wanted, the scan runs the C kernel ``deadrelu_fused_activation`` (``fused_kernel.c``) in place of the module's
forward instead: it reads each block of the pre-activation once, writes the output (into the
input itself for ``inplace=True``, so in place stays in place) and adds the site's
statistics, the same ones, to the bit, as the hook path's fused reduction. The outputs are
bit-identical to torch's own (clamp and leaky kinds only: ELU, SELU and CELU compute
``expm1`` with torch's vectorised approximation, which the kernel does not reproduce, so
they keep the hooks).

The seam: ``FusedActivations.install`` sets an instance attribute ``forward`` on the
module (a ``FusedForward``), registered with the capture's ``ExitStack``, which removes it
when the capture exits, raised or not. The capture's pre-hook still counts the call and
opens the site; it then ``arm``s the module's ``FusedForward`` when this call may be fused
(no gradient, float32 CPU input, no padding mask, no compiled reduction, no foreign hook on
the module, not the first (discovery) forward pass), and the post-hook skips the call whose
``before`` is ``FUSED``. An armed call the kernel cannot take (no units view, a huge batch)
runs the module's own forward and is observed right there, as the hooks would have.

Every other activation module of a scan (ELU, GELU, SiLU, Hardswish..., subclasses) gets a
``FusedForward`` that never fuses (``kernel`` False): it runs the module's own forward and
observes its output, as the post-hook would. After the first (discovery) batch of a scan
with no functional capture left on, the capture removes its two hooks from every module it
alone hooks and hands the ``FusedForward`` the module's call counting (``ModuleCalls``):
the forward then counts the call, finds its site, and fuses or observes by itself
(``nn.Module.__call__`` takes its no-hook fast path: ~13 us of Python per call down to
~6 us fused, ~8 us observed, on a tiny activation).
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any, Callable

import torch
from torch import nn

from .. import fused
from ..kinds import KindSpec, is_inplace
from .observe import Observer, before_call
from .registry import SiteRecord, SiteRegistry

#: ``before`` of a call the fused forward observed itself (the post-hook skips it)
FUSED = object()

_CLAMP = 0  # act: x < low ? low : x > high ? high : x
_LEAKY = 1  # act: x > 0 ? x : x * slope


class ModuleCalls:
    """One activation module's calls in the current forward pass: counts each call and finds
    (or opens, on its first call) the site of its call index. Shared by the module's
    pre-hook and, once the hooks are gone, its ``FusedForward``.

    Args:
        name: the module's name.
        spec: its kind.
        module: the module.
        registry: the capture's site registry.
    """

    __slots__ = ("name", "spec", "module", "registry", "key", "by_index")

    def __init__(self, name: str, spec: KindSpec, module: nn.Module, registry: SiteRegistry) -> None:
        self.name = name
        self.spec = spec
        self.module = module
        self.registry = registry
        self.key: tuple[str, None] = (name, None)
        self.by_index: list[SiteRecord | None] = []  # the module's sites by call index, once opened

    def count(self) -> int:
        """Count one call; its index in this forward pass."""
        return self.registry.count_key(self.key)

    def site(self, call_index: int, inputs: torch.Tensor) -> SiteRecord | None:
        """The site of call ``call_index`` (opened from ``inputs`` on its first call); None when
        the layer filters leave it out."""
        by_index = self.by_index
        if call_index < len(by_index):
            return by_index[call_index]
        label = f"{self.name}#{call_index}"
        site = self.registry.open((self.name, None, call_index), self.spec, inputs, activation=self.module,
                                  candidates=(self.name, label), label=label)
        if call_index == len(by_index):
            by_index.append(site)
        return site


class FusedForward:
    """The forward of one activation module while a scan runs: the fused kernel when armed,
    else the module's own forward.

    Args:
        module: the activation module (an exact ``torch.nn`` class this module knows).
        spec: its kind.
        observer: the capture's observer.
        original: the module's own (bound) forward.
    """

    def __init__(self, module: nn.Module, spec: KindSpec, observer: Observer, original: Callable,
                 kernel: bool = True) -> None:
        self.module = module
        #: the kernel computes this module's kind (else its calls are only observed)
        self.kernel = kernel
        self.spec = spec
        self.observer = observer
        self.original = original
        self.inplace = is_inplace(module)
        self.from_input = spec.reads_input
        self.armed: SiteRecord | None = None
        #: set when the capture removed the module's hooks: this object counts and observes its calls
        self.calls: ModuleCalls | None = None
        self._slope_buffer: torch.Tensor | None = None
        self._slope_value: float | None = None
        #: set when functional capture is scoped to some modules: its mode is switched off while this
        #: module runs (its own ``F.relu`` is never a functional site, wherever it is called from)
        self.functional: Any = None

    def arguments(self, x: torch.Tensor) -> tuple[Any, ...] | None:
        """The kernel's ``(act, low, high, slopes, slope_per_unit)`` for input ``x``, or None when
        this call is not one the kernel computes exactly as torch does."""
        module = self.module
        kind = type(module)
        if kind is nn.ReLU:
            return _CLAMP, 0.0, math.inf, None, 0
        if kind is nn.ReLU6 or kind is nn.Hardtanh:
            low, high = float(module.min_val), float(module.max_val)  # type: ignore[arg-type]
            return (_CLAMP, low, high, None, 0) if low <= high else None  # torch's clamp gives high then
        if kind is nn.LeakyReLU:
            return _LEAKY, 0.0, 0.0, self._slope(float(module.negative_slope)), 0  # type: ignore[arg-type]
        if kind is nn.RReLU:
            if module.training:
                return None  # random slopes
            # torch: leaky_relu with (lower + upper) / 2, computed in double
            return _LEAKY, 0.0, 0.0, self._slope((float(module.lower) + float(module.upper)) / 2), 0  # type: ignore[arg-type]
        if kind is nn.PReLU:
            weight = module.weight
            if weight.dtype != torch.float32 or weight.device.type != "cpu" or not weight.is_contiguous():
                return None
            if weight.numel() == 1:
                return _LEAKY, 0.0, 0.0, weight.data_ptr(), 0
            # one slope per channel (axis 1): the kernel indexes slopes by unit, so the units must be the channels
            if x.ndim < 2 or x.shape[1] != weight.numel():
                return None
            return _LEAKY, 0.0, 0.0, weight.data_ptr(), 1
        return None

    def _slope(self, slope: float) -> int:
        """The address of a float32 holding ``slope`` (rounded as torch rounds a Scalar)."""
        buffer = self._slope_buffer
        if buffer is None:
            with torch.inference_mode(False):
                buffer = self._slope_buffer = torch.empty(1, dtype=torch.float32)
        if slope != self._slope_value:
            buffer[0] = slope
            self._slope_value = slope
        return buffer.data_ptr()

    def arm(self, site: SiteRecord, x: torch.Tensor, discovering: bool) -> bool:
        """Whether the coming forward of this module (input ``x``) is fused; then its
        observation is this object's (the post-hook leaves it)."""
        if (not self.kernel or discovering or len(self.module._forward_hooks) != 1
                or len(self.module._forward_pre_hooks) != 1):
            return False
        if not self._fusable(site, x):
            return False
        self.armed = site
        return True

    def _fusable(self, site: SiteRecord, x: torch.Tensor) -> bool:
        """Whether the kernel may compute this call (no gradient, float32 CPU input, no padding
        mask, no compiled reduction, PReLU's channels the site's units)."""
        observer = self.observer
        if (torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu"
                or observer.mask.tensor is not None or (observer.compiled is not None and observer.compiled.usable)):
            return False
        if self.spec.kind == "PReLU" and self.module.weight.ndim and self.module.weight.numel() > 1:
            ndim = x.ndim
            if {axis % ndim for axis in site.plan.dims} != set(range(ndim)) - {1}:
                return False  # the site's units are not PReLU's channels
        return True

    def go_alone(self, calls: ModuleCalls) -> None:
        """From now on count and observe this module's calls here (the capture removed its hooks)."""
        self.calls = calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        functional = self.functional
        if functional is not None and functional.on:
            functional.leave()
            try:
                return self._forward(*args, **kwargs)
            finally:
                functional.enter()
        return self._forward(*args, **kwargs)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        site, self.armed = self.armed, None
        if site is None:
            calls = self.calls
            if calls is None:
                return self.original(*args, **kwargs)
            # No hooks: this call is counted, and its site found, here (``ModuleCalls``).
            call_index = calls.count()
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                return self.original(*args, **kwargs)  # a module called by keyword: not a site (as with hooks)
            site = calls.site(call_index, x)
            if site is None:
                return self.original(*args, **kwargs)
            foreign = self.module._forward_hooks or self.module._forward_pre_hooks
            if foreign or not self.kernel or not self._fusable(site, x):
                return self._observed(site, args, kwargs)
        x = args[0]
        if len(args) == 1 and not kwargs and x.numel():
            with torch._C.DisableTorchFunction():
                activation = self.arguments(x)
                if activation is not None:
                    out = x if self.inplace else torch.empty_like(x)
                    if out.stride() == x.stride() and self.observer.observe_activation(
                            site, x, out, activation, self.from_input):
                        if self.inplace and not x.is_inference():
                            torch.autograd.graph.increment_version(x)  # as torch's in-place op does
                        return out
        return self._observed(site, args, kwargs)

    def _observed(self, site: SiteRecord, args: tuple, kwargs: dict) -> Any:
        """The hook path, here: the module's own forward, then the observation of its output."""
        x = args[0]
        before = before_call(self.spec, x, self.inplace)
        output = self.original(*args, **kwargs)
        if isinstance(output, torch.Tensor):
            with torch._C.DisableTorchFunction():
                self.observer.observe(site, output, before)
        return output


class FusedActivations:
    """Installs ``FusedForward``s on a capture's activation modules, each removed when the
    capture's ``ExitStack`` closes.

    Args:
        observer: the capture's observer.
        stack: the capture's ``ExitStack`` (hook lifetime).
    """

    #: the exact classes whose forward the kernel reproduces
    CLASSES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.RReLU, nn.PReLU)

    def __init__(self, observer: Observer, stack: ExitStack) -> None:
        self.observer = observer
        self.stack = stack

    def install(self, module: nn.Module, spec: KindSpec) -> FusedForward | None:
        """Swap ``module``'s forward for a ``FusedForward`` until the capture exits: one that
        fuses where the kernel computes the module's exact class, else one that observes. None
        (nothing swapped) for a module with its own instance ``forward`` or its own ``__call__``."""
        if "forward" in vars(module) or type(module).__call__ is not nn.Module.__call__:
            return None
        kernel = type(module) in self.CLASSES and fused.activation() is not None
        replacement = FusedForward(module, spec, self.observer, module.forward, kernel=kernel)
        module.forward = replacement  # type: ignore[method-assign]
        self.stack.callback(vars(module).pop, "forward", None)
        return replacement


__all__ = ["FUSED", "FusedActivations", "FusedForward", "ModuleCalls"]
