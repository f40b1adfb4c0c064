"""Property tests: streaming statistics do not depend on how the data is cut into batches,
partial results merge into the whole, and verdicts do not depend on sample order.

The scanned models use dyadic weights (multiples of 1/4) and the data dyadic values
(multiples of 1/8), so every pre-activation is exact in float32 whatever the batch
size; a difference in a count can then only come from the streaming, never from the
forward pass rounding differently per batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import deadrelu
from deadrelu.judge.verdicts import judge_site
from deadrelu.stats import Accumulator, ReductionPlan, SiteStats, reduce_batch

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COUNT_FIELDS = ("observations", "active", "at_floor", "at_ceiling", "nonfinite")
VALUE_FIELDS = ("total", "total_sq", "total_abs", "minimum", "maximum")


def dyadic_(module: nn.Module, generator: torch.Generator) -> None:
    """Weights and biases in {-3/4, ..., 3/4}: exact sums in float32."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randint(-3, 4, parameter.shape, generator=generator).float() / 4)


class MLP(nn.Module):
    """Module and functional sites of several kinds, with dead and saturated units.

    fc1 bias -100 on units 0-1 (dead for the ReLU module); fc2 bias -100 on unit 0
    (dead for F.relu); fc3 bias -20 on units 0-1 (ELU pinned at its floor: dead and
    saturated); an in-place LeakyReLU with a negative slope; ReLU6 hitting its bound.
    """

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(6, 8), nn.Linear(8, 6), nn.Linear(6, 5), nn.Linear(5, 4)
        self.act = nn.ReLU()
        self.leaky = nn.LeakyReLU(-0.25, inplace=True)
        self.elu = nn.ELU()
        for layer in (self.fc1, self.fc2, self.fc3, self.fc4):
            dyadic_(layer, generator)
        with torch.no_grad():
            self.fc1.bias[:2] = -100.0
            self.fc2.bias[0] = -100.0
            self.fc3.bias[:2] = -20.0
            self.fc4.bias[0] = 50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        h = self.leaky(F.relu(self.fc2(h)))
        h = self.elu(self.fc3(h))
        return F.relu6(self.fc4(h))


class ConvNet(nn.Module):
    """Conv -> in-place ReLU (channel units) -> conv -> F.relu; conv1 bias -100 on channel 2."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(11)
        self.conv1, self.conv2 = nn.Conv1d(2, 4, 3), nn.Conv1d(4, 3, 3)
        self.relu = nn.ReLU(inplace=True)
        dyadic_(self.conv1, generator)
        dyadic_(self.conv2, generator)
        with torch.no_grad():
            self.conv1.bias[2] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.relu(self.conv1(x))))


MODELS = {"mlp": (MLP, (6,)), "conv": (ConvNet, (2, 7))}


@st.composite
def samples(draw, sample_shape: tuple[int, ...], max_samples: int = 40) -> torch.Tensor:
    """Dyadic data: multiples of 1/8 in [-4, 4]."""
    count = draw(st.integers(1, max_samples))
    values = draw(arrays(np.int8, (count, *sample_shape), elements=st.integers(-32, 32)))
    return torch.from_numpy(values.astype(np.float32) / 8)


@st.composite
def cut_points(draw, length: int) -> list[int]:
    """Batch boundaries: any split of ``length`` samples into consecutive non-empty batches."""
    if length < 2:
        return []
    return sorted(draw(st.sets(st.integers(1, length - 1), max_size=8)))


def batches_of(x: torch.Tensor, cuts: list[int]) -> list[torch.Tensor]:
    bounds = [0, *cuts, x.shape[0]]
    return [x[start:stop] for start, stop in zip(bounds, bounds[1:])]


def assert_stats_equal(left: SiteStats, right: SiteStats, context: str = "") -> None:
    for name in COUNT_FIELDS:
        np.testing.assert_array_equal(getattr(left, name), getattr(right, name), err_msg=f"{context} {name}")
    scale = max(1.0, float(np.abs(left.total_abs).max()) if left.units else 1.0)
    for name in VALUE_FIELDS:
        np.testing.assert_allclose(getattr(left, name), getattr(right, name), rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=f"{context} {name}")


def assert_scans_equal(left: deadrelu.ScanResult, right: deadrelu.ScanResult) -> None:
    assert [s.name for s in left.sites] == [s.name for s in right.sites]
    for a, b in zip(left.sites, right.sites, strict=True):
        assert (a.unit_dim, a.units) == (b.unit_dim, b.units)
        assert_stats_equal(a.stats, b.stats, a.name)


# -- streaming == all at once -------------------------------------------------------------------

@pytest.mark.parametrize("model_name", sorted(MODELS))
@PROPERTY
@given(data=st.data())
def test_streaming_equals_all_at_once_for_any_split(model_name, data):
    factory, sample_shape = MODELS[model_name]
    model = factory()
    x = data.draw(samples(sample_shape), label="x")
    cuts = data.draw(cut_points(x.shape[0]), label="cuts")
    whole = deadrelu.scan(model, x, batch_size=x.shape[0])
    streamed = deadrelu.scan(model, batches_of(x, cuts))
    assert streamed.data["batches"] == len(cuts) + 1
    assert_scans_equal(streamed, whole)
    # the streamed statistics are the hand-computed ones: active counts of each site's input
    if model_name == "mlp":
        with torch.no_grad():
            model.eval()
            pre1 = model.fc1(x)
            np.testing.assert_array_equal(streamed.site("act").stats.active, (pre1 > 0).sum(0).numpy())
            assert streamed.site("act").verdict.dead_units[:2] == [0, 1]


@PROPERTY
@given(values=arrays(np.float32, st.tuples(st.integers(1, 30), st.integers(1, 4), st.integers(1, 5)),
                     elements=st.floats(-1e3, 1e3, width=32)),
       data=st.data())
def test_accumulator_streaming_equals_one_reduction(values, data):
    """The stats layer alone, on arbitrary finite floats: counts exact, sums to float32 rounding."""
    x = torch.from_numpy(values)
    cuts = data.draw(cut_points(x.shape[0]), label="cuts")
    plan = ReductionPlan(dims=(0, 2), threshold=0.0, floor_at=-10.0, ceiling_at=100.0)

    def accumulate(chunks: list[torch.Tensor]) -> SiteStats:
        accumulator = Accumulator((x.shape[1],), torch.device("cpu"))
        for chunk in chunks:
            accumulator.add(reduce_batch(chunk, chunk, plan), chunk.shape[0] * chunk.shape[2])
        return accumulator.finalize()

    streamed, whole = accumulate(batches_of(x, cuts)), accumulate([x])
    assert_stats_equal(streamed, whole)
    exact = x.double()
    np.testing.assert_array_equal(whole.active, (exact > 0).sum((0, 2)).numpy())
    np.testing.assert_array_equal(whole.at_floor, (exact <= -10).sum((0, 2)).numpy())
    np.testing.assert_array_equal(whole.at_ceiling, (exact >= 100).sum((0, 2)).numpy())
    np.testing.assert_array_equal(whole.minimum, exact.amin((0, 2)).numpy())
    np.testing.assert_array_equal(whole.maximum, exact.amax((0, 2)).numpy())
    np.testing.assert_allclose(whole.total, exact.sum((0, 2)).numpy(), rtol=1e-5,
                               atol=1e-5 * float(exact.abs().sum()) + 1e-6)


# -- merge(parts) == scan(concatenation) -------------------------------------------------------

@pytest.mark.parametrize("model_name", sorted(MODELS))
@PROPERTY
@given(data=st.data())
def test_merging_two_partial_results_equals_scanning_the_concatenation(model_name, data):
    factory, sample_shape = MODELS[model_name]
    model = factory()
    first = data.draw(samples(sample_shape, max_samples=20), label="first")
    second = data.draw(samples(sample_shape, max_samples=20), label="second")
    batch_size = data.draw(st.integers(1, 16), label="batch_size")
    left = deadrelu.scan(model, first, batch_size=batch_size)
    right = deadrelu.scan(model, second, batch_size=batch_size)
    both = deadrelu.scan(model, torch.cat([first, second]), batch_size=batch_size)
    thresholds = both.settings.thresholds
    assert [s.name for s in left.sites] == [s.name for s in right.sites] == [s.name for s in both.sites]
    for a, b, whole in zip(left.sites, right.sites, both.sites, strict=True):
        assert a.name == b.name == whole.name
        merged = a.stats.merge(b.stats)
        assert_stats_equal(merged, whole.stats, whole.name)
        assert_stats_equal(b.stats.merge(a.stats), merged, whole.name)  # order of parts does not matter
        verdict = judge_site(merged, whole.saturation, thresholds)
        np.testing.assert_array_equal(verdict.dead, whole.verdict.dead)
        np.testing.assert_array_equal(verdict.saturated, whole.verdict.saturated)
        np.testing.assert_array_equal(verdict.dormant, whole.verdict.dormant)


def test_merge_rejects_different_unit_counts():
    one = SiteStats(*(np.zeros(3) for _ in range(10)))
    other = SiteStats(*(np.zeros(4) for _ in range(10)))
    with pytest.raises(ValueError, match="3 and 4 units"):
        one.merge(other)


# -- verdicts do not depend on sample order -----------------------------------------------------

@pytest.mark.parametrize("model_name", sorted(MODELS))
@PROPERTY
@given(data=st.data())
def test_verdicts_invariant_to_sample_order(model_name, data):
    factory, sample_shape = MODELS[model_name]
    model = factory()
    x = data.draw(samples(sample_shape), label="x")
    order = data.draw(st.permutations(range(x.shape[0])), label="order")
    batch_size = data.draw(st.integers(1, x.shape[0]), label="batch_size")
    tau = data.draw(st.sampled_from([0.05, 0.1, 0.5]), label="tau")
    base = deadrelu.scan(model, x, batch_size=x.shape[0], tau=tau)
    shuffled = deadrelu.scan(model, x[list(order)], batch_size=batch_size, tau=tau)
    assert_scans_equal(shuffled, base)
    for a, b in zip(base.sites, shuffled.sites, strict=True):
        np.testing.assert_array_equal(a.verdict.dead, b.verdict.dead)
        np.testing.assert_array_equal(a.verdict.saturated, b.verdict.saturated)
        np.testing.assert_array_equal(a.verdict.dormant, b.verdict.dormant)
    assert base.summary == shuffled.summary


# -- counts stay exact past float32's integer range ---------------------------------------------

def test_counts_exact_past_two_to_the_24_observations_in_one_batch():
    observations = 2 ** 24 + 11  # float32 cannot hold this count; an odd one shows rounding
    value = torch.ones(1, 1, observations)
    value[0, 0, :5] = -1.0
    plan = ReductionPlan(dims=(0, 2), threshold=0.0, floor_at=-0.5, ceiling_at=None)
    accumulator = Accumulator((1,), torch.device("cpu"))
    accumulator.add(reduce_batch(value, value, plan), observations)
    stats = accumulator.finalize()
    assert stats.active.tolist() == [observations - 5]
    assert stats.at_floor.tolist() == [5]
    assert stats.total.tolist() == [observations - 10]
