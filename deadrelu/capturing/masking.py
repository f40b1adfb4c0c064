"""Padding: the mask of the current forward pass, and which tensors the padded sequence reaches.

A padding mask ``(N, L)`` (1 at real tokens) leaves padded positions out of a site's
statistics when the site's activation starts with those axes, or is their flattened
``(N*L, D)`` view (``PaddingMask.layout``). A site the padded sequence reaches but whose
activation has another layout (a pooled head) counts padding: it is listed, never
silently mixed. A site the padded sequence never reaches (a CLIP vision tower fed pixels)
is neither masked nor listed.

*Reaching* is followed through the first forward pass with a mask (``SequenceReach``):
tensors of exactly the mask's shape (token ids, the mask, token type ids) are where the
sequence starts, and every op with a reached tensor among its arguments reaches its
outputs. Sites first seen later are judged by their own shape (``carries_sequence``).
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator, Literal

import torch

Layout = Literal["leading", "flat"]


class PaddingMask:
    """The padding mask of the current forward pass.

    Setting it reads nothing from the tensor (no host sync on an accelerator): which positions
    are real is read once per forward pass, by the first site the mask applies to
    (``full``, ``index``), and not at all when it applies to none.

    Attributes:
        tensor: ``(N, L)`` bool, True at real positions; None without a mask.
        used: a mask was set in some forward pass.
    """

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None
        self._flat: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None  # flat indices of the real positions, once read
        self.used = False

    def set(self, mask: torch.Tensor | None) -> None:
        """``(N, L)``, nonzero/True at real positions and 0/False at padding; None for no mask."""
        self._positions = None
        if mask is None:
            self.tensor = self._flat = None
            return
        self.tensor = mask if mask.dtype == torch.bool else mask != 0
        self._flat = self.tensor.reshape(-1)
        self.used = True

    def _real(self) -> torch.Tensor:
        """The flat indices of the real positions, read from the device once per mask."""
        if self._positions is None:
            assert self._flat is not None
            self._positions = torch.nonzero(self._flat).reshape(-1)
        return self._positions

    @property
    def full(self) -> bool:
        """Every position is real (nothing needs leaving out); True without a mask."""
        if self._flat is None:
            return True
        return self._real().numel() == self._flat.numel()

    def gather(self, tensor: torch.Tensor, layout: Layout) -> torch.Tensor:
        """``tensor`` at the real positions, ``(R, ...)``: the rows ``tensor[mask]`` holds, in its order,
        taken with the indices read once per mask instead of a boolean index (a sync) per site."""
        rows = tensor.flatten(0, 1) if layout == "leading" else tensor
        return rows.index_select(0, self._real())

    def layout(self, output: torch.Tensor, unit_dim: int | None, channel_units: bool) -> Layout | None:
        """How ``output`` holds the masked positions: ``leading`` (N, L, ...) with units after
        them, ``flat`` (N*L, D) rows, or None when the mask cannot be applied to it."""
        mask, shape = self.tensor, output.shape
        assert mask is not None
        if (output.ndim >= 3 and tuple(shape[:2]) == tuple(mask.shape) and unit_dim is not None
                and unit_dim >= 2 and channel_units):
            return "leading"
        # A (N*L, D) view of the same positions (some MLPs flatten tokens before the FFN).
        if (output.ndim == 2 and shape[0] == mask.numel() and unit_dim == 1
                and (mask.shape[1] > 1 or tuple(shape[:1]) == tuple(mask.shape[:1]))):
            return "flat"
        return None

    def carries_sequence(self, tensor: torch.Tensor) -> bool:
        """Whether a tensor's own shape holds the masked sequence: batch first and an axis of the
        sequence's length, or flattened ``(N*L, ...)`` rows (for sites not followed from the start)."""
        mask = self.tensor
        if mask is None or tensor.ndim == 0:
            return False
        batch, length = mask.shape
        if tensor.shape[0] == batch and length in tuple(tensor.shape[1:]):
            return True
        return length > 1 and tensor.shape[0] == batch * length

    def is_sequence_input(self, tensor: torch.Tensor) -> bool:
        """A tensor of exactly the mask's shape: token ids, the mask itself, token type ids."""
        mask = self.tensor
        return mask is not None and tensor.ndim == 2 and tensor.shape == mask.shape


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    """The tensors among an op's arguments (one level of lists, tuples and dicts)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, torch.Tensor))
        elif isinstance(value, dict):
            yield from (item for item in value.values() if isinstance(item, torch.Tensor))


class SequenceReach:
    """Follows the padded sequence through the first forward pass that has a mask.

    Args:
        mask: the capture's padding mask.

    ``tracking`` is switched on by the driver for its first forward pass; ``propagate`` is
    called with every op's arguments and outputs while it is on.
    """

    def __init__(self, mask: PaddingMask) -> None:
        self.mask = mask
        self.tracking = False
        self._reached: dict[int, weakref.ref] = {}

    def start(self) -> None:
        """Follow the sequence from now on (the first forward pass)."""
        self.tracking = True

    def stop(self) -> None:
        """Stop following; later sites are judged by their own shape."""
        self.tracking = False
        self._reached.clear()

    @property
    def active(self) -> bool:
        """Following, with a mask set (otherwise there is nothing to follow)."""
        return self.tracking and self.mask.tensor is not None

    def _reached_by(self, tensor: torch.Tensor) -> bool:
        ref = self._reached.get(id(tensor))
        # Identity through a weakref, never id() alone: a freed tensor's id can be reused.
        return (ref is not None and ref() is tensor) or self.mask.is_sequence_input(tensor)

    def reaches(self, tensor: torch.Tensor) -> bool | None:
        """Whether the padded sequence reached ``tensor``; None when not followed."""
        if not self.active:
            return None
        return self._reached_by(tensor)

    def propagate(self, args: tuple, kwargs: dict[str, Any] | None, output: Any) -> None:
        """One op ran: its outputs are reached when any of its tensor arguments is."""
        if not self.active:
            return
        inputs = _tensors(args) if not kwargs else _tensors((*args, *kwargs.values()))
        if not any(self._reached_by(tensor) for tensor in inputs):
            return
        for tensor in _tensors(output if isinstance(output, (list, tuple)) else (output,)):
            self._reached[id(tensor)] = weakref.ref(tensor)


__all__ = ["Layout", "PaddingMask", "SequenceReach"]
