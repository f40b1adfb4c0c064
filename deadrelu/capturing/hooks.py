"""The module-hook driver: ``ActivationCapture`` for eager models.

Hooks every ReLU-family module (pre-hook: count the call, open its site, read what
"active" needs before an in-place module overwrites its input; post-hook: observe the
output) and, with functional capture on, sees ``F.relu`` & co. through
``attribution.FunctionalSites``. Under ``--functional auto`` the first batch decides what
functional capture costs afterwards: nothing when it saw no functional call or gated product
(the mode and its global hooks go), or only inside the modules whose forward made them
(their own hooks switch the mode on for their forward body and off inside their other
children); either way the activation modules it no longer needs run hook-free. During the first forward pass it also follows producer
links (``links.ModuleLinks``), in-place writes into a layer's output, and where the
padded sequence goes (``masking.SequenceReach``), through one ``TorchFunctionMode``.

It owns every hook handle (in an ``ExitStack``) and the model's train/eval flags, and
gives both back in ``__exit__`` whether or not the forward pass raised.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import CaptureError
from ..kinds import is_inplace, looks_like_activation, spec_for_module, tables
from ..settings import FunctionalCapture, ScanSettings
from ..stats import SiteStats
from .attribution import FunctionalSites, ModuleStack
from .contract import keep_train_flags, no_transformer_fastpath
from .fused_forward import FUSED, FusedActivations, FusedForward, ModuleCalls
from .gated import GatedProducts
from .links import ModuleLinks
from .masking import SequenceReach
from .observe import Observer, before_call
from .registry import ROOT_NAME, SiteRecord, SiteRegistry, no_sites_error


def _mutates_first_argument(name: str, activations: frozenset[str]) -> bool:
    """Whether a torch function named ``name`` writes into its first argument (``add_``, ``__iadd__``).

    Activation functions (``relu_``..., in ``activations``) are left out: a site reads its
    input before it runs."""
    if name.startswith("__i") and name.endswith("__"):
        return True
    if not name.endswith("_") or name.startswith("_"):
        return False
    return name.rstrip("_") not in activations


class _DiscoveryWatch(TorchFunctionMode):
    """The first forward pass: every torch call, for producer links and the padded sequence.

    torchvision's ``out = self.bn3(out); out += identity; out = self.relu(out)`` hands the
    ReLU the very tensor ``bn3`` returned, but after the residual add: identity alone would
    link the site to ``bn3``. Inference tensors keep no version counter, so the in-place
    op itself is what is watched."""

    def __init__(self, links: ModuleLinks, reach: SequenceReach) -> None:
        super().__init__()
        self.links = links
        self.reach = reach
        self._activations = frozenset(tables().families) | {"clamp_min"}  # clamp_min_ is clamp's

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor) and _mutates_first_argument(getattr(func, "__name__", ""),
                                                                                  self._activations):
            self.links.forget(args[0])
        out = kwargs.get("out")
        if isinstance(out, torch.Tensor):
            self.links.forget(out)
        result = func(*args, **kwargs)
        self.reach.propagate(args, kwargs, result)
        return result


#: The coverage note of ``--functional auto`` when it turned functional capture off.
FUNCTIONAL_OFF_NOTE = ("functional capture turned off after batch 1: no functional activation (F.relu...) or gated "
                       "product seen; a model calling one only on later batches would be missed: use --functional "
                       "always")
#: How many module names ``functional_scoped_note`` lists before counting the rest.
SCOPED_NAMES_SHOWN = 3


def functional_scoped_note(modules: list[str]) -> str:
    """The coverage note of ``--functional auto`` when it kept functional capture on only inside
    ``modules`` (the modules whose forward made the functional calls and gated products of batch 1)."""
    shown = ", ".join(modules[:SCOPED_NAMES_SHOWN])
    if len(modules) > SCOPED_NAMES_SHOWN:
        shown += f" and {len(modules) - SCOPED_NAMES_SHOWN} more"
    return (f"functional capture kept on after batch 1 only inside the {len(modules)} module"
            f"{'' if len(modules) == 1 else 's'} where batch 1 made functional activations (F.relu...) or gated "
            f"products ({shown}); one made elsewhere only on later batches would be missed: use --functional always")


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

    Keeps the capture contract (``capturing.contract.Capture``).
    """

    #: eager capture sees the model's Python modules run
    sees_modules = True
    #: sites are named by module, never by position
    positional_names = False

    def __init__(self, model: nn.Module, settings: ScanSettings, device: torch.device,
                 eval_mode: bool = True) -> None:
        self.model = model
        self.settings = settings
        self.device = device
        self.eval_mode = eval_mode
        self.failure: Exception | None = None
        self.op_error: Exception | None = None
        self.observer = Observer(settings)
        self.links = ModuleLinks(model)
        self.reach = SequenceReach(self.observer.mask)
        self.registry = SiteRegistry(settings, self.links, self.reach)
        self.coverage = self.registry.coverage
        self.gated = GatedProducts()
        self.functional: FunctionalSites | None = None
        self.in_batch = False
        self._stack = ExitStack()
        self._discovery = ExitStack()  # producer hooks, call counters of unsupported modules
        self._functional_hooks = ExitStack()  # functional capture's mode and module hooks
        self._functional_global = ExitStack()  # its global module hooks (until it is scoped)
        self._scopes: list[tuple[nn.Module, bool]] = []  # scoped modules running: (module, mode wanted)
        self._scoped: set[int] = set()  # ids of the modules inside the owners (their hooks stay)
        self._watch = _DiscoveryWatch(self.links, self.reach)
        self._watch_on = False
        # Per hooked module: (site, before) of its calls whose post-hook has not run yet.
        self._pending: list[list[tuple[SiteRecord | None, torch.Tensor | None]]] = []
        self._pending_of: dict[str, list[tuple[SiteRecord | None, torch.Tensor | None]]] = {}
        # Modules with a swapped forward, whose hooks may go after the first batch: (forward, its calls, hook handles)
        self._fused: list[tuple[FusedForward, ModuleCalls, tuple[Any, Any]]] = []

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self) -> ActivationCapture:
        if isinstance(self.model, torch.jit.ScriptModule):
            raise CaptureError("TorchScript modules refuse forward hooks",
                               hint="scan the eager model, or load the TorchScript file with deadrelu.load")
        keep_train_flags(self._stack, self.model)
        if self.eval_mode:
            self.model.eval()
            no_transformer_fastpath(self._stack)
        try:
            self._register()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._clear_pending()
        self.gated.clear()
        self.in_batch = False
        try:
            self._stack.close()
        finally:
            self.links.stop()  # a forward pass that raised in the first batch leaves nothing followed
            self.reach.stop()

    def _register(self) -> None:
        self._stack.push(self._discovery)
        self._stack.callback(self._leave_watch)
        # A scan's ReLU-family modules compute output and statistics in one pass (not while training).
        fusing = FusedActivations(self.observer, self._stack) if self.eval_mode else None
        for name, module in self.model.named_modules():
            spec = spec_for_module(module)
            if spec is not None:
                self.coverage.activation_modules.append(name)
                fused = fusing.install(module, spec) if fusing is not None else None
                calls = ModuleCalls(name, spec, module, self.registry)
                handles = (module.register_forward_pre_hook(self._pre_hook(calls, fused)),
                           module.register_forward_hook(self._post_hook(name)))
                for handle in handles:
                    self._stack.callback(handle.remove)
                if fused is not None:
                    self._fused.append((fused, calls, handles))
            elif not self.links.watch(name, module, self._discovery) and self._unsupported_activation(name, module):
                # Counted during the first forward pass only (the hook goes with the producer hooks).
                entry = [name, type(module).__name__, 0, "unsupported kind"]
                self.coverage.unsupported.append(entry)
                self._discovery.callback(module.register_forward_hook(self._count_hook(entry)).remove)
        if self.settings.functional:
            self._stack.push(self._functional_hooks)
            modules = ModuleStack(self.model, set(self.coverage.activation_modules))
            self._functional_hooks.callback(modules.forget)
            self._functional_hooks.push(self._functional_global)
            modules.register(self._functional_global)
            self.functional = FunctionalSites(self.registry, self.observer, self.gated, modules, self._observing)
            # The ExitStack turns the mode off if a forward pass raised before end_batch.
            self._functional_hooks.callback(self.functional.leave)
            self.coverage.functional = True

    def _observing(self) -> bool:
        return self.in_batch and (self.eval_mode or self.model.training)

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
            if self.in_batch:
                entry[2] += 1
        return count

    def _leave_watch(self) -> None:
        if self._watch_on:
            self._watch_on = False
            self._watch.__exit__(None, None, None)

    # -- batch loop -----------------------------------------------------------------------
    def begin_batch(self, inside: bool = False) -> None:
        """Reset per-forward call counters (done in the tool's own loop, so a model whose
        ``forward`` is called directly, bypassing root hooks, still gets fresh indices).

        Args:
            inside: called from inside a forward pass (the root's pre-hook, a submodule called
                directly while training): the stack of running modules, kept by the global hooks,
                stays, so functional calls are still attributed to the module that runs them.
        """
        saved = self.functional.modules.snapshot() if inside and self.functional is not None else None
        self.registry.begin_batch()
        self._clear_pending()
        self.gated.clear()
        self.in_batch = True
        self._scopes.clear()
        if self.functional is not None:
            self.functional.modules.clear()
        if self.links.discovering and not self._watch_on:
            self.reach.start()
            self._watch.__enter__()
            self._watch_on = True
        if self.functional is not None:
            if not self.functional.scoped:
                self.functional.enter()
            if saved is not None:
                self.functional.modules.restore(saved)

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """The padding mask of the coming forward pass.

        Args:
            mask: ``(N, L)``, nonzero/True at real positions and 0/False at padding; None
                for no mask. Sites whose activation starts with the ``(N, L)`` axes (or is
                their flattened ``(N*L, ...)`` view) leave padded positions out of every
                statistic; other sites the padded sequence reaches are marked ``unmasked``.
        """
        self.observer.mask.set(mask)
        self.coverage.masked = self.observer.mask.used

    def end_batch(self) -> None:
        """Record call counts of this forward pass; stop following producers after the first."""
        self.in_batch = False
        self.gated.clear()
        if self.functional is not None:
            self.functional.leave()
        self._leave_watch()
        if (self.links.discovering and self.functional is not None
                and self.settings.functional is FunctionalCapture.AUTO):
            if not self.registry.functional_ran():
                self._functional_off()
            elif self.eval_mode:
                self._functional_scoped()
        self.registry.end_batch()
        if self.links.discovering and (self.functional is None or self.functional.scoped):
            self._fused_alone()
        if self.links.discovering:
            self.links.stop()
            self.reach.stop()
            self._discovery.close()

    def _fused_alone(self) -> None:
        """After the first batch with no functional capture left on: remove the hooks of every
        module with a swapped forward that no one else hooks; its ``FusedForward`` counts and observes its calls
        from now on, and ``nn.Module.__call__`` runs it without its hook machinery."""
        for fused, calls, (pre, post) in self._fused:
            module = fused.module
            if id(module) in self._scoped:
                continue  # inside a module where functional capture stays on: its stack and gates need the hooks
            if len(module._forward_pre_hooks) == 1 and len(module._forward_hooks) == 1:
                pre.remove()
                post.remove()
                fused.go_alone(calls)
        self._fused.clear()

    def _clear_pending(self) -> None:
        for pending in self._pending:
            if pending:  # only after a forward pass that raised between a pre- and a post-hook
                pending.clear()

    def _functional_off(self) -> None:
        """``--functional auto`` after a first batch without functional calls: remove the mode and
        the global module hooks, so later forward passes run no Python per torch call."""
        self.functional = None
        self._functional_hooks.close()
        self.coverage.functional_note = FUNCTIONAL_OFF_NOTE

    def _functional_scoped(self) -> None:
        """``--functional auto`` after a first batch whose functional calls and gated products were
        all made inside modules below the root (the *owners*): from now on the mode is on only while
        an owner's own forward body runs. Hooks on the owners and the modules between them and their
        outermost owner switch it on (and keep the running-module stack there); hooks on their other
        children switch it off while those run, so the rest of each forward pass runs no Python per
        torch call. The global module hooks go. A call made in the model's own forward keeps the mode
        on throughout (nothing to narrow)."""
        functional = self.functional
        assert functional is not None
        owners, scopes = functional.owners, functional.owners | functional.gate_scopes
        named = dict(self.model.named_modules())
        if not owners or "" in scopes or any(name not in named for name in scopes):
            return
        outer = sorted(name for name in scopes if not any(name.startswith(other + ".") for other in scopes))
        wanted: set[str] = set()  # the owners and the modules between each and its outermost owner
        for name in owners:
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                prefix = ".".join(parts[:end])
                wanted.add(prefix)
                if prefix in outer:
                    break
        self._functional_global.close()
        self._scoped = {id(module) for name in outer for module in named[name].modules()}
        hooks = self._functional_hooks
        on, off = self._scope_hook(True), self._scope_hook(False)
        functional.modules.register_within(hooks, [named[name] for name in sorted(wanted)], descend=False)
        ran = functional.modules.ran
        wanted_ids = {id(named[name]) for name in wanted}

        def pause_points(module: nn.Module) -> list[nn.Module]:
            """The modules below ``module`` whose forward turns the mode off: each child that is not
            wanted (a module is wanted by identity: one registered under two names is one module),
            and below a child that did not run in batch 1 (a ModuleList) its children too."""
            points = []
            for child in module.children():
                if id(child) in wanted_ids:
                    continue
                points.append(child)
                if id(child) not in ran:
                    points.extend(pause_points(child))
            return points

        paused: set[int] = set()
        for name in sorted(wanted):
            module = named[name]
            hooks.callback(module.register_forward_pre_hook(on).remove)
            hooks.callback(module.register_forward_hook(self._scope_out, always_call=True).remove)
            for child in pause_points(module):
                if id(child) not in paused:
                    paused.add(id(child))
                    hooks.callback(child.register_forward_pre_hook(off).remove)
                    hooks.callback(child.register_forward_hook(self._scope_out, always_call=True).remove)
        # An activation module runs its own F.relu: never a functional site, wherever it is called from
        # (one passed to an owner as an argument is not below it). Hooked ones switch the mode off
        # themselves; swapped ones (their FusedForward, hooked or not) do it while the mode is on.
        for fused, _calls, _handles in self._fused:
            fused.functional = functional
        for module in self.model.modules():
            if (id(module) in paused or id(module) in wanted_ids or spec_for_module(module) is None
                    or isinstance(vars(module).get("forward"), FusedForward)):
                continue
            paused.add(id(module))
            hooks.callback(module.register_forward_pre_hook(off).remove)
            hooks.callback(module.register_forward_hook(self._scope_out, always_call=True).remove)
        functional.leave()
        functional.scoped = True
        self.coverage.functional_note = functional_scoped_note(outer)

    def _scope_hook(self, wanted: bool) -> Callable:
        """A pre-hook: functional capture on (``wanted``) or off while the module's forward runs."""
        scopes = self._scopes

        def scope_in(module: nn.Module, args: Any) -> None:
            if self.in_batch and self.functional is not None:
                scopes.append((module, wanted))
                self._switch()
        return scope_in

    def _scope_out(self, module: nn.Module, args: Any, output: Any) -> None:
        """A scoped module's forward ended (or raised): back to what its caller wanted."""
        scopes = self._scopes
        if scopes and scopes[-1][0] is module:
            scopes.pop()
            self._switch()

    def _switch(self) -> None:
        """The mode on exactly when the innermost scoped module running wants it."""
        functional = self.functional
        if functional is None:
            return
        if self._scopes and self._scopes[-1][1]:
            functional.enter()
        else:
            functional.leave()

    # -- hooks ----------------------------------------------------------------------------
    def _pre_hook(self, calls: ModuleCalls, fused: FusedForward | None) -> Callable:
        """The module's pre-hook, with everything a call needs decided once: its call counting and
        sites by call index (``calls``), where its pending calls wait, what "active" is read from,
        and the module's fused forward (``fused_forward.py``) when it has one."""
        spec, name = calls.spec, calls.name
        inplace = is_inplace(calls.module)
        pending: list[tuple[SiteRecord | None, torch.Tensor | None]] = []
        self._pending.append(pending)
        self._pending_of[name] = pending

        def pre_hook(mod: nn.Module, args: tuple) -> None:
            if not self.eval_mode:
                if not self.model.training:
                    return  # an eval-mode forward pass (validation) inside a training capture
                if not self.in_batch:
                    self.begin_batch(inside=True)  # the loop called a submodule, bypassing the root's hooks
            call_index = calls.count()
            inputs = args[0] if args and isinstance(args[0], torch.Tensor) else None
            site, before = None, None
            if inputs is not None:
                site = calls.site(call_index, inputs)
                if site is not None:
                    if fused is not None and fused.arm(site, inputs, self.links.discovering):
                        before = FUSED  # the module's fused forward observes this call
                    else:
                        before = before_call(spec, inputs, inplace)  # judged before an in-place call
            pending.append((site, before))
        return pre_hook

    def _post_hook(self, name: str) -> Callable:
        pending = self._pending_of[name]
        observe = self.observer.observe

        def post_hook(mod: nn.Module, args: tuple, output: Any) -> None:
            if not pending:
                return
            site, before = pending.pop()
            if site is None or not isinstance(output, torch.Tensor):
                return
            if before is FUSED:
                pass  # the module's fused forward observed this call
            elif torch._C._len_torch_function_stack():
                # The tool's own reductions are not the model's calls: they bypass the
                # functional mode (and its Python pass-through per op), or a user's.
                with torch._C.DisableTorchFunction():
                    observe(site, output, before)
            else:
                observe(site, output, before)
            functional = self.functional
            if functional is not None and (functional.on or functional.scoped):
                self.gated.remember(output, site)  # scoped: the mode is off inside this module, not in its caller
        return post_hook

    # -- the contract's queries -----------------------------------------------------------
    def ran_this_batch(self) -> list[str]:
        """Activation modules (or ``module:function``) that ran in the current forward pass, in order."""
        return self.registry.ran_this_batch()

    def no_sites_error(self, model_name: str) -> CaptureError:
        """The error for a scan in which no site ran: excluded, never ran, or nothing to capture."""
        types = sorted({type(m).__name__ for m in self.model.modules()} - {type(self.model).__name__})
        functional = ("no functional activation (F.relu...) ran either" if self.coverage.functional
                      else "functional calls (F.relu...) were not captured: --no-functional")
        return no_sites_error(self.coverage, model_name, types, functional)

    def records(self) -> list[SiteRecord]:
        """Sites that ran, in network order."""
        return self.registry.records()

    def site_name(self, record: SiteRecord) -> str:
        """``module`` when called once per forward, ``module#k`` otherwise;
        ``<module>:<function>#<k>`` for functional sites."""
        return self.registry.module_name(record)

    def not_run(self) -> list[str]:
        """Activation modules found in the model that never ran on the data."""
        ran = self.registry.modules_ran()
        return [name or ROOT_NAME for name in self.coverage.activation_modules if name not in ran]

    def finalize(self, record: SiteRecord) -> SiteStats:
        """The site's statistics so far."""
        return record.accumulator.finalize()


__all__ = ["ActivationCapture", "FUNCTIONAL_OFF_NOTE", "functional_scoped_note"]
