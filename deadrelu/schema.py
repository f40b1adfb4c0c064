"""The JSON report's published contract, and reading a report without trusting it.

``deadrelu/schemas/result-v1.schema.json`` describes schema_version 1 for anyone who
reads our output (a CI job can validate with the same file). A report that
``deadrelu report`` or ``ScanResult.from_json`` loads is checked in this order, so no
hostile file reaches the renderers, and every failure is a ``ResultFormatError``
naming the file and the JSON path of the first bad field:

1. nesting depth, counted on the text before ``json.loads`` (whose recursion a
   100,000-deep document would blow);
2. every number finite (``NaN``, ``Infinity``, ``1e400``) and every integer exact
   in a float64 (a 5,000-digit integer is refused by the parser, a 400-digit one here);
3. the JSON Schema (types, non-negative counts, ratios in [0, 1], enums);
4. what JSON Schema cannot say: every ``unit_stats`` array has ``units`` entries, unit
   indices are below ``units``, per-unit counts are at most that unit's observations, and
   no two sites share a name.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResultFormatError
from .jsontext import json_depth

#: The result format's version; ``result.ScanResult.to_dict`` writes it.
SCHEMA_VERSION = 1
#: The JSON Schema of the result format (schema_version 1), shipped inside the package.
SCHEMA_FILE = Path(__file__).parent / "schemas" / "result-v1.schema.json"
#: Deepest nesting of arrays/objects a report may have (deadrelu writes at most ~8).
MAX_DEPTH = 64
#: Largest integer a float64 holds exactly; counts above it are not ours.
LARGEST_INTEGER = 2 ** 53

HINT = ("the file was edited or not written by 'deadrelu scan ... --json'; its format is "
        "deadrelu/schemas/result-v1.schema.json")
_READ_HINT = "write one with: deadrelu scan MODEL DATA --json PATH"
_PER_UNIT_COUNTS = ("active", "at_floor", "at_ceiling")


@functools.lru_cache(maxsize=1)
def result_schema() -> dict[str, Any]:
    """The result format's JSON Schema (schema_version 1) as a dict."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def read_result_file(path: str | Path) -> Any:
    """Read and parse a saved JSON report, with its depth checked before parsing.

    Args:
        path: the JSON file.

    Returns:
        The parsed JSON (not yet validated: see ``validate_result``).

    Raises:
        ResultFormatError: missing, unreadable, not UTF-8, not JSON, nested too deep.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultFormatError(f"result file not found: {path}", hint=_READ_HINT) from None
    except IsADirectoryError:
        raise ResultFormatError(f"cannot read {path}: it is a folder", hint=_READ_HINT) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultFormatError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                                hint=_READ_HINT) from None
    return parse_result_text(text, str(path))


def parse_result_text(text: str, source: str) -> Any:
    """Parse JSON text of a report; ``source`` names it in errors."""
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise ResultFormatError(f"{source} is not a deadrelu JSON report: JSON nested {depth:,} deep "
                                f"(at most {MAX_DEPTH})", hint=HINT)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultFormatError(f"{source} is not JSON: {exc.msg} at line {exc.lineno}", hint=_READ_HINT) from None
    except ValueError as exc:  # Python's limit on integer digits (4300)
        what = "an integer too long to read" if "digits" in str(exc) else str(exc).split(";")[0]
        raise ResultFormatError(f"{source} is not a deadrelu JSON report: it holds {what}", hint=HINT) from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ResultFormatError(f"{source} is not a deadrelu JSON report: JSON nested too deep", hint=HINT) from None


def check_tree(data: Any, source: str) -> None:
    """Depth at most ``MAX_DEPTH``, every float finite, every integer exact in a float64.

    Iterative, so a deeply nested Python object cannot exhaust the stack either.

    Raises:
        ResultFormatError: naming the JSON path of the first offending value.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            children: Iterable[tuple[Any, Any]] = value.items()
        elif isinstance(value, (list, tuple)):
            if _numbers_fine(value):
                continue
            children = enumerate(value)
        else:
            _check_scalar(value, path, source)
            continue
        if len(path) >= MAX_DEPTH:
            raise ResultFormatError(f"{source}: {format_path(path)} is nested deeper than {MAX_DEPTH}", hint=HINT)
        for key, child in children:
            if isinstance(child, (Mapping, list, tuple)):
                stack.append((child, (*path, key)))
            else:
                _check_scalar(child, (*path, key), source)


def _numbers_fine(values: list[Any] | tuple[Any, ...]) -> bool:
    """True when ``values`` holds only null and finite, float64-exact numbers (vectorised: the
    per-unit arrays hold millions); False means: look item by item."""
    types = set(map(type, values))
    if not types or not types <= {int, float, type(None)}:
        return False
    try:
        numbers = np.array(values, dtype=np.float64)  # null becomes NaN
    except OverflowError:
        return False
    suspect = np.flatnonzero(~np.isfinite(numbers) | (np.abs(numbers) > LARGEST_INTEGER))
    return all(values[index] is None for index in suspect.tolist())


def _check_scalar(value: Any, path: tuple[str | int, ...], source: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        raise ResultFormatError(f"{source}: {format_path(path)} must be a finite number or null (got {value})",
                                hint=HINT)
    if isinstance(value, (int, np.integer)) and abs(int(value)) > LARGEST_INTEGER:
        raise ResultFormatError(f"{source}: {format_path(path)} is an integer of {len(str(abs(int(value))))} digits, "
                                f"too large for a count", hint=HINT)


def validate_result(data: Any, source: str) -> None:
    """Check parsed JSON against schema_version 1 before it becomes a ``ScanResult``.

    Args:
        data: parsed JSON (``json.loads`` output, or ``to_dict()`` output cleaned of NaN).
        source: the file (or "result") named in errors.

    Raises:
        ResultFormatError: one line naming ``source`` and the JSON path of the first bad field.
    """
    if not isinstance(data, Mapping) or "sites" not in data or "schema_version" not in data:
        raise ResultFormatError(f"{source} is not a deadrelu JSON report (no schema_version/sites)",
                                hint=_READ_HINT)
    if data["schema_version"] != SCHEMA_VERSION:
        raise ResultFormatError(f"{source}: unsupported schema_version {data['schema_version']!r:.40}; "
                                f"expected {SCHEMA_VERSION}", hint="this deadrelu reads schema_version 1 reports")
    check_tree(data, source)
    _check_schema(data, source)
    first_of: dict[str, int] = {}
    for index, site in enumerate(data["sites"]):
        _check_site(site, f"sites[{index}]", source)
        if site["name"] in first_of:
            # Sites are looked up by name (diff, report --sites, merge): a second one would be
            # shadowed or counted twice.
            raise ResultFormatError(f"{source}: sites[{index}].name {json.dumps(site['name'])[:80]} is also the "
                                    f"name of sites[{first_of[site['name']]}]; every site has its own name", hint=HINT)
        first_of[site["name"]] = index


def _check_schema(data: Any, source: str) -> None:
    import jsonschema
    # jsonschema takes ~10 us an item: the per-unit arrays (millions of numbers) are checked
    # against their own item schemas with numpy instead, the rest of the document by jsonschema.
    document, arrays = _split_unit_arrays(data)
    validator = jsonschema.Draft202012Validator(result_schema())
    # A tampered file can break a rule a million times: judge the first hundred breaks.
    error = jsonschema.exceptions.best_match(itertools.islice(validator.iter_errors(document), 100))
    if error is not None:
        where = format_path(tuple(error.absolute_path)) or "the document"
        raise ResultFormatError(f"{source}: {where} {_describe(error)}", hint=HINT)
    for path, values, items in arrays:
        _check_array(values, items, path, source)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/name``)."""
    while "$ref" in schema:
        schema = result_schema()["$defs"][schema["$ref"].rpartition("/")[2]]
    return schema


_UNIT_INDEX_KEYS = ("dead_units", "never_active_units", "saturated_units", "dormant_units")


def _split_unit_arrays(data: Mapping[str, Any]) -> tuple[Any, list[tuple[tuple[str | int, ...], list[Any],
                                                                          dict[str, Any]]]]:
    """The document with each site's per-unit arrays emptied, and those arrays with their item schemas."""
    sites = data.get("sites")
    if not isinstance(sites, list):
        return data, []
    site_schema = result_schema()["$defs"]["site"]["properties"]
    stats_schema = site_schema["unit_stats"]["properties"]
    arrays: list[tuple[tuple[str | int, ...], list[Any], dict[str, Any]]] = []
    trimmed_sites: list[Any] = []
    for index, site in enumerate(sites):
        if isinstance(site, dict):
            site = dict(site)
            for key in _UNIT_INDEX_KEYS:
                if isinstance(site.get(key), list):
                    arrays.append((("sites", index, key), site[key], _resolve(_resolve(site_schema[key])["items"])))
                    site[key] = []
            stats = site.get("unit_stats")
            if isinstance(stats, dict):
                stats = dict(stats)
                for key, values in stats.items():
                    if isinstance(values, list) and key in stats_schema:
                        arrays.append((("sites", index, "unit_stats", key), values,
                                       _resolve(_resolve(stats_schema[key])["items"])))
                        stats[key] = []
                site["unit_stats"] = stats
        trimmed_sites.append(site)
    return {**data, "sites": trimmed_sites}, arrays


_ITEM_TYPES: dict[str, set[type]] = {"integer": {int, float}, "number": {int, float}, "null": {type(None)}}


def _check_array(values: list[Any], items: dict[str, Any], path: tuple[str | int, ...], source: str) -> None:
    """``values`` against a scalar item schema (type, minimum, maximum), vectorised."""
    unsupported = set(items) - {"type", "minimum", "maximum", "description"}
    if unsupported:  # the schema file grew a keyword this fast path does not know: a bug, not bad input
        raise AssertionError(f"item schema keywords {sorted(unsupported)} are not checked at {format_path(path)}")
    wanted = [items["type"]] if isinstance(items["type"], str) else list(items["type"])
    allowed = set().union(*(_ITEM_TYPES[name] for name in wanted))
    bad_types = set(map(type, values)) - allowed
    numbers = np.array([0.0 if type(value) not in allowed else value for value in values] if bad_types else values,
                       dtype=np.float64)
    bad = np.zeros(len(values), dtype=bool)
    if bad_types:
        bad |= np.array([type(value) not in allowed for value in values])
    with np.errstate(invalid="ignore"):
        if "integer" in wanted:
            bad |= np.isfinite(numbers) & (numbers != np.floor(numbers))
        if "minimum" in items:
            bad |= numbers < items["minimum"]
        if "maximum" in items:
            bad |= numbers > items["maximum"]
    if not bad.any():
        return
    index = int(np.flatnonzero(bad)[0])
    value = values[index]
    where = format_path((*path, index))
    got = _JSON_TYPES.get(type(value), type(value).__name__)
    if type(value) not in allowed or ("integer" in wanted and not float(value).is_integer()):
        reason = f"must be {' or '.join(wanted)} (got {got if type(value) not in allowed else repr(value)})"
    elif "minimum" in items and value < items["minimum"]:
        reason = f"must be >= {items['minimum']} (got {value!r})"
    else:
        reason = f"must be <= {items['maximum']} (got {value!r})"
    raise ResultFormatError(f"{source}: {where} {reason}", hint=HINT)


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}


def _describe(error: Any) -> str:
    """A short reason for one schema error (jsonschema's own message repeats the whole value)."""
    got = _JSON_TYPES.get(type(error.instance), type(error.instance).__name__)
    shown = repr(error.instance) if not isinstance(error.instance, (dict, list)) else got
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    keyword, expected = error.validator, error.validator_value
    if keyword == "type":
        wanted = [expected] if isinstance(expected, str) else list(expected)
        return f"must be {' or '.join(wanted)} (got {got})"
    if keyword == "required":
        return "is missing key " + error.message.replace(" is a required property", "")
    if keyword in ("minimum", "maximum"):
        return f"must be {'>=' if keyword == 'minimum' else '<='} {expected} (got {shown})"
    if keyword == "enum":
        return f"must be one of {', '.join(json.dumps(choice) for choice in expected)} (got {shown})"
    if keyword == "const":
        return f"must be {json.dumps(expected)} (got {shown})"
    return error.message if len(error.message) <= 120 else error.message[:117] + "..."


def _check_site(site: Mapping[str, Any], where: str, source: str) -> None:
    units = site["units"]
    for key in _UNIT_INDEX_KEYS:
        indices = site.get(key) or []  # never_active_units: absent in older reports
        if indices and max(indices) >= units:
            raise ResultFormatError(f"{source}: {where}.{key} holds unit {max(indices)}, but the site has "
                                    f"{units} units", hint=HINT)
    stats = site.get("unit_stats")
    if stats is None:
        return
    for key, values in stats.items():
        if isinstance(values, list) and len(values) != units:
            raise ResultFormatError(f"{source}: {where}.unit_stats.{key} has {len(values):,} entries, but the site "
                                    f"has units = {units:,}", hint=HINT)
    observations = np.asarray(stats["observations"], dtype=np.float64)
    for key in _PER_UNIT_COUNTS:
        over = np.flatnonzero(np.asarray(stats[key], dtype=np.float64) > observations)
        if over.size:
            unit = int(over[0])
            raise ResultFormatError(f"{source}: {where}.unit_stats.{key}[{unit}] = {stats[key][unit]} is more than "
                                    f"that unit's observations ({stats['observations'][unit]})", hint=HINT)


def format_path(path: Iterable[str | int]) -> str:
    """A JSON path as ``sites[3].unit_stats.active``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
