"""Shards of a stream: ``Shard(index, count)`` and ``restrict``, the part of a stream it names.

``--shard I/N`` scans one part and ``deadrelu merge`` combines the parts' JSON; under
torchrun each rank scans its own part the same way (``deadrelu.distributed``). Parts
are contiguous blocks of ``floor`` or ``ceil(total / count)`` samples, cut at whole
batches when the stream knows its batch size, so every sample is seen exactly once
whatever the count. This module knows streams only: no torch, no process group.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DataLoadError

if TYPE_CHECKING:
    from .load.data import DataStream


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` disjoint parts of a stream's samples.

    Attributes:
        index: which part, from 0.
        count: how many parts.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count} does not exist",
                              hint="--shard I/N with 0 <= I < N, e.g. --shard 0/4")

    @classmethod
    def parse(cls, text: str | Shard | None) -> Shard | None:
        """``"I/N"`` (or a ``Shard``, or None) as a ``Shard``.

        Raises:
            ConfigError: text that is not ``I/N`` with ``0 <= I < N``.
        """
        if text is None or isinstance(text, Shard):
            return text
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if match is None:
            raise ConfigError(f"--shard {text!r} is not I/N", hint="e.g. --shard 0/4 scans the first of 4 parts")
        return cls(int(match.group(1)), int(match.group(2)))

    def bounds(self, total: int, batch_size: int | None = None) -> tuple[int, int]:
        """The ``[start, stop)`` sample range of this part of ``total`` samples.

        With ``batch_size`` the parts are made of whole batches (the last part ends with
        the short last batch): each part then feeds exactly the batches one process would,
        so per-batch sums (float32) are bit-identical and only their float64 total's
        addition order differs.
        """
        step = batch_size if batch_size and batch_size > 1 else 1
        units = -(-total // step)
        return (min(total, self.index * units // self.count * step),
                min(total, (self.index + 1) * units // self.count * step))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def restrict(stream: DataStream, shard: Shard, what: str = "shard") -> DataStream:
    """The part of ``stream`` that ``shard`` names.

    With a known sample count the part is a contiguous block by sample index, cut at
    whole batches when the stream knows its batch size (``Shard.bounds``): a
    seekable stream (arrays, files, Datasets, sequential DataLoaders) reads only its
    block; any other stream is read up to the block's end and its batches are cut at
    the block's edges. With no known count (a generator, an IterableDataset) the split
    is by batch: batch ``b`` belongs to part ``b % count``. That is still disjoint and
    complete when the stream yields the same batches in the same order every time, but
    it is not balanced by sample; a note says so.

    Args:
        stream: the data.
        shard: which part.
        what: how the part is named in notes and errors ("shard" or "rank").

    Returns:
        A stream over the part's samples (with its own ``select``, relative to the part).

    Raises:
        DataLoadError: the part would hold no sample.
    """
    from .load.data import batch_length, slice_batch

    if shard.count == 1:
        return stream
    total = stream.num_samples
    if total is None:
        def by_batch() -> Iterator[Any]:
            for batch_index, batch in enumerate(stream.batches()):
                if batch_index % shard.count == shard.index:
                    yield batch
        # The same text on every rank, so the combined result states it once.
        note = (f"the data was split into {shard.count} {what}s by batch (batch b to {what} b % {shard.count}), "
                "not by sample: the sample count is unknown")
        return dataclasses.replace(stream, batches=by_batch, notes=[*stream.notes, note], select=None)
    start, stop = shard.bounds(total, stream.batch_size)
    if stop == start:
        batches = -(-total // stream.batch_size) if stream.batch_size else total
        raise DataLoadError(f"{stream.source}: {what} {shard} of {total} sample(s) holds no sample "
                            f"(parts are whole batches: {batches} to share)",
                            hint=f"use at most {batches} {what}s, or a smaller batch size")
    if stream.select is not None:
        # Only the batches come from select: notes, shard and the rest stay this stream's.
        batches = stream.select(start, stop).batches
    else:
        def cut() -> Iterator[Any]:
            position = 0
            for batch in stream.batches():
                size = batch_length(batch)
                if size is None:
                    raise DataLoadError(f"{stream.source}: cannot split a batch of unknown length by sample",
                                        hint="batches must be tensors, (x, y) tuples or dicts of tensors")
                low, high = max(start, position), min(stop, position + size)
                if high > low:
                    yield batch if high - low == size else slice_batch(batch, high - low, low - position)
                position += size
                if position >= stop:
                    return
        batches = cut
    parent_select = stream.select

    def select(low: int, high: int) -> DataStream:
        assert parent_select is not None
        return parent_select(start + low, start + high)
    return dataclasses.replace(stream, batches=batches, num_samples=stop - start,
                               select=select if parent_select else None, first_sample=stream.first_sample + start)


__all__ = ["Shard", "restrict"]
