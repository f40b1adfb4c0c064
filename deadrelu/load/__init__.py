"""Loading: paths and objects into an ``nn.Module`` and a stream of batches."""

from ..torch_support import check_torch

check_torch()  # before any torch-dependent module of the package is imported

from .data import DataStream, as_stream, load_data
from .model import LoadedModel
from .readers import load_model

__all__ = ["DataStream", "as_stream", "load_data", "LoadedModel", "load_model"]
