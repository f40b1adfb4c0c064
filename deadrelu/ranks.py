"""Where the ranks of a process group meet: named meetings through the group's key-value store.

A meeting is a point every rank reaches once. Each rank posts a small JSON payload under
the meeting's name and waits until every other rank has posted too. Unlike a collective
(``all_gather_object``), a meeting

* has a timeout, and its error names the ranks that did not arrive;
* notices a rank that will not come: one that failed posts its failure under a name the
  meeting watches (``scan<k>/failed``, or ``exit`` for a CLI rank that ended), and the
  waiting ranks raise that failure instead of waiting for a collective that never comes;
* carries JSON, never pickles: what a peer posts is data, not code.

The meetings go through the default process group's store (torchrun's TCPStore), so they
need no backend and work beside nccl. The module imports torch only inside functions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, DeadReluError

#: Seconds a rank waits for the others at a meeting unless told otherwise (``--timeout``).
DEFAULT_TIMEOUT = 300.0


class RankError(DeadReluError):
    """The ranks of a process group did not all arrive where they meet (one hangs, is slow or is gone)."""


@dataclass
class _Process:
    """This process's view of its group: the timeout to use and the ranks already given up on."""

    timeout: float = DEFAULT_TIMEOUT
    absent: frozenset[int] = frozenset()


_process = _Process()


def set_timeout(seconds: float | None) -> float:
    """Make ``seconds`` (None: keep the current) the timeout of the meetings that follow; returns it.

    Raises:
        ConfigError: a timeout that is not a positive number of seconds.
    """
    if seconds is not None:
        if not float(seconds) > 0 or not np.isfinite(float(seconds)):
            raise ConfigError(f"timeout {seconds:g} is not a positive number of seconds",
                              hint="e.g. 300 waits at most 5 minutes for the other ranks")
        _process.timeout = float(seconds)
    return _process.timeout


def absent_ranks() -> frozenset[int]:
    """Ranks that missed a meeting in this process (later meetings of the CLI do not wait for them)."""
    return _process.absent


def ranks_text(ranks: Any) -> str:
    """``rank 1`` / ``ranks 1, 3``."""
    ranks = sorted(ranks)
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def _key(name: str, rank: int) -> str:
    return f"deadrelu/{name}/{rank}"


def _count(name: str) -> str:
    """How many ranks posted under ``name``: one counter to poll instead of a key per rank."""
    return f"deadrelu/{name}/count"


def _store() -> Any:
    import torch.distributed as dist

    # torch keeps the default group's store private; it is the one init_process_group made.
    return dist.distributed_c10d._get_default_store()


def _encode(value: Any) -> bytes:
    def plain(item: Any) -> Any:
        if isinstance(item, np.generic):
            return item.item()
        if isinstance(item, np.ndarray):
            return item.tolist()
        raise TypeError(f"{type(item).__name__} cannot be sent to the other ranks")
    return json.dumps(value, default=plain).encode()


def _lost(exc: BaseException) -> RankError:
    return RankError(f"lost contact with the other ranks ({type(exc).__name__}: "
                     f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})",
                     hint="another rank (or the launcher) stopped; see its output")


def post(rank: int, name: str, payload: Any) -> None:
    """Post this rank's ``payload`` under ``name`` without waiting (a failure record, say)."""
    store = _store()
    try:
        store.set(_key(name, rank), _encode(payload))
        store.add(_count(name), 1)  # after the key: whoever sees the count finds the key
    except RuntimeError as exc:
        raise _lost(exc) from exc


def posted(world_size: int, name: str) -> dict[int, Any]:
    """What the ranks have posted under ``name`` so far, without waiting: ``{rank: payload}``."""
    store = _store()
    found: dict[int, Any] = {}
    try:
        for rank in range(world_size):
            if store.check([_key(name, rank)]):
                found[rank] = json.loads(store.get(_key(name, rank)))
    except RuntimeError as exc:
        raise _lost(exc) from exc
    return found


@dataclass(frozen=True)
class NotComing:
    """A rank that posted under a watched name instead of coming to the meeting.

    Attributes:
        rank: which rank.
        name: the watched name it posted under (``scan3/failed``, ``exit``).
        payload: what it posted there.
    """

    rank: int
    name: str
    payload: Any


def meet(rank: int, world_size: int, name: str, payload: Any, *, what: str, watch: tuple[str, ...] = (),
         skip: frozenset[int] = frozenset(), timeout: float | None = None) -> dict[int, Any] | NotComing:
    """Post ``payload`` under ``name`` and wait for every other rank to post there too.

    Args:
        rank: this process's rank.
        world_size: how many ranks.
        name: the meeting (``scan0/combine``, ``exit``): every rank reaches it once.
        payload: this rank's JSON-able payload.
        what: the meeting in words, for the timeout error ("the combine step").
        watch: names under which a rank that will not come posts instead (a failure).
        skip: ranks not to wait for (already given up on).
        timeout: seconds to wait (default: ``set_timeout``'s).

    Returns:
        ``{rank: payload}`` of every rank (but ``skip``), or the first rank seen posting
        under a watched name instead (``NotComing``).

    Raises:
        RankError: a rank did not arrive within the timeout (it is named, and later
            meetings of the CLI do not wait for it), or the store was lost.
    """
    limit = _process.timeout if timeout is None else timeout
    post(rank, name, payload)
    store = _store()
    pending = [other for other in range(world_size) if other != rank and other not in skip]
    deadline = time.monotonic() + limit
    delay = 0.001
    examined = dict.fromkeys(watch, 0)
    try:
        # Each poll reads counters only (1 + len(watch) requests, however many ranks), so
        # many ranks waiting long for a slow one do not flood the store.
        while pending:
            if store.add(_count(name), 0) >= world_size - len(skip):
                pending = [other for other in pending if not store.check([_key(name, other)])]
                if not pending:
                    break
            for watched in watch:
                posted_there = store.add(_count(watched), 0)
                if posted_there > examined[watched]:
                    examined[watched] = posted_there
                    pending = [other for other in pending if not store.check([_key(name, other)])]
                    for other in pending:
                        if store.check([_key(watched, other)]):
                            return NotComing(other, watched, json.loads(store.get(_key(watched, other))))
            if time.monotonic() > deadline:
                pending = [other for other in pending if not store.check([_key(name, other)])]
                if not pending:
                    break
                _process.absent = _process.absent | set(pending)
                raise RankError(f"{ranks_text(pending)} of {world_size} did not reach {what} within {limit:g} s "
                                "(hung, slow or gone)",
                                hint="see that rank's output; --timeout N waits longer for slow ranks")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return {other: json.loads(store.get(_key(name, other)))
                for other in range(world_size) if other not in skip or other == rank}
    except RuntimeError as exc:  # the store's server went away (its host process ended)
        raise _lost(exc) from exc


__all__ = ["DEFAULT_TIMEOUT", "NotComing", "RankError", "absent_ranks", "meet", "post", "posted", "ranks_text",
           "set_timeout"]
