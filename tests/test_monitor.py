"""deadrelu.Monitor on a training loop that kills known units at known steps.

The model is built so that no unit dies on its own (positive biases, positive second-layer
weights, inputs in [-1, 1], a tiny learning rate); the loop then zeroes the weights of
chosen units and sets their bias to -100 at chosen steps, which keeps them dead for any
input (and, with a zero gradient, for the rest of training). One unit is revived later.
The expected dead set at every recorded step is computed by hand from that schedule.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deadrelu
from deadrelu.errors import ConfigError
from deadrelu.history import HISTORY_COLUMNS, current_run, history_frame, read_log
from deadrelu.monitor import Monitor, preserved_rng

#: step -> [(layer index in the Sequential, units)]: killed at the start of that step
KILLS = {5: [(0, [1, 3, 7])], 11: [(0, [10]), (3, [0, 5])]}
#: step -> [(layer, units)]: brought back to life at the start of that step
REVIVALS = {17: [(0, [3])]}
SITES = {0: "1", 3: "4"}  # the Linear each kill hits -> the ReLU site after it
EVERY, STEPS = 4, 22


def make_model() -> nn.Sequential:
    """Linear(4,16) -> ReLU -> Dropout -> Linear(16,8) -> ReLU -> Linear(8,1); every unit alive on [-1,1]^4."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 8), nn.ReLU(),
                          nn.Linear(8, 1))
    with torch.no_grad():
        model[0].bias.fill_(5.0)  # |w.x| <= 2 for the default init: always positive
        model[3].weight.uniform_(0.01, 0.1)
        model[3].bias.fill_(5.0)
    return model


def kill(model: nn.Sequential, layer: int, units: list[int]) -> None:
    with torch.no_grad():
        model[layer].weight[units] = 0.0
        model[layer].bias[units] = -100.0


def revive(model: nn.Sequential, layer: int, units: list[int]) -> None:
    with torch.no_grad():
        model[layer].weight[units] = 0.1
        model[layer].bias[units] = 5.0


def expected_dead(step: int) -> dict[str, set[int]]:
    """Dead units per site after the schedule's events up to and including ``step``."""
    dead: dict[str, set[int]] = {"1": set(), "4": set()}
    for event_step in sorted(set(KILLS) | set(REVIVALS)):
        if event_step > step:
            break
        for layer, units in KILLS.get(event_step, []):
            dead[SITES[layer]] |= set(units)
        for layer, units in REVIVALS.get(event_step, []):
            dead[SITES[layer]] -= set(units)
    return dead


def train(model: nn.Sequential, monitor: Monitor, inputs: torch.Tensor, after_step=None) -> None:
    """SGD on a regression target; kills/revivals happen before the step's forward pass."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = inputs.sum(dim=1, keepdim=True)
    for step in range(STEPS):
        for layer, units in KILLS.get(step, []):
            kill(model, layer, units)
        for layer, units in REVIVALS.get(step, []):
            revive(model, layer, units)
        batch = slice((step * 16) % 64, (step * 16) % 64 + 16)
        loss = (model(inputs[batch]) - target[batch]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(step)
        if after_step is not None:
            after_step(step)


def bounded(samples: int, seed: int = 3) -> torch.Tensor:
    return torch.rand(samples, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def no_hooks(model: nn.Module) -> bool:
    from torch.nn.modules import module as module_module
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()) and \
        not module_module._global_forward_hooks and not module_module._global_forward_pre_hooks


def dead_through(start: int, steps: int) -> dict[str, set[int]]:
    """Units dead at every step of a window: a unit killed or revived inside it was active at some step."""
    sets = [expected_dead(step) for step in range(start, start + steps)]
    return {site: set.intersection(*(dead[site] for dead in sets)) for site in sets[0]}


def check_history(history, starts: list[int], window: int = 1) -> None:
    """Dead counts, newly_dead and revived per (step, site) against the hand computation."""
    assert list(history.columns) == list(HISTORY_COLUMNS)
    assert sorted(set(history["step"])) == starts
    previous = {"1": set(), "4": set()}
    for step in starts:
        want = dead_through(step, window)
        rows = history[history["step"] == step].set_index("site")
        assert list(rows.index) == ["1", "4"]
        for site, units in (("1", 16), ("4", 8)):
            row = rows.loc[site]
            assert row["units"] == units
            assert row["dead"] == len(want[site]), (step, site)
            assert row["dead_ratio"] == pytest.approx(len(want[site]) / units)
            assert row["newly_dead"] == len(want[site] - previous[site]), (step, site)
            assert row["revived"] == len(previous[site] - want[site]), (step, site)
        previous = want


def test_probe_history_matches_the_kill_schedule(tmp_path: Path) -> None:
    model = make_model()
    model[5].eval()  # one module deliberately in eval mode: its flag must survive too
    flags = [m.training for m in model.modules()]
    log = tmp_path / "run" / "deadrelu.jsonl"
    monitor = Monitor(model, probe=bounded(200), every=EVERY, log=log, batch_size=50)

    def after(step: int) -> None:
        assert [m.training for m in model.modules()] == flags  # train mode restored after each step()
        assert no_hooks(model)

    train(model, monitor, bounded(64, seed=4), after)
    monitor.close()
    starts = list(range(0, STEPS, EVERY))  # 0, 4, ..., 20
    check_history(monitor.history, starts)
    records = read_log(log)
    assert [r["step"] for r in records] == starts
    assert all(r["mode"] == "probe" and r["train_mode"] is False and r["samples"] == 200 for r in records)
    by_step = {r["step"]: {s["name"]: set(s["dead_units"]) for s in r["sites"]} for r in records}
    assert by_step[12] == {"1": {1, 3, 7, 10}, "4": {0, 5}}
    assert by_step[20] == {"1": {1, 7, 10}, "4": {0, 5}}  # unit 3 revived at step 17
    assert (monitor.history.query("step == 20 and site == '1'")["revived"] == 1).all()


def test_window_history_matches_the_kill_schedule() -> None:
    model = make_model()
    monitor = Monitor(model, window=2, every=EVERY)
    seen_training: list[bool] = []
    train(model, monitor, bounded(64, seed=4), lambda step: seen_training.append(model.training))
    monitor.close()
    # A unit counts as dead in a window only if it was dead at every step of it: the kill at
    # step 5 shows from the window at 8, the revival at step 17 already in the window at 16.
    check_history(monitor.history, list(range(0, STEPS, EVERY)), window=2)
    assert {s["name"]: s["dead_units"] for s in monitor.records[4]["sites"]} == {"1": [1, 7, 10], "4": [0, 5]}
    assert all(seen_training)
    assert all(r["mode"] == "window" and r["train_mode"] is True and r["window_steps"] == 2
               for r in monitor.records)
    assert no_hooks(model)


def test_window_hooks_only_during_the_window() -> None:
    model = make_model()
    monitor = Monitor(model, window=2, every=EVERY)
    hooked = []
    train(model, monitor, bounded(64, seed=4), lambda step: hooked.append(not no_hooks(model)))
    monitor.close()
    # Open for steps 0-1, 4-5, ...: after step s the hooks are on iff step s+1 is in a window.
    assert hooked == [((step + 1) % EVERY) < 2 for step in range(STEPS)]


def test_training_capture_skips_eval_forwards_and_builds_no_graph() -> None:
    model = make_model()
    with deadrelu.capture(model, eval_mode=False) as session:
        output = model(bounded(5))
        model.eval()
        model(bounded(7))  # validation: not observed
        model.train()
        output.sum().backward()  # the training graph is intact
    assert model.training and all(m.training for m in model.modules())
    result = session.result(suggestions=False)
    assert [site.name for site in result.sites] == ["1", "4"]
    assert [site.observations for site in result.sites] == [5, 5]
    assert not any(record.accumulator.sums.requires_grad for record in session.records())


class Wrapper(nn.Module):
    """A loop that calls ``wrapper.net(x)``, bypassing the root's forward hooks (as Lightning modules do)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()


def test_window_mode_when_the_loop_calls_a_submodule() -> None:
    wrapper = Wrapper()
    monitor = Monitor(wrapper, window=3, every=3)
    optimizer = torch.optim.SGD(wrapper.parameters(), lr=1e-4)
    inputs = bounded(32)
    for step in range(6):
        loss = wrapper.net(inputs).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(step)
    monitor.close()
    # One site per activation (call index 0 each step), not a new site per step.
    assert [[s["name"] for s in r["sites"]] for r in monitor.records] == [["net.1", "net.4"]] * 2
    assert [r["step"] for r in monitor.records] == [0, 3]


def test_probe_scan_keeps_the_rng_stream() -> None:
    model = make_model()
    probe = DataLoader(TensorDataset(bounded(40)), batch_size=8, shuffle=True)  # draws from torch's RNG
    monitor = Monitor(model, probe=probe, every=1)
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    monitor.step(0)
    after = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    expected = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]
    assert len(monitor.records) == 1


def test_resumed_run_appends_and_crashed_line_is_dropped(tmp_path: Path) -> None:
    log = tmp_path / "deadrelu.jsonl"
    model = make_model()
    probe = bounded(50)
    first = Monitor(model, probe=probe, every=2, log=log)
    for step in range(5):  # records at 0, 2, 4
        first.step(step)
    first.close()
    with log.open("a") as handle:
        handle.write('{"format": "deadrelu-monitor", "ver')  # killed mid-write
    assert [r["step"] for r in read_log(log)] == [0, 2, 4]
    kill(model, 0, [2])
    resumed = Monitor(model, probe=probe, every=2, log=log)  # resumed from the step-2 checkpoint
    for step in range(3, 7):  # records at 4, 6
        resumed.step(step)
    resumed.close()
    lines = log.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["format"] == "deadrelu-monitor" for line in lines)
    assert [r["step"] for r in resumed.records] == [0, 2, 4, 4, 6]
    assert [r["step"] for r in current_run(resumed.records)] == [0, 2, 4, 6]
    history = resumed.history
    assert list(history.query("site == '1'")["dead"]) == [0, 0, 1, 1]
    assert list(history.query("site == '1'")["newly_dead"]) == [0, 0, 1, 0]
    assert history_frame(read_log(log)).equals(history)


def test_monitor_refuses_bad_setups() -> None:
    model = make_model()
    with pytest.raises(ConfigError, match="exactly one of probe"):
        Monitor(model)
    with pytest.raises(ConfigError, match="exactly one of probe"):
        Monitor(model, probe=bounded(4), window=2)
    with pytest.raises(ConfigError, match="window must be"):
        Monitor(model, window=10, every=5)
    with pytest.raises(ConfigError, match="one-shot iterator"):
        Monitor(model, probe=iter([bounded(4)]))
    with pytest.raises(ConfigError, match="every must be"):
        Monitor(model, probe=bounded(4), every=0)


def test_repeated_step_number_is_ignored_and_step_after_close_refused() -> None:
    model = make_model()
    monitor = Monitor(model, probe=bounded(20), every=2)
    assert monitor.step(0) is not None
    assert monitor.step(0) is None  # a second micro-batch of optimizer step 0
    monitor.close()
    with pytest.raises(ConfigError, match="after close"):
        monitor.step(2)


def test_monitor_is_a_top_level_name() -> None:
    assert deadrelu.Monitor is Monitor


def test_preserved_rng_restores_after_an_error() -> None:
    torch.manual_seed(1)
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError):
        with preserved_rng():
            torch.rand(5)
            raise RuntimeError("boom")
    assert torch.equal(torch.get_rng_state(), state)


class FunctionalBlock(nn.Module):
    """A root whose own forward calls F.relu, and a reused ReLU module: sites must stay per call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu(self.relu(self.relu(self.fc(x)) - 1.0))


def test_window_sites_are_per_call_across_forwards() -> None:
    model = FunctionalBlock()
    monitor = Monitor(model, window=3, every=3)
    for step in range(3):
        model(bounded(8)).sum().backward()
        monitor.step(step)
    monitor.close()
    assert [s["name"] for s in monitor.records[0]["sites"]] == ["relu#0", "relu#1", "<root>:relu#0"]
