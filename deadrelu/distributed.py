"""Scans over several processes: torchrun data parallelism (and ``--shard I/N``, ``deadrelu.shards``).

Every per-unit statistic deadrelu keeps is mergeable (counts and sums add, minima and
maxima combine), so a scan distributes exactly. A scan runs across a process group only
when asked: ``torchrun ... -m deadrelu scan`` (the CLI's own group), or
``deadrelu.scan(..., group=True)`` called on every rank of a user's group; an initialised
group alone changes nothing (``joined``). Across a group the ranks meet twice per scan (``deadrelu.ranks``: JSON through the group's store,
with a timeout that names the ranks that did not arrive):

* **data**: before the first batch, the ranks check that they were given the same data
  (sample count, file SHA-256), then rank ``r`` of ``N`` scans block ``r`` of it (of its
  ``--shard``, when one is given);
* **combine**: after the last batch, the small per-rank facts meet, and three
  ``all_reduce``s (sum, min, max) join every site's statistics packed into flat float64
  buffers. Every rank returns the same combined result.

A rank that fails posts its error where the meetings watch, so the others raise it (naming
that rank) instead of waiting. This module imports torch only inside functions, so a CLI
that was not launched by torchrun pays nothing for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import ranks
from .errors import ConfigError, DataLoadError, DeadReluError, ModelLoadError, first_line
from .ranks import DEFAULT_TIMEOUT, RankError
from .shards import Shard, restrict

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .load.data import DataStream
    from .result import ScanResult

#: Environment variables torchrun (and torch.distributed's env:// init) sets on every worker.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# -- this process's part of the data ---------------------------------------------------------


def shard_stream(stream: DataStream, shard: Shard | str | None, *, group: ScanGroup | None = None,
                 split_ranks: bool = True, lockstep: bool = False) -> DataStream:
    """The part of ``stream`` this process scans: shard ``shard``, then this rank's block of it.

    Args:
        stream: the whole data.
        shard: ``--shard I/N`` (recorded in the stream's ``shard``), or None.
        group: the ranks the scan was asked to run across (``joined``), or None: this process alone.
        split_ranks: with a group, give each rank its own block (False when
            every rank already passes its own part, e.g. a DataLoader with a
            ``DistributedSampler``). The ranks first check that they were all given the
            same data (sample count and file SHA-256).
        lockstep: ranks must run the same number of forward passes (FSDP, tensor
            parallelism: the forward pass itself is a collective): ranks that run out of
            batches feed empty ones until every rank has.

    Returns:
        The stream to scan (``stream`` itself in one process without a shard).

    Raises:
        DataLoadError: ranks given different data (``ScanGroup.check_same_data``).
    """
    shard = Shard.parse(shard)
    if group is not None and split_ranks:
        group.check_same_data(stream)  # each rank cuts its block from its own copy: the copies must agree
    if shard is not None:
        total = stream.num_samples
        stream = restrict(stream, shard)
        stream = dataclasses.replace(stream, shard={"index": shard.index, "count": shard.count, "of": total},
                                     notes=[*stream.notes, _shard_note(shard, total, stream.batch_size)])
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
    fsdp1, sharded = False, set()
    for module in model.modules():  # one walk: a scan asks this of every model, however many modules it has
        fsdp1 = fsdp1 or type(module).__name__ == "FullyShardedDataParallel"
        if isinstance(module, FSDPModule):
            sharded.update(id(p) for p in module.parameters())
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


def set_timeout(seconds: float | None, *, collectives: bool = False) -> float:
    """How long a rank waits for the others: at the meetings that follow and, with
    ``collectives``, in the default process group's collectives too (the CLI's own group
    under torchrun; a user's group keeps the timeout it was made with).

    Args:
        seconds: the timeout (None: keep the current one, ``DEFAULT_TIMEOUT`` at first).
        collectives: also set it on the default process group's backends.

    Returns:
        The timeout now in force, in seconds.

    Raises:
        ConfigError: not a positive number of seconds.
    """
    value = ranks.set_timeout(seconds)
    if collectives and "torch" in sys.modules:
        from datetime import timedelta

        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            # Private in torch, but the only way to change a group's timeout after init.
            dist.distributed_c10d._set_pg_timeout(timedelta(seconds=value))
    return value


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

    def meet(self, step: str, payload: Any, what: str) -> list[Any]:
        """Every rank's ``payload`` at this scan's meeting ``step``, in rank order.

        A meeting (``deadrelu.ranks.meet``) waits ``--timeout`` seconds at most, and
        notices a rank that failed instead of coming.

        Raises:
            DeadReluError: (agreed) the error of a rank that failed instead of coming, of
                the same kind, naming that rank.
            RankError: a rank did not arrive in time (named).
        """
        outcome = ranks.meet(self.rank, self.world_size, f"scan{_scans}/{step}", payload, what=what,
                             watch=(f"scan{_scans}/failed", "exit"))
        if isinstance(outcome, ranks.NotComing):
            raise self._not_coming(outcome, what)
        return [outcome[rank] for rank in range(self.world_size)]

    def _not_coming(self, seen: ranks.NotComing, what: str) -> DeadReluError:
        """The error that a rank which failed (or ended) instead of coming to a meeting means here."""
        failure = seen.payload.get("error") if seen.name == "exit" else seen.payload
        if not failure:
            error = ranks.RankError(f"rank {seen.rank} of {self.world_size} ended before {what}",
                                    hint="every rank must run the same command on the same data")
        else:
            message = failure["message"] if failure.get("agreed") else \
                f"rank {seen.rank} of {self.world_size} failed: {failure['message']}"
            error = _error_class(failure["kind"])(message, hint=failure.get("hint"))
        error.agreed = True  # type: ignore[attr-defined]
        return error

    def _failed_elsewhere(self) -> DeadReluError | None:
        """The failure another rank posted during this scan (or on ending), if any."""
        for name in (f"scan{_scans}/failed", "exit"):
            try:
                posted = ranks.posted(self.world_size, name)
            except ranks.RankError:
                return None  # the store is gone: this rank's own error stands
            for rank, payload in posted.items():
                if rank != self.rank and (name != "exit" or payload.get("error")):
                    return self._not_coming(ranks.NotComing(rank, name, payload), "the end of the scan")
        return None

    @contextmanager
    def agree_on_failure(self) -> Iterator[None]:
        """Make a failure on one rank a failure on every rank, instead of a hang.

        A rank that fails posts its failure (kind, message, hint) where the others'
        meetings watch: whichever meeting they wait at next (the data check, the combine
        step) raises the same kind of error naming the failed rank. A rank whose error is
        not deadrelu's own (or wraps one), after another rank posted its failure (typically
        a collective, FSDP's all-gathers or the lockstep flags, broken by that rank's
        absence), reports that rank's failure;
        a collective that times out or breaks otherwise is a ``RankError``. Ctrl-C is not
        caught (torchrun stops every rank).
        """
        try:
            yield
        except Exception as exc:
            if getattr(exc, "agreed", False):
                raise
            # An error that is not deadrelu's own (or wraps one: a failed forward pass) may only
            # follow from a rank that failed first, e.g. a collective broken by its absence
            # (a gloo timeout): that rank's failure is the cause to report.
            foreign = not isinstance(exc, DeadReluError) or (
                exc.__cause__ is not None and not isinstance(exc.__cause__, DeadReluError))
            replacement = (self._failed_elsewhere() or _collective_error(exc, self)) if foreign else None
            if replacement is not None:
                if not getattr(replacement, "agreed", False):
                    self._post_failure(replacement)
                raise replacement from exc
            self._post_failure(exc)
            raise

    def _post_failure(self, exc: BaseException) -> None:
        try:
            ranks.post(self.rank, f"scan{_scans}/failed", failure_of(exc))
        except ranks.RankError:
            pass  # the others are gone already: nobody to tell

    def check_same_data(self, stream: DataStream) -> None:
        """Refuse to split data that differs between ranks: each rank cuts its own block from
        its own copy, so different copies (another file on another node, a file changed
        between starts) would overlap or leave samples out and be merged silently.

        Raises:
            DataLoadError: (on every rank) the ranks' sample counts or file SHA-256 differ;
                the message names the ranks and what differs.
        """
        facts = {"samples": stream.num_samples, "sha256": stream.sha256}
        every = self.meet("data", facts, "the start of the scan")
        differ = [name for name in facts if len({json.dumps(f.get(name)) for f in every}) > 1]
        if not differ:
            return
        by_value: dict[str, list[int]] = {}
        for rank, fact in enumerate(every):
            shown = [f"{fact.get('samples')} samples" if name == "samples" else
                     f"sha256 {str(fact.get('sha256'))[:12]}" for name in differ]
            by_value.setdefault(", ".join(shown), []).append(rank)
        what = " and ".join("sample count" if name == "samples" else "SHA-256" for name in differ)
        described = "; ".join(f"{ranks.ranks_text(found)}: {shown}" for shown, found in by_value.items())
        raise DataLoadError(f"{stream.source}: the {self.world_size} ranks were given different data "
                            f"({what} {'differ' if len(differ) > 1 else 'differs'}): {described}",
                            hint="every rank must read the same data (the ranks split it among themselves): "
                                 "check the file on every node; a rank that passes its own part: shard_data=False")

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
        ranks only counts as unobserved on the others. One meeting (``meet``) carries the
        per-rank facts as JSON (no per-unit data) and is where a failure on another rank
        is noticed (``agree_on_failure``); the per-unit statistics go through three
        ``all_reduce`` calls (sum, min, max) of flat float64 buffers.

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

        gathered = self.meet("combine", local.to_dict(unit_stats=False), "the combine step (the end of the scan)")
        order: list[tuple] = []
        described: dict[tuple, dict[str, Any]] = {}
        described_on: dict[tuple, int] = {}
        for rank, part in enumerate(gathered):
            previous = None
            for site in part["sites"]:
                key = site_key(site)
                if key not in described:
                    described[key], described_on[key] = site, rank
                    order.insert(order.index(previous) + 1 if previous is not None else len(order), key)
                elif int(site["units"]) != int(described[key]["units"]):
                    # Every rank sees the same facts, so every rank refuses alike before any all_reduce.
                    raise ModelLoadError(f"the ranks scanned different models: site {site['name']} has "
                                         f"{site['units']} units on rank {rank}, {described[key]['units']} "
                                         f"on rank {described_on[key]}",
                                         hint="every rank must load the same model")
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


def failure_of(exc: BaseException) -> dict[str, Any]:
    """An error as the JSON the ranks exchange: kind (class name), message, hint, and whether it
    only repeats another rank's failure (``agreed``)."""
    if isinstance(exc, DeadReluError):
        return {"kind": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                "agreed": bool(getattr(exc, "agreed", False))}
    return {"kind": "DeadReluError", "message": f"{type(exc).__name__}: {first_line(exc)}",
            "hint": "see that rank's traceback", "agreed": False}


def _error_class(name: str) -> type[DeadReluError]:
    """The ``DeadReluError`` subclass called ``name`` (the base class for an unknown name)."""
    pending: list[type[DeadReluError]] = [DeadReluError]
    while pending:
        found = pending.pop()
        if found.__name__ == name:
            return found
        pending.extend(found.__subclasses__())
    return DeadReluError


def _collective_error(exc: BaseException, group: ScanGroup) -> DeadReluError | None:
    """A collective that timed out or broke (torch's ``DistError`` family, maybe wrapped as a failed
    forward pass) as one ``RankError``."""
    import torch.distributed as dist

    broken = next((e for e in (exc, exc.__cause__) if isinstance(e, getattr(dist, "DistError", ()))), None)
    if broken is None:
        return None
    return ranks.RankError(f"rank {group.rank} of {group.world_size}: a collective with the other ranks timed out "
                           f"or broke ({type(broken).__name__}: {first_line(broken, 200)})",
                           hint="see the other ranks' output; --timeout N waits longer for slow ranks")


# -- the scan across ranks ------------------------------------------------------------------

#: Scans started in this process inside a process group: names each scan's meetings, so the
#: ranks of a program that scans several times never mix up two scans.
_scans = 0


def joined(group: ScanGroup | bool | None) -> ScanGroup | None:
    """The ranks a scan was asked to run across: ``True`` means the default process group.

    A scan joins a group only when asked (``deadrelu.scan(..., group=True)``, or the CLI
    under torchrun), never because one happens to be initialised: a training script that
    scans on rank 0 alone must not wait for ranks that never come.

    Args:
        group: ``True`` (the default process group), a ``ScanGroup``, or None/False (none).

    Returns:
        The group, or None for this process alone (also in a group of one).

    Raises:
        ConfigError: ``True`` but no process group is initialised.
    """
    if group is None or group is False:
        return None
    if isinstance(group, ScanGroup):
        return group if group.world_size > 1 else None
    if group is not True:
        raise ConfigError(f"group must be True or a deadrelu.distributed.ScanGroup, got {type(group).__name__}",
                          hint="group=True scans across the default process group")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ConfigError("group=True, but no process group is initialised",
                          hint="call torch.distributed.init_process_group() on every rank first (torchrun)")
    return ScanGroup.current()


@contextmanager
def agreeing(group: ScanGroup | None) -> Iterator[None]:
    """Inside the block, a failure on one rank of ``group`` fails every rank (a no-op without one).

    The scan's meetings inside (``shard_stream`` checks the ranks' data and gives each rank
    its block, ``ScanGroup.combine`` joins the parts) are named by this scan's number, so
    the ranks of a program that scans several times never mix up two scans; a rank that
    fails posts its failure, so the others raise it at their next meeting instead of waiting.
    """
    global _scans
    if group is None:
        yield
        return
    _scans += 1
    with group.agree_on_failure():
        yield


def environment(model: Any, group: ScanGroup | None = None) -> dict[str, Any]:
    """The result's ``environment`` entries about processes and devices: ``world_size`` (that of
    ``group``; 1 without), and ``devices`` for a model whose parameters span several."""
    facts: dict[str, Any] = {"world_size": group.world_size if group else 1}
    devices = model_devices(model) if hasattr(model, "parameters") else []
    if len(devices) > 1:
        facts["devices"] = [str(d) for d in devices]
    return facts


def is_main_process(group: ScanGroup | None = None) -> bool:
    """Rank 0 of ``group``, or a process without one: the one that prints and writes."""
    return group is None or group.rank == 0
