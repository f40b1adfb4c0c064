"""The CI gate: thresholds on dead-unit ratios. Above the limit fails; equal passes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..verdicts import GateOutcome, GateViolation  # data a result stores: defined below it

if TYPE_CHECKING:
    from ..result import ScanResult


def _check_limit(name: str, value: float | None) -> None:
    if value is not None:
        from ..settings import check_setting
        check_setting(name, value)  # a finite number in [0, 1]


@dataclass(frozen=True)
class GateLimits:
    """The CI gate's limits; None means "no limit".

    Attributes:
        max_dead_ratio: limit on dead units over all units of all sites.
        max_layer_dead_ratio: limit on any single site's dead ratio.
    """

    max_dead_ratio: float | None = None
    max_layer_dead_ratio: float | None = None

    def __post_init__(self) -> None:
        _check_limit("max_dead_ratio", self.max_dead_ratio)
        _check_limit("max_layer_dead_ratio", self.max_layer_dead_ratio)

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return self.max_dead_ratio is not None or self.max_layer_dead_ratio is not None

    @classmethod
    def of(cls, limits: GateLimits | Mapping[str, float | None]) -> GateLimits:
        """Limits from a ``GateLimits`` or a mapping with the same keys."""
        if isinstance(limits, GateLimits):
            return limits
        unknown = set(limits) - {"max_dead_ratio", "max_layer_dead_ratio"}
        if unknown:
            raise ConfigError(f"unknown gate limit(s) {', '.join(sorted(unknown))}",
                              hint="gate limits are max_dead_ratio and max_layer_dead_ratio")
        from ..settings import check_setting
        return cls(**{k: None if v is None else check_setting(k, v) for k, v in limits.items()})

    @classmethod
    def from_config(cls, config: str | Path | None = None, **limits: float | None) -> GateLimits:
        """Limits from a config file's ``[gate]`` section, with keyword limits winning over it."""
        values: dict[str, Any] = {}
        if config is not None:
            from ..settings import GATE_KEYS, read_config
            values = {k: v for k, v in read_config(config).items() if k in GATE_KEYS}
        values.update({k: v for k, v in limits.items() if v is not None})
        return cls.of(values)

    def check(self, result: ScanResult) -> GateOutcome:
        """Judge a result against these limits."""
        return check_gate(result, self.max_dead_ratio, self.max_layer_dead_ratio)


def check_gate(result: ScanResult, max_dead_ratio: float | None = None,
               max_layer_dead_ratio: float | None = None) -> GateOutcome:
    """Judge a scan against dead-ratio limits.

    Args:
        result: a finished scan.
        max_dead_ratio: limit on dead units over all units of all sites.
        max_layer_dead_ratio: limit on any single site's dead ratio.

    Returns:
        The outcome; ``passed`` is True when no ratio is above its limit (equal passes).
    """
    _check_limit("max_dead_ratio", max_dead_ratio)
    _check_limit("max_layer_dead_ratio", max_layer_dead_ratio)
    violations: list[GateViolation] = []
    if max_dead_ratio is not None and result.summary.dead_ratio > max_dead_ratio:
        violations.append(GateViolation("model", result.summary.dead_ratio, max_dead_ratio))
    if max_layer_dead_ratio is not None:
        for site in result.sites:
            if site.dead_ratio > max_layer_dead_ratio:
                violations.append(GateViolation(site.name, site.dead_ratio, max_layer_dead_ratio))
    return GateOutcome(max_dead_ratio, max_layer_dead_ratio, not violations, tuple(violations))
