"""The fused activation (``deadrelu_fused_activation`` in ``deadrelu/fused_kernel.c``, ``capturing/fused_forward.py``):
during a scan a ReLU-family module on float32 CPU data computes its output and its
statistics in one pass instead of its own forward plus a hook.

Truth: the model's outputs are the same bits with and without the scan (-0.0 and NaN
payloads included), and every site's statistics equal those of the plain-hook path (the
same capture with the fused activation turned off): counts, min, max and the NaN/inf slices
left out exactly, sums of values to float32 rounding -- every kind, in place and not,
contiguous, channels-last and non-contiguous, conv and (N, L, D) shapes, with NaN/inf.
The module's own forward is back after the scan, raised or not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
import deadrelu.fused as fused_module
from deadrelu.errors import CaptureError

CHANNELS = 6


def _kinds() -> list[tuple[str, nn.Module]]:
    torch.manual_seed(3)
    prelu_channels = nn.PReLU(CHANNELS)
    with torch.no_grad():
        prelu_channels.weight.copy_(torch.tensor([0.25, -0.5, 0.1, 0.0, 0.3, 1.5]))
    kinds = [("ReLU", nn.ReLU()), ("ReLU-inplace", nn.ReLU(inplace=True)),
             ("ReLU6", nn.ReLU6()), ("ReLU6-inplace", nn.ReLU6(inplace=True)),
             ("Hardtanh", nn.Hardtanh(-0.5, 1.5)), ("Hardtanh-inplace", nn.Hardtanh(-0.5, 1.5, inplace=True)),
             ("LeakyReLU", nn.LeakyReLU(0.2)), ("LeakyReLU-inplace", nn.LeakyReLU(0.3, inplace=True)),
             ("PReLU", nn.PReLU()), ("PReLU-channels", prelu_channels),
             ("RReLU", nn.RReLU(0.1, 0.3)), ("RReLU-inplace", nn.RReLU(inplace=True))]
    return kinds


KINDS = _kinds()
LAYOUTS = ("conv", "channels_last", "conv-noncontiguous", "sequence", "sequence-noncontiguous")


class ActNet(nn.Module):
    """A pre-activation in a given layout, one activation module (called twice: two sites),
    and an output that depends on every bit of the activation's output."""

    def __init__(self, act: nn.Module, layout: str) -> None:
        super().__init__()
        self.act = act
        self.layout = layout
        self.proj = nn.Linear(CHANNELS, CHANNELS)  # a transformer-style (N, L, D) producer: units D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x * 1.5 - 0.25  # a fresh tensor: in-place activations never write into the data
        if self.layout == "channels_last":
            hidden = hidden.contiguous(memory_format=torch.channels_last)
        elif self.layout == "conv-noncontiguous":
            hidden = hidden.transpose(2, 3)
        elif self.layout == "sequence":
            hidden = self.proj(hidden.flatten(2).transpose(1, 2))  # (N, L, D)
        elif self.layout == "sequence-noncontiguous":
            hidden = self.proj(hidden.flatten(2).transpose(1, 2)).transpose(0, 1)  # (L, N, D), strided
        first = self.act(hidden)
        again = self.act(first * 2.0 - 1.0)
        return torch.cat([first.flatten(), again.flatten()])


def _data() -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    data = torch.randn(24, CHANNELS, 5, 7, generator=generator) * 3
    data[1, 2, 0, 0] = float("nan")  # unit 2's slice of the first batch is left out
    data[9, 4, 1, 3] = float("inf")  # unit 4's slice of the second batch too
    data[10, 0, 2, 2] = float("-inf")
    data[12, 1] = 1 / 6  # 1.5 x - 0.25 = 0.0 exactly: the threshold and ReLU's zero
    data[13, 3, :, :2] = -0.0
    data[17, 5, 4] = -float("nan")
    return data


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.int32)


def _scan(model: nn.Module, data: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    outputs = []
    with torch.inference_mode(), deadrelu.capture(model) as cap:
        for batch in data.split(8):
            outputs.append(model(batch.clone()))
    stats = {(r.module, r.function, r.call_index): cap.finalize(r) for r in cap.records()}
    return outputs, stats


class _Counting:
    """fused.activation() wrapped to count the kernel's calls."""

    def __init__(self, function) -> None:
        self.function = function
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return self.function(*args)


@pytest.fixture
def kernel(monkeypatch):
    function = fused_module.activation()
    if function is None:
        pytest.skip(f"no fused activation on this machine: {fused_module.note()}")
    counting = _Counting(function)
    monkeypatch.setattr(fused_module, "activation", lambda: counting)
    return counting


def _reference(model: nn.Module, data: torch.Tensor, monkeypatch) -> tuple[list[torch.Tensor], dict]:
    with monkeypatch.context() as patch:
        patch.setattr(fused_module, "activation", lambda: None)  # the hook path
        return _scan(model, data)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name,act", KINDS, ids=[name for name, _ in KINDS])
def test_fused_activation_matches_hooks_and_torch(name, act, layout, kernel, monkeypatch):
    if name == "PReLU-channels" and layout.startswith("sequence"):
        pytest.skip("PReLU's channel axis is 1: a (N, L, D) input would need L == num_parameters")
    model = ActNet(act, layout).eval()
    data = _data()
    with torch.inference_mode():
        plain = [model(batch.clone()) for batch in data.split(8)]
    reference_outputs, reference = _reference(model, data, monkeypatch)
    outputs, stats = _scan(model, data)
    for want, got, hooked in zip(plain, outputs, reference_outputs):
        assert torch.equal(_bits(want), _bits(got))
        assert torch.equal(_bits(want), _bits(hooked))
    # The first batch discovers the sites on the hook path; the other two take the kernel,
    # except where it has no (outer, units, inner) view of the input: the first call of a
    # non-contiguous layout (the second may get a contiguous input: RReLU's output is).
    if layout.endswith("noncontiguous"):
        assert kernel.calls <= 2
    else:
        assert kernel.calls == 4
    assert stats.keys() == reference.keys() and len(stats) == 2
    for key, site in stats.items():
        expected = reference[key]
        for field in ("active", "at_floor", "at_ceiling", "observations", "minimum", "maximum", "nonfinite"):
            np.testing.assert_array_equal(getattr(site, field), getattr(expected, field), err_msg=f"{key} {field}")
        # Sums of values: the same float32 steps, which the compiler may associate differently
        # in the two kernels (-fassociative-math): equal to float32 rounding.
        for field in ("total", "total_sq", "total_abs"):
            np.testing.assert_allclose(getattr(site, field), getattr(expected, field), rtol=1e-6, err_msg=f"{key} {field}")
    first = stats[("act", None, 0)]
    assert first.nonfinite.sum() > 0  # NaN/inf slices of fused batches left out, as the hooks leave them out
    assert "forward" not in vars(act)


def test_counts_carry_their_truth(kernel):
    """A ReLU whose channel 0 is never active and channel 1 always is: exact counts through the kernel."""
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(inplace=True)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-1.0, 2.0, 0.0]))
    data = torch.randn(24, 2, 4, 4)
    outputs, stats = _scan(model, data)
    site = stats[("1", None, 0)]
    assert kernel.calls == 2
    np.testing.assert_array_equal(site.observations, [24 * 16] * 3)
    np.testing.assert_array_equal(site.active, [0, 24 * 16, 0])
    np.testing.assert_array_equal(site.total, [0, 2 * 24 * 16, 0])
    np.testing.assert_array_equal(site.maximum, [0, 2, 0])
    assert all(torch.equal(out, torch.tensor([0.0, 2.0, 0.0]).view(1, 3, 1, 1).expand(8, 3, 4, 4)) for out in outputs)


def test_in_place_stays_in_place(kernel):
    """An in-place module writes its output into its input (the same storage) under the kernel."""
    seen = []

    class Keep(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.LeakyReLU(0.1, inplace=True)

        def forward(self, x):
            hidden = x - 0.5
            out = self.act(hidden)
            seen.append((hidden.data_ptr(), out.data_ptr(), out is hidden))
            return out

    _scan(Keep().eval(), torch.randn(16, 4, 3))
    assert kernel.calls == 1
    assert len(seen) == 2 and all(same for _, _, same in seen)


def test_grad_and_other_dtypes_keep_the_hooks(kernel):
    """With gradients wanted (a training monitor, a grad-enabled capture) or float64 data, no kernel call."""
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU()).eval()
    with deadrelu.capture(model) as cap:  # grad enabled
        for _ in range(3):
            model(torch.randn(8, 4)).sum().backward()
    assert kernel.calls == 0 and cap.records()
    double = nn.Sequential(nn.Linear(4, 5), nn.ReLU()).double().eval()
    _scan(double, torch.randn(16, 4, dtype=torch.float64))
    assert kernel.calls == 0


def test_subclass_keeps_its_own_forward(kernel):
    """A subclass of nn.ReLU may compute something else: its forward is never replaced."""

    class Shifted(nn.ReLU):
        def forward(self, x):
            return torch.relu(x) + 1.0

    model = nn.Sequential(nn.Linear(4, 5), Shifted()).eval()
    outputs, stats = _scan(model, torch.randn(16, 4))
    assert kernel.calls == 0
    assert all(bool((out >= 1.0).all()) for out in outputs)


def test_forward_is_given_back_after_an_error_mid_scan(kernel):
    """An exception in the middle of a fused batch leaves every module's own forward in place."""
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.calls = 0

        def forward(self, x):
            out = self.act(x)
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")
            return out

    model = Fails().eval()
    act = model.act
    with pytest.raises(RuntimeError, match="boom"):
        with torch.inference_mode(), deadrelu.capture(model):
            model(torch.randn(4, 3))
            assert "forward" in vars(act)  # swapped while the capture runs
            model(torch.randn(4, 3))
    assert kernel.calls == 1
    assert "forward" not in vars(act)
    with torch.inference_mode():
        assert torch.equal(act(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


def test_shape_change_mid_scan_still_raises(kernel):
    """A site whose units change in a fused batch raises the capture's own error, and is restored."""
    model = nn.Sequential(nn.ReLU())
    act = model[0]
    with pytest.raises(CaptureError, match="changed its units"):
        with torch.inference_mode(), deadrelu.capture(model):
            model(torch.randn(4, 3))
            model(torch.randn(4, 5))
    assert kernel.calls == 0  # raised before the kernel ran
    assert "forward" not in vars(act)


def test_without_the_kernel_nothing_is_fused(monkeypatch):
    """No compiler at install (no fused activation): the module's forward is only observed (its
    own forward runs), by the hooks in the first batch and by the swapped forward after it."""
    monkeypatch.setattr(fused_module, "activation", lambda: None)
    model = nn.Sequential(nn.ReLU())
    with torch.inference_mode(), deadrelu.capture(model) as cap:
        assert vars(model[0])["forward"].kernel is False
        model(torch.randn(4, 3))
        model(torch.randn(4, 3))
    assert "forward" not in vars(model[0])
    assert cap.finalize(cap.records()[0]).observations.tolist() == [8, 8, 8]


def test_scan_api_and_environment(kernel):
    """deadrelu.scan takes the kernel on later batches and reports the fused reduction."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
                          nn.ReLU6())
    result = deadrelu.scan(model, torch.randn(64, 3, 8, 8), batch_size=16)
    assert kernel.calls == 2 * 3
    assert result.environment["reduction"] == "fused"
    assert [site.name for site in result.sites] == ["1", "4"]
    assert not math.isnan(float(result.sites[0].stats.active.sum()))


def test_module_built_before_the_fused_activation_only_observes(monkeypatch):
    """A ``deadrelu._fused`` with the reduction but no ``activation`` entry (built by an older
    deadrelu) still reduces with the kernel; the scan runs each module's own forward and
    observes it (no fused activation)."""
    import sys
    import types

    import deadrelu._fused as built

    older = types.ModuleType("deadrelu._fused")
    older.__file__, older.__spec__ = built.__file__, built.__spec__
    older.abi, older.update = built.abi, built.update
    monkeypatch.setitem(sys.modules, "deadrelu._fused", older)
    fused_module.reset()
    try:
        assert fused_module.kernel() is not None
        assert fused_module.activation() is None
        model = nn.Sequential(nn.Linear(4, 5), nn.ReLU()).eval()
        with torch.inference_mode(), deadrelu.capture(model) as cap:
            assert vars(model[1])["forward"].kernel is False
            for _ in range(3):
                model(torch.randn(8, 4))
        assert cap.finalize(cap.records()[0]).observations.tolist() == [24] * 5
    finally:
        monkeypatch.undo()
        fused_module.reset()
