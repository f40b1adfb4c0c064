"""One way in: ``open_inputs`` turns the ``Inputs`` (``load.spec``) into the model, the batches and the feeding.

Every command (``scan``, ``prune``, ``fix``, ``trend``) and every API entry point
(``deadrelu.scan``, ``deadrelu.Monitor``, ``deadrelu.fix``, ``deadrelu.trend``) opens its
inputs here, through the reader registries of ``load.readers``; so a Hugging Face folder
with text, a token-id array for an encoder-decoder, or a padding mask work the same
everywhere. The two halves, ``open_model`` and ``open_data``, serve callers that open one
data set for several models (``trend``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .data import DataStream
from .huggingface import has_tokenizer, is_encoder_decoder, is_model_folder
from .model import LoadedModel
from .readers import is_path, read_data, read_model
from .spec import Feeding, Inputs


@dataclass(frozen=True)
class Opened:
    """Inputs opened: what a scan, a repair or a monitor runs on.

    Attributes:
        model: the model with its provenance (``format`` ``object`` for a module given in Python).
        stream: the batches.
        feeding: how each batch feeds the model.
        inputs: the description they were opened from (the tokenizer filled in).
    """

    model: LoadedModel
    stream: DataStream
    feeding: Feeding
    inputs: Inputs


def open_model(inputs: Inputs) -> LoadedModel:
    """The model of ``inputs`` (a file, a Hugging Face folder, a factory, or an object).

    Raises:
        ModelLoadError: the model cannot be loaded; ConfigError: the options do not fit together.
    """
    return read_model(inputs)


def with_model_tokenizer(inputs: Inputs) -> Inputs:
    """``inputs`` with the model folder's own tokenizer for text data, unless one is named."""
    model = inputs.model
    if inputs.tokenizer is None and is_path(model) and is_model_folder(model) and has_tokenizer(model):
        return inputs.with_values(tokenizer=inputs.model)
    return inputs


def open_data(inputs: Inputs, batch_size: int = 256, limit: int | None = None) -> DataStream:
    """The data of ``inputs`` as a stream of batches (a file, text, a Python source, or an object).

    Args:
        inputs: the inputs; text is tokenized with ``inputs.tokenizer`` (see ``with_model_tokenizer``).
        batch_size: samples per batch.
        limit: feed at most this many samples.

    Raises:
        DataLoadError: the data cannot be read; ConfigError: no data named.
    """
    return read_data(inputs, batch_size=batch_size, limit=limit)


def feeding_for(inputs: Inputs, model: LoadedModel | Any, stream: DataStream) -> Feeding:
    """How ``stream``'s batches feed ``model``: the names in ``inputs``, else the stream's own
    (text: the tokenizer's inputs and its attention mask); an encoder-decoder's decoder is fed
    the same tokens."""
    module = model.module if isinstance(model, LoadedModel) else model
    return inputs.feeding(stream.kwargs, stream.mask, encoder_decoder=is_encoder_decoder(module))


def open_inputs(inputs: Inputs, batch_size: int = 256, limit: int | None = None) -> Opened:
    """Open the model and the data of ``inputs``, and say how the batches feed the model.

    Args:
        inputs: what to open.
        batch_size: samples per batch (not for a DataLoader, which has its own).
        limit: feed at most this many samples.

    Returns:
        The model, the stream and the feeding.

    Raises:
        ModelLoadError, DataLoadError, ConfigError: one line naming what could not be opened.
    """
    model = open_model(inputs)
    inputs = with_model_tokenizer(inputs)
    stream = open_data(inputs, batch_size=batch_size, limit=limit)
    return Opened(model, stream, feeding_for(inputs, model, stream), inputs)


__all__ = ["Opened", "feeding_for", "open_data", "open_inputs", "open_model", "with_model_tokenizer"]
