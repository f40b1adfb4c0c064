"""Producer links: which layer made a site's input, and so which axis holds its units.

Followed during the first forward pass only (``discovering``), by tensor identity through
weakrefs, never ``id()`` alone (a freed tensor's id can be reused).

* ``ModuleLinks`` (eager models): forward hooks on Linear/Conv/norm modules remember their
  outputs; an activation whose input *is* such an output is linked to that layer
  (``output``), one inside a norm layer (timm's ``BatchNormAct2d``) to the norm
  (``enclosing``), anything else to the last layer that ran (``after-op``).
* ``OpLinks`` (TorchScript / ``torch.export``): the producing aten op's output; sites are
  not linked to layers, the graph's ops have no modules to blame.

Both judge the unit axis with the one rule in ``units.resolve_unit_dim``.
"""

from __future__ import annotations

import weakref
from collections import deque
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from ..kinds import KindSpec
from ..links import InputLink
from .units import (LAST_AXIS_OPS, NORM_LAYERS, Producer, is_producer, producer_of_module, producer_of_op,
                    resolve_unit_dim)


class ModuleLinks:
    """Producer links of an eager model, from forward hooks on its producing modules.

    Args:
        model: the model (to find the norm layer an activation module sits in).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.discovering = True
        self._names: dict[nn.Module, str] = {}
        self._recent: deque[tuple[weakref.ref, nn.Module]] = deque(maxlen=256)
        self._last: nn.Module | None = None

    def watch(self, name: str, module: nn.Module, stack: ExitStack) -> bool:
        """Hook ``module`` when it is a producer (hooks live in ``stack``); False when it is not."""
        if not is_producer(module):
            return False
        self._names[module] = name
        stack.callback(module.register_forward_hook(self._produced).remove)
        return True

    def stop(self) -> None:
        """The first forward pass is over: producers are no longer followed."""
        self.discovering = False
        self._recent.clear()
        self._last = None

    def _produced(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            self._recent.append((weakref.ref(output), module))
        self._last = module

    def _producer_of(self, tensor: torch.Tensor) -> nn.Module | None:
        for ref, module in reversed(self._recent):
            if ref() is tensor:
                return module
        return None

    def forget(self, tensor: torch.Tensor) -> None:
        """An output written into in place (a residual add) is no longer what its layer produced."""
        # Rebuilt, not .remove(): tuples compare their weakrefs, which compare the tensors.
        if any(ref() is tensor for ref, _ in self._recent):
            kept = [entry for entry in self._recent if entry[0]() is not tensor]
            self._recent.clear()
            self._recent.extend(kept)

    def link(self, tensor: torch.Tensor, module_name: str, activation: nn.Module | None) -> InputLink | None:
        """Which layer produced a new site's input (None after the first forward pass).

        ``output``: the input *is* that layer's output tensor, untouched since; ``enclosing``:
        an activation module that is a child of a norm layer applied to its normalised output;
        ``after-op``: something else (a residual add, a concat, a view) came after the last
        layer that ran, named in ``layer`` when there was one."""
        if not self.discovering:
            return None
        producer = self._producer_of(tensor)
        if producer is not None and producer in self._names:
            return InputLink(self._names[producer], "output")
        if activation is not None and module_name:
            parent_name = module_name.rpartition(".")[0]
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            if isinstance(parent, NORM_LAYERS) and parent is not activation:
                return InputLink(parent_name, "enclosing")
        elif activation is None and module_name:  # F.relu inside a norm layer's own forward
            if isinstance(self.model.get_submodule(module_name), NORM_LAYERS):
                return InputLink(module_name, "enclosing")
        last = self._last
        return InputLink(self._names.get(last) if last is not None else None, "after-op")

    def unit_axis(self, tensor: torch.Tensor, spec: KindSpec, link: InputLink | None
                  ) -> tuple[int | None, str | None]:
        """The unit axis of a new site's tensor, judged from the module that produced it."""
        producer = self._producer_of(tensor) if self.discovering else None
        if producer is None and link is not None and link.how == "enclosing" and link.layer is not None:
            producer = self.model.get_submodule(link.layer)  # the norm layer the activation sits in
        last = self._last if self.discovering else None
        return resolve_unit_dim(tuple(tensor.shape), None if producer is None else producer_of_module(producer),
                                None if last is None else producer_of_module(last), spec.per_channel_param)


class OpLinks:
    """Producer ops of an aten-level capture (the unit axis only: no layer links)."""

    def __init__(self) -> None:
        self.discovering = True
        self._outputs: deque[tuple[weakref.ref, Producer]] = deque(maxlen=256)
        self._last: Producer | None = None

    def stop(self) -> None:
        """The first forward pass is over: producer ops are no longer followed."""
        self.discovering = False
        self._outputs.clear()
        self._last = None

    def produced(self, op: str, output: Any) -> None:
        """Remember a linear/conv/norm op's output (by weakref) to judge unit axes from."""
        tensor = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
            return
        width = int(tensor.shape[-1] if op in LAST_AXIS_OPS else tensor.shape[1] if tensor.ndim > 1 else tensor.shape[0])
        producer = producer_of_op(op, width)
        if producer is None:
            return
        self._outputs.append((weakref.ref(tensor), producer))
        self._last = producer

    def link(self, tensor: torch.Tensor, module_name: str, activation: nn.Module | None) -> InputLink | None:
        """Aten-level sites are not linked to layers: the graph's ops have no modules to blame."""
        return None

    def unit_axis(self, tensor: torch.Tensor, spec: KindSpec, link: InputLink | None
                  ) -> tuple[int | None, str | None]:
        """The unit axis of a new site's tensor, judged from the op that produced it."""
        producer = None
        if self.discovering:
            for reference, candidate in reversed(self._outputs):
                if reference() is tensor:
                    producer = candidate
                    break
        last = self._last if self.discovering else None
        return resolve_unit_dim(tuple(tensor.shape), producer, last, spec.per_channel_param)


__all__ = ["ModuleLinks", "OpLinks"]
