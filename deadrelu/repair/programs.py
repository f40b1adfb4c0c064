"""``torch.export`` programs of repaired models that load back anywhere: plain tensors out, same names in.

A Hugging Face model returns ``BaseModelOutputWithPast`` (and a ``DynamicCache``); an
exported program that returns those cannot be read by ``torch.export.load`` without
transformers' pytree registrations, and some cannot be exported at all. ``TensorOutputs``
calls the model's own ``forward`` and returns its tensors, flattened in order (the first is
``last_hidden_state`` / ``logits``); the KV cache is turned off where the forward takes
``use_cache``. The wrapper registers the model's own children, parameters and buffers under
their own names, so the program's state_dict keys and the site names a scan of it reports
are the original model's.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def tensor_leaves(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model output, in order: tensors, tuples/lists, dicts, ``ModelOutput`` (``to_tuple``)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if hasattr(output, "to_tuple") and callable(output.to_tuple):
        output = output.to_tuple()
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [tensor for item in output for tensor in tensor_leaves(item)]
    return []


class TensorOutputs(nn.Module):
    """``model``, called through its own ``forward``, returning only tensors (one, or a tuple).

    Args:
        model: the model; its children, parameters and buffers are registered here under
            their own names (shared, not copied).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "inner", model)  # not a child: its children are ours, by their own names
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, parameter in model._parameters.items():
            self.register_parameter(name, parameter)
        for name, buffer in model._buffers.items():
            self.register_buffer(name, buffer, persistent=name not in model._non_persistent_buffers_set)
        self.no_cache = "use_cache" in inspect.signature(model.forward).parameters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.no_cache:
            kwargs.setdefault("use_cache", False)
        leaves = tensor_leaves(type(self.inner).forward(self.inner, *args, **kwargs))
        return leaves[0] if len(leaves) == 1 else tuple(leaves)


def _named(model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TensorOutputs:
    """A ``TensorOutputs`` whose ``forward`` signature names each input (``input_0``..., then the
    keyword names), so ``torch.export`` can take a dynamic batch axis for keyword inputs too."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(f"input_{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(len(args))]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in kwargs]

    def forward(self: TensorOutputs, *call_args: Any, **call_kwargs: Any) -> Any:
        return TensorOutputs.forward(self, *call_args, **call_kwargs)

    forward.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    named = type("TensorOutputs", (TensorOutputs,), {"forward": forward, "__module__": __name__})
    return named(model)


def _dims(names: Sequence[str], values: Sequence[Any], axes: str) -> dict[str, Any]:
    """Dynamic shapes by input name: one ``Dim`` per (axis, size), shared by the inputs that have it.

    ``axes="batch"``: the first axis only; ``"all"``: every axis of integer inputs (token ids and
    masks, whose length varies) and the first axis of the others (a float input's other axes are
    usually fixed by its layers: channels, features).
    """
    dims: dict[tuple[int, int], Any] = {}
    shapes: dict[str, Any] = {}
    for name, value in zip(names, values):
        if not isinstance(value, torch.Tensor) or not value.ndim:
            shapes[name] = None
            continue
        spec = {}
        every_axis = axes == "all" and not value.is_floating_point()
        for axis, size in enumerate(value.shape):
            if (axis and not every_axis) or size < 2:
                continue
            spec[axis] = dims.setdefault((axis, int(size)), torch.export.Dim(f"axis{axis}_{int(size)}"))
        shapes[name] = spec or None
    return shapes


def export_program(model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
                   dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """Export ``model`` as it is (call ``eval()`` first for an eval-mode program), tensors out.

    Tried in turn: the batch axis and a token sequence's length dynamic, then only the batch
    axis, then the example's shapes; the first that exports without guard code is
    returned. Dynamic axes shared by several inputs (``input_ids`` and ``attention_mask``)
    make torch write their equality as Python guard code, which ``deadrelu scan`` refuses to
    run (see ``load/archive.py``): such a program takes the example's shapes only.

    Args:
        model: the model.
        args: positional example inputs.
        kwargs: keyword example inputs.
        dynamic_batch: try dynamic axes first.

    Returns:
        The program; raises what ``torch.export`` raises when no attempt works.
    """
    kwargs = dict(kwargs or {})
    wrapper = _named(model, args, kwargs)
    names = [f"input_{i}" for i in range(len(args))] + list(kwargs)
    values = [*args, *kwargs.values()]
    attempts: list[Any] = [None]
    if dynamic_batch and values:
        every, batch = _dims(names, values, "all"), _dims(names, values, "batch")
        axes = {name: sorted(spec or ()) for name, spec in every.items()}  # Dims compare by identity
        attempts = [every, batch, None] if axes != {name: sorted(spec or ()) for name, spec in batch.items()} \
            else [batch, None]
    error: Exception | None = None
    for shapes in attempts:
        try:
            program = torch.export.export(wrapper, tuple(args), kwargs, dynamic_shapes=shapes)
        except Exception as exc:  # torch raises many kinds; the last one is reported
            error = exc
            continue
        if shapes is None or not getattr(program, "_guards_code", None):
            return program
    assert error is not None
    raise error


__all__ = ["TensorOutputs", "tensor_leaves", "export_program"]
