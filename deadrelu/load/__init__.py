"""Loading: paths and objects into an ``nn.Module`` and a stream of batches."""

from .data import DataStream, as_stream, load_data
from .model import LoadedModel, load_model

__all__ = ["DataStream", "as_stream", "load_data", "LoadedModel", "load_model"]
