"""One description of the inputs: which model, which data, and how a batch feeds the model.

``Inputs`` is filled once, from command-line flags (``deadrelu.commands.inputs``), a config
file's ``[inputs]`` table (``Inputs.from_config``) or Python arguments, and opened by one
function, ``deadrelu.load.sources.open_inputs``, into the model, the stream of batches
and the ``Feeding``. Every command (``scan``, ``prune``, ``fix``, ``trend``) and every API
entry point (``deadrelu.scan``, ``deadrelu.Monitor``, ``deadrelu.fix``,
``deadrelu.trend.scan_checkpoints``) takes it, so a feeding option added here reaches all.

This module holds data and checks only: nothing is opened or imported from the user here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..settings import INPUTS_SECTION, MAX_LINE_BYTES, InputDtype, check_setting, read_toml

PathLike = str | os.PathLike


def _names(value: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    """A name or names as a tuple of str (``None``: none)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(item, (str, int)) for item in value):
        return tuple(str(item) for item in value)
    raise ConfigError(f"{what} must be a name or a list of names, got {value!r:.60}",
                      hint=f'e.g. {what}=["input_ids", "attention_mask"]')


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def spec_file(spec: str | None) -> Path | None:
    """The file of a ``path/to/file.py:Name`` reference (None for ``package.module:Name``)."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    target = spec.rpartition(":")[0]
    return Path(target) if target.endswith(".py") else None


@dataclass(frozen=True)
class Feeding:
    """How each raw batch becomes the model's arguments (``load.inputs.InputPreparer`` applies it).

    Attributes:
        input_key: entries of dict batches (or positions of tuple batches) fed positionally, in order.
        kwargs: entries fed as keyword arguments of the same name.
        mask: the entry that is the ``(N, L)`` padding mask (1 real, 0 padding), or None.
        scale: multiply inputs by this.
        input_fn: maps a raw batch to a tensor, a tuple (positional) or a dict (keyword inputs);
            overrides the names above.
        input_dtype: integer data: ``auto``, ``keep`` or ``float``.
        decoder_inputs: an encoder-decoder model: its decoder is fed the same token ids
            (``decoder_input_ids``, and the mask as ``decoder_attention_mask``) when a batch has none.
    """

    input_key: tuple[str, ...] = ()
    kwargs: tuple[str, ...] = ()
    mask: str | None = None
    scale: float | None = None
    input_fn: Callable[[Any], Any] | None = None
    input_dtype: InputDtype = InputDtype.AUTO
    decoder_inputs: bool = False

    def options(self) -> dict[str, Any]:
        """The feeding as keyword arguments of the repair functions (``deadrelu.prune(..., **options)``)."""
        return {"input_key": list(self.input_key) or None, "kwargs": self.kwargs, "mask": self.mask,
                "scale": self.scale, "input_dtype": self.input_dtype, "decoder_inputs": self.decoder_inputs}


#: Fields that name files the inputs read (for the check that no output lands on an input), by flag.
_READ_FLAGS = {"model": "MODEL", "data": "DATA", "weights": "--weights", "imports": "--import",
               "tokenizer": "--tokenizer"}
_REFERENCE_FLAGS = {"arch": "--arch", "model_factory": "--model", "data_factory": "--data"}


@dataclass(frozen=True)
class Inputs:
    """The model, the data, and how a batch feeds the model: what every command and API call opens.

    The model (one of ``model`` and ``model_factory``):

    Attributes:
        model: a model file or Hugging Face folder (a path), or, in Python, an ``nn.Module``,
            an ``ExportedProgram`` or a ``LoadedModel``.
        model_factory: ``package.module:build`` or ``file.py:build`` returning the model (``--model``).
        arch: ``package.module:Factory`` or ``file.py:Factory`` for a weights-only file.
        arch_kwargs: keyword arguments for ``arch`` / ``model_factory`` (a dict or JSON text).
        weights: a state_dict / checkpoint / ``.safetensors`` file for ``model_factory``'s model.
        imports: Python files imported before unpickling (``--import``).
        hf_class: the ``transformers`` class that loads a Hugging Face folder (default ``AutoModel``).
        allow_pickle: allow the full unpickler, which runs code from the model file.
        allow_remote_code: let a Hugging Face folder (model or tokenizer) run its own Python code.

    The data (one of ``data`` and ``data_factory``):

    Attributes:
        data: a data file (``.npy``, ``.npz``, ``.pt``, a table, ``.txt``/``.jsonl`` text), or, in
            Python, a tensor, an ndarray, a dict of them, a ``Dataset``, a ``DataLoader``, a
            ``DataStream`` or any iterable of batches.
        data_factory: ``package.module:make`` or ``file.py:make`` returning the data (``--data``).
        key: the array(s) to read from an ``.npz``, a dict ``.pt`` or a dict (several: several inputs).
        columns: table columns used as features, in order.
        shuffle_seed: with a limit, a random subset drawn with this seed.
        tokenizer: the tokenizer folder for text (default: the model folder's own).
        text_field: the field of each ``.jsonl`` object that holds the text.
        max_length: truncate text examples to this many tokens.
        max_line_bytes: refuse a text line longer than this many bytes.

    How a batch feeds the model:

    Attributes:
        input_key: entries of dict batches (or positions of tuple batches) fed positionally.
        kwargs: entries (or named arrays) fed as keyword arguments of the same name.
        mask: the entry (or named array) that is the ``(N, L)`` padding mask.
        input_dtype: integer data: ``auto`` (keep token ids, cast what a floating layer
            rejects), ``keep`` or ``float``.
        scale: multiply inputs by this (e.g. 1/255 for uint8 images).
        input_fn: maps a raw batch to the model's inputs (Python only).
        decoder_inputs: feed an encoder-decoder's decoder the same tokens (None: when the
            model is one, ``config.is_encoder_decoder``).
    """

    model: Any = None
    model_factory: str | None = None
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] | str | None = None
    weights: PathLike | None = None
    imports: tuple[PathLike, ...] = ()
    hf_class: str | None = None
    allow_pickle: bool = False
    allow_remote_code: bool = False
    data: Any = None
    data_factory: str | None = None
    key: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    shuffle_seed: int | None = None
    tokenizer: PathLike | None = None
    text_field: str = "text"
    max_length: int = 512
    max_line_bytes: int = MAX_LINE_BYTES
    input_key: tuple[str, ...] = ()
    kwargs: tuple[str, ...] = ()
    mask: str | None = None
    input_dtype: InputDtype = InputDtype.AUTO
    scale: float | None = None
    input_fn: Callable[[Any], Any] | None = field(default=None, compare=False)
    decoder_inputs: bool | None = None

    def __post_init__(self) -> None:
        for name in ("key", "columns", "input_key", "kwargs"):
            object.__setattr__(self, name, _names(getattr(self, name), name))
        imports = self.imports
        if imports is None or isinstance(imports, (str, os.PathLike)) or not isinstance(imports, Sequence):
            imports = () if imports is None else (imports,)
        object.__setattr__(self, "imports", tuple(imports))
        try:
            object.__setattr__(self, "input_dtype", InputDtype(self.input_dtype))
        except ValueError:
            raise ConfigError(f"input_dtype must be auto, keep or float, got {self.input_dtype!r:.60}",
                              hint="auto keeps token ids and casts what a floating layer rejects") from None
        for name in ("shuffle_seed", "max_length", "max_line_bytes"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_setting(name, getattr(self, name)))
        for name in ("mask", "text_field", "hf_class", "arch", "model_factory", "data_factory"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a name, got {value!r:.60}", hint=f"e.g. {name}=\"...\"")
        for name in ("weights", "tokenizer", *(["imports"] * bool(self.imports))):
            values = getattr(self, name) if name == "imports" else [getattr(self, name)]
            if any(value is not None and not isinstance(value, (str, os.PathLike)) for value in values):
                raise ConfigError(f"{name} must be a path, got {getattr(self, name)!r:.60}", hint="a file or folder")
        for name in ("allow_pickle", "allow_remote_code", "decoder_inputs"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name == "decoder_inputs"):
                raise ConfigError(f"{name} must be true or false, got {value!r:.60}", hint=f"{name}=True")
        if self.arch_kwargs is not None and not isinstance(self.arch_kwargs, (str, Mapping)):
            raise ConfigError(f"arch_kwargs must be a dict (or JSON text), got {self.arch_kwargs!r:.60}",
                              hint='e.g. arch_kwargs={"width": 64}')
        if self.scale is not None and (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float))):
            raise ConfigError(f"scale must be a number, got {self.scale!r:.60}", hint="e.g. scale=1/255")
        if self.model is not None and self.model_factory is not None:
            raise ConfigError("both a model and a model factory given", hint="give MODEL or --model, not both")
        if self.data is not None and self.data_factory is not None:
            raise ConfigError("both data and a data factory given", hint="give DATA or --data, not both")

    # -- building -------------------------------------------------------------------------

    @classmethod
    def fields(cls) -> list[str]:
        """Every field's name."""
        return [f.name for f in dataclasses.fields(cls)]

    def with_values(self, **values: Any) -> Inputs:
        """A copy with the given fields changed; ``None`` (and an empty list) means "keep".

        Raises:
            ConfigError: a name that is not a field.
        """
        unknown = sorted(set(values) - set(self.fields()))
        if unknown:
            raise ConfigError(f"unknown input option {unknown[0]!r}",
                              hint=f"the options of the inputs: {', '.join(self.fields())}")
        given = {k: v for k, v in values.items() if v is not None and not (isinstance(v, (list, tuple)) and not v)}
        # A model (or data) named here replaces a factory named before, and the other way round.
        for one, other in (("model", "model_factory"), ("model_factory", "model"), ("data", "data_factory"),
                           ("data_factory", "data")):
            if one in given and other not in given:
                given[other] = None
        return dataclasses.replace(self, **given) if given else self

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``options`` cut into (fields of the inputs, everything else): scan settings and the
        inputs pass through one ``**options``."""
        names = set(cls.fields())
        return ({k: v for k, v in options.items() if k in names},
                {k: v for k, v in options.items() if k not in names})

    @classmethod
    def from_config(cls, path: PathLike, base: Inputs | None = None) -> Inputs:
        """The ``[inputs]`` table of a TOML config (keys are the field names; paths are relative
        to the config file's folder), over ``base``.

        Raises:
            ConfigError: an unknown key or a value of the wrong kind, naming the file.
        """
        table = read_toml(Path(path)).get(INPUTS_SECTION, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{INPUTS_SECTION}] must be a table", hint="see configs/default.toml")
        if "input_fn" in table:
            raise ConfigError(f"{path}: [{INPUTS_SECTION}] input_fn is Python only", hint="set it in Python")
        folder = Path(path).parent
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key in ("model", "data", "weights", "tokenizer") and isinstance(value, str):
                value = str(folder / value)
            elif key == "imports" and isinstance(value, list):
                value = [str(folder / item) if isinstance(item, str) else item for item in value]
            values[key] = value
        try:
            return (base or cls()).with_values(**values)
        except ConfigError as exc:
            raise ConfigError(f"{path}: [{INPUTS_SECTION}] {exc.message}", hint=exc.hint) from None
        except TypeError as exc:
            raise ConfigError(f"{path}: [{INPUTS_SECTION}] {exc}", hint="see configs/default.toml") from None

    # -- what they read, and how they feed ------------------------------------------------

    def reads(self) -> dict[str, Any]:
        """The files these inputs read, by the flag that names them (for ``ReportTargets.check``):
        MODEL, DATA, ``--weights``, ``--import``, ``--tokenizer`` and the files of ``file.py:Name``
        references. Objects (a module, a tensor) are left out."""
        found: dict[str, Any] = {}
        for name, flag in _READ_FLAGS.items():
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                found[flag] = Path(value)
            elif name == "imports" and value:
                found[flag] = [Path(item) for item in value]
        for name, flag in _REFERENCE_FLAGS.items():
            found[flag] = spec_file(getattr(self, name))
        return found

    @property
    def named(self) -> bool:
        """Whether arrays come as dict batches by name (keyword inputs or a mask are named)."""
        return bool(self.kwargs or self.mask)

    def array_keys(self, mapping: bool = False) -> list[str] | None:
        """The arrays to read from a data file (or, ``mapping``, from a dict given in Python).

        Named arrays (keyword inputs, the mask) are read beside the ``key`` arrays; a dict
        given in Python is also picked by ``input_key``.
        """
        if self.named:
            keys = _unique([*self.key, *self.input_key, *self.kwargs, *([self.mask] if self.mask else [])])
        else:
            keys = _unique([*self.key, *self.input_key]) if mapping else list(self.key)
        return keys or None

    def feeding(self, stream_kwargs: Sequence[str] = (), stream_mask: str | None = None,
                encoder_decoder: bool = False) -> Feeding:
        """How batches feed the model, once the data is open.

        Args:
            stream_kwargs: the stream's own keyword entries (text: the tokenizer's), used when
                nothing is named.
            stream_mask: the stream's own padding mask, used when none is named.
            encoder_decoder: the model is an encoder-decoder (for ``decoder_inputs=None``).
        """
        positional = self.input_key or (self.key if self.named else ())
        kwargs = self.kwargs
        if not kwargs and not positional and self.input_fn is None:
            kwargs = tuple(stream_kwargs)
        decoder = encoder_decoder if self.decoder_inputs is None else self.decoder_inputs
        return Feeding(input_key=tuple(positional), kwargs=tuple(kwargs), mask=self.mask or stream_mask,
                       scale=self.scale, input_fn=self.input_fn, input_dtype=self.input_dtype,
                       decoder_inputs=bool(decoder))


__all__ = ["Inputs", "Feeding", "spec_file"]
