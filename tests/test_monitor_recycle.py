"""``deadrelu.Monitor(..., recycle="dead", every=N, optimizer=opt)``: ReDo during training.

Truth: ``_dead_mlp()`` has units 0-4 of its hidden layer dead (bias -100) on ``inputs()``; once
recycled (fresh weights, bias 0) they see inputs of both signs and fire. ``LeakyDead``'s dead
units still output -10 through the slope, so recycling them moves the outputs: refused.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.errors import ConfigError
from repair_models import LeakyDead, inputs


def _dead_mlp() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        model[0].bias.fill_(5.0)
        model[0].bias[:5] = -100.0
    return model


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    model.train()
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def test_monitor_recycles_dead_units_at_its_steps_and_resets_their_moments(tmp_path: Path) -> None:
    model, x = _dead_mlp(), inputs()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    log = tmp_path / "log.jsonl"
    monitor = deadrelu.Monitor(model, probe=x, every=2, log=log, recycle="dead", optimizer=optimizer, device="cpu")
    _train_step(model, optimizer, x)
    for state in optimizer.state.values():  # a history in every slot, so the reset is visible
        state["exp_avg"].fill_(1.0)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    rng = torch.get_rng_state()
    record = monitor.step(0)
    assert record is not None and record["recycle"]["recycled"] == 5 and record["recycle"]["refused"] is None
    assert torch.equal(torch.get_rng_state(), rng)  # the training run's random stream is untouched
    with torch.no_grad():
        assert torch.equal(model(x), expected)  # ReDo keeps the function
    assert torch.all(model[0].bias[:5] == 0) and torch.all(model[2].weight[:, :5] == 0)
    for param, dim in ((model[0].weight, 0), (model[0].bias, 0), (model[2].weight, 1)):
        moment = optimizer.state[param]["exp_avg"]
        assert torch.all(moment.narrow(dim, 0, 5) == 0) and torch.all(moment.narrow(dim, 5, moment.shape[dim] - 5) == 1)
    assert set(record["recycle"]["optimizer_state"]) == {"0.weight", "0.bias", "2.weight"}
    for step in range(1, 5):
        _train_step(model, optimizer, x)
        monitor.step(step)
    monitor.close()
    history = monitor.history
    rows = history.set_index("step")
    assert list(rows["recycled"]) == [5, 0, 0]
    assert list(rows["dead"]) == [5, 0, 0] and rows.loc[2, "revived"] == 5
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["recycle"]["recycled"] for r in logged] == [5, 0, 0]
    assert deadrelu.Monitor(_dead_mlp(), probe=x, every=2, log=log).history["recycled"].tolist() == [5, 0, 0]


def test_monitor_recycles_in_window_mode_without_a_probe() -> None:
    model, x = _dead_mlp(), inputs()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    monitor = deadrelu.Monitor(model, window=1, every=3, recycle="dead", optimizer=optimizer, device="cpu")
    for step in range(4):
        _train_step(model, optimizer, x)
        monitor.step(step)
    monitor.close()
    assert monitor.history.set_index("step")["recycled"].to_dict() == {0: 5, 3: 0}
    assert monitor.records[0]["train_mode"] and monitor.records[0]["recycle"]["optimizer_state"] == []  # SGD without momentum keeps no state


def test_monitor_records_a_refused_recycle_and_keeps_the_model() -> None:
    model, x = LeakyDead().eval(), inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monitor = deadrelu.Monitor(model, probe=x, every=1, recycle="dead", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = monitor.step(0)
    assert record is not None and record["recycle"]["recycled"] == 0
    assert record["recycle"]["refused"].startswith("recycling moved the outputs by")
    assert any("recycling at step 0 was refused and undone" in str(w.message) for w in caught)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert monitor.history["recycled"].tolist() == [0]


def test_monitor_recycle_arguments_are_checked() -> None:
    model = _dead_mlp()
    with pytest.raises(ConfigError, match="recycle must be 'dead' or 'dormant'"):
        deadrelu.Monitor(model, probe=inputs(), recycle="all")
    with pytest.raises(ConfigError, match="optimizer= is for recycle="):
        deadrelu.Monitor(model, probe=inputs(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="atol must be a finite number >= 0"):
        deadrelu.Monitor(model, probe=inputs(), recycle="dead", atol=float("nan"))


def test_successive_monitor_recycles_draw_new_weights_without_touching_the_training_stream() -> None:
    model, x = _dead_mlp(), inputs()
    monitor = deadrelu.Monitor(model, probe=x, every=1, recycle="dead", device="cpu")
    rng = torch.get_rng_state()
    monitor.step(0)
    first = model[0].weight[:5].detach().clone()
    with torch.no_grad():
        model[0].bias[:5] = -100.0  # the same units die again
    monitor.step(1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert monitor.history.set_index("step")["recycled"].to_dict() == {0: 5, 1: 5}
    # Putting one shared generator state back before every recycle would redraw the same rows.
    assert not torch.equal(model[0].weight[:5], first)
