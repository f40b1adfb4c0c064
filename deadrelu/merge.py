"""Combine the results of parts of one scan into the result of the whole.

The parts are ``--shard I/N`` scans (``deadrelu merge part-*.json``) or the ranks of
a torchrun scan (``deadrelu.distributed``). Per-unit statistics merge exactly
(``SiteStats.merge``: counts and sums add, minima and maxima combine); verdicts are
judged again on the merged statistics. Facts about the run are combined the way the
scan would have made them in one process: sample counts add, a module "never ran"
only if it ran on no part, warnings that carry counts are written again from the
merged counts.

This module works on results and numpy arrays only: it needs no torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .assemble import count_warnings
from .errors import DeadReluError
from .judge.verdicts import judge_site
from .links import InputLink
from .result import ScanResult, SiteResult, Summary
from .settings import ScanSettings
from .unitstats import SiteStats

#: Settings that change what is measured: parts must agree on them. Thresholds (which
#: only change verdicts), batch size, compile mode and device may differ.
MEASURING_SETTINGS = ("granularity", "limit", "layers", "exclude", "functional", "functional_mode", "nonfinite",
                      "saturation_rtol")

# Warnings that state counts of one run; they are written again from the merged counts.
_COUNT_WARNINGS = (re.compile(r"^\d+ activation module\(s\) never ran on this data"),
                   re.compile(r"^skipped \d+ input sample\(s\) holding NaN/inf"),
                   re.compile(r"^NaN/inf activations at \d+ site\(s\)"),
                   re.compile(r"^PARTIAL: "))
_SHARD_NOTE = re.compile(r"^shard \d+/\d+: ")
_INTERRUPTED = "PARTIAL: the scan was interrupted"
#: Most shards a merge takes. ``count`` comes from the parts' files: a count of 10**12 once
#: asked for a list of 10**12 missing indices (24 GB, then the OOM killer).
MAX_SHARDS = 65_536
_FORGED = "the file was edited or not written by 'deadrelu scan ... --shard I/N --json PATH'"


class MergeError(DeadReluError):
    """Parts that are not parts of one scan (different model, data, settings, shards)."""


def site_key(site: SiteResult | Mapping[str, Any]) -> tuple[str, str | None, int]:
    """A site's identity across parts: ``(module, function, call_index)``."""
    if isinstance(site, Mapping):
        return site["module"], site.get("function"), int(site["call_index"])
    return site.module, site.function, site.call_index


def merge_results(parts: Sequence[ScanResult], labels: Sequence[str] | None = None,
                  thresholds: Mapping[str, float] | None = None, allow_missing: bool = False) -> ScanResult:
    """The result of the whole scan from the results of its shards.

    Args:
        parts: the shards' results (``--shard I/N`` scans of one model, data and settings).
        labels: how to name each part in messages (its file name).
        thresholds: thresholds to judge the merged statistics with (``tau``,
            ``dead_threshold``, ``saturation``); the rest come from the first part.
        allow_missing: merge the shards that are there when some are missing (the
            result is marked partial) instead of refusing.

    Returns:
        The merged result, without gate or suggestions.

    Raises:
        MergeError: no parts; parts of different models, data or settings; overlapping
            shards; missing shards (unless ``allow_missing``); a site whose units differ.
    """
    if not parts:
        raise MergeError("nothing to merge", hint="deadrelu merge part-0.json part-1.json ...")
    names = [labels[i] if labels and i < len(labels) else f"part {i}" for i in range(len(parts))]
    facts = [part.to_dict(unit_stats=False) for part in parts]
    _check_same_scan(facts, names)
    shard = _check_shards(facts, names, allow_missing)
    # A part that is itself a merge with --allow-missing is partial because shards were missing,
    # not because its scan was interrupted: that flag is set again below from this merge's shards.
    facts = [_without_missing_partial(fact) for fact in facts]
    order: list[tuple] = []
    described: dict[tuple, dict[str, Any]] = {}
    merged: dict[tuple, SiteStats] = {}
    for name, part, fact in zip(names, parts, facts):
        previous = None
        for site, site_facts in zip(part.sites, fact["sites"]):
            key = site_key(site)
            if key not in merged:
                described[key], merged[key] = site_facts, site.stats
                order.insert(order.index(previous) + 1 if previous is not None else len(order), key)
            else:
                if site.units != merged[key].units or site.kind != described[key]["kind"]:
                    raise MergeError(f"{name}: site {site.name} has {site.units} {site.kind} units, "
                                     f"{names[0]} has {merged[key].units} {described[key]['kind']} units",
                                     hint="merge only parts of one scan of one model")
                merged[key] = merged[key].merge(site.stats)
            previous = key
    settings = parts[0].settings
    if thresholds:
        given = {k: float(v) for k, v in thresholds.items() if v is not None}
        settings = dataclasses.replace(settings, thresholds=dataclasses.replace(settings.thresholds, **given))
    world_size = sum(int(f.get("environment", {}).get("world_size") or 1) for f in facts)
    result = assemble(facts, [(described[key], merged[key]) for key in order], settings,
                      world_size=world_size, shard=shard, drop_shard_notes=True)
    threshold_sets = {tuple(sorted((k, f["settings"][k]) for k in ("dead_threshold", "tau", "saturation")))
                      for f in facts}
    if len(threshold_sets) > 1 and not thresholds:
        result = dataclasses.replace(result, warnings=result.warnings + (
            f"the parts were judged with different thresholds; the merge uses {names[0]}'s "
            "(give --tau/--dead-threshold/--saturation to choose)",))
    if shard is not None and shard.get("missing"):
        missing = ", ".join(map(str, shard["missing"][:8])) + (f" and {len(shard['missing']) - 8} more"
                                                                 if len(shard["missing"]) > 8 else "")
        result = dataclasses.replace(result, data={**result.data, "partial": True}, warnings=result.warnings + (
            f"PARTIAL: merged {len(shard['index'])} of {shard['count']} shards; missing shard(s) {missing}",))
    merged_from = sum(int(f.get("environment", {}).get("merged_from") or 1) for f in facts)
    environment = {**result.environment, "merged_from": merged_from}
    return dataclasses.replace(result, environment=environment)


def _without_missing_partial(facts: dict[str, Any]) -> dict[str, Any]:
    """A part's facts with ``data.partial`` cleared when only missing shards made it partial."""
    data = facts.get("data", {}) or {}
    shard = data.get("shard") or {}
    interrupted = any(str(w).startswith(_INTERRUPTED) for w in facts.get("warnings", []))
    if data.get("partial") and shard.get("missing") and not interrupted:
        return {**facts, "data": {**data, "partial": False}}
    return facts


def assemble(parts: Sequence[Mapping[str, Any]], sites: Sequence[tuple[Mapping[str, Any], SiteStats]],
             settings: ScanSettings, *, world_size: int, shard: dict[str, Any] | None,
             drop_shard_notes: bool = False) -> ScanResult:
    """One result from the facts of its parts and the merged statistics of its sites.

    Args:
        parts: each part's ``to_dict(unit_stats=False)``.
        sites: ``(site facts, merged statistics)`` per site, in network order.
        settings: the settings to record and judge with.
        world_size: processes that scanned, all parts together.
        shard: the merged result's ``data.shard`` (None: the whole data).
        drop_shard_notes: leave out the parts' "shard I/N: ..." notes.

    Returns:
        The combined result (no gate, no suggestions).
    """
    # A part traces producers during its first batch only: the first part that traced a site says.
    links: dict[tuple, Any] = {}
    for part in parts:
        for other in part.get("sites", []):
            if other.get("producer"):
                links.setdefault(site_key(other), other["producer"])
    results = [SiteResult(name=_name(facts, parts), module=facts["module"], call_index=int(facts["call_index"]),
                          function=facts.get("function"), kind=facts["kind"], unit_dim=facts.get("unit_dim"),
                          stats=stats, verdict=judge_site(stats, facts.get("saturation"), settings.thresholds),
                          saturation=facts.get("saturation"), prelu_slopes=facts.get("prelu_slopes"),
                          producer=InputLink.from_dict(links.get(site_key(facts))))
               for facts, stats in sites]
    first = parts[0]
    data = dict(first.get("data", {}))
    for name in ("samples", "batches", "nonfinite", "skipped"):
        data[name] = sum(int(p.get("data", {}).get(name) or 0) for p in parts)
    data["partial"] = any(bool(p.get("data", {}).get("partial")) for p in parts)
    data["shard"] = shard
    coverage = dict(first.get("coverage", {}))
    not_run = [name for name in coverage.get("not_run", [])
               if all(name in p.get("coverage", {}).get("not_run", []) for p in parts)]
    coverage["not_run"] = not_run
    coverage["excluded"] = _union(p.get("coverage", {}).get("excluded", []) for p in parts)
    coverage["positional_names"] = any(p.get("coverage", {}).get("positional_names") for p in parts)
    coverage["functional"] = any(p.get("coverage", {}).get("functional") for p in parts)
    coverage["functional_sites"] = sum(1 for site in results if site.function is not None)
    kept = [w for w in _union(p.get("warnings", []) for p in parts)
            if not any(pattern.match(w) for pattern in _COUNT_WARNINGS)
            and not (drop_shard_notes and _SHARD_NOTE.match(w))]
    warnings = kept + count_warnings(results, not_run, data)
    environment = {**first.get("environment", {}), "world_size": world_size}
    return ScanResult(sites=tuple(results), summary=Summary.of(results), settings=settings,
                      model=dict(first.get("model", {})), data=data, coverage=coverage, warnings=tuple(warnings),
                      environment=environment)


def _name(facts: Mapping[str, Any], parts: Sequence[Mapping[str, Any]]) -> str:
    """The site's name; ``module#k`` if any part saw its module called several times."""
    name = str(facts["name"])
    if facts.get("function") is None and "#" not in name:
        for part in parts:
            for other in part.get("sites", []):
                if site_key(other) == site_key(facts) and "#" in str(other["name"]):
                    return str(other["name"])
    return name


def _union(lists: Any) -> list[Any]:
    seen: list[Any] = []
    for items in lists:
        for item in items:
            if item not in seen:
                seen.append(item)
    return seen


def _identity(facts: Mapping[str, Any], what: str) -> tuple[str, Any]:
    info = facts.get(what, {}) or {}
    if info.get("sha256"):
        return "sha256", info["sha256"]
    if what == "model":
        return "source/class/parameters", (info.get("source"), info.get("class"), info.get("parameters"))
    return "source", info.get("source")


def _check_same_scan(facts: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    hint = "merge only the parts of one scan: the same model file, data file and settings"
    for what in ("model", "data"):
        how, reference = _identity(facts[0], what)
        for name, part in zip(names[1:], facts[1:]):
            other_how, value = _identity(part, what)
            if (other_how, value) != (how, reference):
                shown = (lambda v: v[:16] if isinstance(v, str) else v)
                raise MergeError(f"{name} and {names[0]} scanned different {what}s ({other_how} {shown(value)} "
                                 f"vs {how} {shown(reference)})", hint=hint)
    for name, part in zip(names[1:], facts[1:]):
        differ = [key for key in MEASURING_SETTINGS if part["settings"].get(key) != facts[0]["settings"].get(key)]
        if "functional" in differ and "functional_mode" in differ:
            differ.remove("functional_mode")  # the mode follows from the boolean there: said once
        if differ:
            shown = "; ".join(f"{key} {part['settings'].get(key)!r} vs {facts[0]['settings'].get(key)!r}"
                              for key in differ)
            raise MergeError(f"{name} and {names[0]} were scanned with different settings ({shown})", hint=hint)


def _shard_indices(shard: Mapping[str, Any]) -> list[int]:
    """The shard indices a part covers: its ``index``, or the list a merge with missing shards wrote."""
    index = shard.get("index")
    return [int(i) for i in index] if isinstance(index, list) else [int(index)]


def _check_shards(facts: Sequence[Mapping[str, Any]], names: Sequence[str],
                  allow_missing: bool) -> dict[str, Any] | None:
    """The merged ``data.shard`` (None when every shard is there); raises on overlap, gaps, or a
    shard count the parts cannot back (more than ``MAX_SHARDS``, or more shards than samples)."""
    shards = [(name, (f.get("data", {}) or {}).get("shard")) for name, f in zip(names, facts)]
    whole = [name for name, shard in shards if shard is None]
    if whole and len(facts) > 1:
        raise MergeError(f"{whole[0]} is a scan of the whole data, not a shard: it overlaps every other part",
                         hint="merge the outputs of deadrelu scan ... --shard I/N")
    if whole:
        return None
    counts = {int(shard["count"]) for _, shard in shards}
    if len(counts) > 1:
        raise MergeError(f"the parts split the data into different numbers of shards ({sorted(counts)})",
                         hint="merge shards of one split: every part scanned with --shard I/N, the same N")
    count = counts.pop()
    for name, shard in shards[1:]:
        if shard.get("of") != shards[0][1].get("of"):
            raise MergeError(f"{name} and {shards[0][0]} are shards of data of different sizes ({shard.get('of')} "
                             f"vs {shards[0][1].get('of')} samples)", hint="merge only the parts of one scan")
    of = shards[0][1].get("of")
    if count > MAX_SHARDS:
        raise MergeError(f"{shards[0][0]}: split into {count:,} shards, more than the {MAX_SHARDS:,} a merge takes",
                         hint=_FORGED)
    if of is not None and count > int(of):
        # Shards are whole batches and an empty shard is never scanned: at most one shard per sample.
        raise MergeError(f"{shards[0][0]}: split into {count:,} shards of data of {int(of):,} samples; a shard "
                         "holds at least one sample", hint=_FORGED)
    seen: dict[int, str] = {}
    for name, shard in shards:
        for index in _shard_indices(shard):
            if not 0 <= index < count:
                raise MergeError(f"{name}: shard {index}/{count} does not exist", hint=_FORGED)
            if index in seen:
                raise MergeError(f"{name} and {seen[index]} are both shard {index}/{count}: overlapping shards",
                                 hint="give each shard once")
            seen[index] = name
    samples = sum(int((f.get("data", {}) or {}).get("samples") or 0) for f in facts)
    if of is not None and samples > int(of):
        raise MergeError(f"the parts hold {samples:,} samples, more than the {int(of):,} of the data they are "
                         "shards of", hint=_FORGED)
    missing = [index for index in range(count) if index not in seen]
    if not missing:
        return None
    if not allow_missing:
        shown = ", ".join(f"{i}/{count}" for i in missing[:8]) + (f" and {len(missing) - 8} more"
                                                                  if len(missing) > 8 else "")
        raise MergeError(f"missing shard(s) {shown}: {len(seen)} of {count} given",
                         hint="scan them with --shard I/N, or pass --allow-missing to merge the rest (marked partial)")
    return {"index": sorted(seen), "count": count, "of": of, "missing": missing}
