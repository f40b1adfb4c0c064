"""Scan settings: one frozen dataclass, its defaults, and the TOML config that can set them."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError


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
        for name in ("dead_threshold", "saturation", "saturation_rtol"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}",
                                  hint="it is a share of observations")
        if self.tau < 0:
            raise ConfigError(f"tau must be >= 0, got {self.tau}")


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
        functional: also capture functional activations (``F.relu`` in ``forward``).
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
    functional: bool = True
    nonfinite: NonFinitePolicy = NonFinitePolicy.FAIL
    compile: CompileMode = CompileMode.AUTO

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")

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
        if key in _THRESHOLD_KEYS:
            try:
                threshold_values[key] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        elif key in _SCAN_KEYS:
            if key in _ENUMS:
                try:
                    value = _ENUMS[key](value)
                except ValueError:
                    choices = ", ".join(m.value for m in _ENUMS[key])  # type: ignore[attr-defined]
                    raise ConfigError(f"{key} must be one of {choices}, got {value!r}") from None
            elif key in ("layers", "exclude"):
                value = (value,) if isinstance(value, str) else tuple(value)
            scan_values[key] = value
        else:
            known = ", ".join(sorted(_THRESHOLD_KEYS | _SCAN_KEYS))
            raise ConfigError(f"unknown setting {key!r}", hint=f"known settings: {known}")
    return ScanSettings(thresholds=Thresholds(**threshold_values), **scan_values)


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML config into flat setting values (sections ``[scan]``, ``[thresholds]``, ``[gate]``).

    Args:
        path: the TOML file.

    Returns:
        A flat dict: scan and threshold settings by name, gate limits as
        ``max_dead_ratio`` / ``max_layer_dead_ratio``.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    flat: dict[str, Any] = {}
    for section, allowed in (("scan", _SCAN_KEYS), ("thresholds", _THRESHOLD_KEYS), ("gate", set(GATE_KEYS))):
        table = document.pop(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in table.items():
            if key not in allowed:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]",
                                  hint=f"allowed there: {', '.join(sorted(allowed))}")
            flat[key] = value
    if document:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(document))}",
                          hint="sections are [scan], [thresholds] and [gate]")
    return flat
