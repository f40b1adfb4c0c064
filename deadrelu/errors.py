"""One error family. The CLI catches only these, prints one line plus a hint, and exits 2."""

from __future__ import annotations


class DeadReluError(Exception):
    """Base of every error deadrelu raises on purpose.

    Args:
        message: one line saying what went wrong, naming the file or object.
        hint: one line saying what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text (its type name when it has none), cut to ``limit``."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class ModelLoadError(DeadReluError):
    """The model file or architecture could not be turned into an ``nn.Module``."""


class UnsafePickleError(ModelLoadError):
    """The model file needs the full unpickler and the user did not allow it."""


class DataLoadError(DeadReluError):
    """The data could not be read, or is not something a model can be fed."""


class ConfigError(DeadReluError):
    """A setting, a config file or a combination of options is invalid."""


class ForwardError(DeadReluError):
    """The model's forward pass failed on the data; the message says where."""


class CaptureError(DeadReluError):
    """Activation capture found nothing to scan, or a site changed shape mid-scan."""


class OutputError(DeadReluError):
    """A report could not be written."""


class ResultFormatError(DataLoadError):
    """A saved JSON report is not a valid deadrelu result (schema_version 1); the message names the file
    and the JSON path of the first bad field."""


class UnsupportedTorchError(DeadReluError):
    """The installed torch is older than the oldest one deadrelu is tested with."""
