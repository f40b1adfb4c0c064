"""``torchrun ... -m deadrelu scan``: one process group, one report, one error line, one exit code.

Outside torchrun the CLI runs as it is. Under torchrun (``RANK`` and ``WORLD_SIZE`` set)
the default process group is initialised (``deadrelu.distributed.init_from_env``) and the
command runs on every rank, with the error lines kept instead of printed. At the end the
ranks meet once more (``exit``, a ``deadrelu.ranks`` meeting) and agree:

* the exit code: that of the first rank whose error is its own (not one learned from
  another rank), else rank 0's (a failed gate is 1 on every rank);
* one error line, printed once, by the lowest rank that arrived (rank 0 unless it hung):
  the first rank's own error, prefixed ``rank R of N failed:`` when it is another rank's.
  torchrun's failure summary shows the same line (each failing rank writes it to
  torchrun's error file, ``TORCHELASTIC_ERROR_FILE``).

A rank that does not arrive within the timeout (``--timeout``) is left behind and named.
torchrun itself still exits 1 with its own summary when any rank exits non-zero; every
rank's code in that summary is the agreed one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import typer

from .. import distributed, ranks
from .common import EXIT_BAD_INPUT, ErrorLines, deferred_errors


#: The process group ``run`` joined under torchrun (None outside torchrun, or in a group of one).
_group: distributed.ScanGroup | None = None


def scan_group() -> distributed.ScanGroup | None:
    """The process group this command runs in under torchrun: what ``deadrelu scan`` scans across
    (the library joins a group only when given one: ``deadrelu.scan(..., group=...)``)."""
    return _group


def run(app: Callable[..., Any]) -> None:
    """Run the typer ``app``; under torchrun, on every rank of one process group, ending as
    described in this module's docstring (never returns under torchrun)."""
    global _group
    if not distributed.launched_by_torchrun():
        app()
        return
    started = distributed.init_from_env()
    group = _group = distributed.ScanGroup.current()
    if group is None:  # a group of one
        try:
            app()
        finally:
            _destroy(started)
        return
    with deferred_errors() as errors:
        code = _run(app, errors)
    code, chosen, printer = _agree(group, code, errors[0] if errors else None)
    _exit(group, code, chosen, printer, started)


def _run(app: Callable[..., Any], errors: list[ErrorLines]) -> int:
    """The command's exit code; a usage error is kept in ``errors`` like any other."""
    try:
        returned = app(standalone_mode=False)
    except typer.Abort:  # click's Abort in older typer, typer's own in newer (no click import: see common.py)
        return 130
    except Exception as exc:
        # A usage error (click's, or the click that typer vendors): kept, printed once.
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "deadrelu"
        errors.append(ErrorLines(exc.exit_code, exc.format_message(),  # type: ignore[attr-defined]
                                 f"see '{command} --help'", kind="ConfigError"))
        return exc.exit_code  # type: ignore[attr-defined]
    except SystemExit as exc:
        returned = exc.code
    return returned if isinstance(returned, int) else 0


def _agree(group: distributed.ScanGroup, code: int,
           error: ErrorLines | None) -> tuple[int, tuple[int, dict] | None, int]:
    """Meet at ``exit``: the agreed exit code, the (rank, error) to print if any, and the rank that prints."""
    mine = {"kind": error.kind, "message": error.message, "hint": error.hint, "detail": error.detail,
            "agreed": error.agreed, "code": error.code} if error else None
    try:
        records = ranks.meet(group.rank, group.world_size, "exit", {"code": code, "error": mine},
                             what="the end of the command", skip=ranks.absent_ranks())
    except ranks.RankError as exc:  # a rank hung outside any scan meeting: go on without it
        if mine is None or mine["agreed"]:
            mine = {"kind": "RankError", "message": exc.message, "hint": exc.hint, "detail": None,
                    "agreed": False, "code": EXIT_BAD_INPUT}
        records = {group.rank: {"code": mine["code"], "error": mine}}
    assert isinstance(records, dict)
    failed = [(rank, record["error"]) for rank, record in sorted(records.items()) if record.get("error")]
    chosen = next(((rank, e) for rank, e in failed if not e.get("agreed")), failed[0] if failed else None)
    agreed = int(chosen[1]["code"]) if chosen else int(records[min(records)]["code"])
    return agreed, chosen, min(records)


def _exit(group: distributed.ScanGroup, code: int, chosen: tuple[int, dict] | None, printer: int,
          started: bool) -> None:
    """Print the agreed line (rank ``printer`` alone), then end every rank with the agreed code."""
    if chosen is not None:
        rank, error = chosen
        prefix = "" if rank == printer or error.get("agreed") else f"rank {rank} of {group.world_size} failed: "
        if group.rank == printer:
            ErrorLines(code, error["message"], error.get("hint"), detail=error.get("detail")).show(prefix)
        _tell_torchrun(prefix + error["message"], code)
    elif code:
        _tell_torchrun(f"deadrelu exited {code} on every rank" + (" (the CI gate failed)" if code == 1 else ""), code)
    # torchrun stops the ranks still running as soon as one exits non-zero: from here on
    # that stop ends this rank with the agreed code, and no rank exits before all got here.
    exit_on_sigterm(code)
    try:
        ranks.meet(group.rank, group.world_size, "done", None, what="the end of the command",
                   skip=ranks.absent_ranks())
    except ranks.RankError:
        pass
    _destroy(started and not ranks.absent_ranks())
    exit_now(code)


def _tell_torchrun(line: str, code: int) -> None:
    """Write ``line`` where torchrun's failure summary looks for this rank's error (its "traceback")."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": {"message": line, "errorCode": code,
                          "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(record, file)
    except OSError:
        pass  # the summary then says "<N/A>"; the line was printed already


def _destroy(started: bool) -> None:
    if started:
        import torch.distributed as dist

        dist.destroy_process_group()


def exit_on_sigterm(code: int) -> None:
    """From now on, SIGTERM ends this process with ``code`` (after flushing its output).

    For ranks that agreed on a non-zero exit code: torchrun stops the ranks still running
    as soon as one exits, which would otherwise report -15 instead of the agreed code.
    Call it on every rank before they meet a last time, so no rank exits before all have.
    """
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
