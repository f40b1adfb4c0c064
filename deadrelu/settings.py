"""Scan settings: one frozen dataclass, its defaults, and the TOML config that can set them."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError, first_line


class Granularity(str, Enum):
    """What one unit is."""

    #: a neuron of a Linear, a channel of a Conv (the usual meaning of "unit")
    CHANNEL = "channel"
    #: every (channel, position) pair, as the seed's ``count_dead_neurons`` counts conv outputs
    POSITION = "position"


class NonFinitePolicy(str, Enum):
    """What to do with input samples that hold NaN or inf."""

    FAIL = "fail"
    SKIP = "skip"
    KEEP = "keep"


class InputDtype(str, Enum):
    """How integer and boolean input arrays are fed."""

    #: keep their dtype (token ids stay int64), unless the first forward pass fails on a
    #: dtype error in a floating layer (uint8 images) or a scale is given: then cast
    AUTO = "auto"
    #: always their own dtype
    KEEP = "keep"
    #: always cast to the model's floating dtype
    FLOAT = "float"


class FunctionalCapture(str, Enum):
    """Whether functional activations (``F.relu`` in ``forward``) are captured, and for how long.

    Capturing them puts every torch call of a forward pass through Python (a
    ``TorchFunctionMode`` and global module hooks); ``auto`` pays that on the first batch
    only when that batch made no functional activation call or gated product.
    A member is true unless it is ``off`` (``if settings.functional:`` reads "captured").
    """

    #: every batch
    ALWAYS = "always"
    #: every batch when the first one made a functional call; else only the first
    AUTO = "auto"
    #: never (module activations only)
    OFF = "off"

    def __bool__(self) -> bool:
        return self is not FunctionalCapture.OFF


class CompileMode(str, Enum):
    """Whether the per-batch reduction is compiled with ``torch.compile``."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class Thresholds:
    """The numbers that turn statistics into verdicts (see ``deadrelu.judge.verdicts``).

    Attributes:
        dead_threshold: a unit is dead when its active rate is <= this (0: never active).
        tau: ReDo's dormancy threshold on the normalised mean |activation|.
        saturation: share of observations at the floor/bound that makes a unit saturated.
        saturation_rtol: how close to the floor counts as "at the floor", relative to it.
    """

    dead_threshold: float = 0.0
    tau: float = 0.1
    saturation: float = 0.99
    saturation_rtol: float = 0.01

    def __post_init__(self) -> None:
        for name in ("dead_threshold", "tau", "saturation", "saturation_rtol"):
            object.__setattr__(self, name, check_setting(name, getattr(self, name)))


@dataclass(frozen=True)
class ScanSettings:
    """Everything that shapes a scan. Thresholds are kept apart so a saved result can be re-judged.

    Attributes:
        thresholds: verdict thresholds.
        granularity: channel units or (channel, position) units.
        batch_size: samples per forward pass when the data is a tensor or array.
        limit: scan at most this many samples (None: all).
        device: "auto", "cpu", "cuda", "cuda:1", "mps", or None to keep the model where it is.
        layers: glob patterns; only sites whose name or module matches one are scanned.
        exclude: glob patterns of sites to skip.
        functional: capture functional activations (``F.relu`` in ``forward``): ``auto`` (on the
            first batch, and on every later one when it saw one), ``always`` or ``off``; True
            and False read as ``always`` and ``off``.
        nonfinite: what to do with input samples holding NaN/inf.
        compile: whether to compile the per-batch reduction.
    """

    thresholds: Thresholds = field(default_factory=Thresholds)
    granularity: Granularity = Granularity.CHANNEL
    batch_size: int = 256
    limit: int | None = None
    device: str | None = None
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    functional: FunctionalCapture = FunctionalCapture.AUTO
    nonfinite: NonFinitePolicy = NonFinitePolicy.FAIL
    compile: CompileMode = CompileMode.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", check_setting("batch_size", self.batch_size))
        object.__setattr__(self, "functional", _functional(self.functional))
        if self.limit is not None:
            object.__setattr__(self, "limit", check_setting("limit", self.limit))

    def flat(self) -> dict[str, Any]:
        """Every setting by name, thresholds included (what ``build_settings`` takes)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "thresholds"}
        values.update(dataclasses.asdict(self.thresholds))
        return values

    def replace(self, **values: Any) -> ScanSettings:
        """A copy with some settings changed by name (``None`` means "keep"), validated like ``build_settings``."""
        return build_settings(**{**self.flat(), **{k: v for k, v in values.items() if v is not None}})


_THRESHOLD_KEYS = {f.name for f in dataclasses.fields(Thresholds)}
_SCAN_KEYS = {f.name for f in dataclasses.fields(ScanSettings)} - {"thresholds"}
_ENUMS: dict[str, type[Enum]] = {"granularity": Granularity, "nonfinite": NonFinitePolicy,
                                 "compile": CompileMode}


_TOML_HINT = "see configs/default.toml for the sections and keys a config holds"

#: Keys of a config file's ``[gate]`` section (``judge.gate.GateLimits``).
GATE_KEYS = ("max_dead_ratio", "max_layer_dead_ratio")


def build_settings(config: str | Path | None = None, **values: Any) -> ScanSettings:
    """Build settings from a config file and flat keyword values, ignoring ``None`` (meaning "not given").

    Args:
        config: a TOML config (sections ``[scan]``, ``[thresholds]``, ``[gate]``); the
            keyword values win over it. Its ``[gate]`` limits are read by
            ``judge.gate.GateLimits.from_config``, not here.
        **values: any ``ScanSettings`` or ``Thresholds`` field by name.

    Returns:
        The settings, with defaults for everything not given.

    Raises:
        ConfigError: an unknown name or a value of the wrong kind.
    """
    if config is not None:
        from_file = {k: v for k, v in read_config(config).items() if k not in GATE_KEYS}
        values = {**from_file, **{k: v for k, v in values.items() if v is not None and v != ()}}
    threshold_values: dict[str, Any] = {}
    scan_values: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in _THRESHOLD_KEYS | _SCAN_KEYS:
            known = ", ".join(sorted(_THRESHOLD_KEYS | _SCAN_KEYS))
            raise ConfigError(f"unknown setting {key!r}", hint=f"known settings: {known}")
        (threshold_values if key in _THRESHOLD_KEYS else scan_values)[key] = check_setting(key, value)
    return ScanSettings(thresholds=Thresholds(**threshold_values), **scan_values)


#: settings that are shares (of observations, or of units for the gate limits): finite, in [0, 1]
_SHARES = {"dead_threshold": "a share of observations: a number from 0 to 1",
           "saturation": "a share of observations: a number from 0 to 1",
           "saturation_rtol": "a tolerance relative to the floor: a number from 0 to 1",
           "max_dead_ratio": "a share of units: a number from 0 to 1",
           "max_layer_dead_ratio": "a share of units: a number from 0 to 1"}
_COUNTS = {"batch_size": "samples per forward pass, e.g. 256",
           "limit": "the most samples to scan, e.g. 10000"}
#: Largest count a setting may hold: exact in a float64, as a saved report must be (``schema.LARGEST_INTEGER``).
LARGEST_COUNT = 2 ** 53
#: Longest text example in tokens: the largest length every tokenizer takes (a Rust ``usize`` on
#: 32-bit platforms); longer asks for nothing a line of text can hold.
MAX_TOKENS = 2 ** 31 - 1
#: Longest line of a text data file read by default (``--max-line-bytes`` raises it). Tokenizing a
#: line takes ~200 times its size in memory (a 15 MB line took 2.9 GB), so an unbounded line is
#: unbounded memory.
MAX_LINE_BYTES = 1 << 20
#: Options of the data (not ``ScanSettings`` fields) checked here too: ``(least, largest, hint)``.
_DATA_INTEGERS = {"shuffle_seed": (0, None, "the seed of the random subset: an integer >= 0, e.g. 7"),
                  "max_length": (1, MAX_TOKENS, "tokens per text example, e.g. 512"),
                  "max_line_bytes": (1, None, f"the longest line of a text file in bytes (default {MAX_LINE_BYTES:,})")}
_DEVICE = re.compile(r"auto|(?:cpu|cuda|mps)(?::[0-9]+)?")
_ENUM_HINTS = {"granularity": "channel: a unit is a neuron/channel; position: every (channel, position) pair",
               "nonfinite": "fail: stop at the first sample with NaN/inf; skip: leave such samples out; "
                            "keep: scan them",
               "compile": "auto: compile when it pays; on; off"}


def check_setting(key: str, value: Any) -> Any:
    """One setting's value checked and normalised: shares finite and in [0, 1], ``tau`` finite and
    >= 0, counts positive integers, choices members of their enum.

    Args:
        key: a ``ScanSettings``/``Thresholds`` field or a gate limit (``max_dead_ratio``...).
        value: its value (not None).

    Returns:
        The value as the settings hold it (a float, an int, an enum member, a tuple of globs).

    Raises:
        ConfigError: the message starts with ``key`` (the CLI puts the flag there, a config
            file its path and section) and the hint says what the setting holds.
    """
    if key in _SHARES or key == "tau":
        hint = _SHARES.get(key, "ReDo's dormancy threshold: a number >= 0, e.g. 0.1")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{key} must be a number, got {value!r:.60}", hint=hint)
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {number}", hint=hint)
        if key == "tau" and number < 0:
            raise ConfigError(f"tau must be >= 0, got {number}", hint=hint)
        if key != "tau" and not 0.0 <= number <= 1.0:
            raise ConfigError(f"{key} must be between 0 and 1, got {number}", hint=hint)
        return number
    if key in _COUNTS:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{key} must be a positive integer, got {value!r:.60}", hint=_COUNTS[key])
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}", hint=_COUNTS[key])
        if value > LARGEST_COUNT:
            raise ConfigError(f"{key} must be at most {LARGEST_COUNT:,}, got {_short(value)}", hint=_COUNTS[key])
        return int(value)
    if key in _DATA_INTEGERS:
        least, largest, hint = _DATA_INTEGERS[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{key} must be an integer, got {value!r:.60}", hint=hint)
        if value < least:
            raise ConfigError(f"{key} must be >= {least}, got {value}", hint=hint)
        if largest is not None and value > largest:
            raise ConfigError(f"{key} must be at most {largest:,}, got {_short(value)}", hint=hint)
        return int(value)
    if key in _ENUMS:
        try:
            return _ENUMS[key](value)
        except ValueError:
            choices = ", ".join(m.value for m in _ENUMS[key])  # type: ignore[attr-defined]
            raise ConfigError(f"{key} must be one of {choices}, got {value!r:.60}", hint=_ENUM_HINTS[key]) from None
    if key in ("layers", "exclude"):
        globs = (value,) if isinstance(value, str) else value
        if not isinstance(globs, (list, tuple)) or not all(isinstance(glob, str) for glob in globs):
            raise ConfigError(f"{key} must be a glob or a list of globs, got {value!r:.60}",
                              hint='e.g. ["layer1.*", "fc*"]')
        return tuple(globs)
    if key == "functional":
        return _functional(value)
    if key == "device" and (not isinstance(value, str) or not _DEVICE.fullmatch(value)):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r:.60}",
                          hint="where the model runs; auto: cuda, then mps, then cpu")
    return value


def _functional(value: Any) -> FunctionalCapture:
    """``functional`` as the settings hold it: True reads ``always`` (what it meant before ``auto``)."""
    if isinstance(value, bool):
        return FunctionalCapture.ALWAYS if value else FunctionalCapture.OFF
    try:
        return FunctionalCapture(value)
    except ValueError:
        raise ConfigError(f"functional must be always, auto or off (true reads always, false off), got {value!r:.60}",
                          hint="auto: capture F.relu-style calls in forward() on the first batch, and on every "
                               "batch when it made one; always; off") from None


def _short(number: int) -> str:
    """An integer as written, or its digit count when that would be a wall of digits."""
    text = str(number) if abs(number) < 10 ** 30 else f"an integer of {len(str(abs(number)))} digits"
    return text


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML config into flat setting values (sections ``[scan]``, ``[thresholds]``, ``[gate]``).

    Args:
        path: the TOML file.

    Returns:
        A flat dict: scan and threshold settings by name, gate limits as
        ``max_dead_ratio`` / ``max_layer_dead_ratio``.
    """
    document = read_toml(path)
    document.pop(INPUTS_SECTION, None)  # the model and data: ``load.spec.Inputs.from_config`` reads it
    flat: dict[str, Any] = {}
    for section, allowed in (("scan", _SCAN_KEYS), ("thresholds", _THRESHOLD_KEYS), ("gate", set(GATE_KEYS))):
        table = document.pop(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table", hint=_TOML_HINT)
        for key, value in table.items():
            if key not in allowed:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]",
                                  hint=f"allowed there: {', '.join(sorted(allowed))}")
            try:
                flat[key] = check_setting(key, value)
            except ConfigError as exc:
                raise ConfigError(f"{path}: [{section}] {exc.message}", hint=exc.hint) from None
    if document:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(document))}",
                          hint="sections are [scan], [thresholds], [gate] and [inputs]")
    return flat


#: The config file's section that describes the model and the data (``load.spec.Inputs``).
INPUTS_SECTION = "inputs"


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file as a document, every way it can fail being a ``ConfigError`` naming it.

    Args:
        path: the TOML file.

    Returns:
        Its tables by name.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", hint="check the --config path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", hint=_TOML_HINT) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                          hint="TOML files are UTF-8; save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not a deadrelu config: arrays or tables nested too deep",
                          hint=_TOML_HINT) from None
    except ValueError as exc:  # an integer longer than Python reads (4,300 digits)
        what = "it holds an integer too long to read" if "digits" in str(exc) else first_line(exc, 120)
        raise ConfigError(f"config file {path} is not a deadrelu config: {what}", hint=_TOML_HINT) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}",
                          hint="check that the file exists and is readable") from None
    return document
