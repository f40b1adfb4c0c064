"""Hugging Face checkpoints and text: a model folder into a module, a text file into token batches.

A model folder holds a ``config.json`` and weights (``model.safetensors``, a sharded
index, or ``pytorch_model.bin``) as ``save_pretrained`` writes them; it is loaded with
``transformers`` from the folder alone (``local_files_only=True``, nothing is
downloaded). The folder's own Python code (``auto_map`` in the config, or in a
tokenizer's ``tokenizer_config.json``) runs only with ``allow_remote_code=True``: every
``from_pretrained`` gets ``trust_remote_code`` explicitly, so transformers never asks on stdin.

Text data (``.txt``: one example per line; ``.jsonl``: one JSON object per line; read,
with every line bounded, by ``load.text``) is tokenized batch by batch with the folder's tokenizer (or another one), padded to the
longest example of each batch and truncated to ``max_length``; the batches are dicts
of the tokenizer's model inputs, fed as keyword arguments, and their
``attention_mask`` is the padding mask, so padding never counts as data.

``transformers`` is an optional extra (``pip install 'deadrelu[hf]'``), imported
here only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataLoadError, ModelLoadError, first_line
from ..jsontext import JsonTextError, parse_json
from ..settings import MAX_LINE_BYTES, check_setting
from .data import DataStream, check_seed
from .files import check_file, file_sha256
from .text import read_examples

#: what to run when transformers is missing
INSTALL_HINT = "pip install 'deadrelu[hf]'  (transformers and tokenizers)"
#: weight files save_pretrained writes (any one is enough)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: files a saved tokenizer leaves in its folder (any one is enough)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model")
#: data suffixes read as text
TEXT_SUFFIXES = (".txt", ".jsonl")
#: Deepest nesting read in a folder's config.json / tokenizer_config.json (save_pretrained writes ~4).
MAX_CONFIG_DEPTH = 64
REMOTE_CODE_HINT = "pass --allow-remote-code (allow_remote_code=True) if you trust that code"


def is_model_folder(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a folder holding a Hugging Face ``config.json``."""
    return path is not None and Path(path).is_dir() and (Path(path) / "config.json").is_file()


def has_tokenizer(path: str | os.PathLike | None) -> bool:
    """Whether a folder holds a saved tokenizer."""
    return path is not None and Path(path).is_dir() and any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def is_text_file(path: str | os.PathLike | None) -> bool:
    """Whether a data path is text (``.txt`` or ``.jsonl``)."""
    return path is not None and Path(path).suffix.lower() in TEXT_SUFFIXES


def _transformers(what: str, error: type[Exception] = ModelLoadError) -> Any:
    try:
        import transformers
    except ImportError:
        raise error(f"{what} needs the transformers package, which is not installed", hint=INSTALL_HINT) from None
    return transformers


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' own warnings (uninitialised weights, ...) become notes, not log lines."""
    logging = transformers.logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def load_hf_model(path: str | os.PathLike, hf_class: str | None = None,
                  allow_remote_code: bool = False) -> tuple[Any, list[str], str | None]:
    """Load a ``save_pretrained`` folder with ``transformers`` (``load_model`` wraps it in a ``LoadedModel``).

    Args:
        path: the folder (``config.json`` + weights).
        hf_class: the ``transformers`` class to load with (``AutoModelForCausalLM``,
            ``T5EncoderModel``...); default ``AutoModel`` (the bare model, no head).
        allow_remote_code: let ``transformers`` run the folder's own Python code
            (``trust_remote_code``), for architectures it does not ship.

    Returns:
        ``(model, notes, sha256 of the weights file)``: the model in eval mode with
        ``use_cache`` off, and notes on what was loaded.

    Raises:
        ModelLoadError: transformers is missing, the folder has no weights, the class
            is unknown, or loading failed.
    """
    path = Path(path)
    config = read_folder_json(path / "config.json", ModelLoadError)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}/config.json: a JSON {type(config).__name__}, not an object",
                             hint="save the model again with model.save_pretrained(folder)")
    weights = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights and not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path}: a Hugging Face config.json without weights "
                             f"(no {', '.join(WEIGHT_FILES[::2])})",
                             hint="save the weights with model.save_pretrained(folder)")
    transformers = _transformers(f"{path}: a Hugging Face model folder")
    name = hf_class or "AutoModel"
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ConfigError(f"--hf-class {name}: transformers has no model class of that name",
                          hint="e.g. AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, T5EncoderModel")
    remote = "auto_map" in config
    try:
        with _quiet(transformers):
            model, info = cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=allow_remote_code,
                                              output_loading_info=True)
    except Exception as exc:
        text = first_line(exc)
        if remote and not allow_remote_code:
            raise ModelLoadError(f"{path}: its architecture is defined by the folder's own Python code (auto_map) "
                                 "and was not run", hint=REMOTE_CODE_HINT) from None
        raise ModelLoadError(f"{path}: transformers could not load it with {name}: {type(exc).__name__}: {text}",
                             hint="choose the class with --hf-class (e.g. AutoModelForCausalLM)") from None
    model.eval()
    if hasattr(getattr(model, "config", None), "use_cache"):
        model.config.use_cache = False  # a scan needs no key/value cache
    notes = [f"loaded with transformers {name} as {type(model).__name__}"]
    missing = list(info.get("missing_keys") or [])
    if missing:
        notes.append(f"{len(missing)} weight(s) not in the folder were freshly initialised "
                     f"(e.g. {', '.join(missing[:3])}); their units are random")
    if remote and allow_remote_code:
        notes.append("ran the folder's own Python code (--allow-remote-code)")
    digest = file_sha256(path / weights[0]) if weights and not weights[0].endswith(".json") else None
    return model, notes, digest


def read_folder_json(path: Path, error: type[Exception]) -> Any:
    """A JSON file of a model or tokenizer folder, parsed with its depth and integers bounded.

    Raises:
        ``error`` (a ``DeadReluError``): unreadable, not UTF-8, not JSON, or hostile JSON.
    """
    hint = "save it again with save_pretrained(folder)"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not readable JSON ({first_line(exc)})", hint=hint) from None
    try:
        return parse_json(text, MAX_CONFIG_DEPTH)
    except JsonTextError as exc:
        raise error(f"{path}: {exc.reason}", hint=hint) from None


def _tokenizer_code(path: Path) -> bool:
    """Whether a tokenizer folder names its own Python code (``auto_map`` in its JSON files)."""
    for name in ("tokenizer_config.json", "config.json"):
        if (path / name).is_file():
            document = read_folder_json(path / name, DataLoadError)
            if isinstance(document, dict) and "auto_map" in document:
                return True
    return False


def load_tokenizer(path: str | os.PathLike, allow_remote_code: bool = False) -> Any:
    """The tokenizer saved in a folder (``AutoTokenizer``, local files only).

    Args:
        path: the folder.
        allow_remote_code: let ``transformers`` run a tokenizer class defined by the
            folder's own Python code (``auto_map``). Always passed on as
            ``trust_remote_code``, so transformers never asks on stdin.

    Returns:
        The tokenizer.

    Raises:
        DataLoadError: transformers is missing, the folder holds no usable tokenizer, or
            its tokenizer is the folder's own code and ``allow_remote_code`` is off.
    """
    path = Path(path)
    if not has_tokenizer(path):
        raise DataLoadError(f"{path}: no tokenizer in this folder (none of {', '.join(TOKENIZER_FILES[:3])}, ...)",
                            hint="save one with tokenizer.save_pretrained(folder), or pass --tokenizer DIR")
    remote = _tokenizer_code(path)  # also checks the folder's JSON before transformers parses it
    transformers = _transformers(f"{path}: reading a tokenizer", DataLoadError)
    try:
        with _quiet(transformers):
            return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                              trust_remote_code=bool(allow_remote_code))
    except Exception as exc:
        if remote and not allow_remote_code:
            raise DataLoadError(f"{path}: its tokenizer is defined by the folder's own Python code (auto_map) and "
                                "was not run", hint=REMOTE_CODE_HINT) from None
        raise DataLoadError(f"{path}: the tokenizer cannot be loaded: {type(exc).__name__}: {first_line(exc)}",
                            hint="save it again with tokenizer.save_pretrained(folder)") from None


def load_text(path: str | os.PathLike, tokenizer: str | os.PathLike, batch_size: int = 256,
              limit: int | None = None, max_length: int = 512, text_field: str = "text",
              shuffle_seed: int | None = None, decoder_inputs: bool = False,
              max_line_bytes: int = MAX_LINE_BYTES, allow_remote_code: bool = False) -> DataStream:
    """Text examples as batches of token ids with their attention mask.

    Args:
        path: a ``.txt`` file (one example per line) or ``.jsonl`` (``text_field`` of each object).
        tokenizer: the folder holding the tokenizer.
        batch_size: examples per batch.
        limit: tokenize at most this many examples.
        max_length: truncate each example to this many tokens (at most ``settings.MAX_TOKENS``).
        text_field: the field of each ``.jsonl`` object that holds the text.
        shuffle_seed: with ``limit``, a random subset drawn with this seed.
        decoder_inputs: also feed the tokens as ``decoder_input_ids`` (an encoder-decoder
            model's decoder then runs over the same text, under the same mask).
        max_line_bytes: refuse a line longer than this many bytes (tokenizing a line takes
            about 200 times its size in memory).
        allow_remote_code: let a tokenizer defined by the folder's own code run.

    Returns:
        A stream of dict batches whose entries are fed as keyword arguments, with
        ``attention_mask`` as the padding mask.

    Raises:
        DataLoadError: an unreadable file, a line too long, a missing field, no tokenizer.
        ConfigError: ``max_length``, ``max_line_bytes`` or ``shuffle_seed`` out of range.
    """
    path = Path(path)
    max_length = check_setting("max_length", max_length)
    max_line_bytes = check_setting("max_line_bytes", max_line_bytes)
    check_seed(shuffle_seed)
    digest = check_file(path, "data file", DataLoadError, missing_hint="check the path; MODEL comes first, DATA second",
                        folder_hint="pass one text file (.txt or .jsonl) inside it", empty_hint="it holds no text")
    examples, blank = read_examples(path, text_field, max_line_bytes)
    tok = load_tokenizer(tokenizer, allow_remote_code=allow_remote_code)
    notes: list[str] = []
    if allow_remote_code and _tokenizer_code(Path(tokenizer)):
        notes.append(f"ran the tokenizer folder's own Python code (--allow-remote-code): {tokenizer}")
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise DataLoadError(f"{tokenizer}: the tokenizer has no padding token and no end-of-text token",
                                hint="set tokenizer.pad_token and save it again")
        tok.pad_token = tok.eos_token
        notes.append(f"the tokenizer has no padding token; padded with {tok.eos_token!r} (masked out)")
    total = len(examples)
    count = min(total, limit) if limit is not None else total
    if shuffle_seed is not None and count < total:
        chosen = np.sort(np.random.default_rng(shuffle_seed).choice(total, size=count, replace=False))
        examples = [examples[int(i)] for i in chosen]
        notes.append(f"scanned a random subset of {count} of {total} examples (--shuffle-seed {shuffle_seed})")
    elif count < total:
        examples = examples[:count]
        notes.append(f"scanned the first {count} of {total} examples (--limit)")
    if blank:
        notes.append(f"left out {blank} blank line(s)")
    inputs = tuple(tok.model_input_names)
    fed = inputs + (("decoder_input_ids", "decoder_attention_mask") if decoder_inputs else ())
    notes.append(f"{count} example(s) tokenized with the tokenizer of {tokenizer} (max {max_length} tokens, padded "
                 f"per batch; padding left out of the statistics by attention_mask); fed as {', '.join(fed)}")

    def batches() -> Iterator[dict[str, Any]]:
        for start in range(0, count, batch_size):
            encoded = tok(examples[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
            batch = {name: encoded[name] for name in inputs if name in encoded}
            if decoder_inputs:
                batch["decoder_input_ids"] = encoded["input_ids"]
                batch["decoder_attention_mask"] = encoded["attention_mask"]
            yield batch

    return DataStream(source=str(path), batches=batches, num_samples=count, sample_shape=None, dtype="text",
                      notes=notes, sha256=digest, total_samples=total, kwargs=fed,
                      mask="attention_mask" if "attention_mask" in inputs else None)


def is_encoder_decoder(model: Any) -> bool:
    """Whether a loaded transformers model is an encoder-decoder (T5, BART...)."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


__all__ = ["INSTALL_HINT", "TEXT_SUFFIXES", "has_tokenizer", "is_encoder_decoder", "is_model_folder", "is_text_file",
           "load_hf_model", "load_text", "load_tokenizer", "read_folder_json"]
