"""Every kind, end to end: a scan's per-unit statistics against a plain reference.

For each activation kind deadrelu scans (in-place where the module allows it, and a
module reused twice per forward), a small conv + linear model is scanned once through
the fused C kernel and once through the eager reduction, and every site's statistics
must equal what a textbook loop gives over float64 copies of the activations (recorded
by plain forward hooks in a separate pass): counts, min and max exactly, sums to
float rounding. Then where the kernel comes from: no compiled module means the eager path
and a note; the opt-in run-time build (tests/test_native_safety.py has its refusals).
"""

from __future__ import annotations

import shutil
import stat
import sys

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
import deadrelu.fused as fused_module
from deadrelu.kinds import ActiveRule, floor_tolerance, spec_for_module

CHANNELS = 5

# name -> module factory (channels -> module)
KIND_MODULES = {
    "ReLU": lambda c: nn.ReLU(),
    "ReLU-inplace": lambda c: nn.ReLU(inplace=True),
    "LeakyReLU-inplace": lambda c: nn.LeakyReLU(0.1, inplace=True),
    "LeakyReLU-negative-inplace": lambda c: nn.LeakyReLU(-0.2, inplace=True),  # active read from the input
    "PReLU": lambda c: nn.PReLU(c),
    "RReLU": lambda c: nn.RReLU(),
    "ELU-inplace": lambda c: nn.ELU(inplace=True),
    "SELU": lambda c: nn.SELU(),
    "CELU": lambda c: nn.CELU(0.5),
    "ReLU6-inplace": lambda c: nn.ReLU6(inplace=True),
    "Hardtanh": lambda c: nn.Hardtanh(-0.5, 0.7),
    "GELU": lambda c: nn.GELU(),
    "SiLU": lambda c: nn.SiLU(),
}


class KindModel(nn.Module):
    """conv -> act -> conv -> act (the same module again) -> pool -> linear -> act2."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        make = KIND_MODULES[kind]
        self.conv1 = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.conv2 = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.act = make(CHANNELS)
        self.fc = nn.Linear(CHANNELS, CHANNELS)
        self.act2 = make(CHANNELS)
        with torch.no_grad():
            self.conv1.weight.mul_(4.0)
            self.conv1.bias[0] = -60.0  # channel 0 never active after the first call
            self.conv1.bias[1] = 60.0  # channel 1 always active (and at the ceiling of bounded kinds)
            for module in (self.act, self.act2):
                if isinstance(module, nn.PReLU):
                    module.weight.copy_(torch.tensor([0.25, -0.5, 0.1, 0.0, 0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.conv1(x))
        hidden = self.act(self.conv2(hidden) - 0.5)
        return self.act2(self.fc(hidden.mean((2, 3))))


def reference_stats(model: KindModel, data: torch.Tensor, batch_size: int) -> dict[tuple[str, int], dict]:
    """Per site (module, call index), the textbook statistics from plain hooks (sums in float64)."""
    records: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    calls: dict[str, int] = {}
    pending: dict[str, torch.Tensor] = {}
    handles = []
    for name in ("act", "act2"):
        module = getattr(model, name)

        def pre(mod, args, name=name):
            pending[name] = args[0].detach().double().clone()  # before an in-place module overwrites it

        def post(mod, args, output, name=name):
            index = calls.get(name, 0)
            calls[name] = index + 1
            records.setdefault((name, index), []).append((pending.pop(name), output.detach().double().clone()))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            for batch in data.split(batch_size):
                calls.clear()
                model(batch.clone())
    finally:
        for handle in handles:
            handle.remove()
    expected = {}
    for (name, index), pairs in records.items():
        spec = spec_for_module(getattr(model, name))
        assert spec is not None
        pre = torch.cat([p.movedim(1, -1).reshape(-1, CHANNELS) for p, _ in pairs])
        out = torch.cat([o.movedim(1, -1).reshape(-1, CHANNELS) for _, o in pairs])
        # Bounds are compared in the activation's own dtype (float32), as the model computes
        # them: Hardtanh's 0.7 is float32(0.7), which float64(0.7) exceeds.
        single = out.float()
        if spec.active_rule is ActiveRule.ABOVE_LOWER:
            active = single > spec.floor
            at_floor, at_ceiling = single <= spec.floor, single >= spec.ceiling
        else:
            active = pre > 0
            at_floor = (single <= floor_tolerance(spec.floor, 0.01) if spec.floor is not None
                        else torch.zeros_like(out, dtype=torch.bool))
            at_ceiling = torch.zeros_like(out, dtype=torch.bool)
        expected[(name, index)] = {
            "observations": np.full(CHANNELS, float(out.shape[0])), "active": active.sum(0).double().numpy(),
            "total": out.sum(0).numpy(), "total_sq": (out * out).sum(0).numpy(), "total_abs": out.abs().sum(0).numpy(),
            "at_floor": at_floor.sum(0).double().numpy(), "at_ceiling": at_ceiling.sum(0).double().numpy(),
            "minimum": out.amin(0).numpy(), "maximum": out.amax(0).numpy()}
    return expected


@pytest.fixture(params=["fused", "eager"])
def path(request, monkeypatch):
    if request.param == "eager":
        monkeypatch.setattr(fused_module, "kernel", lambda: None)
    elif fused_module.kernel() is None:
        pytest.skip(f"no fused kernel on this machine: {fused_module.note()}")
    return request.param


@pytest.mark.parametrize("kind", sorted(KIND_MODULES))
def test_every_kind_matches_the_textbook_statistics(kind, path):
    torch.manual_seed(0)
    model = KindModel(kind).eval()
    data = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    expected = reference_stats(model, data, batch_size=8)
    result = deadrelu.scan(model, data, batch_size=8)
    assert result.environment["reduction"] == path
    sites = {(site.module, site.call_index): site for site in result.sites}
    assert set(sites) == set(expected) == {("act", 0), ("act", 1), ("act2", 0)}
    for key, truth in expected.items():
        stats = sites[key].stats
        context = f"{kind} {key} via {path}"
        for name in ("observations", "active", "at_floor", "at_ceiling", "minimum", "maximum"):
            np.testing.assert_array_equal(getattr(stats, name), truth[name], err_msg=f"{context} {name}")
        for name in ("total", "total_sq", "total_abs"):
            scale = max(1.0, float(np.abs(truth[name]).max()))
            np.testing.assert_allclose(getattr(stats, name), truth[name], rtol=1e-5, atol=1e-6 * scale,
                                       err_msg=f"{context} {name}")
    first = sites[("act", 0)].stats
    assert first.active[0] == 0 and first.active[1] == first.observations[1]  # the model's truth


@pytest.fixture
def no_packaged_kernel(monkeypatch):
    """The package as installed without a compiler: no ``deadrelu._fused`` to import."""
    monkeypatch.setitem(sys.modules, "deadrelu._fused", None)
    fused_module.reset()
    yield
    fused_module.reset()


def test_no_compiler_means_eager_with_a_note(monkeypatch, tmp_path, no_packaged_kernel):
    """Installed without a compiler: eager, and the note says the module was not built; the
    opt-in run-time build without a compiler says that instead and writes nothing."""
    monkeypatch.setenv("DEADRELU_CACHE_DIR", str(tmp_path))
    assert fused_module.kernel() is None
    assert fused_module.note() == ("fused kernel unavailable (deadrelu._fused is not built (no C compiler when "
                                   "deadrelu was installed?): reinstall where `cc` works (pip install -e . in a "
                                   "checkout) or set DEADRELU_FUSED=build); the reduction ran eagerly")
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    result = deadrelu.scan(model, torch.randn(20, 4), batch_size=5)
    assert result.environment["reduction"] == "eager"
    assert result.environment["fused_note"] == fused_module.note()
    assert "fused_kernel" not in result.environment

    monkeypatch.setenv("DEADRELU_FUSED", "build")
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setattr(fused_module.shutil, "which", lambda name: None)
    fused_module.reset()
    assert fused_module.kernel() is None
    assert fused_module.note() == ("fused kernel unavailable (DEADRELU_FUSED=build: no C compiler (cc) found); "
                                   "the reduction ran eagerly")
    result = deadrelu.scan(model, torch.randn(20, 4), batch_size=5)
    assert result.environment["reduction"] == "eager"
    assert result.environment["fused_note"] == fused_module.note()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path, no_packaged_kernel):
    """DEADRELU_FUSED=build (opt-in): built once into a private folder, loaded after that."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEADRELU_CACHE_DIR", str(cache))
    monkeypatch.setenv("DEADRELU_FUSED", "build")
    monkeypatch.setattr(fused_module, "FLAGS", (*fused_module.FLAGS, "-DDEADRELU_NO_CLONES"))  # 4x faster build
    assert fused_module.kernel() is not None, fused_module.note()
    assert fused_module.origin().startswith(f"run-time build {cache}")
    built = sorted(path.name for path in cache.iterdir())
    assert len(built) == 1 and built[0].startswith("fused-") and built[0].endswith(".so")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    stamp = (cache / built[0]).stat().st_mtime_ns
    fused_module.reset()
    assert fused_module.kernel() is not None  # loaded, not rebuilt
    assert (cache / built[0]).stat().st_mtime_ns == stamp
    result = deadrelu.scan(nn.Sequential(nn.Linear(4, 6), nn.ReLU()), torch.randn(20, 4), batch_size=5)
    assert result.environment["reduction"] == "fused"
    assert result.environment["fused_kernel"] == fused_module.origin()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("DEADRELU_FUSED", "0")
    fused_module.reset()
    try:
        assert fused_module.kernel() is None and "DEADRELU_FUSED=0" in (fused_module.note() or "")
    finally:
        fused_module.reset()


@pytest.mark.parametrize("threads_from", ["openmp", "pthreads"])
@pytest.mark.parametrize("activation", [nn.ELU, lambda: nn.ReLU(inplace=True), lambda: nn.LeakyReLU(0.1)])
def test_thread_split_equals_one_thread(path, monkeypatch, threads_from, activation):
    """Rows split over threads (the fused kernel's partial sums, then merged) give the same
    counts and extremes as one thread: on torch's OpenMP team and on POSIX threads, for the
    reduction (ELU) and the fused activation (in-place ReLU, LeakyReLU)."""
    if threads_from == "pthreads":
        monkeypatch.setenv("DEADRELU_OPENMP", "0")
    elif path == "eager":
        pytest.skip("the eager reduction has no thread split of its own")
    elif fused_module.openmp_parallel() is None:
        pytest.skip("torch's CPU operators do not run on an OpenMP runtime here")
    monkeypatch.setattr(fused_module, "MIN_PER_THREAD", 1 << 16)  # split these 1M-value batches
    fused_module.reset()
    try:
        if path == "fused":
            assert fused_module.kernel() is not None
            assert fused_module.threads().startswith("torch's OpenMP team" if threads_from == "openmp" else "POSIX")
        model = nn.Sequential(nn.Linear(64, 2048), activation())
        data = torch.randn(1024, 64, generator=torch.Generator().manual_seed(3))
        before = torch.get_num_threads()
        results = []
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results.append(deadrelu.scan(model, data, batch_size=512).sites[0].stats)
        finally:
            torch.set_num_threads(before)
    finally:
        fused_module.reset()
    one, two = results
    for name in ("observations", "active", "at_floor", "minimum", "maximum"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)
    np.testing.assert_allclose(one.total, two.total, rtol=1e-5, atol=1e-4)
    assert float(one.observations.sum()) == 1024 * 2048


def test_the_split_runs_on_torchs_openmp_team(monkeypatch):
    """Where torch's operators run on an OpenMP runtime, the kernel joins its team (said in the
    kernel's origin); DEADRELU_OPENMP=0 keeps POSIX threads and the larger slice per thread."""
    if fused_module.openmp_parallel() is None:
        pytest.skip("torch's CPU operators do not run on an OpenMP runtime here")
    fused_module.reset()
    try:
        assert fused_module.kernel() is not None
        assert fused_module.threads().startswith("torch's OpenMP team (lib")
        assert fused_module.min_per_thread() == fused_module.MIN_PER_THREAD_TEAM
        result = deadrelu.scan(nn.Sequential(nn.Linear(4, 6), nn.ReLU()), torch.randn(20, 4), batch_size=5)
        assert result.environment["fused_threads"] == fused_module.threads()
        monkeypatch.setenv("DEADRELU_OPENMP", "0")
        fused_module.reset()
        assert fused_module.kernel() is not None and fused_module.threads() == "POSIX threads"
        assert fused_module.min_per_thread() == fused_module.MIN_PER_THREAD
    finally:
        monkeypatch.delenv("DEADRELU_OPENMP")
        fused_module.reset()


class GatedProduct(nn.Module):
    """``act(gate(x)) * up(x)`` (a SwiGLU product site, active where the product is not 0); up's
    rows 0 and 1 are 0 (-0.0 for row 1): those units are never active, however lively the gate."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.gate, self.up = nn.Linear(4, CHANNELS), nn.Linear(4, CHANNELS)
        self.act = nn.SiLU()
        with torch.no_grad():
            self.up.weight[0:2] = 0.0
            self.up.bias[0], self.up.bias[1] = 0.0, -0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.gate(x)) * self.up(x)


def test_a_gated_product_matches_the_textbook_statistics(path):
    """The product's "active" is |product| > 0, read by the kernel from the product itself
    (a_mode 3, no |.| tensor made): NaN is never active and leaves its unit's batch out, 0 and -0.0
    are not active."""
    model = GatedProduct().eval()
    data = torch.randn(24, 4, generator=torch.Generator().manual_seed(5))
    data[13, :] = float("nan")  # batch 2 (rows 8-15): every unit's slice holds a NaN
    result = deadrelu.scan(model, data, batch_size=8, functional="always", nonfinite="keep")
    assert result.environment["reduction"] == path
    site = result.site("<root>:swiglu#0")
    with torch.inference_mode():
        product = torch.cat([model(batch) for i, batch in enumerate(data.split(8)) if i != 1]).double()
    stats = site.stats
    np.testing.assert_array_equal(stats.observations, np.full(CHANNELS, 16.0))
    np.testing.assert_array_equal(stats.active, (product.abs() > 0).sum(0).double().numpy())
    assert list(stats.active[:2]) == [0, 0] and site.dead == 2
    np.testing.assert_allclose(stats.total, product.sum(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats.minimum, product.amin(0).numpy())
    np.testing.assert_array_equal(stats.maximum, product.amax(0).numpy())


#: (samples, channels, positions) whose column blocks (256 values) the kernel folds into units in
#: every way: a unit's positions inside one block, across two blocks (100, 300), over several
#: blocks (1024), one value per unit (1), and batches of 1, 3 and 8 rows.
LAYOUTS = [(8, 3, 1), (3, 5, 300), (13, 7, 100), (2, 2, 1024), (8, 32, 36), (1, 4, 257)]


@pytest.mark.parametrize("shape", LAYOUTS, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("module", ["ReLU", "ReLU(inplace)", "GELU"])
def test_every_layout_folds_its_columns_into_the_right_units(shape, module, path):
    """The kernel sums a column block per unit (a run of positions) before adding it to the unit:
    each unit's statistics equal numpy's, in float64, on the activation's output; a NaN in one
    unit of one batch leaves only that unit's batch out."""
    samples, channels, positions = shape
    torch.manual_seed(0)
    data = torch.randn(samples * 2, channels, positions, generator=torch.Generator().manual_seed(3))
    data[:, 0] -= 2.0  # unit 0 mostly off
    data[0, channels - 1, positions // 2] = float("nan")  # last unit: its first batch is left out
    act = {"ReLU": nn.ReLU(), "ReLU(inplace)": nn.ReLU(inplace=True), "GELU": nn.GELU()}[module]
    model = nn.Sequential(act).eval()
    result = deadrelu.scan(model, data.clone(), batch_size=samples, nonfinite="keep")
    assert result.environment["reduction"] == path
    (site,) = result.sites
    with torch.no_grad():
        out = nn.functional.gelu(data) if module == "GELU" else torch.relu(data)
    values = out.double().movedim(1, -1).reshape(2, samples * positions, channels)  # (batch, values, units)
    kept = [np.ones(2, bool) for _ in range(channels)]
    kept[channels - 1][0] = False
    stats = site.stats
    for unit in range(channels):
        seen = values[kept[unit], :, unit].reshape(-1).numpy()
        context = f"{module} {shape} unit {unit} via {path}"
        assert stats.observations[unit] == seen.size, context
        assert stats.active[unit] == (seen > 0).sum(), context
        np.testing.assert_allclose(stats.total[unit], seen.sum(), rtol=1e-6, atol=1e-6, err_msg=context)
        np.testing.assert_allclose(stats.total_sq[unit], (seen * seen).sum(), rtol=1e-6, atol=1e-6, err_msg=context)
        assert stats.minimum[unit] == np.float32(seen.min()) and stats.maximum[unit] == np.float32(seen.max()), context
