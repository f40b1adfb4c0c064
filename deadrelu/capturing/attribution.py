"""Functional attribution: ``F.relu`` called in some module's ``forward`` becomes a site of that module.

``ModuleStack`` keeps the modules whose forward is running (innermost last) with global
module pre/post hooks; ``FunctionalSites`` receives every ReLU-family call from a
``FunctionalActivationMode`` and every elementwise product, names the call after the
innermost running module (``block:relu#0``; ``<root>:relu#0`` in the model's own
forward), opens its site in the registry and observes it. A call made inside a hooked
activation module (``nn.ReLU.forward`` calls ``F.relu``) is that module's already, and a
call made while no forward pass is running (data loading) is nobody's.

The mode is on only from ``begin_batch`` to ``end_batch``: every torch call made while
it is on pays a Python pass-through (~2-4 us), and the tool's own work between forward
passes is not the model's. ``FunctionalSites.owners`` (and ``gate_scopes``) record where the
first batch's calls and products were made: with ``--functional auto`` the capture then keeps
the mode on only inside those modules (``hooks.ActivationCapture._functional_scoped``), with
``ModuleStack.register_within`` in place of the global hooks.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from .functional import FunctionalActivationMode, FunctionalCall, spec_for_call
from .gated import GatedProducts, product_spec
from .observe import Observer, before_call
from .registry import ROOT_NAME, SiteRegistry


class ModuleStack:
    """The model's modules whose forward is running, innermost last.

    Args:
        model: the model; modules outside it (built inside a forward) are not pushed, their
            calls belong to the model module whose forward built them.
        activation_modules: names of the hooked activation modules.
    """

    def __init__(self, model: nn.Module, activation_modules: set[str]) -> None:
        self._names = {module: (name, name in activation_modules) for name, module in model.named_modules()}
        self._stack: list[tuple[nn.Module, str, bool]] = []
        #: how many hooked activation modules are running (their own F.relu is theirs)
        self.activation_depth = 0
        #: ids of the model's modules whose forward ran (containers such as ModuleList never do)
        self.ran: set[int] = set()

    def register(self, stack: ExitStack) -> None:
        """Global module hooks (every module's calls), removed when ``stack`` closes."""
        stack.callback(register_module_forward_pre_hook(self._enter).remove)
        # always_call: the module is popped even when its forward raises.
        stack.callback(register_module_forward_hook(self._exit, always_call=True).remove)

    def register_within(self, stack: ExitStack, roots: list[nn.Module], descend: bool = True) -> None:
        """Hooks on ``roots`` (and every module below them, with ``descend``) only, removed when
        ``stack`` closes: the stack is then known inside those modules (where functional capture
        stays on)."""
        seen: set[int] = set()
        for root in roots:
            for module in root.modules() if descend else (root,):
                if id(module) in seen:
                    continue
                seen.add(id(module))
                stack.callback(module.register_forward_pre_hook(self._enter).remove)
                stack.callback(module.register_forward_hook(self._exit, always_call=True).remove)

    def forget(self) -> None:
        """Drop every reference to the model's modules (the capture ended)."""
        self._stack.clear()
        self._names.clear()
        self.ran.clear()

    def current(self) -> str:
        """The innermost running module's name ("" for the root, or none)."""
        return self._stack[-1][1] if self._stack else ""

    def clear(self) -> None:
        """A forward pass begins: nothing is running."""
        self._stack.clear()
        self.activation_depth = 0

    def snapshot(self) -> tuple[list[tuple[nn.Module, str, bool]], int]:
        """The stack as it is (to keep it across a batch begun mid-forward)."""
        return list(self._stack), self.activation_depth

    def restore(self, saved: tuple[list[tuple[nn.Module, str, bool]], int]) -> None:
        """Put back a ``snapshot``."""
        self._stack.extend(saved[0])
        self.activation_depth = saved[1]

    def _enter(self, module: nn.Module, args: Any) -> None:
        known = self._names.get(module)
        if known is None:
            return
        self.ran.add(id(module))
        self._stack.append((module, known[0], known[1]))
        if known[1]:
            self.activation_depth += 1

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = self._stack
        if stack and stack[-1][0] is module:  # the usual case: the innermost module returns
            if stack.pop()[2]:
                self.activation_depth -= 1
            return
        # A module whose forward raised (always_call) or one entered before begin_batch.
        if not any(entry[0] is module for entry in reversed(stack)):
            return
        while stack:
            popped, _name, is_activation = stack.pop()
            if is_activation:
                self.activation_depth -= 1
            if popped is module:
                return


def _remove_mode(mode: Any) -> int | None:
    """Take ``mode`` off torch's function-mode stack, the modes above it put back in order; its
    depth there (None: it was not on the stack)."""
    above = []
    depth = None
    while torch._C._len_torch_function_stack():
        top = torch._C._pop_torch_function_stack()
        if top is mode:
            depth = torch._C._len_torch_function_stack()
            break
        above.append(top)
    for other in reversed(above):
        torch._C._push_on_torch_function_stack(other)
    return depth


def enclosing(first: str, second: str) -> str:
    """The innermost module whose forward runs both modules named ``first`` and ``second``
    (their longest common dotted prefix; "" for the model itself)."""
    common = []
    for left, right in zip(first.split(".") if first else [], second.split(".") if second else []):
        if left != right:
            break
        common.append(left)
    return ".".join(common)


class FunctionalSites:
    """Sites of functional calls and gated products, attributed to the running module.

    Args:
        registry: where sites are counted and opened.
        observer: reduces each call.
        gated: the activation outputs a product may use.
        modules: the running modules.
        observing: whether the current call belongs to a forward pass that is observed.
    """

    def __init__(self, registry: SiteRegistry, observer: Observer, gated: GatedProducts, modules: ModuleStack,
                 observing: Callable[[], bool]) -> None:
        self.registry = registry
        self.observer = observer
        self.gated = gated
        self.modules = modules
        self.observing = observing
        self.mode = FunctionalActivationMode(self.on_call, self.on_product)
        self.on = False
        self._depth: int | None = None  # where the mode was on torch's stack when last turned off
        #: the modules whose forward made a functional call or a gated product: where the mode must
        #: stay on to see them again
        self.owners: set[str] = set()
        #: per gated product, the innermost module around both it and its gate: where the gate
        #: activation's output must still be remembered
        self.gate_scopes: set[str] = set()
        self._product_specs: dict[str, tuple[Any, str]] = {}  # gate kind -> (product spec, its function name)
        #: the mode is on only inside the owners' forwards (set by the capture after batch 1), not per batch
        self.scoped = False

    def enter(self) -> None:
        """Turn the mode on (a forward pass begins, or a scoped module's body resumes): where it was
        on torch's function-mode stack when it was last turned off, below any mode the model pushed
        since (whose ``__exit__`` pops the top), else on top."""
        if not self.on:
            self.on = True
            depth = self._depth
            if depth is None or depth >= torch._C._len_torch_function_stack():
                torch._C._push_on_torch_function_stack(self.mode)  # what TorchFunctionMode.__enter__ does
            else:
                above = [torch._C._pop_torch_function_stack()
                         for _ in range(torch._C._len_torch_function_stack() - depth)]
                torch._C._push_on_torch_function_stack(self.mode)
                for other in reversed(above):
                    torch._C._push_on_torch_function_stack(other)

    def leave(self) -> None:
        """Turn it off (the forward pass ended, or raised). Scoped, the mode may be switched off inside
        a ``with`` of the model's own mode (entered after ours): that one stays where it was."""
        if self.on:
            self.on = False
            length = torch._C._len_torch_function_stack()
            if length and torch._C._get_function_stack_at(length - 1) is self.mode:
                torch._C._pop_torch_function_stack()  # the usual case: ours is on top
                self._depth = length - 1
            else:
                self._depth = _remove_mode(self.mode)

    def _attributable(self) -> bool:
        return self.observing() and not self.modules.activation_depth

    def on_call(self, call: FunctionalCall, run: Callable[[], Any]) -> Any:
        """Attribute one functional call to the running module, run it and observe it."""
        if not self._attributable():
            return run()  # nn.ReLU.forward calls F.relu: the hooked module reports it
        module_name = self.modules.current()
        self.owners.add(module_name)
        call_index = self.registry.count_call(module_name, call.function)
        key = (module_name, call.function, call_index)
        if self.registry.known(key):
            site = self.registry.get(key)
        else:
            name = f"{module_name or ROOT_NAME}:{call.function}#{call_index}"
            site = self.registry.open(key, spec_for_call(call), call.input, candidates=(name, module_name), label=name)
        if site is None:
            return run()
        before = before_call(site.spec, call.input, call.inplace)
        output = run()
        if isinstance(output, torch.Tensor):
            self.observer.observe(site, output, before)
            self.gated.remember(output, site)
        return output

    def on_product(self, args: tuple, run: Callable[[], Any]) -> Any:
        """``act(gate) * up``: the product is a site of its own (``mlp:swiglu#0``) with the gate's units."""
        if not self.gated.waiting or not self._attributable():
            return run()
        gate = self.gated.match(args)
        if gate is None:
            return run()
        output = run()
        if not isinstance(output, torch.Tensor):
            return output
        kind = gate.spec.kind
        found = self._product_specs.get(kind)
        if found is None:
            spec = product_spec(gate)
            found = self._product_specs[kind] = (spec, spec.kind.lower())
        spec, function = found
        module_name = self.modules.current()
        self.owners.add(module_name)
        call_index = self.registry.count_call(module_name, function)
        key = (module_name, function, call_index)
        with torch._C.DisableTorchFunction():  # the tool's own work is not the model's calls
            if self.registry.known(key):
                site = self.registry.get(key)
            else:
                self.gate_scopes.add(enclosing(module_name, gate.module))  # the gate must be seen to match it
                name = f"{module_name or ROOT_NAME}:{function}#{call_index}"
                site = self.registry.open(key, spec, output, candidates=(name, module_name), label=name,
                                          unit_dim=gate.unit_dim)
            if site is not None:
                self.observer.observe(site, output, None)
        return output


__all__ = ["FunctionalSites", "ModuleStack", "enclosing"]
