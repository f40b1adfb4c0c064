"""Hardswish, Hardsigmoid, Mish, tanh-GELU, other libraries' activation classes, gated MLPs, and the
activations deadrelu cannot scan listed instead of dropped. Every model carries its truth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import deadrelu
from deadrelu.kinds import spec_for_module

CHANNELS, DEAD = 8, 3


class MobileBlock(nn.Module):
    """MobileNetV3-style: conv -> BN -> Hardswish, then a squeeze-excite gate with Hardsigmoid.

    The conv's bias puts channels 0..DEAD-1 at -10 (Hardswish is 0 there, with gradient 0: dead);
    channel DEAD sits at -1 (negative output, but x > -3: its gradient lives, not dead).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.act = nn.Hardswish()
        self.se_reduce = nn.Conv2d(CHANNELS, 4, 1)
        self.se_act = nn.ReLU()
        self.se_expand = nn.Conv2d(4, CHANNELS, 1)
        self.gate = nn.Hardsigmoid()
        with torch.no_grad():
            self.conv.weight.mul_(0.01)
            self.conv.bias.fill_(1.0)
            self.conv.bias[:DEAD] = -10.0
            self.conv.bias[DEAD] = -1.0
            self.se_expand.bias.fill_(0.0)
            self.se_expand.bias[0] = 50.0  # gate channel 0 pinned at its upper bound 1

    def forward(self, x):
        h = self.act(self.conv(x))
        scale = self.gate(self.se_expand(self.se_act(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        return h * scale


def images() -> torch.Tensor:
    return torch.rand(10, 3, 6, 6, generator=torch.Generator().manual_seed(3))


def test_hardswish_is_dead_only_where_its_gradient_is_zero():
    result = deadrelu.scan(MobileBlock(), images())
    sites = {site.name: site for site in result.sites}
    assert [(s.name, s.kind) for s in result.sites] == [("act", "Hardswish"), ("se_act", "ReLU"),
                                                        ("gate", "Hardsigmoid")]
    assert sites["act"].verdict.dead_units == list(range(DEAD))
    assert sites["act"].observations == 10 * 6 * 6
    assert sites["gate"].saturated == 1 and sites["gate"].verdict.saturated_units == [0]


def test_hardswish_sites_have_the_same_names_and_counts_in_torchscript_and_export():
    model = MobileBlock().eval()
    eager = deadrelu.scan(model, images())
    scripted = deadrelu.scan(torch.jit.script(model), images())
    exported = deadrelu.scan(torch.export.export(model, (images()[:2],), dynamic_shapes={
        "x": {0: torch.export.Dim("batch", min=2)}}), images())
    expected = [(s.name, s.kind, s.dead, s.saturated) for s in eager.sites]
    assert [(s.name, s.kind, s.dead, s.saturated) for s in scripted.sites] == expected
    assert [(s.name, s.kind, s.dead, s.saturated) for s in exported.sites] == expected


class GELUActivation(nn.Module):
    """Named like transformers' class: an activation module whose forward calls F.gelu."""

    def forward(self, x):
        return F.gelu(x)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 10)
        self.act = GELUActivation()

    def forward(self, x):
        return self.act(self.fc(x))


class WithMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = Mlp()

    def forward(self, x):
        return self.mlp(x)


def test_an_activation_module_calling_a_function_is_named_alike_in_every_format():
    model = WithMlp().eval()
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(0))
    for scanned in (model, torch.jit.script(model),
                    torch.export.export(model, (x[:2],), dynamic_shapes={"x": {0: torch.export.Dim("b", min=2)}})):
        result = deadrelu.scan(scanned, x)
        assert [(s.name, s.kind, s.function) for s in result.sites] == [("mlp.act", "GELU", None)], type(scanned)


def test_tanh_gelu_mish_and_transformers_classes_are_their_kinds():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            h = self.fc(x)
            return F.gelu(h, approximate="tanh") + F.mish(h) + F.hardswish(h)

    result = deadrelu.scan(Functional(), torch.randn(8, 4))
    assert [(s.name, s.kind) for s in result.sites] == [("<root>:gelu#0", "GELU"), ("<root>:mish#0", "Mish"),
                                                        ("<root>:hardswish#0", "Hardswish")]
    assert spec_for_module(nn.GELU(approximate="tanh")).kind == "GELU"
    named = {name: type(name, (nn.Module,), {"forward": lambda self, x: x}) for name in (
        "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation", "GELUActivation", "SiLUActivation",
        "MishActivation", "ReLUSquaredActivation", "HardSwish")}
    assert {name: spec_for_module(cls()).kind for name, cls in named.items()} == {
        "NewGELUActivation": "GELU", "FastGELUActivation": "GELU", "QuickGELUActivation": "GELU",
        "GELUActivation": "GELU", "SiLUActivation": "SiLU", "MishActivation": "Mish",
        "ReLUSquaredActivation": "ReLUSquared", "HardSwish": "Hardswish"}


class GatedMlp(nn.Module):
    """Llama-style ``down(act(gate(x)) * up(x))``; up's rows 0..DEAD-1 are zero, so the product is 0 there."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(6, 12)
        self.up_proj = nn.Linear(6, 12)
        self.down_proj = nn.Linear(12, 6)
        self.act_fn = nn.SiLU()
        with torch.no_grad():
            self.up_proj.weight[:DEAD] = 0.0
            self.up_proj.bias[:DEAD] = 0.0

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = GatedMlp()

    def forward(self, x):
        return self.mlp(x)


def test_gated_mlp_reports_the_gate_and_the_dormancy_of_the_product():
    tokens = torch.randn(5, 7, 6, generator=torch.Generator().manual_seed(4))
    result = deadrelu.scan(Decoder(), tokens)
    sites = {site.name: site for site in result.sites}
    assert [(s.name, s.kind, s.units) for s in result.sites] == [("mlp.act_fn", "SiLU", 12),
                                                                 ("mlp:swiglu#0", "SwiGLU", 12)]
    assert sites["mlp.act_fn"].dead == 0
    assert sites["mlp:swiglu#0"].verdict.dead_units == list(range(DEAD))
    assert sites["mlp:swiglu#0"].observations == 5 * 7
    # Without functional capture the product cannot be attributed: the gate is still reported.
    gate_only = deadrelu.scan(Decoder(), tokens, functional=False)
    assert [s.name for s in gate_only.sites] == ["mlp.act_fn"]


def test_unsupported_activations_are_listed_with_their_calls():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.squash = nn.Softplus()
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.squash(self.squash(self.fc(x))))

    result = deadrelu.scan(Shared(), torch.randn(6, 4))
    assert [s.name for s in result.sites] == ["act"]
    assert result.coverage["unsupported"] == [{"module": "squash", "class": "Softplus", "calls": 2,
                                               "reason": "unsupported kind"}]
    assert "2 Softplus calls not scanned (unsupported kind) at module squash" in result.warnings
    scripted = deadrelu.scan(torch.jit.script(Shared().eval()), torch.randn(6, 4))
    assert "1 Softplus module not scanned (unsupported kind) at module squash" in scripted.warnings


def test_a_class_named_like_a_kind_that_makes_no_aten_op_is_listed_in_torchscript():
    class NewGELUActivation(nn.Module):
        def forward(self, x):
            return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * x * x * x)))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 8)
            self.act = NewGELUActivation()
            self.out = nn.ReLU()

        def forward(self, x):
            return self.out(self.act(self.fc(x)))

    model = Block().eval()
    assert [s.name for s in deadrelu.scan(model, torch.randn(6, 4)).sites] == ["act", "out"]
    scripted = deadrelu.scan(torch.jit.script(model), torch.randn(6, 4))
    assert [s.name for s in scripted.sites] == ["out"]
    assert ("1 NewGELUActivation module not scanned (computes its activation without an aten activation op; "
            "only an eager scan sees it) at module act") in scripted.warnings


def test_a_tanh_only_model_names_the_module_not_a_count() -> None:
    # Sequential names its Tanh "1": the message must not read "unsupported kind: 1".
    import pytest

    from deadrelu.errors import DeadReluError
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    with pytest.raises(DeadReluError) as caught:
        deadrelu.scan(model, torch.randn(16, 4))
    assert "1 Tanh call not scanned (unsupported kind) at module 1" in str(caught.value)
    assert "unsupported kind: 1" not in str(caught.value)


def test_the_layers_hint_names_sites_as_the_table_does() -> None:
    # One ReLU module called once: the table says "0.act", so the hint must too (not "0.act#0");
    # a module called twice keeps its call index, as in the table.
    import pytest

    from deadrelu.errors import DeadReluError

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act, self.twice = nn.Linear(4, 4), nn.ReLU(), nn.ReLU()

        def forward(self, x):
            return self.twice(self.twice(self.act(self.fc(x))))

    model = nn.Sequential(Block(), nn.Linear(4, 1))
    names = [site.name for site in deadrelu.scan(model, torch.randn(16, 4)).sites]
    assert names == ["0.act", "0.twice#0", "0.twice#1"]
    with pytest.raises(DeadReluError) as caught:
        deadrelu.scan(model, torch.randn(16, 4), layers=["blok.*"])
    assert caught.value.hint == "sites found: 0.act, 0.twice#0, 0.twice#1"
