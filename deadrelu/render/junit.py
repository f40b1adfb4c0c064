"""JUnit XML for CI test reporters (GitLab, Jenkins, GitHub): one testcase per site.

A site fails when the gate broke a limit at that site (a scan's ``max_layer_dead_ratio``,
a diff's ``max_dead_ratio_increase``); the failure message carries the numbers, and a scan's
failure text and output lead with the action line of the fix that names a cause there. Limits on
the whole model (``max_dead_ratio``, ``max_new_dead``) are one testcase in a second suite,
so the site suite has exactly one testcase per site. Built with ``xml.etree`` so every
name is escaped; characters XML 1.0 cannot hold are replaced.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from ..numbers import index_ranges, percents_apart
from .text import visible

if TYPE_CHECKING:
    from ..compare import DiffResult
    from ..result import ScanResult

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: object) -> str:
    """A string XML 1.0 can hold, with invisible characters shown escaped (``render.text.visible``)."""
    return _NOT_XML.sub("?", visible(value))


def _suite(name: str) -> ET.Element:
    return ET.Element("testsuite", {"name": name, "tests": "0", "failures": "0", "errors": "0", "skipped": "0"})


def _case(suite: ET.Element, classname: str, name: str, failures: list[str], output: str, fix: str = "") -> None:
    case = ET.SubElement(suite, "testcase", {"classname": _text(classname), "name": _text(name), "time": "0"})
    for message in failures:
        failure = ET.SubElement(case, "failure", {"message": _text(message), "type": "deadrelu.gate"})
        failure.text = "\n".join(_text(line) for line in (message, fix) if line)
    ET.SubElement(case, "system-out").text = "\n".join(_text(line) for line in (fix, output) if line)
    suite.set("tests", str(int(suite.get("tests", "0")) + 1))
    if failures:
        suite.set("failures", str(int(suite.get("failures", "0")) + 1))


def _document(suites: list[ET.Element]) -> bytes:
    root = ET.Element("testsuites", {"name": "deadrelu"})
    for key in ("tests", "failures"):
        root.set(key, str(sum(int(suite.get(key, "0")) for suite in suites)))
    root.extend(suites)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def scan_junit(result: ScanResult) -> bytes:
    """JUnit XML of a scan, judged by its gate (``result.gate``; no gate: every site passes).

    Args:
        result: a finished scan, with or without a gate outcome.

    Returns:
        The XML document as UTF-8 bytes.
    """
    classname = f"deadrelu.{result.model.get('class') or 'model'}"
    gate = result.gate
    sites = _suite("deadrelu.sites")
    for site in result.sites:
        failures = [f"site {site.name}: dead ratio {percents_apart(site.dead_ratio, violation.limit)[0]} "
                    f"({site.dead} of {site.units} units) > limit {percents_apart(site.dead_ratio, violation.limit)[1]}"
                    for violation in (gate.violations if gate else ()) if violation.scope == site.name]
        _case(sites, classname, site.name, failures,
              f"{site.dead} of {site.units} units dead ({site.dead_ratio:.1%}), {site.saturated} saturated, "
              f"{site.dormant} dormant; kind {site.kind}", _fix_for(result, site.name))
    suites = [sites]
    if gate is not None and gate.max_dead_ratio is not None:
        model = _suite("deadrelu.model")
        s = result.summary
        failures = [f"all sites: dead ratio {percents_apart(s.dead_ratio, v.limit)[0]} ({s.dead} of {s.units} units) "
                    f"> limit {percents_apart(s.dead_ratio, v.limit)[1]}"
                    for v in gate.violations if v.scope == "model"]
        _case(model, classname, "dead ratio over all sites", failures,
              f"{s.dead} of {s.units} units dead ({s.dead_ratio:.1%}) over {s.sites} sites; "
              f"limit {gate.max_dead_ratio:.1%}")
        suites.append(model)
    return _document(suites)


def _fix_for(result: ScanResult, site: str) -> str:
    """``fix #1: net.0: reset 19 negative biases to 0 → explains 19 of 53 dead at net.1``: the first-ranked
    suggestion naming a cause at ``site``, as the terminal's action line ('' when none does)."""
    for suggestion in result.suggestions:
        if site in suggestion.get("sites", ()) and suggestion.get("units_explained"):
            line = suggestion.get("action_line") or suggestion.get("title", "")
            return f"fix #{int(suggestion.get('rank') or 1)}: {line}"
    return ""


def diff_junit(diff: DiffResult) -> bytes:
    """JUnit XML of a diff, judged by its gate (``diff.gate``; no gate: every site passes).

    Args:
        diff: a comparison, with or without a gate outcome.

    Returns:
        The XML document as UTF-8 bytes.
    """
    classname = f"deadrelu.diff.{diff.new.get('model', {}).get('class') or 'model'}"
    gate = diff.gate
    sites = _suite("deadrelu.diff.sites")
    for site in diff.sites:
        failures = [f"site {site.name}: dead ratio rose {site.dead_ratio_base:.1%} -> {site.dead_ratio_new:.1%} "
                    f"(+{site.dead_ratio_increase * 100:.1f} points) > limit +{v.limit * 100:.1f} points; "
                    f"newly dead units: {_units(site.newly_dead)}"
                    for v in (gate.site_violations(site.name) if gate else ())]
        _case(sites, classname, site.name, failures,
              f"dead {site.dead_base} -> {site.dead_new} of {site.units_new} units; newly dead: "
              f"{_units(site.newly_dead)}; revived: {_units(site.revived)}")
    suites = [sites]
    if gate is not None and gate.max_new_dead is not None:
        model = _suite("deadrelu.diff.model")
        failures = [f"{diff.newly_dead} units newly dead over {len(diff.sites)} sites > limit {v.limit:g}"
                    for v in gate.violations if v.scope == "model" and v.measure == "new_dead"]
        _case(model, classname, "units newly dead over all sites", failures,
              f"{diff.newly_dead} newly dead, {diff.revived} revived; limit {gate.max_new_dead}")
        suites.append(model)
    return _document(suites)


def _units(units: tuple[int, ...], limit: int = 32) -> str:
    return index_ranges(units, limit)

