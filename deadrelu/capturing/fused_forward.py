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
from .registry import SiteRecord

#: ``before`` of a call the fused forward observed itself (the post-hook skips it)
FUSED = object()

_CLAMP = 0  # act: x < low ? low : x > high ? high : x
_LEAKY = 1  # act: x > 0 ? x : x * slope


class FusedForward:
    """The forward of one activation module while a scan runs: the fused kernel when armed,
    else the module's own forward.

    Args:
        module: the activation module (an exact ``torch.nn`` class this module knows).
        spec: its kind.
        observer: the capture's observer.
        original: the module's own (bound) forward.
    """

    def __init__(self, module: nn.Module, spec: KindSpec, observer: Observer, original: Callable) -> None:
        self.module = module
        self.spec = spec
        self.observer = observer
        self.original = original
        self.inplace = is_inplace(module)
        self.from_input = spec.reads_input
        self.armed: SiteRecord | None = None
        self._slope_buffer: torch.Tensor | None = None
        self._slope_value: float | None = None

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
        observer = self.observer
        if (discovering or torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu"
                or observer.mask.tensor is not None or (observer.compiled is not None and observer.compiled.usable)
                or len(self.module._forward_hooks) != 1 or len(self.module._forward_pre_hooks) != 1):
            return False
        if self.spec.kind == "PReLU" and self.module.weight.ndim and self.module.weight.numel() > 1:
            ndim = x.ndim
            if {axis % ndim for axis in site.plan.dims} != set(range(ndim)) - {1}:
                return False  # the site's units are not PReLU's channels
        self.armed = site
        return True

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        site, self.armed = self.armed, None
        if site is None:
            return self.original(x, *args, **kwargs)
        if not args and not kwargs and isinstance(x, torch.Tensor) and x.numel():
            with torch._C.DisableTorchFunction():
                activation = self.arguments(x)
                if activation is not None:
                    out = x if self.inplace else torch.empty_like(x)
                    if out.stride() == x.stride() and self.observer.observe_activation(
                            site, x, out, activation, self.from_input):
                        if self.inplace and not x.is_inference():
                            torch.autograd.graph.increment_version(x)  # as torch's in-place op does
                        return out
        # The hook path, here: the post-hook leaves armed calls to this object.
        before = before_call(self.spec, x, self.inplace) if isinstance(x, torch.Tensor) else None
        output = self.original(x, *args, **kwargs)
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
        """Swap ``module``'s forward for a ``FusedForward`` until the capture exits; None (and
        nothing swapped) where the module is not one the kernel computes, or no kernel has the
        fused activation."""
        if type(module) not in self.CLASSES or "forward" in vars(module) or fused.activation() is None:
            return None
        replacement = FusedForward(module, spec, self.observer, module.forward)
        module.forward = replacement  # type: ignore[method-assign]
        self.stack.callback(vars(module).pop, "forward", None)
        return replacement


__all__ = ["FUSED", "FusedActivations", "FusedForward"]
