"""Models: files and factories into an ``nn.Module``, never unpickling without consent.

A file is first read with ``torch.load(weights_only=True)``, which cannot run code.
Only a file that needs the full unpickler (a whole pickled ``nn.Module``) and only
with ``allow_pickle=True`` is read the unsafe way.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pickle
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, UnsafePickleError
from .data import file_sha256

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params",
                   "model_state", "ema_state_dict")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadedModel:
    """A model ready to scan, with where it came from.

    Attributes:
        module: the model.
        source: the file path or factory it came from.
        format: ``state_dict``, ``checkpoint``, ``pickle``, ``safetensors``, ``factory`` or ``object``.
        sha256: digest of the model file, when there is one.
        notes: facts about loading the user should see (prefixes stripped...).
    """

    module: nn.Module
    source: str
    format: str
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """Metadata for reports."""
        return {"source": self.source, "format": self.format, "class": type(self.module).__name__,
                "parameters": sum(p.numel() for p in self.module.parameters()), "sha256": self.sha256}


def unwrap(module: nn.Module) -> nn.Module:
    """The user's own module inside DataParallel/DDP or ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def import_object(spec: str, what: str = "--arch") -> Any:
    """Import ``package.module:Name`` or ``path/to/file.py:Name``.

    Args:
        spec: the reference.
        what: the option it came from, for messages.

    Returns:
        The named attribute.
    """
    if ":" not in spec:
        raise ModelLoadError(f"{what} {spec!r} must look like package.module:Name or path/to/file.py:Name")
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelLoadError(f"{what}: file not found: {path}")
        module_name = f"deadrelu_user_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelLoadError(f"{what}: cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ModelLoadError(f"{what}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelLoadError(f"{what}: cannot import module {target!r} ({exc})",
                                 hint="is the package installed, or did you mean a path/to/file.py?") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ModelLoadError(f"{what}: {target} has no attribute {name!r}") from None


def build_from_factory(spec: str, kwargs: Mapping[str, Any] | None = None, what: str = "--arch") -> nn.Module:
    """Call a factory (a class or function) and check that it returns a module."""
    factory = import_object(spec, what)
    try:
        module = factory(**dict(kwargs or {}))
    except Exception as exc:
        raise ModelLoadError(f"{what} {spec}: building the model failed: {type(exc).__name__}: {exc}",
                             hint="check --arch-kwargs") from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{what} {spec} returned a {type(module).__name__}, not an nn.Module")
    return module


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """Parse ``--arch-kwargs`` JSON into a dict."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"--arch-kwargs is not valid JSON: {exc.msg} at column {exc.colno}",
                             hint="""example: --arch-kwargs '{"hidden": 128}'""") from None
    if not isinstance(value, dict):
        raise ModelLoadError("--arch-kwargs must be a JSON object", hint="""example: '{"hidden": 128}'""")
    return value


def _is_tensor_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def find_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str] | None:
    """The state_dict inside a loaded object: itself, or a checkpoint entry."""
    if _is_tensor_mapping(obj):
        return dict(obj), "state_dict"
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_tensor_mapping(obj.get(key)):
                return dict(obj[key]), "checkpoint"
    return None


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    stripped: list[str] = []
    for prefix in WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
            stripped.append(prefix)
    return state, stripped


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a state_dict strictly, naming the first mismatched keys on failure."""
    state, stripped = strip_prefixes(state)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s) e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s) e.g. {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} wrongly shaped e.g. {'; '.join(wrong[:3])}")
    if problems:
        raise ModelLoadError(f"{source}: weights do not fit the architecture: {'; '.join(problems)}",
                             hint="check --arch and --arch-kwargs against the code that saved the file")
    module.load_state_dict(state, strict=True)
    return [f"stripped the {p!r} prefix from every key" for p in stripped]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _unsafe_globals(path: Path) -> list[str]:
    getter = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if getter is None:
        return []
    try:
        return list(getter(str(path)))
    except Exception:
        return []


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _torch_load(path: Path, allow_pickle: bool) -> tuple[Any, str]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError as exc:
        wanted = _unsafe_globals(path)
        if not allow_pickle:
            listed = ", ".join(wanted[:8]) + (" ..." if len(wanted) > 8 else "") if wanted else "unknown globals"
            raise UnsafePickleError(
                f"{path}: a pickled object that needs code to load ({listed}); refusing to unpickle",
                hint="unpickling runs code from the file. Safe: save model.state_dict() and pass --arch "
                     "pkg.module:Factory. If you trust this file, pass --allow-pickle") from None
        if not wanted:
            raise ModelLoadError(f"{path}: cannot load ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        message = _first_line(exc)
        if _is_torchscript(path):
            raise ModelLoadError(f"{path}: a TorchScript archive; this version of deadrelu scans eager models",
                                 hint="scan the eager model (state_dict + --arch) instead") from None
        if "zip" in message.lower() or "EOF" in message or "truncated" in message.lower():
            raise ModelLoadError(f"{path}: not a readable PyTorch file ({message})",
                                 hint="the file may be truncated or in another format") from None
        raise ModelLoadError(f"{path}: cannot load ({message})") from None
    # Full unpickler: only reached with explicit consent.
    try:
        return torch.load(path, map_location="cpu", weights_only=False), "pickle"
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ModelLoadError(
            f"{path}: the pickle refers to code that cannot be imported here ({_first_line(exc)})",
            hint="make the model's package importable (PYTHONPATH), or save a state_dict and use --arch") from None
    except Exception as exc:
        raise ModelLoadError(f"{path}: unpickling failed ({type(exc).__name__}: {_first_line(exc)})") from None


def load_model(path: str | Path, arch: str | None = None, arch_kwargs: Mapping[str, Any] | None = None,
               allow_pickle: bool = False) -> LoadedModel:
    """Load a model file into an ``nn.Module``.

    Args:
        path: a ``state_dict`` / checkpoint (with ``arch``), a ``.safetensors`` file
            (with ``arch``), or a pickled ``nn.Module`` (with ``allow_pickle``).
        arch: ``package.module:Factory`` or ``file.py:Factory`` building the architecture.
        arch_kwargs: keyword arguments for the factory.
        allow_pickle: permit the full unpickler, which runs code from the file.

    Returns:
        The loaded model with its provenance.

    Raises:
        ModelLoadError: the file is missing, unreadable, not a model, or does not fit ``arch``.
        UnsafePickleError: the file needs the full unpickler and ``allow_pickle`` is False.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"model path is a folder, not a file: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    digest = file_sha256(path)
    if path.suffix.lower() == ".safetensors":
        obj, how = _load_safetensors(path), "safetensors"
    else:
        obj, how = _torch_load(path, allow_pickle)
    if isinstance(obj, nn.Module):
        module = unwrap(obj)
        notes = [] if module is obj else [f"unwrapped {type(obj).__name__} to {type(module).__name__}"]
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
        raise ModelLoadError(f"{path}: a {kind}{keys}, which holds no state_dict",
                             hint=f"expected a state_dict or a checkpoint with one of: {', '.join(STATE_DICT_KEYS)}")
    state, fmt = found
    if how == "safetensors":
        fmt = "safetensors"
    if not arch:
        raise ModelLoadError(f"{path}: holds weights only ({fmt}, {len(state)} tensors); the architecture is needed",
                             hint="pass --arch package.module:Factory or --arch path/to/file.py:Factory")
    module = build_from_factory(arch, arch_kwargs)
    notes = load_state_into(module, state, str(path))
    return LoadedModel(module, str(path), fmt, digest, notes)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelLoadError(f"{path}: reading .safetensors needs the safetensors package",
                             hint="pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
