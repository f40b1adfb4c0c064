"""Gated products: ``act(gate_proj(x)) * up_proj(x)`` in SwiGLU / GeGLU / ReGLU MLPs.

The gate's activation is a site of its own kind. The elementwise product of its output
with a tensor of the same shape is a site too, of the gated kind its gate names
(``kinds.KindInfo.gated_by``: SiLU -> SwiGLU; any other gate -> GLU), with the gate's
units, active where the product is not 0: a unit whose ``up`` row is 0 is dead in the
product however lively its gate.

Both drivers remember each activation output of the current forward pass here (by
weakref) and ask ``match`` about every elementwise product; naming the product's site is
the driver's job (the module whose forward multiplies, or the graph's plan).
"""

from __future__ import annotations

import itertools
import weakref

import torch

from ..kinds import KINDS, KindSpec, tables
from .registry import SiteRecord


class GatedProducts:
    """The activation outputs of the current forward pass, to recognise products of them."""

    def __init__(self) -> None:
        self._outputs: dict[int, tuple[weakref.ref, SiteRecord, int]] = {}
        self._serial = itertools.count()

    @property
    def waiting(self) -> bool:
        """Whether any activation output of this forward pass could still be multiplied."""
        return bool(self._outputs)

    def remember(self, output: torch.Tensor, site: SiteRecord) -> None:
        """An activation output of ``site``, which a later product may use."""
        self._outputs[id(output)] = (weakref.ref(output), site, next(self._serial))

    def clear(self) -> None:
        """Forget every output (a forward pass ended or began)."""
        self._outputs.clear()

    def match(self, args: tuple) -> SiteRecord | None:
        """The gate site of a product ``a * b``, or None when it is not a gated product.

        Args:
            args: the product's positional arguments.

        Returns:
            The site whose output is one factor (the most recent, when both are), provided
            both factors are floating tensors of one shape.
        """
        if len(args) < 2:
            return None
        left, right = args[0], args[1]
        if not (isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor)) or left.shape != right.shape:
            return None
        if not left.is_floating_point():
            return None
        found: tuple[int, SiteRecord] | None = None
        for factor in (left, right):
            entry = self._outputs.get(id(factor))
            # Identity through a weakref, never id() alone: a freed tensor's id can be reused.
            if entry is not None and entry[0]() is factor and (found is None or entry[2] > found[0]):
                found = (entry[2], entry[1])
        return None if found is None else found[1]


def product_kind(gate: SiteRecord) -> str:
    """The gated kind of a product whose gate is ``gate`` (``SwiGLU`` for a SiLU gate; else ``GLU``)."""
    return tables().gated.get(gate.spec.kind, "GLU")


def product_spec(gate: SiteRecord) -> KindSpec:
    """The product site's rules: its gated kind's spec (active where the product is not 0)."""
    return KINDS[product_kind(gate)].spec({})


__all__ = ["GatedProducts", "product_kind", "product_spec"]
