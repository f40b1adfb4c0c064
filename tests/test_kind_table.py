"""The kind table is the one place a kind is described: a new kind is one ``KINDS`` entry, and the
module lookup, the functional capture, the aten ops of the dispatch capture and its graph plans,
and each site's reduction plan and saturation all pick it up."""

from __future__ import annotations

import torch
from torch import nn

import deadrelu
from deadrelu import kinds
from deadrelu.capturing.aten import activation_ops
from deadrelu.capturing.functional import functional_table, read_call
from deadrelu.capturing.plans import torchscript_plan
from deadrelu.kinds import ActiveRule, KindInfo, KindSpec, Spelling

UNITS = 6
LOW, HIGH = [0, 1], [2]


def tanh_kind() -> KindInfo:
    """A kind deadrelu does not have: tanh, bounded by -1 and 1 (active above -1)."""
    return KindInfo("Tanh", (Spelling("tanh"),), "tanh",
                    lambda constants: KindSpec("Tanh", ActiveRule.ABOVE_LOWER, floor=-1.0, ceiling=1.0,
                                               output_floor=-1.0))


class TanhBlock(nn.Module):
    """A Linear, an ``nn.Tanh`` module and a ``torch.tanh`` call; units LOW pushed to -100 (tanh is
    exactly -1 there: never above its floor, saturated), HIGH to +100 (exactly 1: saturated)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, UNITS)
        self.act = nn.Tanh()
        with torch.no_grad():
            self.fc.bias[LOW] = -100.0
            self.fc.bias[HIGH] = 100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.act(h) + torch.tanh(h)


def data() -> torch.Tensor:
    return torch.randn(12, 4, generator=torch.Generator().manual_seed(5))


def test_without_the_entry_tanh_is_listed_as_unsupported():
    assert "tanh" not in activation_ops() and torch.tanh not in functional_table()
    result = deadrelu.scan(nn.Sequential(nn.Linear(4, UNITS), nn.ReLU(), nn.Tanh()), data())
    assert [site.name for site in result.sites] == ["1"]
    assert result.coverage["unsupported"] == [{"module": "2", "class": "Tanh", "calls": 1,
                                               "reason": "unsupported kind"}]


def test_a_new_kind_is_one_entry(monkeypatch):
    monkeypatch.setitem(kinds.KINDS, "Tanh", tanh_kind())
    # The derived lookups: module lookup, functional spellings, aten ops.
    assert kinds.spec_for_module(nn.Tanh()).kind == "Tanh"
    assert {torch.tanh, torch.Tensor.tanh, torch.tanh_, torch.Tensor.tanh_} <= set(functional_table())
    assert read_call(torch.tanh, (torch.randn(2, 3),), {}).function == "tanh"
    assert activation_ops()["tanh"] == "tanh" and activation_ops()["tanh_"] == "tanh"
    model = TanhBlock().eval()
    plan = torchscript_plan(torch.jit.script(model))
    assert [(s.module, s.function, s.op_function, s.kind) for s in plan.sites] == [
        ("act", None, "tanh", "Tanh"), ("", "tanh", "tanh", None)]
    # Each site's plan and saturation, on every capture path.
    for scanned in (model, torch.jit.script(model),
                    torch.export.export(model, (data()[:2],), dynamic_shapes={"x": {0: torch.export.Dim("b", min=2)}})):
        result = deadrelu.scan(scanned, data())
        assert [(site.name, site.kind, site.saturation) for site in result.sites] == [
            ("act", "Tanh", "bounds"), ("<root>:tanh#0", "Tanh", "bounds")], type(scanned)
        for site in result.sites:
            assert site.verdict.dead_units == LOW
            assert site.verdict.saturated_units == LOW + HIGH
            assert site.stats.at_ceiling[HIGH].tolist() == [12]
        assert result.coverage["unsupported"] == []


def test_the_derived_tables_follow_the_entry_back_out(monkeypatch):
    with monkeypatch.context() as patched:
        patched.setitem(kinds.KINDS, "Tanh", tanh_kind())
        assert "tanh" in activation_ops() and kinds.kind_of_class_name("Tanh") == "Tanh"
    assert "tanh" not in activation_ops() and kinds.kind_of_class_name("Tanh") is None
    assert torch.tanh not in functional_table() and kinds.spec_for_module(nn.Tanh()) is None
