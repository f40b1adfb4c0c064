"""The scan's facts as frozen data: per-site statistics, verdicts, summary, coverage.

A ``ScanResult`` round-trips through ``to_dict()`` / ``from_dict()`` (the JSON
report, schema_version 1): per-unit statistics are stored and verdicts are re-judged
from them with the stored thresholds, so a saved report re-renders identically.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import DeadReluError
from .kinds import NEGATIVE_SIDE_KINDS
from .links import InputLink  # defined in the leaf module that capture and judge import too
from .schema import SCHEMA_VERSION
from .settings import ScanSettings, Thresholds, build_settings
from .unitstats import SiteStats
from .verdicts import GateOutcome, SiteVerdict, judge_site

if TYPE_CHECKING:
    import pandas as pd

#: settings a saved report may restore (the device is where that scan ran, not a setting of the report)
_SETTING_KEYS = ({f.name for f in dataclasses.fields(ScanSettings)}
                 | {f.name for f in dataclasses.fields(Thresholds)}) - {"thresholds", "device"}

@dataclass(frozen=True, eq=False)
class SiteResult:
    """One activation site's statistics and verdicts.

    Attributes:
        name: display name (``module``, ``module#k`` when reused, ``<module>:relu#k`` for functions).
        module: qualified name from ``named_modules()`` ("" for the root).
        call_index: which call of the module (or function) within one forward pass, from 0.
        function: the functional activation called (``relu``), None for module sites.
        kind: activation kind (``ReLU``, ``ELU``...).
        unit_dim: the unit axis of the output (None: the output is one unit).
        stats: per-unit statistics.
        verdict: per-unit verdicts.
        saturation: ``"floor"``, ``"bounds"`` or None (how this kind saturates).
        prelu_slopes: min/mean/max of PReLU's learned slopes, else None.
        producer: the layer that produced the site's input (None: not tracked, e.g. an
            exported program or a site first seen after the first batch).
    """

    name: str
    module: str
    call_index: int
    function: str | None
    kind: str
    unit_dim: int | None
    stats: SiteStats
    verdict: SiteVerdict
    saturation: str | None = None
    prelu_slopes: dict[str, float] | None = None
    producer: InputLink | None = None

    @property
    def units(self) -> int:
        return self.stats.units

    @property
    def observations(self) -> int:
        """Observations per unit (the most any unit had; fewer only where NaNs were left out)."""
        return int(self.stats.observations.max()) if self.units else 0

    @property
    def keeps_gradient(self) -> bool:
        """Whether the kind keeps a gradient for negative inputs (LeakyReLU, PReLU, ELU, ...): its units
        that never activate are *never active*, not dead."""
        return self.kind in NEGATIVE_SIDE_KINDS

    @property
    def dead_mask(self) -> np.ndarray:
        """Dead units in ReLU's sense: never active and no gradient (none for kinds that keep one)."""
        return np.zeros(self.units, dtype=bool) if self.keeps_gradient else self.verdict.dead

    @property
    def never_active_mask(self) -> np.ndarray:
        """Units of a kind that keeps a gradient that never activate and are not saturated at its floor."""
        if not self.keeps_gradient:
            return np.zeros(self.units, dtype=bool)
        return self.verdict.dead & ~self.verdict.saturated

    @property
    def dead(self) -> int:
        """Dead units (ReLU's sense; the count every table, gate and log uses)."""
        return int(self.dead_mask.sum())

    @property
    def never_fired(self) -> int:
        """Units that never activated on the data, whatever the kind: dead, never active (leaky) and
        floor-saturated units alike (what a cause can explain; ``verdict.dead``)."""
        return int(self.verdict.dead.sum())

    @property
    def never_fired_ratio(self) -> float:
        """``never_fired`` over the site's units."""
        return self.never_fired / self.units if self.units else 0.0

    @property
    def dead_units(self) -> list[int]:
        """Indices of the dead units (``dead_mask``)."""
        return np.flatnonzero(self.dead_mask).tolist()

    @property
    def never_active_units(self) -> list[int]:
        """Indices of the never-active units (``never_active_mask``)."""
        return np.flatnonzero(self.never_active_mask).tolist()

    @property
    def never_active(self) -> int:
        """Never-active units of a kind that keeps a gradient (counted apart from dead)."""
        return int(self.never_active_mask.sum())

    @property
    def saturated(self) -> int:
        return int(self.verdict.saturated.sum())

    @property
    def dormant(self) -> int:
        return int(self.verdict.dormant.sum())

    @property
    def dead_ratio(self) -> float:
        return self.dead / self.units if self.units else 0.0

    @property
    def saturated_ratio(self) -> float:
        return self.saturated / self.units if self.units else 0.0

    @property
    def dormant_ratio(self) -> float:
        return self.dormant / self.units if self.units else 0.0

    @property
    def active_rate_mean(self) -> float:
        """Mean over units of each unit's active rate (1 - activation sparsity)."""
        rates = self.stats.active_rate
        finite = rates[np.isfinite(rates)]
        return float(finite.mean()) if finite.size else float("nan")

    @property
    def unobserved(self) -> int:
        """Units with no finite observation (every batch slice held NaN/inf): never dead, saturated or
        dormant, never alive either; they count in ``units`` (the ratios' denominator)."""
        return int((self.stats.observations == 0).sum())

    @property
    def nonfinite(self) -> int:
        return int(self.stats.nonfinite.sum())

    def to_dict(self, unit_stats: bool = True) -> dict[str, Any]:
        """The site as JSON-ready data (schema_version 1)."""
        data: dict[str, Any] = {
            "name": self.name, "module": self.module, "call_index": self.call_index,
            "function": self.function, "kind": self.kind, "units": self.units, "unit_dim": self.unit_dim,
            "observations": self.observations, "dead": self.dead, "dead_ratio": self.dead_ratio,
            "never_active": self.never_active,
            "saturated": self.saturated, "dormant": self.dormant,
            "unobserved": self.unobserved,
            "active_rate_mean": _finite_or_none(self.active_rate_mean), "nonfinite": self.nonfinite,
            "saturation": self.saturation, "prelu_slopes": self.prelu_slopes,
            "dead_units": self.dead_units, "never_active_units": self.never_active_units,
            "saturated_units": self.verdict.saturated_units, "dormant_units": self.verdict.dormant_units,
            "producer": None if self.producer is None else self.producer.to_dict(),
        }
        if unit_stats:
            data["unit_stats"] = self.stats.to_lists()
        return data


@dataclass(frozen=True)
class Summary:
    """Totals over every scanned site.

    Ratios are over all ``units``; ``unobserved`` units (no finite observation) are in that
    denominator but are never dead, saturated or dormant.
    """

    sites: int
    units: int
    dead: int
    dead_ratio: float
    saturated: int
    saturated_ratio: float
    dormant: int
    dormant_ratio: float
    active_rate_mean: float | None
    nonfinite_activations: int
    unobserved: int = 0
    never_active: int = 0

    @classmethod
    def of(cls, sites: Sequence[SiteResult]) -> Summary:
        units = sum(site.units for site in sites)
        dead = sum(site.dead for site in sites)
        saturated = sum(site.saturated for site in sites)
        dormant = sum(site.dormant for site in sites)
        rates = np.concatenate([site.stats.active_rate for site in sites]) if sites else np.array([])
        rates = rates[np.isfinite(rates)]

        def share(count: int) -> float:
            return count / units if units else 0.0
        return cls(sites=len(sites), units=units, dead=dead, dead_ratio=share(dead), saturated=saturated,
                   saturated_ratio=share(saturated), dormant=dormant, dormant_ratio=share(dormant),
                   active_rate_mean=float(rates.mean()) if rates.size else None,
                   nonfinite_activations=sum(site.nonfinite for site in sites),
                   unobserved=sum(site.unobserved for site in sites),
                   never_active=sum(site.never_active for site in sites))


@dataclass(frozen=True, eq=False)
class ScanResult:
    """Everything a scan found. Data, not a report: render it with ``deadrelu.render``.

    Attributes:
        sites: per-site results in network order.
        summary: totals.
        settings: the settings the scan ran (and was judged) with.
        model: model metadata (source, format, parameters, class, sha256).
        data: data metadata (source, samples, nonfinite, skipped...).
        coverage: what was found but not scanned (``not_run``, ``excluded``, ``positional_names``).
        warnings: everything the user should know about how the numbers were made.
        gate: the CI gate's outcome, if a gate was asked for.
        suggestions: fix suggestions with evidence (list of dicts).
        environment: tool/torch versions, device, date.
    """

    sites: tuple[SiteResult, ...]
    summary: Summary
    settings: ScanSettings
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    coverage: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    gate: GateOutcome | None = None
    suggestions: tuple[dict[str, Any], ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)

    # -- access ---------------------------------------------------------------------------
    def site(self, key: str | int) -> SiteResult:
        """A site by name, by module name (if called once) or by position."""
        if isinstance(key, int):
            return self.sites[key]
        for site in self.sites:
            if site.name == key:
                return site
        matches = [site for site in self.sites if site.module == key]
        if len(matches) == 1:
            return matches[0]
        names = ", ".join(site.name for site in self.sites[:10])
        raise KeyError(f"no site named {key!r}; sites: {names}{', ...' if len(self.sites) > 10 else ''}")

    def with_gate(self, gate: GateOutcome | None) -> ScanResult:
        """A copy carrying a gate outcome."""
        return dataclasses.replace(self, gate=gate)

    def with_suggestions(self, suggestions: Sequence[dict[str, Any]]) -> ScanResult:
        """A copy carrying fix suggestions."""
        return dataclasses.replace(self, suggestions=tuple(suggestions))

    def rejudged(self, model: Any = None, **thresholds: float) -> ScanResult:
        """The same statistics judged with other thresholds (no rescan needed).

        Verdicts, the summary and the suggestions are recomputed (suggestions quote
        dead counts, so they depend on the thresholds); the gate outcome is dropped.

        Args:
            model: the scanned model, so the weight-based suggestion rules run again too;
                without it only the rules that need nothing but the result run.
            **thresholds: ``dead_threshold``, ``tau``, ``saturation``, ``saturation_rtol``.
        """
        from .judge.rejudge import rejudge  # the judge sits above the result: imported on use
        return rejudge(self, model, **thresholds)

    # -- frames ---------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per site, in network order."""
        import pandas as pd
        rows = [{
            "name": s.name, "module": s.module, "call_index": s.call_index, "function": s.function,
            "kind": s.kind, "units": s.units, "unit_dim": s.unit_dim, "observations": s.observations,
            "dead": s.dead, "dead_ratio": s.dead_ratio, "never_active": s.never_active, "saturated": s.saturated,
            "saturated_ratio": s.saturated_ratio, "dormant": s.dormant, "dormant_ratio": s.dormant_ratio,
            "unobserved": s.unobserved, "active_rate_mean": s.active_rate_mean, "nonfinite": s.nonfinite,
        } for s in self.sites]
        return pd.DataFrame(rows, columns=None if rows else ["name"])

    def units_frame(self, site: str | int) -> pd.DataFrame:
        """One row per unit of a site, with its statistics and verdicts."""
        import pandas as pd
        chosen = self.site(site)
        stats, verdict = chosen.stats, chosen.verdict
        return pd.DataFrame({
            "unit": np.arange(stats.units), "observations": stats.observations, "active": stats.active,
            "active_rate": stats.active_rate, "mean": stats.mean, "std": stats.std,
            "mean_abs": stats.mean_abs, "min": stats.minimum, "max": stats.maximum,
            "floor_rate": stats.floor_rate, "bound_rate": stats.bound_rate,
            "dormancy_score": verdict.dormancy_score, "nonfinite": stats.nonfinite,
            "dead": chosen.dead_mask, "never_active": chosen.never_active_mask, "saturated": verdict.saturated,
            "dormant": verdict.dormant,
        })

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self, unit_stats: bool = True) -> dict[str, Any]:
        """The JSON report (schema_version 1) as plain data.

        Args:
            unit_stats: include per-unit statistics (needed by ``from_dict`` and
                ``deadrelu report``; large for big models).
        """
        thresholds = self.settings.thresholds
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "deadrelu", "version": self.environment.get("deadrelu", _version())},
            "model": self.model,
            "data": self.data,
            "settings": {
                "dead_threshold": thresholds.dead_threshold, "tau": thresholds.tau,
                "saturation": thresholds.saturation, "saturation_rtol": thresholds.saturation_rtol,
                "granularity": self.settings.granularity.value, "batch_size": self.settings.batch_size,
                "limit": self.settings.limit, "layers": list(self.settings.layers),
                "exclude": list(self.settings.exclude), "functional": bool(self.settings.functional),
                "functional_mode": self.settings.functional.value,
                "nonfinite": self.settings.nonfinite.value, "compile": self.settings.compile.value,
            },
            "summary": {**dataclasses.asdict(self.summary), "verdict": self._verdict()},
            "sites": [site.to_dict(unit_stats) for site in self.sites],
            "coverage": self.coverage,
            "warnings": list(self.warnings),
            "gate": None if self.gate is None else self.gate.to_dict(),
            "suggestions": list(self.suggestions),
            "environment": self.environment,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "result") -> ScanResult:
        """Rebuild a result from ``to_dict()`` output (needs per-unit statistics).

        The data is validated first (``deadrelu.schema``: the published JSON Schema plus
        finite numbers, bounded nesting and per-unit array lengths).

        Args:
            data: ``to_dict()`` output or a parsed JSON report.
            source: what to call the data in error messages (a file name).

        Returns:
            The result, its verdicts re-judged from the stored statistics and thresholds.

        Raises:
            ResultFormatError: the data is not a valid schema_version 1 report; the message
                names ``source`` and the JSON path of the first bad field.
        """
        from .schema import check_tree
        check_tree(data, source)  # iterative: bounds the depth before the recursive clean-up below
        return cls._from_valid_dict(_json_clean(data), source)

    @classmethod
    def _from_valid_dict(cls, data: dict[str, Any], source: str) -> ScanResult:
        from .errors import ResultFormatError
        from .schema import HINT, validate_result
        validate_result(data, source)
        # Keys are only ever added within schema_version 1: settings this version does not know are left out.
        raw = {k: v for k, v in data["settings"].items() if k in _SETTING_KEYS}
        if "functional_mode" in data["settings"] and raw.get("functional") is not False:
            # ``functional`` is its boolean, kept for older readers; false always means off.
            raw["functional"] = data["settings"]["functional_mode"]
        try:
            settings = build_settings(**{k: v for k, v in raw.items() if k not in ("batch_size",)},
                                      batch_size=raw.get("batch_size") or 1)
        except DeadReluError as exc:
            raise ResultFormatError(f"{source}: settings: {exc.message}", hint=HINT) from None
        sites = []
        for index, site in enumerate(data["sites"]):
            if "unit_stats" not in site:
                raise ResultFormatError(f"{source}: site {site.get('name')!r} (sites[{index}]) has no unit_stats",
                                        hint="write the JSON with unit statistics: deadrelu scan MODEL DATA "
                                             "--json PATH")
            stats = SiteStats.from_lists(site["unit_stats"])
            sites.append(SiteResult(
                name=site["name"], module=site["module"], call_index=site["call_index"],
                function=site.get("function"), kind=site["kind"], unit_dim=site.get("unit_dim"), stats=stats,
                verdict=judge_site(stats, site.get("saturation"), settings.thresholds),
                saturation=site.get("saturation"), prelu_slopes=site.get("prelu_slopes"),
                producer=InputLink.from_dict(site.get("producer"))))
        gate = data.get("gate")
        return cls(sites=tuple(sites), summary=Summary.of(sites), settings=settings, model=data.get("model", {}),
                   data=data.get("data", {}), coverage=data.get("coverage", {}),
                   warnings=tuple(data.get("warnings", ())),
                   gate=None if gate is None else GateOutcome.from_dict(gate),
                   suggestions=tuple(data.get("suggestions", ())), environment=data.get("environment", {}))

    def to_json(self, path: str | Path | None = None, unit_stats: bool = True) -> str:
        """The JSON report as text; written atomically to ``path`` when given."""
        text = json.dumps(_json_clean(self.to_dict(unit_stats)), indent=1, allow_nan=False)
        if path is not None:
            from .render.files import atomic_write_text
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> ScanResult:
        """Read a JSON report written by ``to_json``, validated before use (see ``from_dict``).

        Args:
            path: the JSON file.

        Returns:
            The result.

        Raises:
            ResultFormatError: the file is missing, unreadable, not JSON, nested too deep, or not
                a valid schema_version 1 report (the message names the file and the field).
        """
        from .schema import read_result_file
        return cls._from_valid_dict(read_result_file(path), str(path))

    # -- display --------------------------------------------------------------------------
    def __repr__(self) -> str:
        s = self.summary
        return (f"ScanResult(sites={s.sites}, units={s.units}, dead={s.dead} ({s.dead_ratio:.1%}), "
                f"saturated={s.saturated}, dormant={s.dormant})")

    def _verdict(self) -> str:
        """The model's OK/WARN/FAIL as JSON writes it (``summary.verdict``), judged on call."""
        from .judge.overall import overall  # the judge sits above the result: imported on use
        return overall(self).verdict

    def _repr_html_(self) -> str:
        from .render.notebook import result_html
        return result_html(self)

    def plot(self) -> Any:
        """The overview figure (dead / saturated / dormant share per site, flagged sites named).

        Returns:
            A matplotlib ``Figure`` that a notebook displays by itself (no ``%matplotlib inline``
            needed); ``savefig`` in a script.
        """
        from .render.plots import dead_ratio_by_layer
        return dead_ratio_by_layer(self)

    def report(self) -> Any:
        """The full HTML report, displayed inline in a notebook (``str()`` or ``.save(path)`` for the page).

        Returns:
            A ``deadrelu.render.notebook.InlineReport``.
        """
        from .render.notebook import inline_report
        return inline_report(self)


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _json_clean(value: Any) -> Any:
    """NaN/inf become null and numpy scalars plain numbers, so the JSON is strict."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _version() -> str:
    from . import __version__
    return __version__

