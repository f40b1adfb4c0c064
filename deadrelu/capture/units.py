"""Which axis of an activation holds its units, judged from the module that fed it."""

from __future__ import annotations

from torch import nn

# Producers whose features sit on the last axis: (N, D), (N, L, D), (N, H, W, D).
LAST_AXIS_PRODUCERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.Embedding,
                                                   nn.EmbeddingBag)
if hasattr(nn, "RMSNorm"):
    LAST_AXIS_PRODUCERS += (nn.RMSNorm,)
# Producers whose features sit on axis 1: (N, C, L), (N, C, H, W), (N, C, D, H, W).
CHANNEL_AXIS_PRODUCERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
)
PRODUCERS = LAST_AXIS_PRODUCERS + CHANNEL_AXIS_PRODUCERS


def producer_width(module: nn.Module) -> int | None:
    """How many features a producer module emits (out_features, out_channels, ...)."""
    for attribute in ("out_features", "out_channels", "num_features", "num_channels", "embedding_dim"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    return None


def resolve_unit_dim(shape: tuple[int, ...], producer: nn.Module | None,
                     last_producer: nn.Module | None, per_channel_param: bool) -> tuple[int | None, str | None]:
    """Pick the unit axis of an activation output.

    Args:
        shape: the activation's output shape (batch first).
        producer: the Linear/Conv/Norm/Embedding whose output tensor *is* the
            activation's input (matched by identity), if any.
        last_producer: the most recent such module that ran before the activation.
        per_channel_param: the activation has one parameter per channel (PReLU).

    Returns:
        ``(unit_dim, warning)``: ``unit_dim`` None means the whole output is one unit
        (a 1-D ``(N,)`` output); ``warning`` says when the choice was a guess.
    """
    ndim = len(shape)
    if ndim <= 1:
        # (N,) has no feature axis; its last axis is the batch. One unit, so counts do
        # not change with the batch size.
        return None, None
    if ndim == 2:
        return 1, None
    if per_channel_param:
        return 1, None
    if producer is not None:
        if isinstance(producer, LAST_AXIS_PRODUCERS):
            return ndim - 1, None
        if isinstance(producer, CHANNEL_AXIS_PRODUCERS):
            return 1, None
    reference = producer or last_producer
    if reference is not None:
        width = producer_width(reference)
        matches = [axis for axis in range(1, ndim) if shape[axis] == width]
        if len(matches) == 1:
            return matches[0], None
        why = (f"{len(matches)} axes of shape {tuple(shape)} match the width {width} of "
               f"{type(reference).__name__}")
    else:
        why = f"no Linear/Conv/Norm/Embedding ran before it (shape {tuple(shape)})"
    return 1, f"unit axis is ambiguous ({why}); assumed axis 1"
