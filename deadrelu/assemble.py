"""From capture to result: finalise each site's accumulator, judge it, and record coverage.

The step between *accumulate* and *result*: a capture's records (torch, on the model's
device) become a ``ScanResult`` (numpy, frozen). Everything the user should know about
how the numbers were made — sites that never ran, NaN/inf activations, skipped
samples, a partial scan — is added to the result's warnings here, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .judge.verdicts import judge_site
from .kinds import prelu_slope_summary
from .result import ScanResult, SiteResult, Summary

if TYPE_CHECKING:
    from torch import nn

    from .capturing.contract import Capture
    from .capturing.registry import SiteRecord
    from .settings import ScanSettings


def site_result(capture: Capture, record: SiteRecord, settings: ScanSettings) -> SiteResult:
    """One site's finalised statistics and verdicts.

    Args:
        capture: the capture that owns the record (it names the site).
        record: the site's record.
        settings: the thresholds to judge with.

    Returns:
        The site's result.
    """
    stats = capture.finalize(record)
    saturation = record.spec.saturation
    return SiteResult(name=capture.site_name(record), module=record.module, call_index=record.call_index,
                      function=record.function, kind=record.spec.kind, unit_dim=record.unit_dim, stats=stats,
                      verdict=judge_site(stats, saturation, settings.thresholds), saturation=saturation,
                      prelu_slopes=prelu_slope_summary(record.activation) if record.activation is not None else None,
                      producer=record.link)


def count_warnings(sites: Sequence[SiteResult], not_run: Sequence[str], data_info: Mapping[str, Any]) -> list[str]:
    """The warnings that quote counts (modules never run, skipped samples, NaN/inf sites, a partial
    scan); ``deadrelu merge`` recomputes them from merged counts the same way."""
    warnings = []
    if not_run:
        warnings.append(f"{len(not_run)} activation module(s) never ran on this data: {', '.join(not_run[:8])}")
    if data_info.get("skipped"):
        warnings.append(f"skipped {data_info['skipped']} input sample(s) holding NaN/inf (--nonfinite skip)")
    nonfinite_sites = [s.name for s in sites if s.nonfinite]
    if nonfinite_sites:
        warnings.append(f"NaN/inf activations at {len(nonfinite_sites)} site(s) ({', '.join(nonfinite_sites[:5])}); "
                        "those batch slices were left out of the statistics and counted per unit")
    if data_info.get("partial"):
        warnings.append(f"PARTIAL: the scan was interrupted after {data_info.get('samples')} samples")
    return warnings


def model_name(model: nn.Module) -> str:
    """The model's class name (a ScriptModule keeps its original one)."""
    return getattr(model, "original_name", None) or type(model).__name__


def assemble(capture: Capture, model: nn.Module, settings: ScanSettings, *,
             data_info: Mapping[str, Any], model_info: Mapping[str, Any], notes: Sequence[str] = (),
             environment: Mapping[str, Any] | None = None, suggestions: bool = True) -> ScanResult:
    """Build the ``ScanResult`` of a finished (or interrupted) capture.

    Args:
        capture: the capture, after its block.
        model: the model it watched (for metadata and the weight-based suggestion rules).
        settings: the settings the scan ran with.
        data_info: the result's ``data`` entry (``samples``, ``source``, ``skipped``, ``partial``...).
        model_info: the result's ``model`` entry; class and parameter count are filled in.
        notes: facts about loading and feeding the user should see.
        environment: the result's ``environment`` entry.
        suggestions: attach fix suggestions.

    Returns:
        The result.

    Raises:
        CaptureError: no site ran (the message names the model's source when known).
    """
    from .errors import CaptureError

    records = capture.records()
    if not records:
        error = capture.no_sites_error(model_name(model))
        source = model_info.get("source")
        raise CaptureError(f"{source}: {error.message}", hint=error.hint) if source else error
    sites = [site_result(capture, record, settings) for record in records]
    not_run = capture.not_run()
    warnings = list(capture.coverage.warnings) + list(notes)
    unsupported = capture.coverage.unsupported
    if unsupported:
        from .capturing.registry import unsupported_summary
        warnings.append(unsupported_summary(unsupported))
    unmasked = [capture.site_name(record) for record in records if record.unmasked]
    if unmasked:
        warnings.append(f"mask not applied at {len(unmasked)} site(s) that the padded sequence reaches but whose "
                        f"activation does not start with its (N, L) axes (padding counted there): "
                        f"{', '.join(unmasked[:8])}"
                        + (" ..." if len(unmasked) > 8 else ""))
    warnings += count_warnings(sites, not_run, data_info)
    info = dict(model_info)
    info.setdefault("class", model_name(model))
    info.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    info.setdefault("source", f"<{type(model).__name__} object>")
    info.setdefault("format", "object")
    coverage = {"activation_modules": len(capture.coverage.activation_modules), "not_run": not_run,
                "excluded": capture.coverage.excluded, "positional_names": capture.positional_names,
                "functional": capture.coverage.functional,
                "functional_sites": sum(1 for site in sites if site.function is not None),
                "functional_note": capture.coverage.functional_note,
                "unsupported": [{"module": module, "class": class_name, "calls": calls, "reason": why}
                                for module, class_name, calls, why in unsupported],
                "masked": capture.coverage.masked, "mask_not_applied": unmasked}
    result = ScanResult(sites=tuple(sites), summary=Summary.of(sites), settings=settings, model=info,
                        data=dict(data_info), coverage=coverage, warnings=tuple(warnings),
                        environment=dict(environment or {}))
    if not suggestions:
        return result
    from .judge.suggestions import suggest
    return result.with_suggestions(suggest(result, model))


__all__ = ["assemble", "count_warnings", "site_result", "model_name"]
