"""Capture correctness on models that carry their truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.kinds import SELU_ALPHA, SELU_SCALE
from truth_models import (Conv1dNet, ConvBNInplace, ReusedReLUBlock, SequenceMLP, bounded_inputs,
                          count_dead_neurons, linear_with_dead_units, seed_example_network)


def test_bias_minus_100_on_8_units_gives_exactly_8_dead():
    model = linear_with_dead_units(dead=8)
    result = deadrelu.scan(model, bounded_inputs(200, 10), batch_size=64)
    site = result.site("1")
    assert site.units == 32
    assert site.dead == 8
    assert site.verdict.dead_units == list(range(8))
    assert result.summary.dead == 8
    assert site.observations == 200


def test_reused_relu_is_two_sites_with_hand_counted_dead_units():
    model = ReusedReLUBlock()
    x = torch.randn(100, 6)
    result = deadrelu.scan(model, x, batch_size=32)
    assert [s.name for s in result.sites] == ["relu#0", "relu#1"]
    first, second = result.sites
    assert (first.module, first.call_index) == ("relu", 0)
    assert (second.module, second.call_index) == ("relu", 1)
    # Hand count: compute each call's input directly.
    with torch.no_grad():
        pre1 = model.fc1(x)
        pre2 = model.fc2(torch.relu(pre1)) + model.shift
    assert first.dead == int(((pre1 > 0).sum(0) == 0).sum()) == 3
    assert second.dead == int(((pre2 > 0).sum(0) == 0).sum()) == 5
    np.testing.assert_array_equal(first.stats.active, (pre1 > 0).sum(0).numpy())
    np.testing.assert_array_equal(second.stats.active, (pre2 > 0).sum(0).numpy())


def test_inplace_relu_after_batchnorm_counts_channels():
    model = ConvBNInplace()
    x = torch.randn(20, 3, 8, 8)
    result = deadrelu.scan(model, x, batch_size=6)
    site = result.site("relu")
    assert site.unit_dim == 1
    assert site.units == 8
    assert site.observations == 20 * 8 * 8
    assert site.verdict.dead_units == list(ConvBNInplace.dead_channels)
    model.eval()  # the scan ran in eval mode (BN uses running stats); so must the hand count
    with torch.no_grad():
        pre = model.bn(model.conv(x))
    np.testing.assert_array_equal(site.stats.active, (pre > 0).sum((0, 2, 3)).numpy())


def test_prelu_negative_slopes_judged_on_pre_activation():
    model = linear_with_dead_units(dead=4, width=16, activation=nn.PReLU(16))
    with torch.no_grad():
        model[1].weight.fill_(-0.5)  # negative slope: negative inputs give POSITIVE outputs
    x = bounded_inputs(100, 10)
    result = deadrelu.scan(model, x, batch_size=30)
    site = result.sites[0]
    assert site.kind == "PReLU"
    assert site.never_fired == 4 and site.never_active == 4 and site.never_active_units == [0, 1, 2, 3]
    assert site.verdict.dead_units == [0, 1, 2, 3]
    assert site.dead == 0  # PReLU keeps a gradient: never active, not dead (every count and the gate agree)
    assert site.stats.minimum[:4].min() > 0  # their outputs are positive, yet they never activate
    assert site.prelu_slopes["nonpositive"] == 16


def test_inplace_leaky_relu_with_negative_slope_reads_input_sign():
    model = linear_with_dead_units(dead=5, width=12, activation=nn.LeakyReLU(-0.3, inplace=True))
    result = deadrelu.scan(model, bounded_inputs(64, 10), batch_size=10)
    assert result.sites[0].never_active == 5 and result.sites[0].dead == 0
    assert result.sites[0].verdict.dead_units == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("activation, floor", [(nn.ELU(), -1.0), (nn.ELU(alpha=0.5), -0.5),
                                               (nn.SELU(), -SELU_SCALE * SELU_ALPHA), (nn.CELU(alpha=2.0), -2.0)])
def test_elu_family_pinned_at_floor_is_saturated(activation, floor):
    model = linear_with_dead_units(dead=5, width=20, activation=activation)
    result = deadrelu.scan(model, bounded_inputs(80, 10), batch_size=16)
    site = result.sites[0]
    assert site.saturated == 5
    assert site.verdict.saturated_units == [0, 1, 2, 3, 4]
    assert site.never_fired == 5 and site.dead == 0 and site.never_active == 0  # saturated, counted there
    np.testing.assert_allclose(site.stats.minimum[:5], floor, rtol=1e-6)


def test_relu6_dead_at_zero_and_saturated_at_six():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU6())
    with torch.no_grad():
        model[0].bias.fill_(0.5)
        model[0].bias[:2] = -100.0
        model[0].bias[2:5] = 100.0
    site = deadrelu.scan(model, bounded_inputs(50, 10)).sites[0]
    assert site.verdict.dead_units == [0, 1]
    assert site.verdict.saturated_units == [0, 1, 2, 3, 4]  # both bounds count as saturation


def test_hardtanh_uses_its_own_bounds():
    model = nn.Sequential(nn.Linear(10, 6), nn.Hardtanh(min_val=-2.0, max_val=2.0))
    with torch.no_grad():
        model[0].bias.fill_(0.0)
        model[0].bias[0] = -100.0  # pinned at -2: "dead" (never above the lower bound)
    site = deadrelu.scan(model, bounded_inputs(50, 10)).sites[0]
    assert site.verdict.dead_units == [0]
    assert site.stats.minimum[0] == -2.0


def test_sequence_block_units_are_the_last_axis():
    model = SequenceMLP()
    x = torch.randn(10, 24, 16)  # (N, L, D_in) with L == the hidden width
    site = deadrelu.scan(model, x, batch_size=4).site("act")
    assert site.unit_dim == 2
    assert site.units == 24
    assert site.observations == 10 * 24
    assert site.verdict.dead_units == [0, 7, 23]
    assert not deadrelu.scan(model, x).warnings


def test_conv1d_units_are_channels():
    model = Conv1dNet()
    x = torch.randn(12, 4, 20)
    result = deadrelu.scan(model, x, batch_size=5)
    first = result.site("act1")
    assert (first.unit_dim, first.units, first.observations) == (1, 10, 12 * 18)
    assert first.verdict.dead_units == [2, 9]
    assert result.site("act2").units == 6


def test_seed_count_dead_neurons_matches_position_granularity_on_its_example():
    torch.manual_seed(3)
    model = seed_example_network()
    with torch.no_grad():
        model[0].bias[:7] = -50.0
    x = torch.randn(1000, 10)
    expected = count_dead_neurons(model, x)
    result = deadrelu.scan(model, x, granularity="position", batch_size=128)
    assert expected > 0
    assert result.summary.dead == expected
    assert deadrelu.scan(model, x, batch_size=128).summary.dead == expected  # 2-D: same thing


def test_seed_count_on_conv_outputs_counts_positions():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU())
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([-100.0, 0.0, 0.0, -0.2]))
    x = torch.rand(30, 2, 6, 6) * 0.2
    expected = count_dead_neurons(model, x)
    by_position = deadrelu.scan(model, x, granularity="position", batch_size=7)
    assert by_position.summary.units == 4 * 4 * 4
    assert by_position.summary.dead == expected
    by_channel = deadrelu.scan(model, x, batch_size=7)
    assert by_channel.summary.units == 4
    assert by_channel.summary.dead == int(((model[0](x) > 0).sum((0, 2, 3)) == 0).sum())


@pytest.mark.parametrize("model_factory, shape", [
    (lambda: ConvBNInplace(), (23, 3, 8, 8)),
    (lambda: ReusedReLUBlock(), (23, 6)),
    (lambda: linear_with_dead_units(8, activation=nn.ELU()), (23, 10)),
])
def test_batch_size_invariance(model_factory, shape):
    model = model_factory()
    x = torch.randn(*shape)
    results = [deadrelu.scan(model, x, batch_size=size) for size in (1, 7, shape[0])]
    base = results[0]
    for other in results[1:]:
        assert [s.name for s in other.sites] == [s.name for s in base.sites]
        for a, b in zip(base.sites, other.sites, strict=True):
            np.testing.assert_array_equal(a.stats.active, b.stats.active)
            np.testing.assert_array_equal(a.stats.at_floor, b.stats.at_floor)
            np.testing.assert_array_equal(a.stats.observations, b.stats.observations)
            # The forward pass itself rounds differently per batch size (matmul blocking),
            # so extremes agree to float32 precision; counts must agree exactly.
            np.testing.assert_allclose(a.stats.minimum, b.stats.minimum, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.stats.maximum, b.stats.maximum, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.stats.total, b.stats.total, rtol=1e-5, atol=1e-4)
            np.testing.assert_array_equal(a.verdict.dead, b.verdict.dead)
            np.testing.assert_array_equal(a.verdict.dormant, b.verdict.dormant)


class _Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        self.act(self.fc(x))
        raise RuntimeError("boom")


def test_hooks_removed_and_modes_restored_when_forward_raises():
    model = _Exploding()
    model.train()
    model.bn.eval()  # a mixed state must come back exactly
    with pytest.raises(deadrelu.ForwardError, match="batch 0.*boom"):
        deadrelu.scan(model, torch.randn(8, 4))
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert model.training and model.fc.training and not model.bn.training


def test_hooks_removed_after_successful_scan_and_eval_mode_used():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9), nn.ReLU())
    model.train()
    first = deadrelu.scan(model, torch.randn(50, 4))
    second = deadrelu.scan(model, torch.randn(50, 4))
    assert first.sites[0].units == second.sites[0].units == 4
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_dormant_unit_is_not_dead_and_nan_unit_does_not_spread():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU())
    with torch.no_grad():
        model[0].bias.fill_(1.0)
        model[0].weight[3] *= 1e-4
        model[0].bias[3] = 1e-4  # tiny but positive: active, dormant
    result = deadrelu.scan(model, bounded_inputs(40, 10))
    site = result.sites[0]
    assert site.dead == 0
    assert site.verdict.dormant_units == [3]


def test_nonfinite_activations_are_counted_not_spread():
    class NanUnit(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.act = nn.ReLU()

        def forward(self, x):
            h = self.fc(x)
            h = h.clone()
            h[:, 2] = float("nan")
            return self.act(h)

    result = deadrelu.scan(NanUnit(), torch.randn(10, 3), batch_size=4)
    site = result.sites[0]
    assert site.stats.nonfinite.tolist() == [0, 0, 10, 0]
    assert site.stats.observations.tolist() == [10, 10, 0, 10]
    assert np.isfinite(site.verdict.dormancy_score[[0, 1, 3]]).all()
    assert not site.verdict.dead[2]
    assert any("NaN/inf activations" in w for w in result.warnings)


def test_dead_threshold_relaxes_dead():
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [1.0]]))
        model[0].bias.copy_(torch.tensor([-0.95, 0.0]))
    x = torch.linspace(-1, 1, 201).unsqueeze(1)  # unit 0 active on x > 0.95: 5 of 201 samples
    assert deadrelu.scan(model, x).summary.dead == 0
    assert deadrelu.scan(model, x, dead_threshold=0.05).sites[0].verdict.dead_units == [0]


def test_layer_globs_and_not_run_coverage():
    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
            self.b = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
            self.unused = nn.ReLU()

        def forward(self, x):
            return self.b(self.a(x))

    model = TwoBranch()
    full = deadrelu.scan(model, torch.randn(5, 3))
    assert [s.name for s in full.sites] == ["a.1", "b.1"]
    assert full.coverage["not_run"] == ["unused"]
    assert any("never ran" in w and "unused" in w for w in full.warnings)
    only_a = deadrelu.scan(model, torch.randn(5, 3), layers=["a.*"])
    assert [s.name for s in only_a.sites] == ["a.1"]
    no_b = deadrelu.scan(model, torch.randn(5, 3), exclude=["b.*"])
    assert [s.name for s in no_b.sites] == ["a.1"]
    with pytest.raises(deadrelu.CaptureError, match="excluded every site"):
        deadrelu.scan(model, torch.randn(5, 3), layers=["nothing*"])


def test_model_without_activations_is_a_clear_error():
    with pytest.raises(deadrelu.CaptureError, match="no ReLU-family activation found.*Linear"):
        deadrelu.scan(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), torch.randn(4, 3), functional=False)


def test_a_model_whose_only_activations_are_unsupported_says_so():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh())
    with pytest.raises(deadrelu.CaptureError,
                       match=r"no activation deadrelu can scan in Sequential: 2 Tanh calls not scanned "
                             r"\(unsupported kind\) at modules 1, 3"):
        deadrelu.scan(model, torch.randn(4, 3), functional=False)


def test_ambiguous_unit_axis_is_a_warning():
    class Permuted(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)
            self.act = nn.ReLU()

        def forward(self, x):  # (N, 5, 5): the permuted tensor is not the Linear's output
            return self.act(self.fc(x).transpose(1, 2) + 0)

    result = deadrelu.scan(Permuted(), torch.randn(4, 5, 5))
    assert result.sites[0].unit_dim == 1
    assert any("ambiguous" in w for w in result.warnings)


def test_dataloader_of_tuples_and_integer_data():
    from torch.utils.data import DataLoader, TensorDataset
    model = linear_with_dead_units(dead=8)
    x = bounded_inputs(90, 10)
    loader = DataLoader(TensorDataset(x, torch.zeros(90)), batch_size=16)
    result = deadrelu.scan(model, loader)
    assert result.summary.dead == 8
    assert result.data["samples"] == 90
    ints = deadrelu.scan(model, (x * 0).to(torch.int64) + 1, limit=20)
    assert ints.data["samples"] == 20
    assert any(w.startswith("integer data cast to float32: 0 (Linear(in_features=10)) rejected them") for w in ints.warnings)
