"""Keep torch's own notices off the user's terminal while a file loads.

torch warns (``UserWarning``, ``FutureWarning``) and logs tracebacks through its own
stderr handlers while it reads files, then raises a vaguer error. A failed load must
reach the user as our one error line, so while loading, warnings raised inside torch
(or attributed to our loaders) are ignored and every ``torch.*`` logger hands its
records to a recorder that keeps the first logged exception as the likely cause.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from ..errors import first_line

# Warnings attributed to torch's modules, or to ours (torch warns with stacklevel=2).
_QUIET_MODULES = r"(torch|deadrelu\.load)(\..*)?$"


class FirstLoggedError(logging.Handler):
    """Remembers the first exception torch logs (it logs the real cause, then raises a vaguer one)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.cause: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.cause is None and record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            self.cause = f"{type(error).__name__}: {first_line(error)}"


def _torch_loggers() -> list[logging.Logger]:
    """``torch`` and every existing ``torch.*`` logger with its own handlers (torch gives many
    of them a stderr handler and ``propagate=False``)."""
    found = [logging.getLogger("torch")]
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("torch.") and isinstance(logger, logging.Logger) and logger.handlers:
            found.append(logger)
    return found


@contextlib.contextmanager
def quiet_torch() -> Iterator[FirstLoggedError]:
    """Silence torch's warnings and log records for the duration of a load.

    Returns:
        (as the context value) a recorder whose ``cause`` is the first exception torch
        logged, or None.
    """
    recorder = FirstLoggedError()
    loggers = _torch_loggers()
    saved = [(logger.level, logger.propagate, list(logger.handlers)) for logger in loggers]
    try:
        for logger in loggers:
            logger.handlers = [recorder]
            logger.propagate = False
            if logger.level == logging.NOTSET or logger.level < logging.WARNING:
                logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=_QUIET_MODULES)
            yield recorder
    finally:
        for logger, (level, propagate, handlers) in zip(loggers, saved):
            logger.setLevel(level)
            logger.propagate = propagate
            logger.handlers = handlers
