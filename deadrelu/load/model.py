"""Models: files and factories into an ``nn.Module``, never unpickling without consent.

What a user may hand over, and how each is read:

* a ``state_dict`` or a training checkpoint holding one, ``.safetensors``: weights
  only (``torch.load(weights_only=True)``, which cannot run code) plus ``--arch``;
* a pickled ``nn.Module`` (``torch.save(model)``): only with ``allow_pickle=True``.
  Without it the file's wanted globals are listed (statically, nothing is imported).
  With it, the weights-only unpickler is tried first with exactly those globals
  allowed, then the full unpickler;
* TorchScript (``torch.jit.save``): read by torch's TorchScript loader, whose
  unpickler only builds TorchScript types and cannot import Python code; without
  ``allow_pickle`` every graph is checked to only compute on tensors before it runs
  (see :mod:`deadrelu.load.torchscript` and :mod:`deadrelu.load.graphcheck`);
* a ``torch.export`` program (``.pt2``): checked through torch's own zip reader, then
  loaded with the full unpickler, native code and ``eval`` forbidden and its graph
  checked to only compute on tensors; an archive that needs more needs
  ``allow_pickle=True`` (see :mod:`deadrelu.load.archive`);
* a Python factory (``--model package.module:build``), optionally with ``--weights``.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import types
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, UnsafePickleError
from ..errors import first_line as _first_line
from .archive import load_export
from .files import check_file
from .pickles import pickle_globals as _pickle_globals
from .quiet import quiet_torch
from .registry import Reader, Registry
# State-dict helpers live in statedict.py; re-exported here, their old home.
from .statedict import (OPTIMIZER_KEYS, STATE_DICT_KEYS, WRAPPER_PREFIXES, find_optimizer_state,  # noqa: F401
                        find_state_dict, load_state_into, looks_like_data, strip_prefixes)
from .torchscript import load_torchscript
from .usercode import import_file, import_object, parse_kwargs  # noqa: F401  (parse_kwargs: its old home)


@dataclass
class LoadedModel:
    """A model ready to scan, with where it came from.

    Attributes:
        module: the model.
        source: the file path or factory it came from.
        format: ``state_dict``, ``checkpoint``, ``pickle``, ``safetensors``, ``torchscript``,
            ``export``, ``factory`` or ``object``.
        sha256: digest of the model file, when there is one.
        notes: facts about loading the user should see (prefixes stripped...).
        optimizer_state: the optimizer's ``state_dict()`` when a training checkpoint holds one
            (passed on as data: the learning-rate rule reads its step sizes).
    """

    module: nn.Module
    source: str
    format: str
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    optimizer_state: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """Metadata for reports."""
        return {"source": self.source, "format": self.format, "class": _class_name(self.module),
                "parameters": sum(p.numel() for p in self.module.parameters()), "sha256": self.sha256}


def _class_name(module: nn.Module) -> str:
    # A ScriptModule's Python type is RecursiveScriptModule; its original class name is kept.
    return getattr(module, "original_name", None) or type(module).__name__


def unwrap(module: nn.Module) -> nn.Module:
    """The user's own module inside DataParallel/DDP or ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


# -- importing user code --------------------------------------------------------------------


def build_from_factory(spec: str, kwargs: Mapping[str, Any] | None = None, what: str = "--arch") -> nn.Module:
    """Call a factory (a class or function) and check that it returns a module."""
    factory = import_object(spec, what)
    if not callable(factory):
        raise ModelLoadError(f"{what} {spec}: {type(factory).__name__} is not callable",
                             hint="name a class or a function that returns an nn.Module")
    try:
        module = factory(**dict(kwargs or {}))
    except Exception as exc:
        raise ModelLoadError(f"{what} {spec}: building the model failed: {type(exc).__name__}: {_first_line(exc)}",
                             hint="check --arch-kwargs") from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{what} {spec} returned a {type(module).__name__}, not an nn.Module",
                             hint="the factory must return the model itself (an nn.Module instance)")
    return module


# -- reading files --------------------------------------------------------------------------


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _is_torchscript(names: list[str] | None) -> bool:
    return bool(names) and any(name.endswith("/constants.pkl") or "/code/__torch__/" in name
                               for name in names)  # type: ignore[union-attr]


def _is_export_archive(names: list[str] | None) -> bool:
    return bool(names) and any(name.endswith(("/archive_format", "serialized_exported_program.json"))
                               or "/models/" in name and name.endswith(".json")
                               for name in names)  # type: ignore[union-attr]


def _is_safetensors(path: Path) -> bool:
    """A safetensors file whatever its suffix: an 8-byte header length, then a JSON header."""
    try:
        with path.open("rb") as handle:
            head = handle.read(10)
    except OSError:
        return False
    return len(head) == 10 and head[8:10] == b'{"'


def _weights_only_failure(exc: BaseException) -> bool:
    """The weights-only unpickler refused a global (as opposed to an unreadable file,
    which it reports as an "Unsupported operand")."""
    text = str(exc)
    return "Weights only load failed" in text and ("GLOBAL" in text or "Unsupported global" in text)


def _sniff(path: Path) -> tuple[str, str] | None:
    """``(what the file is, hint)`` from its first bytes, for files torch cannot read."""
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array, i.e. data, not a model", "pass it as DATA (the second argument), and the model first"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras/TensorFlow?), not a PyTorch model", "export the model from PyTorch (torch.save)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("a plain pickle, not a torch.save file", "load it in Python and save it again with torch.save, "
                "or better, save model.state_dict()")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        first_line = (text.strip().splitlines() or [""])[0][:30]
        return f"a text file (it starts with {first_line!r}), not a model", \
            "pass a file written by torch.save, torch.jit.save, torch.export.save or safetensors"
    return None


def _weights_only_reason(exc: BaseException) -> str | None:
    """The unpickler's own reason inside torch's "Weights only load failed" essay, whose first
    line advises retrying with ``weights_only=False`` (running the file's code)."""
    text = str(exc)
    if not text.startswith("Weights only load failed") or "WeightsUnpickler error:" not in text:
        return None
    reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0].strip()
    return f"the weights-only unpickler stopped at: {reason.splitlines()[0][:200]}" if reason else None


def _read_error(path: Path, exc: BaseException) -> ModelLoadError:
    sniffed = _sniff(path)
    if sniffed is not None:
        return ModelLoadError(f"{path}: {sniffed[0]}", hint=sniffed[1])
    message = _weights_only_reason(exc) or _first_line(exc)
    lowered = message.lower()
    if "central directory" in lowered or "zip" in lowered or "eof" in lowered or "truncated" in lowered \
            or isinstance(exc, (EOFError, zipfile.BadZipFile)) or (isinstance(exc, OSError) and exc.errno == 22):
        return ModelLoadError(f"{path}: not a readable PyTorch file, probably truncated or corrupt ({message})",
                              hint="copy or download the file again; compare its size with the original")
    if isinstance(exc, (KeyError, pickle.UnpicklingError, UnicodeDecodeError)) or "magic number" in lowered \
            or "invalid load key" in lowered:
        return ModelLoadError(f"{path}: not a PyTorch model file (unrecognised format: {message})",
                              hint="expected a torch.save / torch.jit.save / torch.export.save file or .safetensors")
    return ModelLoadError(f"{path}: cannot load ({type(exc).__name__}: {message})",
                          hint="expected a torch.save / torch.jit.save / torch.export.save file or .safetensors")


def _resolve_global(full_name: str, user_modules: list[types.ModuleType]) -> tuple[Any, str | None]:
    """Find the object a pickle global names: import its module, else look it up by name
    in the ``--import`` files (a class saved from a script's ``__main__`` lives there).

    Returns:
        ``(object, None)`` or ``(None, why)``.
    """
    parts = full_name.split(".")
    why = None
    if parts[0] != "__main__":
        for split in range(len(parts) - 1, 0, -1):
            module_name = ".".join(parts[:split])
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                why = why or f"module {module_name!r} cannot be imported ({_first_line(exc)})"
                continue
            except Exception as exc:
                why = f"importing {module_name} failed ({type(exc).__name__}: {_first_line(exc)})"
                break
            obj: Any = module
            try:
                for attribute in parts[split:]:
                    obj = getattr(obj, attribute)
                return obj, None
            except AttributeError:
                why = f"{module_name} has no attribute {'.'.join(parts[split:])!r}"
                break
    else:
        why = "it was defined in __main__, the script that saved the model"
    qualname = parts[1:] if parts[0] == "__main__" else parts[-1:]
    for module in user_modules:
        obj = module
        try:
            for attribute in qualname:
                obj = getattr(obj, attribute)
            return obj, None
        except AttributeError:
            continue
    return None, why or "not found"


def _missing_error(path: Path, missing: list[tuple[str, str]]) -> ModelLoadError:
    name, why = missing[0]
    more = f" (and {len(missing) - 1} more: {', '.join(n for n, _ in missing[1:4])})" if len(missing) > 1 else ""
    class_name = name.rsplit(".", 1)[-1]
    if name.startswith("__main__."):
        hint = (f"pass --import path/to/the_saving_script.py (deadrelu looks {class_name} up there), or save "
                f"model.state_dict() and scan it with --arch that_script.py:{class_name}")
    else:
        hint = (f"install or add to PYTHONPATH the package that defines {class_name}, pass --import "
                f"path/to/file.py that defines it, or save model.state_dict() and use --arch")
    return ModelLoadError(f"{path}: the pickle needs {name}, which cannot be found: {why}{more}", hint=hint)


def _unpickler_module(redirects: dict[str, Any]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose ``find_class`` uses the resolved globals."""

    class RedirectingUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            target = redirects.get(f"{module}.{name}")
            if target is not None:
                return target
            return super().find_class(module, name)

    namespace = types.ModuleType("deadrelu_redirecting_pickle")
    namespace.Unpickler = RedirectingUnpickler  # type: ignore[attr-defined]
    namespace.load = lambda handle, **kwargs: RedirectingUnpickler(handle, **kwargs).load()  # type: ignore[attr-defined]
    namespace.__dict__["UnpicklingError"] = pickle.UnpicklingError
    return namespace


def _refuse_pickle(path: Path, wanted: list[str]) -> UnsafePickleError:
    listed = ", ".join(wanted[:8]) + (f" ... ({len(wanted)} in all)" if len(wanted) > 8 else "") \
        if wanted else "globals that could not be listed"
    return UnsafePickleError(
        f"{path}: a pickled object that needs code to load ({listed}); refusing to unpickle",
        hint="unpickling runs code from the file. Safe ways: save model.state_dict() and pass --arch "
             "pkg.module:Factory, or save with torch.jit.save / torch.export.save. If you trust this file, "
             "pass --allow-pickle")


#: How a pickled module was read, as the report says it.
_UNPICKLED = {
    "weights_only+torch.nn": "a pickled model of torch.nn classes only: read with the weights-only unpickler "
                             "allowing exactly those classes (no code from the file runs; no --allow-pickle needed)",
    "weights_only+globals": "unpickled with the weights-only unpickler, allowing only the globals the file names "
                            "(--allow-pickle)",
    "pickle": "unpickled with the full unpickler (--allow-pickle): the weights-only one could not rebuild it",
}


def _torch_nn_globals(wanted: list[str]) -> list[Any] | None:
    """The objects ``wanted`` names when every one is a ``torch.nn`` module class (or a
    ``torch.nn.functional`` function, as ``TransformerEncoderLayer`` keeps its activation);
    None when any is not. Only modules torch has already imported are looked at, one
    attribute deep, so naming something else (``torch.nn.modules.os.system``) fails."""
    if not wanted:
        return None
    found = []
    for full_name in wanted:
        module_name, _, attribute = full_name.rpartition(".")
        module = sys.modules.get(module_name)
        if not module_name.startswith("torch.nn.") or module is None:
            return None
        obj = getattr(module, attribute, None)
        is_module_class = isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__.startswith("torch.nn.")
        is_functional = (module_name == "torch.nn.functional" and callable(obj) and not isinstance(obj, type)
                         and getattr(obj, "__module__", "") in ("torch.nn.functional", "torch._C._nn"))
        if not (is_module_class or is_functional):
            return None
        found.append(obj)
    return found


def _torch_load(path: Path, allow_pickle: bool, user_modules: list[types.ModuleType]) -> tuple[Any, str]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError as exc:
        if not _weights_only_failure(exc):
            raise _read_error(path, exc) from None
        wanted = _pickle_globals(path)
        if not allow_pickle:
            plain = _torch_nn_globals(wanted)
            if plain is not None:
                try:
                    with torch.serialization.safe_globals(plain):
                        return torch.load(path, map_location="cpu", weights_only=True), "weights_only+torch.nn"
                except Exception:
                    pass  # not rebuildable from those classes alone: consent needed, as for any pickle
            raise _refuse_pickle(path, wanted) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, UnicodeDecodeError,
            AttributeError, TypeError) as exc:
        raise _read_error(path, exc) from None
    # Past here the user allowed unpickling: resolving globals may import their modules.
    resolved: dict[str, Any] = {}
    missing: list[tuple[str, str]] = []
    for name in wanted:
        obj, why = _resolve_global(name, user_modules)
        if obj is None:
            missing.append((name, why or "not found"))
        else:
            resolved[name] = obj
    if missing:
        raise _missing_error(path, missing)
    try:
        with torch.serialization.safe_globals([(obj, name) for name, obj in resolved.items()]):
            return torch.load(path, map_location="cpu", weights_only=True), "weights_only+globals"
    except Exception:
        pass  # the weights-only unpickler could not rebuild it; the full one may
    try:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=_unpickler_module(resolved)), "pickle"
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ModelLoadError(
            f"{path}: the pickle refers to code that cannot be imported here ({_first_line(exc)})",
            hint="make the model's package importable (PYTHONPATH), pass --import path/to/file.py, or save a "
                 "state_dict and use --arch") from None
    except Exception as exc:
        raise ModelLoadError(f"{path}: unpickling failed ({type(exc).__name__}: {_first_line(exc)})",
                             hint="the file may come from another version of its code; a state_dict with --arch is "
                                  "more robust") from None


def _load_export(path: Path, allow_pickle: bool) -> nn.Module:
    try:
        return load_export(path, allow_pickle)
    except ModelLoadError:
        raise
    except Exception as exc:  # the archive could not even be listed
        raise _read_error(path, exc) from None


def _load_weights_file(path: Path, allow_pickle: bool,
                       user_modules: list[types.ModuleType]) -> tuple[Any, str]:
    """Read a model or weights file, with torch's own warnings and logged tracebacks kept
    off the terminal: a failure reaches the user as one line."""
    with quiet_torch():
        return _read_weights_file(path, allow_pickle, user_modules)


def _read_weights_file(path: Path, allow_pickle: bool,
                       user_modules: list[types.ModuleType]) -> tuple[Any, str]:
    reader = MODEL_FILES.find(path)
    assert reader is not None  # torch.save reads any file
    return reader.open(path, allow_pickle, user_modules)


def _is_safetensors_file(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors" or (_zip_names(path) is None and _is_safetensors(path))


def _is_export_file(path: Path) -> bool:
    return path.suffix.lower() == ".pt2" or _is_export_archive(_zip_names(path))


#: Model files, tried in this order: the first reader that recognises a file reads it into
#: ``(object, how)``; ``load_file`` then makes a model of the object (a state_dict needs ``arch``).
#: ``deadrelu.load.readers.MODEL_READERS`` lists them with the folders, factories and objects.
MODEL_FILES = Registry("model file", [
    Reader("safetensors", _is_safetensors_file,
           lambda path, allow_pickle, user_modules: (_load_safetensors(path), "safetensors"),
           doc=(("`.safetensors`", "`deadrelu scan model.safetensors data.npy --arch pkg.models:Net`"),)),
    Reader("export", _is_export_file,
           lambda path, allow_pickle, user_modules: (_load_export(path, allow_pickle), "export"),
           doc=(("a `torch.export` program (`.pt2`)", "`deadrelu scan model.pt2 data.npy`"),)),
    Reader("torchscript", lambda path: _is_torchscript(_zip_names(path)),
           lambda path, allow_pickle, user_modules: (load_torchscript(path, allow_pickle), "torchscript"),
           doc=(("TorchScript (`torch.jit.save` of a scripted or traced model)", "`deadrelu scan model_ts.pt data.npy`"),)),
    Reader("torch.save", lambda path: True, _torch_load, doc=(
        ("a `state_dict`, or a checkpoint dict holding one (`state_dict`, `model_state_dict`, `model`, `net`, …)",
         "`deadrelu scan ckpt.pt data.npy --arch models.py:Net --arch-kwargs '{\"width\": 64}'` (`module.` / "
         "`_orig_mod.` prefixes from DataParallel/DDP/`torch.compile` are stripped; a mismatch names the first "
         "missing / unexpected / wrongly shaped keys)"),
        ("a pickled `nn.Module` (`torch.save(model)`)",
         "`deadrelu scan whole.pt data.npy --allow-pickle` (add `--import train.py` when its class was defined in "
         "the training script's `__main__`; a module of `torch.nn` classes only needs no consent)"))),
])


def _check_file(path: Path, what: str) -> str:
    """Raise for a missing, folder, empty or unreadable file; return its sha256."""
    spec = ":" in path.name and what == "model file"
    return check_file(path, what, ModelLoadError,
                      missing_hint=f"to build the model with Python, use --model {path}" if spec
                      else "check the path; MODEL comes first, DATA second",
                      folder_hint="pass the model file inside it (a Hugging Face model folder holds a config.json)",
                      empty_hint="the save may have failed; save it again")


def load_file(path: str | Path, arch: str | None = None, arch_kwargs: Mapping[str, Any] | None = None,
              allow_pickle: bool = False, imports: Iterable[str | Path] = ()) -> LoadedModel:
    """Load a model file into an ``nn.Module`` (the file reader is chosen from ``MODEL_FILES``).

    Args:
        path: a ``state_dict`` / checkpoint (with ``arch``), a ``.safetensors`` file
            (with ``arch``), a TorchScript file, a ``torch.export`` ``.pt2`` archive, or a
            pickled ``nn.Module`` (with ``allow_pickle``).
        arch: ``package.module:Factory`` or ``file.py:Factory`` building the architecture.
        arch_kwargs: keyword arguments for the factory.
        allow_pickle: permit unpickling, which runs code from the file.
        imports: Python files imported before unpickling, so that classes the pickle
            names (also ones saved from a script's ``__main__``) can be found.

    Returns:
        The loaded model with its provenance.

    Raises:
        ModelLoadError: the file is missing, unreadable, not a model, or does not fit ``arch``.
        UnsafePickleError: the file needs the unpickler and ``allow_pickle`` is False.
    """
    path = Path(path)
    digest = _check_file(path, "model file")
    user_modules = [import_file(item) for item in imports]
    obj, how = _load_weights_file(path, allow_pickle, user_modules)
    if how in ("torchscript", "export"):
        notes = ["--arch ignored: the file holds a whole program"] if arch else []
        return LoadedModel(obj, str(path), how, digest, notes)
    if isinstance(obj, nn.Module):
        module = unwrap(obj)
        notes = [_UNPICKLED[how]] if how in _UNPICKLED else []
        if module is not obj:
            notes.append(f"unwrapped {type(obj).__name__} to {type(module).__name__}")
        if arch:
            notes.append("--arch ignored: the file holds a whole module")
        return LoadedModel(module, str(path), "pickle", digest, notes)
    if isinstance(obj, torch.Tensor):
        raise ModelLoadError(f"{path}: holds a tensor of shape {tuple(obj.shape)}, i.e. data, not a model",
                             hint="pass it as DATA (the second argument), and the model first")
    found = find_state_dict(obj)
    if found is None:
        kind = type(obj).__name__
        keys = f" with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, Mapping) else ""
        raise ModelLoadError(f"{path}: a {kind}{keys}, which holds no model and no state_dict",
                             hint=f"expected a model, a state_dict or a checkpoint with one of: "
                                  f"{', '.join(STATE_DICT_KEYS[:6])}, ...")
    state, fmt = found
    if how == "safetensors":
        fmt = "safetensors"
    elif fmt == "state_dict" and looks_like_data(state):
        names = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(state.items())[:3])
        raise ModelLoadError(f"{path}: holds tensors named {names}: data, not model weights",
                             hint="pass it as DATA (the second argument, with --key NAME), and the model first")
    if not arch:
        raise ModelLoadError(f"{path}: holds weights only ({fmt}, {len(state)} tensors); the architecture is needed",
                             hint="pass --arch package.module:Factory or --arch path/to/file.py:Factory")
    module = build_from_factory(arch, arch_kwargs)
    notes = load_state_into(module, state, str(path))
    return LoadedModel(module, str(path), fmt, digest, notes, optimizer_state=find_optimizer_state(obj))


def load_factory(spec: str, kwargs: Mapping[str, Any] | None = None, weights: str | Path | None = None,
                 allow_pickle: bool = False) -> LoadedModel:
    """Build a model from a Python factory, optionally loading weights into it.

    Args:
        spec: ``package.module:build`` or ``path/to/file.py:build``; a class or a
            function returning an ``nn.Module``.
        kwargs: keyword arguments for the factory.
        weights: a state_dict / checkpoint / ``.safetensors`` file to load into it.
        allow_pickle: permit the unpickler for ``weights`` (not needed for state_dicts).

    Returns:
        The model with its provenance (format ``factory``).
    """
    module = unwrap(build_from_factory(spec, kwargs, what="--model"))
    if weights is None:
        return LoadedModel(module, spec, "factory", None, [])
    path = Path(weights)
    digest = _check_file(path, "weights file")
    obj, how = _load_weights_file(path, allow_pickle, [])
    if isinstance(obj, nn.Module):
        raise ModelLoadError(f"{path}: holds a whole model ({_class_name(obj)}), not weights for --model",
                             hint="pass the file as MODEL without --model")
    found = find_state_dict(obj)
    if found is None:
        raise ModelLoadError(f"{path}: holds no state_dict for --model {spec}",
                             hint=f"save model.state_dict(), or a checkpoint with one of: {', '.join(STATE_DICT_KEYS[:6])}")
    notes = load_state_into(module, found[0], str(path))
    return LoadedModel(module, f"{spec} + {path}", "factory", digest, notes, optimizer_state=find_optimizer_state(obj))


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelLoadError(f"{path}: reading .safetensors needs the safetensors package",
                             hint="pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({_first_line(exc)})",
                             hint="the file may be truncated; copy or download it again") from None
