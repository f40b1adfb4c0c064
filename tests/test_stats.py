"""The per-batch reduction and its accumulator, against a naive float64 reference.

Every layout the fast reduction special-cases (inner axis long, short or absent;
channels-last; a view it cannot take), every kind identity it relies on (ReLU:
sum |h| == sum h; ReLU6/Hardtanh: at the lower bound == not active) and the NaN/inf
rule (a unit's batch slice holding NaN/inf is left out and counted) must give the
statistics a plain per-unit loop over float64 copies gives, on both paths a float32 CPU
tensor can take: the fused C kernel (``deadrelu.fused``) and the eager torch reduction.
The compiled reduction must give the same numbers as the eager one.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import deadrelu
import deadrelu.compile_policy as compile_policy
import deadrelu.fused as fused_module
import deadrelu.stats as stats_module
from deadrelu.compile_policy import CompileDecision
from deadrelu.settings import CompileMode
from deadrelu.compile_policy import CompiledReduction
from deadrelu.stats import (SUM_FIELDS, Accumulator, ReductionPlan, ReductionWorkspace,
                            SiteStats, reduce_batch)

COUNT_FIELDS = ("observations", "active", "at_floor", "at_ceiling", "nonfinite")
VALUE_FIELDS = ("total", "total_sq", "total_abs")

# name -> (activation, plan keywords as capture builds them, reads "active" from the input)
KINDS = {
    "relu": (torch.relu, dict(threshold=0.0, floor_at=None, ceiling_at=None, output_floor=0.0), False),
    "gelu": (torch.nn.functional.gelu, dict(threshold=0.0, floor_at=None, ceiling_at=None), False),
    "elu": (torch.nn.functional.elu, dict(threshold=0.0, floor_at=-0.99, ceiling_at=None), False),
    "relu6": (torch.nn.functional.relu6, dict(threshold=0.0, floor_at=0.0, ceiling_at=6.0, output_floor=0.0), False),
    "hardtanh": (torch.nn.functional.hardtanh, dict(threshold=-1.0, floor_at=-1.0, ceiling_at=1.0, output_floor=-1.0),
                 False),
    "leaky_negative": (lambda x: torch.nn.functional.leaky_relu(x, -0.2),
                       dict(threshold=0.0, floor_at=None, ceiling_at=None), True),
}

# name -> (batch shape, reduced dims); the comment says which path of the reduction it takes
LAYOUTS = {
    "conv_inner_first": ((5, 3, 8, 9), (0, 2, 3)),     # inner 72 >= 64: reduce H*W first
    "conv_outer_first": ((5, 4, 3, 5), (0, 2, 3)),     # inner 15: reduce N first
    "linear_nld": ((4, 6, 7), (0, 1)),                 # (N*L, D): one stage
    "linear_nd": ((9, 5), (0,)),
    "linear_past_gemv": ((3, 200, 1000), (0, 1)),      # > GEMV_MAX_ELEMENTS: torch.sum over the outer axis
    "position_units": ((4, 2, 3, 3), (0,)),            # every (C, H, W) is a unit
    "whole_tensor_one_unit": ((6, 4), (0, 1)),
    "unit_axis_first": ((3, 4, 5), (1, 2)),            # outer is empty
}


def reference(batches: list[tuple[torch.Tensor, torch.Tensor]], dims: tuple[int, ...], plan: ReductionPlan) -> dict:
    """Per unit, per batch, in float64: the definition the fast code must meet."""
    totals: dict[str, np.ndarray] = {}
    for output, active_source in batches:
        ndim = output.ndim
        kept = [axis for axis in range(ndim) if axis not in {d % ndim for d in dims}]
        order = kept + [axis for axis in range(ndim) if axis not in kept]
        units = math.prod(output.shape[axis] for axis in kept)
        h = output.double().permute(order).reshape(units, -1)
        a = active_source.double().permute(order).reshape(units, -1)
        finite = torch.isfinite(h).all(dim=1)
        safe = torch.where(finite[:, None], h, torch.zeros_like(h))
        n = h.shape[1]
        batch = {
            "observations": finite * float(n), "nonfinite": (~finite) * float(n),
            "active": torch.where(finite, (a > plan.threshold).sum(1).double(), 0.0),
            "total": safe.sum(1), "total_sq": (safe * safe).sum(1), "total_abs": safe.abs().sum(1),
            "at_floor": (torch.where(finite, (h <= plan.floor_at).sum(1).double(), 0.0)
                         if plan.floor_at is not None else torch.zeros(units, dtype=torch.float64)),
            "at_ceiling": (torch.where(finite, (h >= plan.ceiling_at).sum(1).double(), 0.0)
                           if plan.ceiling_at is not None else torch.zeros(units, dtype=torch.float64)),
            "minimum": torch.where(finite, h.amin(1), math.inf), "maximum": torch.where(finite, h.amax(1), -math.inf),
        }
        for name, value in batch.items():
            value = value.numpy()
            if name not in totals:
                totals[name] = value
            elif name == "minimum":
                totals[name] = np.minimum(totals[name], value)
            elif name == "maximum":
                totals[name] = np.maximum(totals[name], value)
            else:
                totals[name] = totals[name] + value
    return totals


def assert_matches(stats: SiteStats, expected: dict, context: str = "") -> None:
    for name in COUNT_FIELDS + ("minimum", "maximum"):
        np.testing.assert_array_equal(getattr(stats, name), expected[name], err_msg=f"{context} {name}")
    scale = max(1.0, float(np.abs(expected["total_abs"]).max()))
    for name in VALUE_FIELDS:
        np.testing.assert_allclose(getattr(stats, name), expected[name], rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=f"{context} {name}")


def make_batches(kind: str, shape: tuple[int, ...], generator: torch.Generator, poison: bool = True,
                 channels_last: bool = False) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Three batches (output, active source, pre-activation); NaN/inf in a few unit slices."""
    activation, _plan, reads_input = KINDS[kind]
    batches = []
    for index in range(3):
        pre = torch.randn(shape, generator=generator) * 3
        if poison and index == 1:
            pre.view(-1)[0] = float("nan")
            pre.view(-1)[-1] = float("inf")
        if kind == "elu":
            pre.view(-1)[1] = -50.0  # at the floor
        if channels_last:
            pre = pre.contiguous(memory_format=torch.channels_last)
        output = activation(pre)
        batches.append((output, pre if reads_input else output, pre))
    return batches


def accumulate(batches: list, plan: ReductionPlan, unit_shape: tuple[int, ...],
               compiled: CompiledReduction | None = None, workspace: ReductionWorkspace | None = None) -> SiteStats:
    accumulator = Accumulator(unit_shape, torch.device("cpu"))
    workspace = workspace if workspace is not None else ReductionWorkspace()
    with torch.inference_mode():
        for output, active_source, _pre in batches:
            accumulator.update(output, active_source, plan, workspace, compiled)
    return accumulator.finalize()


@pytest.fixture(params=["fused", "eager"])
def path(request, monkeypatch):
    """Each test runs on the fused kernel and on the eager reduction."""
    if request.param == "eager":
        monkeypatch.setattr(fused_module, "kernel", lambda: None)
    elif fused_module.kernel() is None:
        pytest.skip(f"no fused kernel on this machine: {fused_module.note()}")
    return request.param


@pytest.fixture
def eager(monkeypatch):
    """The eager reduction only (tests of its own layouts and shortcuts)."""
    monkeypatch.setattr(fused_module, "kernel", lambda: None)


def unit_shape_of(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size for axis, size in enumerate(shape) if axis not in dims)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reduction_equals_float64_reference(kind, layout, path):
    shape, dims = LAYOUTS[layout]
    plan = ReductionPlan(dims=dims, **KINDS[kind][1])
    batches = make_batches(kind, shape, torch.Generator().manual_seed(3))
    workspace = ReductionWorkspace()
    stats = accumulate(batches, plan, unit_shape_of(shape, dims), workspace=workspace)
    assert workspace.fused_calls == (len(batches) if path == "fused" else 0)
    assert_matches(stats, reference([(o, a) for o, a, _ in batches], dims, plan), f"{kind}/{layout}")
    assert stats.nonfinite.sum() > 0  # the poisoned slices were seen and set aside


@pytest.mark.parametrize("kind", ["relu", "elu", "hardtanh"])
def test_channels_last_and_non_viewable_tensors(kind, path):
    """Channels-last is viewed as (N*H*W, C, 1); a transposed tensor takes the plain path."""
    plan = ReductionPlan(dims=(0, 2, 3), **KINDS[kind][1])
    generator = torch.Generator().manual_seed(5)
    batches = make_batches(kind, (4, 6, 5, 5), generator, channels_last=True)
    assert not batches[0][0].is_contiguous()
    stats = accumulate(batches, plan, (6,))
    assert_matches(stats, reference([(o, a) for o, a, _ in batches], plan.dims, plan), "channels_last")
    transposed = []
    for output, active, pre in make_batches(kind, (4, 6, 5, 7), generator):
        flipped = output.transpose(2, 3)
        transposed.append((flipped, flipped if active is output else active.transpose(2, 3), pre))
    stats = accumulate(transposed, plan, (6,))
    assert_matches(stats, reference([(o, a) for o, a, _ in transposed], plan.dims, plan), "transposed")


def test_half_precision_outputs_are_reduced_in_float32():
    plan = ReductionPlan(dims=(0, 2), **KINDS["elu"][1])
    batches = [(o.half(), a.half(), p) for o, a, p in make_batches("elu", (6, 4, 70), torch.Generator().manual_seed(2))]
    stats = accumulate(batches, plan, (4,))
    assert_matches(stats, reference([(o, a) for o, a, _ in batches], plan.dims, plan), "float16")


def test_float64_outputs_stay_float64():
    plan = ReductionPlan(dims=(0,), **KINDS["relu"][1])
    output = torch.relu(torch.randn(8, 3, dtype=torch.float64))
    batch = reduce_batch(output, output, plan)
    assert batch.sums.dtype == torch.float64
    np.testing.assert_allclose(batch.get("total").numpy(), output.sum(0).numpy(), rtol=1e-12)


def test_in_place_negative_slope_reads_a_boolean_active_source(path):
    """An in-place activation whose sign must come from its input hands over a bool tensor
    computed before the input was overwritten."""
    plan = ReductionPlan(dims=(0, 2, 3), threshold=0.0, floor_at=None, ceiling_at=None)
    pre = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    active = torch.gt(pre, 0.0)
    output = torch.nn.functional.leaky_relu(pre.clone(), -0.5, inplace=True)
    stats = accumulate([(output, active, pre)], plan, (3,))
    np.testing.assert_array_equal(stats.active, (pre > 0).sum((0, 2, 3)).numpy())
    assert_matches(stats, reference([(output, pre)], plan.dims, plan))


# -- kind identities ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, fields, derived", [
    ("relu", ("active", "total", "total_sq"), ("total_abs",)),
    ("gelu", ("active", "total", "total_sq", "total_abs"), ()),
    ("elu", ("active", "total", "total_sq", "total_abs", "at_floor"), ()),
    ("relu6", ("active", "total", "total_sq", "at_ceiling"), ("total_abs", "at_floor")),
    ("hardtanh", ("active", "total", "total_sq", "total_abs", "at_ceiling"), ("at_floor",)),
])
def test_plans_skip_exactly_the_passes_an_identity_gives(kind, fields, derived):
    plan = ReductionPlan(dims=(0,), **KINDS[kind][1])
    assert plan.fields == fields
    assert plan.derived == derived
    assert set(plan.fields) | set(plan.derived) | {"at_floor", "at_ceiling"} >= set(SUM_FIELDS)


def test_relu_total_abs_is_total_and_relu6_floor_is_not_active(path):
    relu = accumulate(make_batches("relu", (6, 5), torch.Generator().manual_seed(8)),
                      ReductionPlan(dims=(0,), **KINDS["relu"][1]), (5,))
    np.testing.assert_array_equal(relu.total_abs, relu.total)
    batches = make_batches("relu6", (50, 5), torch.Generator().manual_seed(8), poison=False)
    relu6 = accumulate(batches, ReductionPlan(dims=(0,), **KINDS["relu6"][1]), (5,))
    np.testing.assert_array_equal(relu6.at_floor, relu6.observations - relu6.active)
    assert relu6.at_floor.tolist() == sum((o <= 0).sum(0) for o, _a, _p in batches).double().tolist()
    assert relu6.at_ceiling.tolist() == sum((o >= 6).sum(0) for o, _a, _p in batches).double().tolist()
    assert relu6.at_floor.min() > 0 and relu6.at_ceiling.min() > 0


@pytest.mark.parametrize("kind", ["relu", "relu6", "hardtanh"])
@pytest.mark.parametrize("layout", ["conv_inner_first", "conv_outer_first", "linear_nd"])
def test_minimum_shortcut_equals_amin(kind, layout, monkeypatch, eager):
    """On the CPU, a batch where every unit has an inactive observation takes its minimum
    from the lower bound instead of an amin pass; a unit active throughout a batch forces
    the pass. Both ways give the reference minimum."""
    shape, dims = LAYOUTS[layout]
    plan = ReductionPlan(dims=dims, **KINDS[kind][1])
    activation = KINDS[kind][0]
    generator = torch.Generator().manual_seed(6)
    always_on = torch.randn(shape, generator=generator)
    always_on.select(1, 1).copy_(always_on.select(1, 1).abs() * 0.1 + 0.5)  # unit 1: active everywhere
    mixed = torch.randn(shape, generator=generator) * 3
    batches = [(activation(pre), activation(pre), pre) for pre in (mixed, always_on, mixed * 2)]
    batches = [(output, output, pre) for output, _a, pre in batches]
    unit_shape = unit_shape_of(shape, dims)
    for stream in (batches, batches[1:2]):
        expected = reference([(o, a) for o, a, _ in stream], dims, plan)
        shortcut = accumulate(stream, plan, unit_shape)
        with monkeypatch.context() as patch:
            patch.setattr(stats_module, "_host_read_is_free", lambda device: False)
            full = accumulate(stream, plan, unit_shape)
        assert_matches(shortcut, expected, "shortcut")
        assert_matches(full, expected, "amin")
    assert shortcut.minimum.reshape(unit_shape)[1].min() > KINDS[kind][1]["output_floor"]  # its own minimum


def test_derived_floor_needs_the_output_as_active_source():
    plan = ReductionPlan(dims=(0,), **KINDS["relu6"][1])
    output = torch.nn.functional.relu6(torch.randn(4, 3))
    with pytest.raises(ValueError, match="active_source"):
        reduce_batch(output, output.clone(), plan)


def test_elu_floor_is_counted_with_its_tolerance(path):
    plan = ReductionPlan(dims=(0,), threshold=0.0, floor_at=-0.99, ceiling_at=None)
    pre = torch.tensor([[-50.0, 1.0], [-5.0, -0.1], [-4.0, 2.0]])  # elu: -1.0, -0.9933, -0.9817
    output = torch.nn.functional.elu(pre)
    stats = accumulate([(output, output, pre)], plan, (2,))
    assert stats.at_floor.tolist() == [2.0, 0.0]  # -1.0 and -0.9933 are within 1% of -1; -0.9817 is not
    assert stats.active.tolist() == [0.0, 2.0]


# -- workspace, empty tensors, host syncs -------------------------------------------------------------

def test_workspace_is_reused_and_results_are_not_overwritten():
    plan = ReductionPlan(dims=(0, 2), **KINDS["gelu"][1])
    workspace = ReductionWorkspace()
    big = torch.nn.functional.gelu(torch.randn(8, 4, 100))
    small = torch.nn.functional.gelu(torch.randn(2, 4, 100))
    first = reduce_batch(big, big, plan, workspace)
    kept = first.sums.clone()
    held = workspace.nbytes
    reduce_batch(small, small, plan, workspace)
    reduce_batch(big, big, plan, workspace)
    assert workspace.nbytes == held  # no new buffer for a smaller or equal tensor
    assert torch.equal(first.sums, kept)  # per-call results are fresh tensors, not workspace views


def test_empty_tensors_add_nothing(path):
    accumulator = Accumulator((3,), torch.device("cpu"))
    empty = torch.empty(0, 3)
    accumulator.update(empty, empty, ReductionPlan(dims=(0,), **KINDS["relu"][1]))
    stats = accumulator.finalize()
    assert stats.observations.tolist() == [0.0, 0.0, 0.0] and accumulator.offered == 0


class _ScalarReads(TorchDispatchMode):
    """Counts device-to-host scalar reads (``.item()``, ``bool(t)``, ``float(t)``) while ``counting``."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default,
             torch.ops.aten.is_nonzero.default}

    def __init__(self) -> None:
        super().__init__()
        self.counting = False
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.counting and func in self.READS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


class _CountInside(nn.Module):
    """Turns counting on for the forward pass only: every hook runs inside it, while the
    input check (CPU data, before any transfer) runs outside."""

    def __init__(self, inner: nn.Module, reads: _ScalarReads) -> None:
        super().__init__()
        self.inner, self.reads = inner, reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.reads.counting = True
        try:
            return self.inner(x)
        finally:
            self.reads.counting = False


def test_hot_path_reads_no_scalar_from_the_device(monkeypatch, eager):
    """No .item()/.tolist()/bool(tensor) in the hooks: on CUDA each would be a host sync per batch.
    (The one read allowed on CPU tensors, where it costs nothing, is switched off as on CUDA.)"""
    monkeypatch.setattr(stats_module, "_host_read_is_free", lambda device: False)
    inner = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 25, 6), nn.ELU(),
                          nn.Linear(6, 5), nn.ReLU6(), nn.Linear(5, 3), nn.PReLU(3), nn.GELU())
    with torch.no_grad():
        inner[8].weight.copy_(torch.tensor([-0.5, 0.2, 0.1]))  # a negative slope: "active" read from the input
    data = torch.randn(40, 2, 7, 7)
    reads = _ScalarReads()
    with reads, torch.inference_mode():
        _CountInside(_ReadsInForward(), reads)(data[:2])
    assert reads.reads  # the probe does see a read made inside a forward pass
    reads = _ScalarReads()
    with reads:
        result = deadrelu.scan(_CountInside(inner, reads), data, batch_size=4)
    assert result.data["batches"] == 10 and len(result.sites) == 5
    assert reads.reads == []


class _ReadsInForward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum())

# -- compiled reduction -------------------------------------------------------------------------------

@pytest.fixture
def fresh_compiled(monkeypatch):
    """A process-wide compiled reduction of the test's own (a failure must not leak out)."""
    reduction = CompiledReduction()
    monkeypatch.setattr(compile_policy, "_SHARED_COMPILED", reduction)
    return reduction


# Slow: the first torch.compile of the reduction in a process (inductor codegen, a C++ build
# on an empty cache) takes seconds to a minute. CI runs it; `pytest -m "not slow"` skips it locally.
@pytest.mark.slow
def test_compiled_equals_eager_and_reference():
    compiled = compile_policy.shared_compiled_reduction()
    for kind, layout in (("relu", "conv_inner_first"), ("elu", "linear_nld")):
        shape, dims = LAYOUTS[layout]
        plan = ReductionPlan(dims=dims, **KINDS[kind][1])
        batches = make_batches(kind, shape, torch.Generator().manual_seed(4))
        unit_shape = unit_shape_of(shape, dims)
        fused = accumulate(batches, plan, unit_shape, compiled)
        if not compiled.usable:
            pytest.skip(f"torch.compile does not work here: {compiled.note}")
        eager = accumulate(batches, plan, unit_shape)
        expected = reference([(o, a) for o, a, _ in batches], dims, plan)
        assert_matches(fused, expected, f"compiled {kind}/{layout}")
        for name in COUNT_FIELDS + ("minimum", "maximum"):
            np.testing.assert_array_equal(getattr(fused, name), getattr(eager, name), err_msg=name)


def test_compile_failure_falls_back_to_eager_with_a_note(monkeypatch, fresh_compiled):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")
    monkeypatch.setattr(torch, "compile", broken)
    plan = ReductionPlan(dims=(0,), **KINDS["relu"][1])
    output = torch.relu(torch.randn(16, 5))
    batch = reduce_batch(output, output, plan, compiled=fresh_compiled)
    assert fresh_compiled.note == ("torch.compile failed (RuntimeError: no C++ compiler found); "
                                   "the reduction ran eagerly")
    np.testing.assert_allclose(batch.get("total").numpy(), output.sum(0).numpy(), rtol=1e-6)

    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU())
    data = torch.randn(30, 5)
    on = deadrelu.scan(model, data, batch_size=8, compile="on")
    off = deadrelu.scan(model, data, batch_size=8, compile="off")
    assert fresh_compiled.note in on.warnings
    assert on.environment["compile"] == "on"
    assert on.environment["reduction"] == ("fused" if fused_module.kernel() is not None else "eager")
    assert on.sites[0].stats.active.tolist() == off.sites[0].stats.active.tolist()


# -- the --compile decision ----------------------------------------------------------------------------

class _FakeShared:
    usable = True
    note = None
    compile_seconds = 0.0


@pytest.fixture
def fake_shared(monkeypatch):
    shared = _FakeShared()
    monkeypatch.setattr(compile_policy, "shared_compiled_reduction", lambda: shared)
    return shared


def drive(decision: CompileDecision, capture: SimpleNamespace, batches: int, per_batch: float,
          batch_size: int = 100) -> None:
    for index in range(1, batches + 1):
        capture.reduce_seconds += per_batch * (3 if index == 1 else 1)  # batch 1 is slower; left out
        decision.after_batch(index, index * batch_size)


def test_auto_stays_eager_on_a_short_scan(fake_shared):
    capture = SimpleNamespace(reduce_seconds=0.0, compiled=None)
    decision = CompileDecision(CompileMode.AUTO, capture, total_samples=100 * 1000)
    drive(decision, capture, 10, per_batch=0.01)  # ~10 s of reduction left: saving 5 s < 2 x 20 s
    assert capture.compiled is None
    assert decision.used == "eager"
    assert decision.environment()["reduction_reason"] == ("auto: eager (projected saving 5.0 s < 2 x compile "
                                                          "cost 20 s)")


def test_auto_compiles_when_the_projected_saving_pays_twice_over(fake_shared):
    capture = SimpleNamespace(reduce_seconds=0.0, compiled=None)
    decision = CompileDecision(CompileMode.AUTO, capture, total_samples=100 * 10_000)
    drive(decision, capture, 6, per_batch=0.01)  # ~100 s of reduction left: saving 50 s >= 40 s
    assert capture.compiled is fake_shared
    assert decision.used == "compiled from batch 4"


def test_auto_with_unknown_length_rechecks_as_the_scan_grows(fake_shared):
    capture = SimpleNamespace(reduce_seconds=0.0, compiled=None)
    decision = CompileDecision(CompileMode.AUTO, capture, total_samples=None)
    # checks at batches 4, 8, 16...; at batch k it assumes k more, so the saving is
    # 0.025 s * k * 0.5, which first reaches 2 x 20 s at k = 4096
    drive(decision, capture, 5000, per_batch=0.025)
    assert capture.compiled is fake_shared
    assert decision.compiled_from_batch == 4096


def test_on_and_off(fake_shared):
    capture = SimpleNamespace(reduce_seconds=0.0, compiled=None)
    CompileDecision(CompileMode.ON, capture, total_samples=10)
    assert capture.compiled is fake_shared
    capture = SimpleNamespace(reduce_seconds=0.0, compiled=None)
    decision = CompileDecision(CompileMode.OFF, capture, total_samples=10 ** 9)
    drive(decision, capture, 50, per_batch=1.0)
    assert capture.compiled is None and decision.environment()["reduction_reason"] == "--compile off"


def test_scan_records_what_reduction_ran(path):
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    result = deadrelu.scan(model, torch.randn(20, 4), batch_size=5)
    env = result.environment
    assert (env["compile"], env["reduction"]) == ("auto", path)
    if path == "fused":  # every activation is read once already: nothing for torch.compile to save
        assert env["reduction_reason"] == "auto: fused kernel (one read per activation)"
    else:
        assert env["reduction_reason"].startswith("auto: eager (projected saving")
    assert type(env["reduction_seconds"]) is float
    off = deadrelu.scan(model, torch.randn(20, 4), batch_size=5, compile="off").environment
    assert (off["compile"], off["reduction"], off["reduction_reason"]) == ("off", path, "--compile off")


def test_reduction_seconds_is_the_time_spent_reducing(monkeypatch):
    """Every accumulator update is made 10 ms slower: the recorded reduction time holds all of
    the 4 batches' delay (so it is measured, and around the reduction), and no more than the scan took."""
    delay = 0.01
    update, update_activation = Accumulator.update, Accumulator.update_activation

    def slow_update(self, *args, **kwargs):
        time.sleep(delay)
        return update(self, *args, **kwargs)

    def slow_update_activation(self, *args, **kwargs):  # the fused activation's pass (batches after the first)
        time.sleep(delay)
        return update_activation(self, *args, **kwargs)

    monkeypatch.setattr(Accumulator, "update", slow_update)
    monkeypatch.setattr(Accumulator, "update_activation", slow_update_activation)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    start = time.perf_counter()
    result = deadrelu.scan(model, torch.randn(20, 4), batch_size=5, compile="off")
    elapsed = time.perf_counter() - start
    assert result.data["batches"] == 4
    assert 4 * delay <= result.environment["reduction_seconds"] <= round(elapsed, 3) + 0.001


def test_layouts_cover_both_outer_axis_sums():
    sizes = {name: math.prod(shape) for name, (shape, _dims) in LAYOUTS.items()}
    assert sizes["linear_past_gemv"] > stats_module.GEMV_MAX_ELEMENTS >= sizes["linear_nld"]


@pytest.mark.parametrize("threads", [1, 2])  # 1: BLAS matrix-vector sums; 2: torch.sum for large tensors
def test_large_outer_sums_match_on_one_and_two_threads(threads, path):
    plan = ReductionPlan(dims=(0, 1), **KINDS["gelu"][1])
    batches = make_batches("gelu", LAYOUTS["linear_past_gemv"][0], torch.Generator().manual_seed(9))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        stats = accumulate(batches, plan, (1000,))
    finally:
        torch.set_num_threads(before)
    assert_matches(stats, reference([(o, a) for o, a, _ in batches], plan.dims, plan))
