"""Fixed costs made once: each layer's weights read once while the suggestion rules run, the kind
table's module classes once per table, a site's view shape once per activation shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deadrelu.judge.rules.layers import cached_weights, weight_rows, weight_std
from deadrelu.kinds import _module_classes
from deadrelu.fused_calls import contiguous_view_shape as _contiguous_view_shape
from deadrelu.fused_calls import units_view as _units_view


def test_weight_rows_are_read_once_while_the_rules_run_and_again_after_a_change():
    layer = nn.Linear(3, 2)
    with cached_weights():
        first = weight_rows(layer)
        assert weight_rows(layer) is first
        assert weight_std(layer) == pytest.approx(float(np.std(first)))
        with pytest.raises(ValueError):
            first[0, 0] = 1.0  # shared between rules: read-only
        with torch.no_grad():
            layer.weight.add_(1.0)  # a new version of the weight: read again
        again = weight_rows(layer)
        assert again is not first and np.allclose(again, first + 1.0)
    assert weight_rows(layer) is not weight_rows(layer)  # outside the block nothing is kept


def test_module_classes_are_made_once_per_kind_table():
    assert _module_classes() is _module_classes()
    assert (nn.ReLU, ) == tuple(cls for cls, info in _module_classes() if info.name == "ReLU")


@pytest.mark.parametrize("shape, dims, expected", [((4, 3, 5, 5), (0, 2, 3), (4, 3, 25)), ((8, 6), (0,), (8, 6, 1)),
                                                   ((2, 7, 9), (0, 1), (14, 9, 1)), ((5,), (0,), (5, 1, 1)),
                                                   ((4, 3, 5), (0, 2), (4, 3, 5)), ((4, 3, 5), (1,), None)])
def test_units_view_shape(shape, dims, expected):
    tensor = torch.arange(float(np.prod(shape))).reshape(shape)
    assert _contiguous_view_shape(tensor.shape, dims) == expected
    view = _units_view(tensor, dims)
    assert (view is None) == (expected is None)
    if view is not None:
        assert tuple(view.shape) == expected and view.data_ptr() == tensor.data_ptr()
