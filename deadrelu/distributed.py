"""Scans over several processes: torchrun data parallelism and ``--shard I/N``.

Every per-unit statistic deadrelu keeps is mergeable (counts and sums add, minima and
maxima combine), so a scan distributes exactly:

* **shards**: ``Shard(index, count)`` splits a stream's samples into ``count``
  contiguous blocks of ``floor`` or ``ceil(total / count)`` samples, so every sample is
  seen exactly once whatever the count. ``--shard I/N`` scans one block; ``deadrelu
  merge`` (``deadrelu.merge``) combines the parts' JSON.
* **torchrun**: inside an initialised process group (``torchrun ... -m deadrelu scan``,
  or ``deadrelu.scan`` called on every rank of a user's group) rank ``r`` of ``N`` scans
  block ``r`` of the data (of its ``--shard``, when one is given), and the sites'
  statistics are combined once at the end: one ``all_gather_object`` of the small
  per-rank facts and three ``all_reduce``s (sum, min, max) of every site's statistics
  packed into flat float64 buffers. Every rank returns the same combined result.

This module imports torch only inside functions, so a CLI that was not launched by
torchrun pays nothing for it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, DataLoadError, DeadReluError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .load.data import DataStream
    from .result import ScanResult

#: Environment variables torchrun (and torch.distributed's env:// init) sets on every worker.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# -- shards ---------------------------------------------------------------------------------


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


def shard_stream(stream: DataStream, shard: Shard | str | None, *, split_ranks: bool = True,
                 lockstep: bool = False) -> DataStream:
    """The part of ``stream`` this process scans: shard ``shard``, then this rank's block of it.

    Args:
        stream: the whole data.
        shard: ``--shard I/N`` (recorded in the stream's ``shard``), or None.
        split_ranks: inside a process group, give each rank its own block (False when
            every rank already passes its own part, e.g. a DataLoader with a
            ``DistributedSampler``).
        lockstep: ranks must run the same number of forward passes (FSDP, tensor
            parallelism: the forward pass itself is a collective): ranks that run out of
            batches feed empty ones until every rank has.

    Returns:
        The stream to scan (``stream`` itself in one process without a shard).
    """
    shard = Shard.parse(shard)
    if shard is not None:
        total = stream.num_samples
        stream = restrict(stream, shard)
        stream = dataclasses.replace(stream, shard={"index": shard.index, "count": shard.count, "of": total},
                                     notes=[*stream.notes, _shard_note(shard, total, stream.batch_size)])
    group = ScanGroup.current()
    if group is None:
        return stream
    if split_ranks:
        stream = restrict(stream, Shard(group.rank, group.world_size), what="rank")
    if lockstep:
        stream = group.lockstep(stream)
    return stream


def _shard_note(shard: Shard, total: int | None, batch_size: int | None) -> str:
    if total is None:
        return f"shard {shard}: by batch (the sample count is unknown)"
    start, stop = shard.bounds(total, batch_size)
    return f"shard {shard}: samples {start} to {stop - 1} of {total}"


def needs_lockstep(model: nn.Module) -> bool:
    """Whether the model's forward pass is a collective (FSDP), so every rank must run as
    many forward passes as the others.

    Raises:
        ConfigError: the model is tensor-parallel (DTensor parameters outside FSDP, or
            on a mesh of several dimensions): its units are split across ranks, which
            the combine step does not handle yet (docs/scale.md).
    """
    try:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    fsdp1 = any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())
    sharded = {id(p) for m in model.modules() if isinstance(m, FSDPModule) for p in m.parameters()}
    dtensors = [(name, p) for name, p in model.named_parameters() if isinstance(p, DTensor)]
    for name, parameter in dtensors:
        if id(parameter) not in sharded or parameter.device_mesh.ndim > 1:
            placements = ", ".join(map(repr, parameter.placements))
            raise ConfigError(f"{name} is a DTensor ({placements}) on a {parameter.device_mesh.ndim}-D mesh"
                              f"{'' if id(parameter) in sharded else ' outside FSDP'}: tensor-parallel "
                              "(or 2-D/HSDP) models are not scanned yet: their units are split across ranks",
                              hint="scan a data-parallel or FSDP (1-D mesh) copy of the model; see docs/scale.md")
    return bool(dtensors) or fsdp1


def model_devices(model: nn.Module) -> list[torch.device]:
    """The distinct devices of a model's parameters and buffers, in first-seen order."""
    seen: list[Any] = []
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.device not in seen:
            seen.append(tensor.device)
    return seen


def spread_over_devices(model: nn.Module, device: str | None) -> bool:
    """Whether ``device="auto"`` should leave the model where it is: its parameters span
    several devices (``device_map="auto"``, pipeline stages), and moving it all to one
    device would undo that (and may not fit)."""
    return device == "auto" and len({d for d in model_devices(model) if d.type != "meta"}) > 1


# -- process groups -------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """Whether this process is a torchrun worker (RANK and WORLD_SIZE are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env() -> bool:
    """Initialise the default process group from torchrun's environment, if not done yet.

    gloo for CPU tensors; with CUDA also nccl for CUDA tensors, and this process's GPU is
    ``cuda:LOCAL_RANK``.

    Returns:
        True when this call initialised the group (the caller then destroys it).
    """
    if not launched_by_torchrun():
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        return False
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        # Not measured here (no GPU on the machine this was written on).
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend)
    return True


@dataclass(frozen=True)
class ScanGroup:
    """This process's place in an initialised process group of several ranks.

    Attributes:
        rank: this process's rank.
        world_size: how many ranks.
        device: where collectives run: this rank's GPU under nccl, else the CPU.
    """

    rank: int
    world_size: int
    device: Any

    @classmethod
    def current(cls) -> ScanGroup | None:
        """The default process group, or None outside one (or in a group of one)."""
        if "torch" not in sys.modules:
            return None
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
            return None
        backend = str(dist.get_backend())
        device = torch.device("cpu")
        if "nccl" in backend and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    @contextmanager
    def agree_on_failure(self) -> Iterator[None]:
        """Make a failure on one rank a failure on every rank, instead of a hang.

        Every rank reaches one checkpoint, an ``all_gather_object``: a rank that finished
        its part reaches it in ``combine`` (carrying its facts), a rank that failed reaches
        it here (carrying its error). When any rank failed, the failed ranks re-raise their
        own error and the others raise a ``DeadReluError`` of the same kind naming the
        failed rank. Ctrl-C is not caught (torchrun stops every rank).
        """
        before = _combined_scans
        try:
            yield
        except Exception as exc:
            if not getattr(exc, "agreed", False):
                self.gather(("failed", _failure_of(exc)))
            raise
        if _combined_scans == before:  # the block did not combine: keep every rank at one checkpoint
            self._check(self.gather(("ok", None)))

    def _check(self, gathered: list[tuple[str, Any]]) -> list[Any]:
        """The payloads of a checkpoint; raises (agreed) when a rank failed."""
        failures = [(rank, payload) for rank, (state, payload) in enumerate(gathered) if state == "failed"]
        if failures:
            rank, (kind, message, hint) = failures[0]
            error = _error_class(kind)(f"rank {rank} of {self.world_size} failed: {message}", hint=hint)
            error.agreed = True  # type: ignore[attr-defined]
            raise error
        return [payload for _state, payload in gathered]

    def lockstep(self, stream: DataStream) -> DataStream:
        """``stream`` with empty batches appended until every rank's stream has ended.

        Before each batch the ranks agree (one tiny all-reduce) whether any still has
        one, so every rank runs the same number of forward passes. An empty batch adds
        nothing to any statistic.
        """
        import torch
        import torch.distributed as dist

        from .load.data import slice_batch

        def batches() -> Iterator[Any]:
            end = object()
            iterator = iter(stream.batches())
            template = None
            while True:
                batch = next(iterator, end)
                flag = torch.tensor([0 if batch is end else 1], device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if int(flag.item()) == 0:
                    return
                if batch is end:
                    if template is None:
                        raise DataLoadError(f"{stream.source}: rank {self.rank} has no batch to pad with",
                                            hint="give every rank at least one sample")
                    yield slice_batch(template, 0)
                else:
                    template = batch
                    yield batch
        return dataclasses.replace(stream, batches=batches, select=None)

    def combine(self, local: ScanResult, model: Any = None) -> ScanResult:
        """Every rank's part combined into the whole scan's result (the same on every rank).

        Sites are matched by ``(module, function, call_index)``; a site that ran on some
        ranks only counts as unobserved on the others. One ``all_gather_object`` carries
        the per-rank facts (no per-unit data) and is the ranks' failure checkpoint
        (``agree_on_failure``); the per-unit statistics go through three ``all_reduce``
        calls (sum, min, max) of flat float64 buffers.

        Args:
            local: this rank's result.
            model: the model, for the weight-based suggestion rules.

        Returns:
            The combined result, judged with ``local``'s thresholds, without gate.
        """
        import torch
        import torch.distributed as dist

        from .merge import assemble, site_key
        from .unitstats import SiteStats

        global _combined_scans
        gathered = self._check(self.gather(("ok", local.to_dict(unit_stats=False))))
        _combined_scans += 1
        order: list[tuple] = []
        described: dict[tuple, dict[str, Any]] = {}
        for part in gathered:
            previous = None
            for site in part["sites"]:
                key = site_key(site)
                if key not in described:
                    described[key] = site
                    order.insert(order.index(previous) + 1 if previous is not None else len(order), key)
                previous = key
        mine = {site_key(site): site.stats for site in local.sites}
        sum_fields = [f.name for f in dataclasses.fields(SiteStats) if f.name not in ("minimum", "maximum")]
        sums, minima, maxima, sizes = [], [], [], []
        for key in order:
            units = int(described[key]["units"])
            stats = mine.get(key)
            sizes.append(units)
            if stats is None:
                sums.append(np.zeros((len(sum_fields), units)))
                minima.append(np.full(units, np.inf))
                maxima.append(np.full(units, -np.inf))
            else:
                sums.append(np.stack([getattr(stats, name) for name in sum_fields]))
                minima.append(stats.minimum)
                maxima.append(stats.maximum)
        buffers = []
        for arrays, op in ((sums, dist.ReduceOp.SUM), (minima, dist.ReduceOp.MIN), (maxima, dist.ReduceOp.MAX)):
            flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
            tensor = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float64)).to(self.device)
            dist.all_reduce(tensor, op=op)
            buffers.append(tensor.cpu().numpy())
        summed, low, high = buffers
        stats_of: dict[tuple, SiteStats] = {}
        sum_offset = extreme_offset = 0
        for key, units in zip(order, sizes):
            block = summed[sum_offset:sum_offset + len(sum_fields) * units].reshape(len(sum_fields), units)
            values = dict(zip(sum_fields, block))
            stats_of[key] = SiteStats(minimum=low[extreme_offset:extreme_offset + units],
                                      maximum=high[extreme_offset:extreme_offset + units], **values)
            sum_offset += len(sum_fields) * units
            extreme_offset += units
        sites = [(described[key], stats_of[key]) for key in order]
        combined = assemble(gathered, sites, local.settings, world_size=self.world_size,
                            shard=local.data.get("shard"))
        from .judge.suggestions import suggest
        return combined.with_suggestions(suggest(combined, model))

    def agree_exit_code(self, code: int) -> int:
        """Rank 0's exit code, on every rank, kept however the rank is stopped after this.

        Ranks exit a few milliseconds apart, and torchrun stops the ranks still running
        as soon as one exits non-zero: each rank first makes SIGTERM exit with the agreed
        code (``exit_on_sigterm``), and no rank returns before all have (a barrier).
        """
        import torch
        import torch.distributed as dist

        value = torch.tensor([int(code)], device=self.device)
        dist.broadcast(value, src=0)
        agreed = int(value.item())
        exit_on_sigterm(agreed)
        dist.barrier()
        return agreed


def _failure_of(exc: BaseException) -> tuple[str, str, str | None]:
    if isinstance(exc, DeadReluError):
        return type(exc).__name__, exc.message, exc.hint
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return "DeadReluError", f"{type(exc).__name__}: {text[:300]}", "see that rank's traceback"


def _error_class(name: str) -> type[DeadReluError]:
    from . import errors

    found = getattr(errors, name, None)
    return found if isinstance(found, type) and issubclass(found, DeadReluError) else DeadReluError


# -- the scan across ranks ------------------------------------------------------------------

#: Set once a scan has been combined across ranks: from then on every rank reaches the end
#: of the command, so the exit code can be agreed with one more collective.
_combined_scans = 0


def across_ranks(scan_function: Callable[..., ScanResult]) -> Callable[..., ScanResult]:
    """Make a failure of ``scan`` on one rank a failure on every rank (a no-op outside a group).

    Inside ``scan``, ``shard_stream`` gives each rank its block and ``combine`` joins the
    parts; this wrapper is the other half of ``combine``'s checkpoint, for a rank that
    fails before reaching it.
    """
    @functools.wraps(scan_function)
    def scan(*args: Any, **kwargs: Any) -> ScanResult:
        group = ScanGroup.current()
        if group is None:
            return scan_function(*args, **kwargs)
        with group.agree_on_failure():
            return scan_function(*args, **kwargs)
    return scan


def combine(result: ScanResult, model: Any = None) -> ScanResult:
    """Every rank's part joined into the whole scan (``ScanGroup.combine``); ``result`` itself
    outside a process group."""
    group = ScanGroup.current()
    return result if group is None else group.combine(result, model)


def environment(model: Any) -> dict[str, Any]:
    """The result's ``environment`` entries about processes and devices: ``world_size``, and
    ``devices`` for a model whose parameters span several."""
    group = ScanGroup.current()
    facts: dict[str, Any] = {"world_size": group.world_size if group else 1}
    devices = model_devices(model) if hasattr(model, "parameters") else []
    if len(devices) > 1:
        facts["devices"] = [str(d) for d in devices]
    return facts


def exit_on_sigterm(code: int) -> None:
    """From now on, SIGTERM ends this process with ``code`` (after flushing its output).

    For ranks that agreed on a non-zero exit code: torchrun stops the ranks still running
    as soon as one exits, which would otherwise report -15 instead of the agreed code.
    Call it on every rank before a barrier, so no rank exits before all have called it.
    """
    import signal

    if code:
        signal.signal(signal.SIGTERM, lambda signum, frame: exit_now(code))


def exit_now(code: int) -> None:
    """Flush stdout and stderr and end the process with ``code``, skipping interpreter shutdown.

    After ``exit_on_sigterm``: Python's shutdown puts the default SIGTERM handler back
    (and torch's takes a while), so a SIGTERM from torchrun then would still report -15.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def is_main_process() -> bool:
    """Rank 0 of a process group, or a process outside one: the one that prints and writes."""
    group = ScanGroup.current()
    return group is None or group.rank == 0


def run_cli(app: Callable[[], Any]) -> None:
    """Run the typer ``app``; under torchrun, in a process group, with one exit code for all ranks.

    Outside torchrun this is ``app()``. Under torchrun the default process group is
    initialised (gloo; with CUDA, nccl for CUDA tensors), ranks other than 0 print no
    report, and after a scan that was combined across ranks every rank exits with rank
    0's code (a gate failure, or a report rank 0 could not write). An error before the
    ranks combine (a missing file) is the same on every rank and exits each one itself.
    """
    if not launched_by_torchrun():
        app()
        return
    started = init_from_env()
    code: Any = 0
    agreed = False
    try:
        try:
            app()
        except SystemExit as exc:
            code = exc.code
        code = 0 if code is None else code if isinstance(code, int) else 1
        group = ScanGroup.current()
        if group is not None and _combined_scans:
            code = group.agree_exit_code(code)
            agreed = True
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if agreed:
        exit_now(code)
    sys.exit(code)

