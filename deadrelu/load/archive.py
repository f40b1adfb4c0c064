"""``torch.export`` archives (``.pt2``): what is checked before torch reads one, and what
stays forbidden while it does.

A ``.pt2`` is a zip. ``torch.export.load`` reads it with torch's own zip reader
(``torch._C.PyTorchFileReader``), and reading it can run code from the file:

* weights and constants marked ``use_pickle`` go to ``torch.load(weights_only=False)``,
  the sample inputs to the full unpickler when the weights-only one fails, opaque
  objects to ``pickle.loads``, custom objects to torch's TorchScript unpickler;
* AOTInductor members are native shared libraries that get loaded;
* the program's symbolic shapes are parsed by ``sympy.sympify``, which ``eval``\\ s its text;
* ``guards_code`` is Python source that ``ExportedProgram.module()`` ``exec``\\ s.

Without consent (``allow_pickle=False``) two independent layers stand in the way.

1. :func:`audit_archive` reads every member it checks *through torch's reader*, so the
   bytes checked are the bytes torch loads. It refuses, consent or not, an archive two
   zip readers could read differently: duplicate member names (also ones equal but for
   case), a non-ASCII name without the zip UTF-8 flag, a name with a control character,
   or a member list that Python's ``zipfile`` and torch's reader disagree on. Then it
   lists what would run code: AOTInductor members, custom and opaque objects, every
   pickle torch would unpickle (payload entries with ``use_pickle``, ``*.pt`` members)
   that the weights-only unpickler cannot read, symbolic expressions outside the
   bounded grammar of :func:`deadrelu.load.formula.plain_formula` (no code, no power of a
   power, no huge literal), and non-empty guard code.
2. :func:`no_code_runs` is held while ``torch.export.load`` runs and the program is
   turned into a module: ``torch.load`` is weights-only whatever its caller asks, any
   global the full unpickler looks up (the ``pickle.find_class`` audit event, raised by
   every ``pickle.Unpickler``) is refused, the TorchScript object unpickler and the
   AOTInductor loader are replaced by refusals, ``sympy.sympify`` only accepts text
   in the formula grammar, and a node target is resolved only when it names an operator
   or one of the listed Python callables (never by walking ``torch.*`` attributes). A
   member the audit never saw still cannot run code.
3. Before the program becomes a module, :func:`deadrelu.load.graphcheck.check_exported`
   refuses a graph that calls anything but computations on tensors.

The second layer patches module attributes for the duration of one load (under a
lock), so it also covers torch's fallbacks that the first layer cannot foresee.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sys
import threading
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..errors import ModelLoadError, UnsafePickleError
from ..errors import first_line as _first_line
from .formula import formula_problem, plain_formula  # noqa: F401  (plain_formula: part of this module's API)
from .graphcheck import Finding, check_exported, resolve_serialized
from .quiet import quiet_torch

#: The zip flag bit saying a member name is UTF-8 (otherwise readers may take it as cp437).
_UTF8_FLAG = 0x800
#: Where an archive keeps AOTInductor's native code.
_AOTI_DIR = "data/aotinductor/"


class CodeRefused(BaseException):
    """Raised inside torch while :func:`no_code_runs` holds. A ``BaseException`` so that
    torch's own ``except Exception`` fallbacks cannot swallow it."""


class _TargetRefused(CodeRefused):
    """A serialized node target outside the graph allow-list, met while torch deserializes."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.op)
        self.finding = finding


# -- layer 1: the audit -------------------------------------------------------------------------


def _ambiguous(label: str, name: str, why: str) -> ModelLoadError:
    return ModelLoadError(f"{label}: an ambiguous torch.export archive: member {name!r} {why}",
                          hint="torch.export.save never writes this; do not trust the file, re-export the model")


def _zip_listing(handle: BinaryIO, label: str) -> list[str]:
    """Member names as their raw bytes say, refusing names that zip readers can read differently."""
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        infos = archive.infolist()
    names: list[str] = []
    for info in infos:
        utf8 = bool(info.flag_bits & _UTF8_FLAG)
        raw = info.orig_filename.encode("utf-8" if utf8 else "cp437")
        if not utf8 and not raw.isascii():
            raise _ambiguous(label, raw.decode("utf-8", "backslashreplace"),
                             "has a non-ASCII name without the zip UTF-8 flag (readers decode it differently)")
        name = raw.decode("utf-8")
        if any(ord(char) < 32 or ord(char) == 127 for char in name):
            raise _ambiguous(label, name, "has a control character in its name")
        names.append(name)
    counts = Counter(name.casefold() for name in names)
    for name in names:
        if counts[name.casefold()] > 1:
            raise _ambiguous(label, name, f"appears {counts[name.casefold()]} times (readers pick different copies)")
    return names


class _Members:
    """The archive's members as the loader that will read them sees them."""

    def __init__(self, names: list[str], read: Callable[[str], bytes]) -> None:
        self.names = names
        self.read = read


def _members(handle: BinaryIO, label: str) -> _Members:
    """Open the archive with torch's reader (the zip reader ``torch.export.load`` uses), or
    with ``zipfile`` for the pre-2.8 layout that ``torch.export.load`` reads with ``zipfile``."""
    listed = _zip_listing(handle, label)
    handle.seek(0)
    try:
        reader = torch._C.PyTorchFileReader(handle)
        records = list(reader.get_all_records())
    except UnicodeDecodeError:
        raise _ambiguous(label, "?", "has a name that is not UTF-8") from None
    except RuntimeError as exc:
        if "version" not in listed:  # not the legacy layout either
            raise _unloadable(label, _first_line(exc)) from None
        handle.seek(0)
        legacy = zipfile.ZipFile(handle)
        return _Members(listed, legacy.read)
    inside = sorted(name.split("/", 1)[1] if "/" in name else name for name in listed)
    if inside != sorted(records):
        differing = sorted(set(inside) ^ set(records)) or sorted(records)
        raise _ambiguous(label, differing[0], "is listed differently by Python's zipfile and torch's reader")
    return _Members(records, reader.get_record)


def _walk_json(value: Any) -> Iterator[tuple[str, Any]]:
    """Every ``(key, value)`` pair in a JSON document, without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                yield key, inner
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def _refused_globals(data: bytes) -> str:
    """The globals a pickle wants beyond the weights-only allowlist, for the message."""
    try:
        wanted = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:
        return ""
    return f" (needs {', '.join(sorted(wanted)[:3])})" if wanted else ""


def audit_archive(handle: BinaryIO, label: str) -> list[str]:
    """What in a ``.pt2`` archive would run code when ``torch.export.load`` reads it.

    Args:
        handle: the open archive (read from the start; the same handle is then loaded).
        label: the path, for messages.

    Returns:
        One entry per finding, each naming the member (empty: nothing runs code).

    Raises:
        ModelLoadError: the archive is ambiguous (duplicate or mis-encoded member names,
            readers that disagree); refused whatever the consent.
        zipfile.BadZipFile, OSError: not a readable zip file.
    """
    members = _members(handle, label)
    problems: list[str] = []
    native = [name for name in members.names if name.startswith(_AOTI_DIR)]
    if native:
        problems.append(f"AOTInductor native code ({native[0]})")
    pickles = {name for name in members.names
               if name.endswith(".pt") or name.rsplit("/", 1)[-1].startswith("serialized_")
               and not name.endswith(".json")}
    for name in members.names:
        if not name.endswith(".json"):
            continue
        try:
            document = json.loads(members.read(name))
        except (ValueError, RecursionError):
            continue  # not JSON torch can use either; torch's own error follows
        config = document.get("config") if isinstance(document, dict) else None
        for entry in config.values() if isinstance(config, dict) else ():
            if not isinstance(entry, dict):
                continue
            path_name = str(entry.get("path_name", ""))
            # torch joins the payload folder and path_name with os.path.join; so does this.
            member = os.path.join(os.path.dirname(name), path_name)
            if path_name.startswith(("custom_obj", "opaque_obj")):
                problems.append(f"pickled object {member}")
            elif entry.get("use_pickle"):
                pickles.add(member)
        for key, value in _walk_json(document):
            problem = formula_problem(value) if key == "expr_str" and isinstance(value, str) else None
            if problem is not None:
                problems.append(f"a symbolic expression {problem} in {name} ({value[:40]!r})")
                break
            if key == "guards_code" and value:
                problems.append(f"Python guard code in {name}")
    for member in sorted(pickles):
        if member not in members.names:
            continue  # torch fails to find it too
        data = members.read(member)
        try:
            with quiet_torch():
                torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:
            problems.append(f"pickle {member}{_refused_globals(data)}")
    return problems


# -- layer 2: the guard while torch loads ----------------------------------------------------------

_guard = threading.local()
_guard_lock = threading.RLock()
_hook_installed = False


def _audit_hook(event: str, arguments: tuple[Any, ...]) -> None:
    # Every pickle.Unpickler (C or Python) raises this event for each global it looks up;
    # the weights-only unpickler does not use pickle.Unpickler.
    if event == "pickle.find_class" and getattr(_guard, "active", False):
        raise CodeRefused(f"the full unpickler, asked for {arguments[0]}.{arguments[1]}")


def _refuser(what: str) -> Callable[..., Any]:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise CodeRefused(what)
    return refuse


def _weights_only(original: Callable[..., Any]) -> Callable[..., Any]:
    def load(f: Any, map_location: Any = None, *_ignored: Any, **kwargs: Any) -> Any:
        kwargs.pop("pickle_module", None)
        kwargs["weights_only"] = True
        try:
            return original(f, map_location=map_location, **kwargs)
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" not in str(exc):
                raise
            text = str(exc)
            start = text.find("GLOBAL ")
            wanted = text[start + 7:].split(" ", 1)[0] if start >= 0 else "globals it does not allow"
            raise CodeRefused(f"a pickle the weights-only unpickler refuses (it needs {wanted})") from None
    return load


def _checked_operator(self: Any, serialized_target: str) -> Any:
    """torch's ``deserialize_operator`` walks any ``torch.*``/``math.*``/``_operator.*`` attribute
    path; this resolves only targets the graph allow-list accepts."""
    target, finding = resolve_serialized(serialized_target)
    if finding is not None:
        raise _TargetRefused(finding)
    return target


def _checked_sympify(original: Callable[..., Any]) -> Callable[..., Any]:
    def sympify(value: Any, *args: Any, **kwargs: Any) -> Any:
        problem = formula_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise CodeRefused(f"a symbolic expression {problem} ({value[:40]!r})")
        return original(value, *args, **kwargs)
    return sympify


@contextlib.contextmanager
def no_code_runs() -> Iterator[None]:
    """Hold while ``torch.export.load`` (and building a module from its program) runs without
    consent: nothing it does can reach the full unpickler, native code, or ``eval``.

    Raises:
        CodeRefused: (from inside torch) the load asked for one of those.
    """
    global _hook_installed
    import sympy

    from torch._export.serde.serialize import GraphModuleDeserializer
    from torch.export.pt2_archive import _package

    with _guard_lock:
        if not _hook_installed:
            sys.addaudithook(_audit_hook)  # cannot be removed; inert unless a guard is active
            _hook_installed = True
        patches: list[tuple[Any, str, Any]] = [
            (torch, "load", _weights_only(torch.load)),
            (torch.serialization, "load", _weights_only(torch.serialization.load)),
            (torch._C, "_pickle_load_obj", _refuser("TorchScript's unpickler, for a custom object")),
            (_package, "_load_aoti", _refuser("AOTInductor native code")),
            (sympy, "sympify", _checked_sympify(sympy.sympify)),
            (GraphModuleDeserializer, "deserialize_operator", _checked_operator),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        try:
            for owner, name, replacement in patches:
                setattr(owner, name, replacement)
            _guard.active = True
            yield
        finally:
            _guard.active = False
            for owner, name, value in saved:
                setattr(owner, name, value)


def load_export(path: Path, allow_pickle: bool) -> torch.nn.Module:
    """Load a ``torch.export`` archive as a module to scan, running no code from it
    unless ``allow_pickle``.

    Args:
        path: the ``.pt2`` file.
        allow_pickle: the user's consent to code from the file.

    Returns:
        An ``ExportedModel`` wrapping the program.

    Raises:
        ModelLoadError: not loadable, or ambiguous.
        UnsafePickleError: it would run code and ``allow_pickle`` is False.
    """
    from .exported import ExportedModel

    with path.open("rb") as handle:  # one handle: a file swapped in after the audit is not read
        problems = audit_archive(handle, str(path))
        if problems and not allow_pickle:
            raise UnsafePickleError(
                f"{path}: a torch.export archive holding {', '.join(problems[:3])}, which would run code "
                "when loaded; refusing to load it",
                hint="re-export the model with torch.export.save and no custom objects, or pass --allow-pickle "
                     "if you trust the file")
        handle.seek(0)
        guard = contextlib.nullcontext() if allow_pickle else no_code_runs()
        recorder = None
        try:
            with quiet_torch() as recorder, guard:
                program = torch.export.load(handle)
                if not allow_pickle and getattr(program, "_guards_code", None):
                    raise CodeRefused("Python guard code")
                if not allow_pickle:
                    check_exported(program, str(path))
                return ExportedModel(program)
        except ModelLoadError:
            raise
        except _TargetRefused as refused:
            raise refused.finding.error(str(path)) from None
        except CodeRefused as refused:
            raise UnsafePickleError(f"{path}: loading this torch.export archive asked for {refused}; refusing",
                                    hint="re-export the model with torch.export.save, or pass --allow-pickle "
                                         "if you trust the file") from None
        except Exception as exc:
            cause = (recorder.cause if recorder is not None else None) or _first_line(exc).replace(
                " Please check the warnings above for possible errors.", "")
            raise _unloadable(str(path), cause) from None


def _unloadable(label: str, cause: str) -> ModelLoadError:
    return ModelLoadError(f"{label}: a torch.export archive that cannot be loaded ({cause})",
                          hint="was it saved by a different torch version? torch.export archives are "
                               "not stable across versions")
