"""Functional activations (``F.relu`` & co. in ``forward``): found, attributed, counted once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_globals

import deadrelu
from conftest import report_of
from deadrelu.capturing.functional import FUNCTION_NAMES, read_call, spec_for_call
from deadrelu.kinds import SELU_ALPHA, SELU_SCALE
from deadrelu.settings import FunctionalCapture


def bounded(samples: int, features: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(samples, features, generator=generator) * 2 - 1


def no_global_capture_state() -> bool:
    """Nothing of a scan is left in torch's process-wide state."""
    return (not module_globals._global_forward_hooks and not module_globals._global_forward_pre_hooks
            and not module_globals._global_forward_hooks_always_called
            and torch._C._len_torch_function_stack() == 0)


def no_module_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- a pitch-tracking-style CNN: six F.relu calls in the root's forward ---------------------

class PitchCNN(nn.Module):
    """CREPE-like: six (conv -> F.relu -> BatchNorm -> max-pool) layers, all ReLUs functional.

    Conv ``i`` has bias -100 on the channels in ``dead[i]`` and +1 elsewhere, with weights
    scaled by 0.01 so that |w.x| < 1: exactly those channels are dead, all others active.
    """

    widths = (8, 6, 6, 5, 5, 4)
    dead = ((0, 3), (1,), (), (0, 2, 4), (4,), (1, 2))

    def __init__(self) -> None:
        super().__init__()
        channels = (1,) + self.widths
        self.convs = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], (3, 1), padding=(1, 0))
                                   for i in range(6))
        self.norms = nn.ModuleList(nn.BatchNorm2d(width) for width in self.widths)
        self.head = nn.Linear(self.widths[-1], 3)
        with torch.no_grad():
            for conv, dead in zip(self.convs, self.dead):
                conv.weight.mul_(0.01)
                conv.bias.fill_(1.0)
                conv.bias[list(dead)] = -100.0

    def layer(self, x: torch.Tensor, index: int) -> torch.Tensor:
        x = F.relu(self.convs[index](x))
        return F.max_pool2d(self.norms[index](x), (2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(6):
            x = self.layer(x, index)
        return self.head(x.mean((2, 3)))

    def pre_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each F.relu's input, computed by hand (eval mode, as the scan runs)."""
        self.eval()
        pres = []
        with torch.no_grad():
            for index in range(6):
                pre = self.convs[index](x)
                pres.append(pre)
                x = F.max_pool2d(self.norms[index](F.relu(pre)), (2, 1))
        return pres


def test_six_functional_relus_give_six_sites_with_hand_counted_dead_channels():
    model = PitchCNN()
    x = torch.randn(10, 1, 128, 1)
    result = deadrelu.scan(model, x, batch_size=4)
    assert [s.name for s in result.sites] == [f"<root>:relu#{k}" for k in range(6)]
    for k, (site, pre) in enumerate(zip(result.sites, model.pre_activations(x), strict=True)):
        assert (site.module, site.function, site.call_index, site.kind) == ("", "relu", k, "ReLU")
        assert site.unit_dim == 1 and site.units == PitchCNN.widths[k]
        assert site.observations == 10 * pre.shape[2] * pre.shape[3]
        np.testing.assert_array_equal(site.stats.active, (pre > 0).sum((0, 2, 3)).numpy())
        assert site.verdict.dead_units == list(PitchCNN.dead[k])
    assert result.summary.dead == sum(len(d) for d in PitchCNN.dead) == 9
    assert no_global_capture_state() and no_module_hooks(model)


def test_functional_site_json_fields():
    model = PitchCNN()
    data = json.loads(deadrelu.scan(model, torch.randn(4, 1, 64, 1)).to_json(unit_stats=False))
    first = data["sites"][0]
    assert (first["name"], first["module"], first["function"], first["call_index"]) == ("<root>:relu#0", "", "relu", 0)
    assert [s["call_index"] for s in data["sites"]] == list(range(6))
    assert data["settings"]["functional"] is True


# -- module and functional activations together ---------------------------------------------

class Mixed(nn.Module):
    """fc1 -> nn.ReLU module (2 dead) -> fc2 -> F.relu (3 dead) -> fc3 -> F.leaky_relu (1 dead)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(10, 8), nn.Linear(8, 6), nn.Linear(6, 4)
        self.act = nn.ReLU()
        with torch.no_grad():
            for fc, dead in ((self.fc1, 2), (self.fc2, 3), (self.fc3, 1)):
                fc.weight.mul_(0.1)
                fc.bias.fill_(1.0)
                fc.bias[:dead] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        h = F.relu(self.fc2(h))
        return F.leaky_relu(self.fc3(h), 0.2)


def test_module_and_functional_mix_counts_each_call_once():
    result = deadrelu.scan(Mixed(), bounded(50, 10), batch_size=16)
    assert [s.name for s in result.sites] == ["act", "<root>:relu#0", "<root>:leaky_relu#0"]
    assert [s.kind for s in result.sites] == ["ReLU", "ReLU", "LeakyReLU"]
    assert [s.never_fired for s in result.sites] == [2, 3, 1]
    assert [s.dead for s in result.sites] == [2, 3, 0]  # the leaky unit keeps a gradient: never active, not dead
    # nn.ReLU.forward calls F.relu inside; the module site must not be doubled.
    assert all(s.observations == 50 for s in result.sites)
    assert result.site("act").function is None


def test_no_functional_setting_keeps_only_module_sites():
    result = deadrelu.scan(Mixed(), bounded(20, 10), functional=False)
    assert [s.name for s in result.sites] == ["act"]
    assert result.settings.functional is FunctionalCapture.OFF and not result.settings.functional
    assert no_global_capture_state()


def test_no_functional_cli_flag(tmp_path, runner):
    arch = tmp_path / "arch.py"
    arch.write_text("from test_functional import Mixed\n")
    torch.save(Mixed().state_dict(), tmp_path / "model.pt")
    np.save(tmp_path / "data.npy", bounded(30, 10).numpy())
    names = {}
    for flag in ([], ["--no-functional"]):
        report = report_of(runner, tmp_path / "model.pt", tmp_path / "data.npy", "--arch", f"{arch}:Mixed",
                           "--quiet", *flag)
        names[bool(flag)] = [s["name"] for s in report["sites"]]
    assert names[False] == ["act", "<root>:relu#0", "<root>:leaky_relu#0"]
    assert names[True] == ["act"]


# -- attribution ------------------------------------------------------------------------------

class Block(nn.Module):
    """Linear -> F.relu; ``shift`` is added before the ReLU so each use can kill different units."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        with torch.no_grad():
            self.fc.weight.mul_(0.1)
            self.fc.bias.fill_(1.0)

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(x) + shift)


class TwiceBlock(nn.Module):
    """One ``self.block`` called twice per forward: unit 0 dies on the first call, units 1-3 on the second."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        first, second = torch.zeros(6), torch.zeros(6)
        first[0] = -100.0
        second[1:4] = -100.0
        self.register_buffer("first", first)
        self.register_buffer("second", second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(x, self.first), self.second)


def test_functional_call_in_a_module_called_twice_is_two_sites():
    model = TwiceBlock()
    x = bounded(40, 6)
    result = deadrelu.scan(model, x, batch_size=7)
    assert [s.name for s in result.sites] == ["block:relu#0", "block:relu#1"]
    first, second = result.sites
    assert (first.module, first.call_index, second.call_index) == ("block", 0, 1)
    with torch.no_grad():
        pre1 = model.block.fc(x) + model.first
        pre2 = model.block.fc(torch.relu(pre1)) + model.second
    np.testing.assert_array_equal(first.stats.active, (pre1 > 0).sum(0).numpy())
    np.testing.assert_array_equal(second.stats.active, (pre2 > 0).sum(0).numpy())
    assert first.verdict.dead_units == [0]
    assert second.verdict.dead_units == [1, 2, 3]


class Nested(nn.Module):
    """Functional calls at three depths, each counted in its own module's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.outer = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        self.block = Block()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.outer(x))            # <root>:relu#0
        h = self.block(self.fc(h), torch.zeros(6))  # block:relu#0
        return h.relu()                          # <root>:relu#1


def test_calls_are_attributed_to_the_module_whose_forward_made_them():
    result = deadrelu.scan(Nested(), torch.randn(9, 4))
    assert [s.name for s in result.sites] == ["outer.1", "<root>:relu#0", "block:relu#0", "<root>:relu#1"]
    assert [s.module for s in result.sites] == ["outer.1", "", "block", ""]


def test_activation_module_built_inside_forward_is_a_functional_site_of_its_caller():
    class Inline(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 5)

        def forward(self, x):
            return nn.ReLU()(self.fc(x))  # not a registered submodule: no module hooks on it

    result = deadrelu.scan(Inline(), torch.randn(6, 3))
    assert [s.name for s in result.sites] == ["<root>:relu#0"]
    assert result.sites[0].observations == 6


def test_calls_made_while_producing_data_are_not_sites():
    model = Mixed()

    def batches():
        for _ in range(3):
            yield F.relu(bounded(8, 10)) - 0.5  # runs while the capture is open, outside forward

    result = deadrelu.scan(model, batches())
    assert [s.name for s in result.sites] == ["act", "<root>:relu#0", "<root>:leaky_relu#0"]
    assert result.sites[1].observations == 24


def test_layer_filters_apply_to_functional_sites():
    model = Nested()
    x = torch.randn(5, 4)
    assert [s.name for s in deadrelu.scan(model, x, exclude=["<root>:*"]).sites] == ["outer.1", "block:relu#0"]
    assert [s.name for s in deadrelu.scan(model, x, layers=["block"]).sites] == ["block:relu#0"]
    assert [s.name for s in deadrelu.scan(model, x, layers=["*relu#1"]).sites] == ["<root>:relu#1"]


def test_functional_unit_axis_follows_the_producer():
    class Seq(nn.Module):  # (N, L, D) with L == D: only the producing Linear tells the axis
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.Linear(8, 12)
            with torch.no_grad():
                self.up.bias.fill_(1.0)
                self.up.weight.mul_(0.05)
                self.up.bias[[2, 5]] = -100.0

        def forward(self, x):
            return F.gelu(self.up(x))

    site = deadrelu.scan(Seq(), torch.rand(5, 12, 8)).sites[0]
    assert (site.name, site.kind, site.unit_dim, site.units) == ("<root>:gelu#0", "GELU", 2, 12)
    assert site.verdict.dead_units == [2, 5]
    assert site.observations == 5 * 12


# -- the function table -------------------------------------------------------------------------

def dead_linear(dead: int = 3, width: int = 10) -> nn.Linear:
    layer = nn.Linear(10, width)
    with torch.no_grad():
        layer.bias.fill_(0.5)
        layer.bias[:dead] = -100.0
    return layer


class Applies(nn.Module):
    """Linear (bias -100 on units 0-2, so they are dead) -> one functional call."""

    def __init__(self, call) -> None:
        super().__init__()
        self.fc = dead_linear()
        self.call = call

    def forward(self, x):
        return self.call(self.fc(x))


NEG_WEIGHT = torch.full((10,), -0.5)

CASES = [
    # (call, function, kind, saturated units)
    (lambda h: F.relu(h), "relu", "ReLU", []),
    (lambda h: torch.relu(h), "relu", "ReLU", []),
    (lambda h: h.relu(), "relu", "ReLU", []),
    (lambda h: F.relu(h, inplace=True), "relu", "ReLU", []),
    (lambda h: torch.relu_(h), "relu", "ReLU", []),
    (lambda h: h.relu_(), "relu", "ReLU", []),
    (lambda h: F.relu6(h), "relu6", "ReLU6", [0, 1, 2]),
    (lambda h: F.leaky_relu(h, 0.1), "leaky_relu", "LeakyReLU", []),
    (lambda h: F.leaky_relu(h, negative_slope=-0.3, inplace=True), "leaky_relu", "LeakyReLU", []),
    (lambda h: F.leaky_relu_(h, -0.3), "leaky_relu", "LeakyReLU", []),
    (lambda h: F.elu(h), "elu", "ELU", [0, 1, 2]),
    (lambda h: F.elu(h, alpha=0.5, inplace=True), "elu", "ELU", [0, 1, 2]),
    (lambda h: F.selu(h), "selu", "SELU", [0, 1, 2]),
    (lambda h: torch.selu_(h), "selu", "SELU", [0, 1, 2]),
    (lambda h: F.celu(h, 2.0), "celu", "CELU", [0, 1, 2]),
    (lambda h: F.gelu(h), "gelu", "GELU", []),
    (lambda h: F.silu(h), "silu", "SiLU", []),
    (lambda h: F.hardtanh(h, -2.0, 2.0), "hardtanh", "Hardtanh", [0, 1, 2]),
    (lambda h: F.prelu(h, NEG_WEIGHT), "prelu", "PReLU", []),
    (lambda h: F.prelu(h, torch.tensor([-0.5])), "prelu", "PReLU", []),
    (lambda h: F.rrelu(h), "rrelu", "RReLU", []),
    (lambda h: F.rrelu(h, -0.4, -0.2), "rrelu", "RReLU", []),
    (lambda h: torch.clamp(h, min=0), "clamp", "ReLU", []),
    (lambda h: h.clamp(0), "clamp", "ReLU", []),
    (lambda h: h.clamp(min=0.0, max=None), "clamp", "ReLU", []),
    (lambda h: h.clip(min=0), "clamp", "ReLU", []),
    (lambda h: h.clamp_min(0), "clamp", "ReLU", []),
    (lambda h: torch.clamp_min(h, 0), "clamp", "ReLU", []),
    (lambda h: h.clamp_(min=0), "clamp", "ReLU", []),
    (lambda h: h.clamp_min_(0), "clamp", "ReLU", []),
]


@pytest.mark.parametrize("call, function, kind, saturated", CASES)
def test_each_function_is_a_site_with_its_kind_and_exact_dead_units(call, function, kind, saturated):
    result = deadrelu.scan(Applies(call), bounded(40, 10), batch_size=16)
    assert len(result.sites) == 1
    site = result.sites[0]
    assert (site.name, site.function, site.kind) == (f"<root>:{function}#0", function, kind)
    # Dead units are read from the pre-activation, also for in-place calls and negative slopes
    # (where a dead unit's output is positive).
    assert site.verdict.dead_units == [0, 1, 2]
    assert site.verdict.saturated_units == saturated
    assert site.observations == 40


def test_functional_floors_come_from_the_call_arguments():
    for call, floor in ((lambda h: F.elu(h, alpha=0.5), -0.5), (lambda h: F.celu(h, 2.0), -2.0),
                        (lambda h: F.selu(h), -SELU_SCALE * SELU_ALPHA), (lambda h: F.hardtanh(h, -2.0, 2.0), -2.0)):
        site = deadrelu.scan(Applies(call), bounded(30, 10)).sites[0]
        np.testing.assert_allclose(site.stats.minimum[:3], floor, rtol=1e-6)


def test_negative_slope_dead_units_have_positive_outputs():
    site = deadrelu.scan(Applies(lambda h: F.leaky_relu(h, -0.3, inplace=True)), bounded(30, 10)).sites[0]
    assert site.stats.minimum[:3].min() > 0  # outputs positive, yet never active: dead
    assert site.verdict.dead_units == [0, 1, 2]


def test_functional_prelu_per_channel_on_conv_output_uses_channel_axis():
    class ConvPReLU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 5, 3)
            self.slope = nn.Parameter(torch.tensor([-0.5, 0.25, 0.25, -0.1, 0.25]))
            with torch.no_grad():
                self.conv.bias.copy_(torch.tensor([-100.0, 0.0, -100.0, 0.0, 0.0]))

        def forward(self, x):
            return F.prelu(self.conv(x), self.slope)

    model = ConvPReLU()
    x = torch.randn(6, 2, 7, 9)  # 5 output channels; no spatial axis of size 5
    site = deadrelu.scan(model, x).sites[0]
    assert (site.kind, site.unit_dim, site.units) == ("PReLU", 1, 5)
    assert site.verdict.dead_units == [0, 2]
    with torch.no_grad():
        np.testing.assert_array_equal(site.stats.active, (model.conv(x) > 0).sum((0, 2, 3)).numpy())


@pytest.mark.parametrize("call", [
    lambda h: torch.clamp(h, min=0, max=6),
    lambda h: h.clamp(0, 6),
    lambda h: h.clamp(min=-1),
    lambda h: h.clamp(max=0),
    lambda h: h.clamp_min(0.5),
    lambda h: torch.clamp(h, min=torch.tensor(0.0)),
])
def test_clamp_counts_only_as_min_zero_without_max(call):
    class ClampThenReLU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = dead_linear()
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(call(self.fc(x)))

    assert [s.name for s in deadrelu.scan(ClampThenReLU(), bounded(10, 10)).sites] == ["act"]


def test_integer_and_scalar_calls_are_not_sites():
    class Bookkeeping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            lengths = torch.arange(x.shape[0]).clamp(min=0)  # integer index math
            scale = torch.relu(x.sum())  # a 0-d scalar
            return torch.relu(self.fc(x)) * scale + lengths[:, None]

    assert [s.name for s in deadrelu.scan(Bookkeeping(), torch.randn(4, 3)).sites] == ["<root>:relu#0"]


def test_read_call_and_spec_for_call():
    h = torch.randn(2, 3)
    call = read_call(F.leaky_relu, (h,), {"negative_slope": -0.2, "inplace": True})
    assert call is not None and (call.function, call.inplace, call.arguments) == ("leaky_relu", True,
                                                                                   {"negative_slope": -0.2})
    assert spec_for_call(call).output_sign_matches_input is False
    assert read_call(torch.add, (h, h), {}) is None
    assert read_call(torch.clamp, (h, 0, 6), {}) is None
    assert read_call(torch.Tensor.clamp, (h, 0), {}).function == "clamp"
    hard = spec_for_call(read_call(F.hardtanh, (h, -3.0), {"max_val": 4.0}))
    assert (hard.kind, hard.floor, hard.ceiling) == ("Hardtanh", -3.0, 4.0)
    prelu = spec_for_call(read_call(F.prelu, (h, torch.tensor([0.1, -0.1, 0.2])), {}))
    assert prelu.per_channel_param and not prelu.output_sign_matches_input
    assert set(FUNCTION_NAMES) == {"relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu",
                                   "hardtanh", "prelu", "rrelu", "clamp", "mish", "hardswish", "hardsigmoid", "glu"}


# -- hook lifetime ------------------------------------------------------------------------------

class Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.act(F.relu(self.block(x, torch.zeros(6))))
        raise RuntimeError("boom after the activations ran")


def test_global_hooks_and_mode_removed_after_scan_and_after_a_failing_forward():
    model = Mixed()
    deadrelu.scan(model, bounded(8, 10))
    assert no_global_capture_state() and no_module_hooks(model)
    failing = Raises()
    failing.train()
    with pytest.raises(deadrelu.ForwardError, match="boom"):
        deadrelu.scan(failing, bounded(8, 6))
    assert no_global_capture_state() and no_module_hooks(failing)
    assert failing.training and failing.block.training
    # torch works normally afterwards: nothing intercepts F.relu any more
    assert torch.equal(F.relu(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


def test_capture_error_inside_a_functional_call_leaves_nothing_behind():
    class Growing(nn.Module):  # the functional site's unit count changes mid-scan
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            return F.relu(h if x.shape[0] > 2 else torch.cat([h, h], 1))

    with pytest.raises(deadrelu.CaptureError, match="changed its units"):
        deadrelu.scan(Growing(), torch.randn(5, 4), batch_size=3)
    assert no_global_capture_state()


def test_forward_called_directly_bypassing_root_hooks_is_still_attributed_to_the_root():
    from deadrelu.capturing import ActivationCapture
    from deadrelu.settings import ScanSettings

    model = Mixed()
    with ActivationCapture(model, ScanSettings(), torch.device("cpu")) as capture, torch.inference_mode():
        for _ in range(2):
            capture.begin_batch()
            model.forward(bounded(5, 10))
            capture.end_batch()
        names = [capture.site_name(r) for r in capture.records()]
        calls = [r.calls for r in capture.records()]
    assert names == ["act", "<root>:relu#0", "<root>:leaky_relu#0"]
    assert calls == [2, 2, 2]
    assert no_global_capture_state() and no_module_hooks(model)


def test_coverage_says_whether_functional_calls_were_captured():
    on = deadrelu.scan(Mixed(), bounded(6, 10))
    assert (on.coverage["functional"], on.coverage["functional_sites"]) == (True, 2)
    off = deadrelu.scan(Mixed(), bounded(6, 10), functional=False)
    assert (off.coverage["functional"], off.coverage["functional_sites"]) == (False, 0)
    assert deadrelu.ScanResult.from_dict(on.to_dict()).coverage["functional_sites"] == 2


def test_no_functional_on_a_functional_only_model_says_why_nothing_was_found():
    with pytest.raises(deadrelu.CaptureError, match="--no-functional"):
        deadrelu.scan(PitchCNN(), torch.randn(2, 1, 64, 1), functional=False)
