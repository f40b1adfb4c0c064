"""After the first batch of a scan a fused activation module runs without hooks: its
``FusedForward`` counts its calls, finds their sites and observes them itself
(``capturing/fused_forward.py``: ``ModuleCalls``, ``go_alone``), so ``nn.Module.__call__``
takes its no-hook path.

Truth: the hooks are gone from batch 2 on (and only where nobody else hooks the module and
no functional capture is left on), and every statistic equals the plain-hook path's (the
fused activation turned off): dead units built into the model, reused modules as one site
per call, a call index first seen in a later batch, keyword calls, masks, foreign hooks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deadrelu
import deadrelu.fused as fused_module


@pytest.fixture(autouse=True)
def kernel():
    if fused_module.activation() is None:
        pytest.skip(f"no fused activation on this machine: {fused_module.note()}")


def _dead_net(dead: int = 3, width: int = 8) -> nn.Sequential:
    """Linear -> ReLU with a bias of -100 on exactly ``dead`` units: those never fire."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, width), nn.ReLU(inplace=True), nn.Linear(width, 2))
    with torch.no_grad():
        net[0].weight.mul_(0.1)
        net[0].bias[:dead] = -100.0
        net[0].bias[dead:] = 100.0
    return net.eval()


def _stats(result: deadrelu.ScanResult) -> dict:
    return {site.name: site.to_dict()["unit_stats"] for site in result.sites}


def _same_stats(result: deadrelu.ScanResult, reference: deadrelu.ScanResult) -> None:
    """Counts, min and max equal; float sums to float32 rounding (the two kernels may associate
    a step's float32 sums differently)."""
    got, want = _stats(result), _stats(reference)
    assert got.keys() == want.keys()
    for name in got:
        assert got[name].keys() == want[name].keys()
        for field, values in got[name].items():
            if field in ("total", "total_sq", "total_abs"):
                assert values == pytest.approx(want[name][field], rel=1e-6, abs=1e-9), (name, field)
            else:
                assert values == want[name][field], (name, field)


def _hooks(module: nn.Module) -> tuple[int, int]:
    return len(module._forward_pre_hooks), len(module._forward_hooks)


class Recorder(nn.Module):
    """Records the activation module's hook counts at each forward pass."""

    def __init__(self, net: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.net, self.act, self.seen = net, act, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(_hooks(self.act))
        return self.net(x)


def test_hooks_go_after_the_first_batch_and_counts_stay_exact(monkeypatch):
    net = _dead_net()
    model = Recorder(net, net[1])
    data = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    result = deadrelu.scan(model, data, batch_size=10)
    assert model.seen == [(1, 1), (0, 0), (0, 0), (0, 0)]
    assert _hooks(net[1]) == (0, 0) and "forward" not in vars(net[1])  # given back after the scan
    site = result.site("net.1")
    assert site.dead == 3 and site.dead_units == [0, 1, 2]
    assert site.observations == 40
    assert result.environment["reduction"] == "fused"
    monkeypatch.setattr(fused_module, "activation", lambda: None)  # the hook path: no kernel, hooks kept
    model.seen.clear()
    reference = deadrelu.scan(model, data, batch_size=10, functional="always")
    assert model.seen == [(1, 1)] * 4
    _same_stats(result, reference)


class Kinds(nn.Module):
    """Kinds the kernel does not compute, and a subclass of one it does: observed (not fused)
    without hooks after the first batch. Each has exactly 2 of 4 units never above 0."""

    class Shifted(nn.ReLU):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 0.0

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.fc.weight.mul_(0.01)
            self.fc.bias.copy_(torch.tensor([-50.0, -50.0, 50.0, 50.0]))
        self.acts = nn.ModuleList([nn.ELU(), nn.GELU(), nn.SiLU(), nn.Hardswish(), self.Shifted()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return torch.stack([act(h) for act in self.acts])


def test_kinds_the_kernel_does_not_compute_go_without_hooks_too(monkeypatch):
    model = Kinds().eval()
    data = torch.randn(30, 4, generator=torch.Generator().manual_seed(3))
    seen = []
    original = model.forward

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append([_hooks(act) for act in model.acts])
        return original(x)

    monkeypatch.setattr(model, "forward", recording)
    result = deadrelu.scan(model, data, batch_size=10)
    assert seen == [[(1, 1)] * 5, [(0, 0)] * 5, [(0, 0)] * 5]
    assert [vars(act).get("forward") for act in model.acts] == [None] * 5  # given back
    for name in ("acts.0", "acts.1", "acts.2", "acts.3", "acts.4"):
        site = result.site(name)
        assert site.observations == 30
        active = site.to_dict()["unit_stats"]["active"]
        assert active[:2] == [0, 0] and min(active[2:]) == 30, name
    seen.clear()
    reference = deadrelu.scan(model, data, batch_size=10, functional="always")
    assert seen == [[(1, 1)] * 5] * 3
    _same_stats(result, reference)


class Reused(nn.Module):
    """One ReLU called twice per forward pass, and a third time when the batch's first value is
    above 0: a call index first seen in a later batch."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.act(x)
        second = self.act(x - 100.0)  # never fires: 3 of 3 units dead
        if x[0, 0] > 0:
            second = second + self.act(-x)
        return first + second


def test_reused_module_and_a_late_call_index_without_hooks(monkeypatch):
    batches = [torch.full((2, 3), -1.0), torch.full((2, 3), -2.0), torch.full((2, 3), 5.0)]
    result = deadrelu.scan(Reused(), batches)
    assert [site.name for site in result.sites] == ["act#0", "act#1", "act#2"]
    assert [result.site(name).observations for name in ("act#0", "act#1", "act#2")] == [6, 6, 2]
    assert result.site("act#1").dead == 3 and result.site("act#2").dead == 3
    assert result.site("act#0").dead == 0  # fires in the third batch only
    monkeypatch.setattr(fused_module, "activation", lambda: None)
    _same_stats(result, deadrelu.scan(Reused(), batches))


class KeywordCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = nn.ReLU()
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(input=self.fc(x)))


def test_a_module_called_by_keyword_runs_and_is_not_a_site():
    """Hooks see no positional input in ``act(input=x)``, so it is not a site; the fused forward
    must run it all the same, in the first batch and without hooks."""
    model = KeywordCall().eval()
    data = torch.randn(12, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = model(data)
    result = deadrelu.scan(model, data, batch_size=4)
    assert [site.name for site in result.sites] == ["out"]
    assert result.site("out").observations == 12
    with torch.inference_mode():
        assert torch.equal(model(data), want)


def test_a_foreign_hook_keeps_the_capture_hooks(monkeypatch):
    net = _dead_net()
    seen = []
    handle = net[1].register_forward_hook(lambda module, args, output: seen.append(output.shape[0]))
    model = Recorder(net, net[1])
    data = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    try:
        result = deadrelu.scan(model, data, batch_size=10)
    finally:
        handle.remove()
    assert model.seen == [(1, 2)] * 4  # the user's hook and the capture's, every batch
    assert seen == [10] * 4
    assert result.site("net.1").dead == 3


def test_functional_always_keeps_the_hooks():
    net = _dead_net()
    model = Recorder(net, net[1])
    result = deadrelu.scan(model, torch.randn(40, 4), batch_size=10, functional="always")
    assert model.seen == [(1, 1)] * 4
    assert result.site("net.1").dead == 3


class TokenReLU(nn.Module):
    """(N, L, 2) -> Linear -> ReLU over 2 units: unit 0 fires only on padding (feature 0 is 10
    there), unit 1 always."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.copy_(torch.tensor([-1.0, 0.0]))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def test_masked_batches_without_hooks_leave_padding_out(monkeypatch):
    """Batches after the first take the hook-free path; with a padding mask the fused forward
    observes the real positions only, as the hooks do."""
    lengths = [(4, 2, 1), (3, 3, 3), (1, 1, 2)]
    batches = []
    for batch in lengths:
        mask = torch.arange(4).expand(3, 4) < torch.tensor(batch)[:, None]
        x = torch.ones(3, 4, 2)
        x[..., 0] = torch.where(mask, 0.0, 10.0)
        batches.append({"x": x, "attention_mask": mask})
    result = deadrelu.scan(TokenReLU(), batches, kwargs=["x"], mask="attention_mask")
    site = result.site("act")
    assert site.observations == sum(map(sum, lengths)) == 20
    assert site.dead_units == [0]  # its activity on padding is left out
    monkeypatch.setattr(fused_module, "activation", lambda: None)
    reference = deadrelu.scan(TokenReLU(), batches, kwargs=["x"], mask="attention_mask")
    _same_stats(result, reference)
