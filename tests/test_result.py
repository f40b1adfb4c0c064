"""ScanResult is data: frames, dict/JSON round trip, gate, HTML repr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.result import ScanResult
from truth_models import ReusedReLUBlock, bounded_inputs, linear_with_dead_units


@pytest.fixture
def result() -> ScanResult:
    model = nn.Sequential(linear_with_dead_units(dead=8), nn.ELU())
    return deadrelu.scan(model, bounded_inputs(64, 10), batch_size=16)


def test_to_frame_one_row_per_site(result):
    frame = result.to_frame()
    assert list(frame["name"]) == [site.name for site in result.sites]
    assert frame.loc[0, "dead"] == 8
    assert {"kind", "units", "dead_ratio", "saturated", "dormant", "active_rate_mean"} <= set(frame.columns)


def test_units_frame_one_row_per_unit(result):
    units = result.units_frame(0)
    assert len(units) == 32
    assert units["dead"].sum() == 8
    assert units.loc[units["dead"], "active_rate"].eq(0).all()
    assert set(units.columns) >= {"unit", "active_rate", "mean", "std", "mean_abs", "min", "max", "dormancy_score"}


def test_dict_and_json_round_trip(result, tmp_path):
    path = tmp_path / "r.json"
    result.to_json(path)
    again = ScanResult.from_json(path)
    assert again.to_dict() == json.loads(path.read_text())
    assert again.summary == result.summary
    assert [s.name for s in again.sites] == [s.name for s in result.sites]
    for a, b in zip(result.sites, again.sites, strict=True):
        np.testing.assert_array_equal(a.verdict.dead, b.verdict.dead)
        np.testing.assert_allclose(a.stats.total, b.stats.total)


def test_from_dict_rejects_other_schema(result):
    data = result.to_dict()
    data["schema_version"] = 99
    with pytest.raises(deadrelu.ResultFormatError, match="schema_version"):
        ScanResult.from_dict(data)


def test_rejudge_without_rescan(result):
    strict = result.rejudged(tau=0.0)
    loose = result.rejudged(tau=10.0)
    assert strict.summary.dormant <= result.summary.dormant <= loose.summary.dormant
    assert loose.summary.dormant == loose.summary.units - sum(int((~np.isfinite(s.verdict.dormancy_score)).sum())
                                                              for s in loose.sites)


def test_check_gate_limits():
    result = deadrelu.scan(linear_with_dead_units(dead=8), bounded_inputs(50, 10))
    assert deadrelu.check_gate(result, max_dead_ratio=0.25).passed
    failed = deadrelu.check_gate(result, max_dead_ratio=0.2, max_layer_dead_ratio=0.1)
    assert not failed.passed
    assert [v.scope for v in failed.violations] == ["model", "1"]
    assert deadrelu.check_gate(result).passed  # no limits, nothing to break
    with pytest.raises(deadrelu.ConfigError):
        deadrelu.check_gate(result, max_dead_ratio=-0.1)


def test_repr_is_short_and_html_repr_escapes_names():
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(3, 3))
    model.add_module("<b>act</b>", nn.ReLU())
    result = deadrelu.scan(model, torch.randn(4, 3))
    assert repr(result).startswith("ScanResult(sites=1")
    html = result._repr_html_()
    assert "&lt;b&gt;act&lt;/b&gt;" in html and "<b>act</b>" not in html


def test_site_lookup_by_module_and_index():
    result = deadrelu.scan(ReusedReLUBlock(), torch.randn(10, 6))
    assert result.site("relu#1").call_index == 1
    assert result.site(0).name == "relu#0"
    with pytest.raises(KeyError):
        result.site("relu")  # ambiguous: two calls
