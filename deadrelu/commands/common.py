"""What every ``deadrelu`` command shares: the consoles, exit codes, error lines, positional paths.

``deadrelu.cli`` and the command groups in this package (``commands/repair.py``) import
from here, so no command module has to import the CLI that registers it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console

from ..errors import ConfigError, DeadReluError

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2

stdout = Console(highlight=False, soft_wrap=False)
# Errors and hints stay one line each, however narrow the terminal (CI logs are grepped).
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

#: library parameter names -> the flags a CLI user types, for error lines
PARAMETER_FLAGS = {"batch_size": "--batch-size", "dead_threshold": "--dead-threshold", "tau": "--tau",
                   "saturation": "--saturation", "granularity": "--granularity", "nonfinite": "--nonfinite",
                   "limit": "--limit", "max_dead_ratio": "--max-dead-ratio",
                   "max_layer_dead_ratio": "--max-layer-dead-ratio", "compile": "--compile"}
_LEADING_PARAMETER = re.compile(r"^(" + "|".join(sorted(map(re.escape, PARAMETER_FLAGS), key=len, reverse=True))
                                + r")\b(?!_)")


def as_flags(message: str) -> str:
    """A library message that starts with a parameter name (``batch_size must be >= 1``), with the flag."""
    return _LEADING_PARAMETER.sub(lambda match: PARAMETER_FLAGS[match.group(1)], message, count=1)


@contextmanager
def error_exit(debug: bool) -> Iterator[None]:
    """Turn the deadrelu error family into one line on stderr and exit code 2."""
    try:
        yield
    except DeadReluError as exc:
        if debug:
            raise
        message = as_flags(exc.message) if isinstance(exc, ConfigError) else exc.message
        stderr.print(f"[bold red]error:[/] {_plain(message)}")
        if exc.hint:
            stderr.print(f"[dim]hint:[/] {_plain(exc.hint)}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]: no report written (use --partial-on-interrupt to keep partial results)")
        raise typer.Exit(130) from None


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


def spec_file(spec: str | None) -> Path | None:
    """The file of a ``path/to/file.py:Name`` reference (None for ``package.module:Name``)."""
    if not spec or ":" not in spec:
        return None
    target = spec.rpartition(":")[0]
    return Path(target) if target.endswith(".py") else None


def read_result(path: Path) -> Any:
    """A saved JSON report as a ScanResult; every failure is one DataLoadError line."""
    import json

    from ..errors import DataLoadError
    from ..result import ScanResult
    hint = "write one with: deadrelu scan MODEL DATA --json PATH"
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataLoadError(f"result file not found: {path}", hint=hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataLoadError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise DataLoadError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}", hint=hint) from None
    if not isinstance(data, dict) or "sites" not in data or "schema_version" not in data:
        raise DataLoadError(f"{path} is not a deadrelu JSON report (no schema_version/sites)", hint=hint)
    try:
        return ScanResult.from_dict(data)
    except ValueError as exc:
        raise DataLoadError(f"{path}: {exc}", hint=hint) from None
    except (KeyError, TypeError, IndexError) as exc:
        raise DataLoadError(f"{path} is not a complete deadrelu JSON report ({type(exc).__name__}: {exc})",
                            hint=hint) from None


__all__ = ["EXIT_OK", "EXIT_GATE_FAILED", "EXIT_BAD_INPUT", "stdout", "stderr", "PARAMETER_FLAGS", "as_flags",
           "error_exit", "positionals", "spec_file", "read_result"]
