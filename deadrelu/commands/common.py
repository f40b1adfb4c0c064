"""What every ``deadrelu`` command shares: the consoles, exit codes, error lines, positional paths.

Exit codes: 0 done (gate passed or none); 1 the gate failed, and only that; 2 bad usage or
input (one line naming the file, flag or field, plus a hint); 3 a bug in deadrelu (one line
naming a crash file that holds the traceback); 130 interrupted.

``deadrelu.cli`` and the command groups in this package (``commands/repair.py``) import
from here, so no command module has to import the CLI that registers it.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import typer
from rich.console import Console

from ..errors import ConfigError, DeadReluError

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# Older typer re-exports click's exceptions; newer typer (0.29) ships its own copy of click
# (``typer._click``) and no longer depends on click: take the classes from typer itself,
# so this works with either and click is never imported.
_CLICK_EXCEPTION = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")
#: What the CLI framework raises to end a command itself (--help, usage errors, typer.Exit).
FRAMEWORK_EXITS: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, _CLICK_EXCEPTION)

stdout = Console(highlight=False, soft_wrap=False)
# Errors and hints stay one line each, however narrow the terminal (CI logs are grepped).
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def terminal_width() -> int | None:
    """The width every command lays its report out for: the terminal's, else ``COLUMNS`` (read now,
    not when the console was made); None (no limit: full names and lines) for a log."""
    columns = os.environ.get("COLUMNS", "")
    if stdout.is_terminal:
        return stdout.width
    if columns.isdigit():
        return int(columns)
    stdout.width = 400  # a CI log: full names and lines, nothing wrapped mid-word
    return None

#: library parameter names -> the flags a CLI user types, for error lines
PARAMETER_FLAGS = {"batch_size": "--batch-size", "dead_threshold": "--dead-threshold", "tau": "--tau",
                   "saturation": "--saturation", "granularity": "--granularity", "nonfinite": "--nonfinite",
                   "limit": "--limit", "max_dead_ratio": "--max-dead-ratio",
                   "max_layer_dead_ratio": "--max-layer-dead-ratio", "compile": "--compile", "device": "--device",
                   "timeout": "--timeout", "shuffle_seed": "--shuffle-seed", "max_length": "--max-length",
                   "max_line_bytes": "--max-line-bytes"}
_LEADING_PARAMETER = re.compile(r"^(" + "|".join(sorted(map(re.escape, PARAMETER_FLAGS), key=len, reverse=True))
                                + r")\b(?!_)")


def as_flags(message: str) -> str:
    """A library message that starts with a parameter name (``batch_size must be >= 1``), with the flag."""
    return _LEADING_PARAMETER.sub(lambda match: PARAMETER_FLAGS[match.group(1)], message, count=1)


@dataclass(frozen=True)
class ErrorLines:
    """The lines a failed command prints on stderr: ``error: message`` and ``hint: hint``.

    Attributes:
        code: the exit code that goes with them (2 bad input, 3 a bug in deadrelu).
        message: the error line's text.
        hint: the hint line's text, if any.
        detail: text printed as it is after them (a traceback no crash file could hold).
        kind: the error's class name (``DataLoadError``...).
        agreed: the error repeats another torchrun rank's failure.
    """

    code: int
    message: str
    hint: str | None = None
    detail: str | None = None
    kind: str = "DeadReluError"
    agreed: bool = False

    def show(self, prefix: str = "") -> None:
        """Print the lines on stderr, the message after ``prefix`` (``rank 1 of 2 failed: ``)."""
        stderr.print(f"[bold red]error:[/] {_plain(prefix + self.message)}")
        if self.hint:
            stderr.print(f"[dim]hint:[/] {_plain(self.hint)}")
        if self.detail:
            stderr.print(self.detail, markup=False)


#: Where ``error_exit`` puts its lines instead of printing them (torchrun: rank 0 prints once).
_deferred: list[ErrorLines] | None = None


@contextmanager
def deferred_errors() -> Iterator[list[ErrorLines]]:
    """Inside this block ``error_exit`` collects its lines in the list yielded instead of
    printing them (under torchrun the ranks agree first, then one rank prints)."""
    global _deferred
    previous, _deferred = _deferred, []
    try:
        yield _deferred
    finally:
        _deferred = previous


@contextmanager
def error_exit(debug: bool) -> Iterator[None]:
    """Map errors to exit codes: the deadrelu error family is one line (plus a hint) and exit 2;
    anything else is a bug in deadrelu: one line naming a file that holds the traceback, exit 3."""
    try:
        yield
    except FRAMEWORK_EXITS:
        raise
    except DeadReluError as exc:
        if debug:
            raise
        message = as_flags(exc.message) if isinstance(exc, ConfigError) else exc.message
        _report(ErrorLines(EXIT_BAD_INPUT, message, exc.hint, kind=type(exc).__name__,
                           agreed=bool(getattr(exc, "agreed", False))))
    except KeyboardInterrupt as exc:
        line = interrupted_line(getattr(exc, "written", ()), getattr(exc, "complete", False))
        stderr.print(f"[bold red]interrupted[/]: {_plain(line)}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if debug:
            raise
        crash_file = _write_crash_report(exc)
        what = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
        where = f"traceback in {crash_file}" if crash_file else "traceback below"
        _report(ErrorLines(EXIT_BUG, f"deadrelu bug ({what[:200]}); {where}",
                           "please report it with that file; --debug shows the traceback here",
                           detail=None if crash_file else "".join(traceback.format_exception(exc))))


def _report(lines: ErrorLines) -> None:
    """Print ``lines`` (or keep them for the torchrun ranks' agreement) and exit with their code."""
    if _deferred is None:
        lines.show()
    else:
        _deferred.append(lines)
    raise typer.Exit(lines.code) from None


def interrupted_line(written: Iterable[object] = (), complete: bool = False) -> str:
    """What an interruption left on disk, said exactly: the reports files written (all of them when
    ``complete``: Ctrl-C came while they were renamed into place), or none."""
    from ..render.text import visible
    names = ", ".join(visible(str(path)) for path in written)
    if not names:
        return "no report written (use --partial-on-interrupt to keep partial results)"
    if complete:
        return f"after the reports were written: {names}"
    return f"only these reports were written: {names}; the others were not (their old files, if any, are unchanged)"


def _write_crash_report(exc: BaseException) -> Path | None:
    """Write the traceback of a bug to ``<tmp>/deadrelu-crash-<timestamp>-<pid>.txt``; None if that fails."""
    from .. import __version__
    from ..render.files import atomic_write_text
    path = Path(tempfile.gettempdir()) / f"deadrelu-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    text = (f"deadrelu {__version__} crashed (a bug: please report it with this file)\n"
            f"python {platform.python_version()} on {platform.platform()}\n"
            f"command: {' '.join(sys.argv)}\n\n{''.join(traceback.format_exception(exc))}")
    try:
        return atomic_write_text(path, text)
    except (DeadReluError, OSError):
        return None


def _plain(text: str) -> str:
    from rich.markup import escape

    from ..render.text import visible
    return escape(visible(text))


def positionals(model: Path | None, data: Path | None, model_spec: str | None,
                 data_spec: str | None) -> tuple[Path | None, Path | None]:
    """Assign the positional paths: MODEL unless --model is given, DATA unless --data is."""
    given = [path for path in (model, data) if path is not None]
    wanted = [name for name, spec in (("MODEL", model_spec), ("DATA", data_spec)) if spec is None]
    if len(given) != len(wanted):
        options = " and ".join(f"--{n.lower()}" for n, spec in (("MODEL", model_spec), ("DATA", data_spec)) if spec)
        expected = " ".join(wanted) if wanted else "no file argument"
        raise ConfigError(f"expected {expected}{' with ' + options if options else ''}, got "
                          f"{len(given)} file argument(s): {' '.join(map(str, given)) or 'none'}",
                          hint="deadrelu scan MODEL DATA, or --model pkg.mod:build DATA, or MODEL --data pkg.mod:make")
    paths = dict(zip(wanted, given))
    return paths.get("MODEL"), paths.get("DATA")


def say(lines: list[str], to_stderr: bool = False) -> None:
    """Print "written" lines (on stderr when stdout carries JSON)."""
    for line in lines:
        (stderr if to_stderr else stdout).print(line, markup=False, soft_wrap=True)


__all__ = ["EXIT_OK", "EXIT_GATE_FAILED", "EXIT_BAD_INPUT", "EXIT_BUG", "EXIT_INTERRUPTED", "interrupted_line", "stdout", "stderr", "PARAMETER_FLAGS", "as_flags",
           "error_exit", "positionals", "say"]
